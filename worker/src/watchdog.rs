//! Keeps spider processes from outliving their worker: a watchdog process per worker, and a record per run
//! that a restarted worker reads to find what its previous life left running.
//!
//! The watchdog is this same executable started with [`WATCHDOG_ARG`] in a process group of its own (so a
//! terminal's Ctrl-C or a signal to the worker's group does not reach it). The worker tells it, one line at a
//! time on its stdin, which process groups its runs have (`add PGID`, `del PGID`) and until when its lease
//! runs (`lease MS`). It SIGKILLs every group it was told of when:
//! - its stdin reaches end of file: the worker is gone, whatever way it died (kill -9 included), because the
//!   kernel closes the worker's end of the pipe; or
//! - the lease runs out: the worker has not renewed it (it is frozen, or it has not heard from the master for
//!   that long), so the master may soon hand the run's task to another worker, and the two must not overlap.
//!
//! What it cannot cover: a process that leaves its group (`setsid`, `setpgid`) is no longer reached by a
//! group kill, and a kill -9 of the watchdog itself together with the worker leaves the groups alive; a
//! restarted worker then finds them through the run records ([`Records::kill_leftovers`]), as long as they
//! are still in their group.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arachne_shared::TaskId;
use arachne_shared::cluster::Leftover;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{error, warn};

/// The first argument that makes an Arachne binary run as a watchdog instead of itself.
pub const WATCHDOG_ARG: &str = "__arachne_watchdog";

/// The line a watchdog prints when it is ready, so the worker knows it started the right program.
const READY: &str = "arachne-watchdog ready";

/// Runs this process as a watchdog if it was started as one, and then exits; returns otherwise. Binaries
/// that run a worker call this first thing in `main`.
pub fn run_if_invoked() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == WATCHDOG_ARG)
    {
        watch(std::io::BufReader::new(std::io::stdin()));
        std::process::exit(0);
    }
}

/// One order from the worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Order {
    Add(i32),
    Del(i32),
    Lease(Duration),
    /// The worker is stopping with no run left: end without killing anything.
    Exit,
}

impl Order {
    fn parse(line: &str) -> Option<Self> {
        let (verb, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match verb {
            "add" => arg.parse().ok().map(Order::Add),
            "del" => arg.parse().ok().map(Order::Del),
            "lease" => arg
                .parse()
                .ok()
                .map(|ms| Order::Lease(Duration::from_millis(ms))),
            "exit" => Some(Order::Exit),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Order::Add(pgid) => format!("add {pgid}\n"),
            Order::Del(pgid) => format!("del {pgid}\n"),
            Order::Lease(left) => format!("lease {}\n", left.as_millis()),
            Order::Exit => "exit\n".to_owned(),
        }
    }
}

fn kill_all(groups: &mut HashSet<i32>, why: &str) {
    if groups.is_empty() {
        return;
    }
    let mut killed: Vec<i32> = groups.drain().collect();
    killed.sort_unstable();
    for pgid in &killed {
        // ESRCH (the group is already gone) is the expected, good case.
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
    eprintln!("arachne-watchdog: {why}; killed the process groups {killed:?}");
}

/// The watchdog's loop: obeys `orders` until they end (the worker is gone) or it is told to exit.
fn watch(orders: impl BufRead + Send + 'static) {
    println!("{READY}");
    let _ = std::io::stdout().flush();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Order>(64);
    std::thread::spawn(move || {
        for line in orders.lines() {
            let Ok(line) = line else { break };
            if let Some(order) = Order::parse(&line)
                && tx.send(order).is_err()
            {
                break;
            }
        }
        // Dropping `tx` tells the loop the worker is gone.
    });
    let mut groups = HashSet::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let order = match deadline {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match order {
            Ok(Order::Add(pgid)) => {
                groups.insert(pgid);
            }
            Ok(Order::Del(pgid)) => {
                groups.remove(&pgid);
            }
            Ok(Order::Lease(left)) => deadline = Some(Instant::now() + left),
            Ok(Order::Exit) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                deadline = None;
                kill_all(&mut groups, "the worker's lease ran out");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                kill_all(&mut groups, "the worker is gone");
                return;
            }
        }
    }
}

/// Why the watchdog could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the process watchdog {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{exe} did not answer as a process watchdog (it must be an Arachne binary that runs a worker)"
    )]
    NotAWatchdog { exe: PathBuf },
}

