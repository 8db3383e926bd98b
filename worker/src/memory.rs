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

/// RSS in bytes of `root` and of every process descending from it: read from the tree's own `/proc` entries
/// where the kernel lists each thread's children, else from a scan of every process.
fn tree_rss(system: &mut System, root: u32) -> u64 {
    tree_rss_by_children(root).unwrap_or_else(|| tree_rss_by_scan(system, root))
}

/// The tree found through `/proc/PID/task/TID/children`, reading only its own processes: a scan of every
/// process on the machine, four times a second per run, costs more CPU than the rest of the worker's work
/// for a run. `None` when the kernel offers no `children` files.
fn tree_rss_by_children(root: u32) -> Option<u64> {
    let children_of = |pid: u32| -> Option<Vec<u32>> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut children = Vec::new();
        for task in tasks.flatten() {
            // A thread that ended meanwhile has no file any more: its children moved to another.
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                children.extend(
                    list.split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        Some(children)
    };
    let gone = !std::path::Path::new(&format!("/proc/{root}")).exists();
    if gone {
        return Some(0);
    }
    if !std::path::Path::new(&format!("/proc/{root}/task/{root}/children")).exists() {
        return None;
    }
    let mut total = 0;
    let mut stack = vec![root];
    // Bounded: a racy snapshot (a pid reused meanwhile) must not make the walk endless.
    let mut visited = 0;
    while let Some(pid) = stack.pop() {
        visited += 1;
        if visited > 100_000 {
            break;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        stack.extend(children_of(pid).unwrap_or_default());
    }
    Some(total)
}

/// The tree found by scanning every process and following parent links.
fn tree_rss_by_scan(system: &mut System, root: u32) -> u64 {
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
            // Both ways of finding the tree see the grandchild.
            let walked = tree_rss_by_children(pid).expect("this kernel lists children");
            let scanned = tree_rss_by_scan(&mut system, pid);
            let root = system
                .process(Pid::from_u32(pid))
                .map(|p| p.memory())
                .unwrap_or(0);
            if walked > root && scanned > root && root > 0 {
                seen = walked;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen > 0, "the grandchildren's memory was never counted");
        child.kill().await.unwrap();
    }
}
