//! Machine metrics for the heartbeat: CPU and memory of the machine, and the disk holding the work directory.

use std::path::PathBuf;

use arachne_shared::NodeMetrics;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Samples the machine; CPU use is measured between two samples, so the first one reads 0.
pub(crate) struct Metrics {
    system: Option<System>,
    work_dir: PathBuf,
}

impl Metrics {
    pub(crate) fn new(work_dir: PathBuf) -> Self {
        let kind = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        // Metrics are informative: a machine where sysinfo cannot read them still runs spiders.
        let system = System::new().ok().map(|mut system| {
            system.refresh_specifics(kind);
            system
        });
        Self { system, work_dir }
    }

    pub(crate) fn sample(&mut self, running: u32) -> NodeMetrics {
        let mut metrics = NodeMetrics {
            running,
            ..NodeMetrics::default()
        };
        if let Some(system) = &mut self.system {
            system.refresh_cpu_usage();
            system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            metrics.cpu_percent = system.global_cpu_usage();
            metrics.memory_used_bytes = system.used_memory();
            metrics.memory_total_bytes = system.total_memory();
        }
        if let Ok(stat) = nix::sys::statvfs::statvfs(&self.work_dir) {
            let block = stat.fragment_size();
            metrics.disk_total_bytes = stat.blocks().saturating_mul(block);
            metrics.disk_used_bytes = stat
                .blocks()
                .saturating_sub(stat.blocks_free())
                .saturating_mul(block);
        }
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut metrics = Metrics::new(dir.path().to_owned());
        let sample = metrics.sample(3);
        assert_eq!(sample.running, 3);
        assert!(
            sample.memory_total_bytes > 0 && sample.memory_used_bytes <= sample.memory_total_bytes
        );
        assert!(sample.disk_total_bytes > 0 && sample.disk_used_bytes <= sample.disk_total_bytes);
        assert!((0.0..=100.0).contains(&metrics.sample(0).cpu_percent));
    }
}