/// The worker's side of its watchdog. Cheap to clone; orders are applied in the order they are given.
#[derive(Clone)]
pub(crate) struct Watchdog {
    orders: mpsc::Sender<Order>,
}

/// Orders waiting for the watchdog; a run waits for room, which bounds them.
const ORDERS_CAPACITY: usize = 256;

impl Watchdog {
    /// Starts a watchdog process from `exe`, checking that it answers as one, and the task that feeds it. If
    /// the process dies, it is started again and told every group and the lease.
    pub(crate) async fn start(exe: PathBuf) -> Result<Self, Error> {
        let child = spawn(&exe).await?;
        let (orders, rx) = mpsc::channel(ORDERS_CAPACITY);
        tokio::spawn(feed(exe, child, rx));
        Ok(Self { orders })
    }

    /// A watchdog whose orders the test reads.
    #[cfg(test)]
    pub(crate) fn for_test() -> (Self, mpsc::Receiver<Order>) {
        let (orders, rx) = mpsc::channel(ORDERS_CAPACITY);
        (Self { orders }, rx)
    }

    async fn order(&self, order: Order) {
        // Closed only once the worker is stopping and the feeder is gone.
        let _ = self.orders.send(order).await;
    }

    /// Watches the process group `pgid` of a run.
    pub(crate) async fn add(&self, pgid: u32) {
        if let Ok(pgid) = i32::try_from(pgid) {
            self.order(Order::Add(pgid)).await;
        }
    }

    /// Stops watching a run's group, once nothing of it is left.
    pub(crate) async fn del(&self, pgid: u32) {
        if let Ok(pgid) = i32::try_from(pgid) {
            self.order(Order::Del(pgid)).await;
        }
    }

    /// Lets the runs go on until `until`, and no longer.
    pub(crate) async fn lease(&self, until: tokio::time::Instant) {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        self.order(Order::Lease(left)).await;
    }

    /// Ends the watchdog without killing anything: the worker stopped every run itself.
    pub(crate) async fn exit(&self) {
        self.order(Order::Exit).await;
    }
}

async fn spawn(exe: &Path) -> Result<tokio::process::Child, Error> {
    let spawned = tokio::process::Command::new(exe)
        .arg(WATCHDOG_ARG)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .env_clear()
        .process_group(0)
        .spawn();
    let mut child = spawned.map_err(|source| Error::Spawn {
        exe: exe.to_owned(),
        source,
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut first = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let answered =
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut first)).await;
    if !matches!(answered, Ok(Ok(_))) || first.trim() != READY {
        let _ = child.start_kill();
        return Err(Error::NotAWatchdog {
            exe: exe.to_owned(),
        });
    }
    Ok(child)
}

