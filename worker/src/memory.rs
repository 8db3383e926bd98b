//! Watches the resident memory of a spider's process tree (the spider and everything it started), keeps the
//! peak, and reports when a limit is crossed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::oneshot;

/// How often the tree is sampled. A spike shorter than this can go unseen; the kernel's OOM killer is the
/// backstop for those.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The limit that was crossed, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverLimit {
    pub(crate) used: u64,
    pub(crate) limit: u64,
}

/// RSS in bytes of `root` and of every process descending from it.
fn tree_rss(system: &mut System, root: u32) -> u64 {
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    let processes = system.processes();
    let parents: HashMap<Pid, Pid> = processes
        .iter()
        .filter_map(|(pid, p)| Some((*pid, p.parent()?)))
        .collect();
    let root = Pid::from_u32(root);
    processes
        .iter()
        .filter(|(pid, _)| {
            let mut current = Some(**pid);
            // Bounded walk up the parent chain: a cycle in a racy snapshot must not hang the sampler.
            for _ in 0..128 {
                match current {
                    Some(pid) if pid == root => return true,
                    Some(pid) => current = parents.get(&pid).copied(),
                    None => return false,
                }
            }
            false
        })
        .map(|(_, p)| p.memory())
        .sum()
}

/// What a watch needs.
pub(crate) struct Watch {
    pub(crate) pid: u32,
    /// Bytes; `None` only tracks the peak.
    pub(crate) limit: Option<u64>,
    pub(crate) peak: Arc<AtomicU64>,
    pub(crate) over: oneshot::Sender<OverLimit>,
}

/// Samples the tree until dropped, raising `peak`, and sends on `over` once if `limit` is crossed. Returns only
/// if sampling is impossible on this machine, with the reason.
pub(crate) async fn watch(
    Watch {
        pid,
        limit,
        peak,
        over,
    }: Watch,
) -> String {
    // A full process scan costs more than a short spider run; runs shorter than one interval are not sampled.
    tokio::time::sleep(SAMPLE_EVERY).await;
    let mut system = match System::new() {
        Ok(system) => system,
        Err(err) => return format!("cannot sample process memory: {err}"),
    };
    let mut over = Some(over);
    loop {
        let (returned, used) = tokio::task::spawn_blocking(move || {
            let used = tree_rss(&mut system, pid);
            (system, used)
        })
        .await
        .expect("sampling does not panic");
        system = returned;
        peak.fetch_max(used, Ordering::Relaxed);
        if let Some(limit) = limit.filter(|&limit| used > limit)
            && let Some(over) = over.take()
        {
            let _ = over.send(OverLimit { used, limit });
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tree_includes_grandchildren() {
        // sh → sh → sleep: the sum over the tree is more than the root alone.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "sh -c 'sleep 5' & sleep 5"])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut system = System::new().unwrap();
        let mut seen = 0;
        for _ in 0..100 {
            let tree = tree_rss(&mut system, pid);
            let root = system
                .process(Pid::from_u32(pid))
                .map(|p| p.memory())
                .unwrap_or(0);
            if tree > root && root > 0 {
                seen = tree;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen > 0, "the grandchildren's memory was never counted");
        child.kill().await.unwrap();
    }
}