/// Writes orders to the watchdog, keeping what it must know to start another one if it dies.
async fn feed(exe: PathBuf, mut child: tokio::process::Child, mut rx: mpsc::Receiver<Order>) {
    let mut groups: HashSet<i32> = HashSet::new();
    let mut lease: Option<tokio::time::Instant> = None;
    while let Some(order) = rx.recv().await {
        match &order {
            Order::Add(pgid) => {
                groups.insert(*pgid);
            }
            Order::Del(pgid) => {
                groups.remove(pgid);
            }
            Order::Lease(left) => lease = Some(tokio::time::Instant::now() + *left),
            Order::Exit => {}
        }
        if write(&mut child, &order).await.is_ok() {
            if order == Order::Exit {
                let _ = child.wait().await;
                return;
            }
            continue;
        }
        error!("the process watchdog died; starting another");
        let _ = child.start_kill();
        let _ = child.wait().await;
        child = loop {
            match spawn(&exe).await {
                Ok(child) => break child,
                Err(err) => {
                    error!(error = %err, "cannot start the process watchdog again; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut replay: Vec<Order> = groups.iter().map(|g| Order::Add(*g)).collect();
        replay.extend(lease.map(|until| {
            Order::Lease(until.saturating_duration_since(tokio::time::Instant::now()))
        }));
        for order in &replay {
            if let Err(err) = write(&mut child, order).await {
                warn!(error = %err, "the new process watchdog did not take its orders");
            }
        }
    }
}

async fn write(child: &mut tokio::process::Child, order: &Order) -> std::io::Result<()> {
    let stdin = child
        .stdin
        .as_mut()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
    stdin.write_all(order.line().as_bytes()).await?;
    stdin.flush().await
}

/// One file per running run (`runs/{task id}`: its process group and the group leader's start time), so a
/// worker that starts again finds what its previous life left behind.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    dir: PathBuf,
}

impl Records {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Notes that `pgid` belongs to the run of `task`. In place rather than on the blocking pool: a file of a
    /// few bytes costs less than the two thread hops, on every run.
    pub(crate) fn write(&self, task: TaskId, pgid: u32) {
        let started = start_time(pgid as i32).unwrap_or(0);
        let path = self.dir.join(task.to_string());
        if let Err(err) = std::fs::write(&path, format!("{pgid} {started}\n")) {
            warn!(task_id = %task, error = %err, "cannot record the run's process group");
        }
    }

    /// Forgets the run of `task`: nothing of it is left.
    pub(crate) fn remove(&self, task: TaskId) {
        let _ = std::fs::remove_file(self.dir.join(task.to_string()));
    }

    /// SIGKILLs the processes still alive in the groups of runs recorded by an earlier life of this worker,
    /// forgets every record, and says what it killed. Blocking: called once, before the worker registers.
    pub(crate) fn kill_leftovers(&self) -> Vec<Leftover> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let processes = processes();
        let mut leftovers = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let record = std::fs::read_to_string(&path).unwrap_or_default();
            let _ = std::fs::remove_file(&path);
            let (Some(task_id), Some((pgid, started))) = (
                entry.file_name().to_str().and_then(|n| n.parse().ok()),
                parse_record(&record),
            ) else {
                continue;
            };
            // A group id is a pid, and pids are reused: only processes that started no earlier than the
            // recorded leader belong to the run.
            let pids: Vec<u32> = processes
                .iter()
                .filter(|p| p.pgid == pgid && p.started >= started)
                .map(|p| p.pid)
                .collect();
            if pids.is_empty() {
                continue;
            }
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            warn!(task_id = %task_id, pgid, ?pids, "killed processes left running by this worker's previous life");
            leftovers.push(Leftover { task_id, pids });
        }
        leftovers
    }
}

fn parse_record(record: &str) -> Option<(i32, u64)> {
    let mut fields = record.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A process as `/proc/{pid}/stat` describes it.
struct Process {
    pid: u32,
    pgid: i32,
    /// Clock ticks after boot.
    started: u64,
}

/// The fields after the command name, which is in parentheses and may itself hold spaces and parentheses.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The start time of process `pid` (field 22 of its stat, the 20th after the name).
fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let fields = stat_fields(pid)?;
            Some(Process {
                pid: pid as u32,
                pgid: fields.get(2)?.parse().ok()?,
                started: fields.get(19)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn orders_read_as_they_are_written() {
        for order in [
            Order::Add(42),
            Order::Del(7),
            Order::Lease(Duration::from_millis(1500)),
            Order::Exit,
        ] {
            assert_eq!(Order::parse(&order.line()), Some(order));
        }
        assert_eq!(Order::parse("add x"), None);
        assert_eq!(Order::parse("reboot"), None);
    }

    #[test]
    fn a_record_names_the_group_and_a_leftover_is_found_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id();
        let task = TaskId::new();
        let records = Records::new(dir.path().to_owned());
        records.write(task, pgid);
        // Both sleeps and the shell, once the shell has started them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes().iter().filter(|p| p.pgid == pgid as i32).count() < 3 {
            assert!(Instant::now() < deadline, "the group never had 3 processes");
            std::thread::sleep(Duration::from_millis(10));
        }
        let leftovers = records.kill_leftovers();
        assert_eq!(leftovers.len(), 1);
        assert_eq!(leftovers[0].task_id, task);
        assert_eq!(leftovers[0].pids.len(), 3, "{leftovers:?}");
        assert!(leftovers[0].pids.contains(&pgid));
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not ended");
        assert!(records.kill_leftovers().is_empty(), "records are forgotten");
    }
}
