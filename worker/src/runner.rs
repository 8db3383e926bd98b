//! Runs one task: sync its files, spawn the spider in its own process group, stream its output, and stop it
//! when asked, when it runs too long or when it uses too much memory, with the escalation CANCEL on stdin →
//! SIGTERM to the group → SIGKILL to the group.
//!
//! Whatever happens, the run ends with a [`TaskOutcome`] (a failing spider is an outcome, not an error) and
//! with no process of the group left behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arachne_proto::client::Client;
use arachne_shared::cluster::{Assignment, WorkerToMaster};
use arachne_shared::ipc::{CancelReason, RunnerMessage};
use arachne_shared::{LogStream, TaskOutcome};
use chrono::Utc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::deps::{self, Deps, InstallCtx, RunEnv};
use crate::memory::{self, OverLimit};
use crate::output::{self, Collector, Event, Source};
use crate::sandbox::{RunDirs, Sandbox, SpiderUser};
use crate::scrapy_feed;
use crate::sync::{self, FileCache};
use crate::watchdog::{Records, Watchdog};

/// How runs are supervised when the spider and the run do not say otherwise.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// How long a spider has to exit after CANCEL on stdin before it gets SIGTERM.
    pub cancel_grace: Duration,
    /// How long after SIGTERM before SIGKILL.
    pub term_grace: Duration,
    /// Longest output line kept whole (and longest IPC message parsed); longer lines are cut with a marker.
    pub max_line_bytes: usize,
    /// The user spiders and dependency installers run as.
    pub spider_user: SpiderUser,
    /// Names of the worker's environment variables passed to spiders beyond the allowed few (see
    /// [`crate::sandbox::allowed_env`]).
    pub pass_env: Vec<String>,
    /// Folders spiders may write in besides their own (an export folder shared by runs, say).
    pub writable: Vec<PathBuf>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            cancel_grace: Duration::from_secs(5),
            term_grace: Duration::from_secs(3),
            max_line_bytes: 16 << 20,
            spider_user: SpiderUser::Auto,
            pass_env: Vec::new(),
            writable: Vec::new(),
        }
    }
}

/// Why a run is being stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Someone cancelled the task; carries the reason shown on the task.
    User(String),
    /// The worker is shutting down.
    Shutdown,
    /// The run's time limit, in seconds, passed.
    Timeout(u64),
    /// The process tree went over its memory limit.
    Memory(OverLimit),
    /// The worker's lease ran out (see [`crate::session`]): the master may hand the task to another worker,
    /// so the run is killed at once.
    LeaseLost,
}

impl Stop {
    fn cancel_reason(&self) -> CancelReason {
        match self {
            Stop::User(_) => CancelReason::User,
            Stop::Shutdown => CancelReason::Shutdown,
            Stop::Timeout(_) => CancelReason::Timeout,
            Stop::Memory(_) => CancelReason::Memory,
            Stop::LeaseLost => CancelReason::Shutdown,
        }
    }

    fn outcome(&self, node: &str) -> TaskOutcome {
        let error = |message: String| TaskOutcome::Error {
            exit_code: None,
            signal: None,
            message,
        };
        match self {
            Stop::User(reason) => TaskOutcome::Cancelled {
                reason: reason.clone(),
            },
            Stop::Shutdown => TaskOutcome::Abnormal {
                reason: format!("worker {node} shut down while the task ran"),
            },
            Stop::LeaseLost => TaskOutcome::Abnormal {
                reason: format!(
                    "worker {node} lost contact with the master and stopped the run, so that a retry elsewhere cannot overlap it"
                ),
            },
            Stop::Timeout(secs) => error(format!("timed out after {secs} s")),
            Stop::Memory(OverLimit { used, limit }) => error(format!(
                "memory limit exceeded ({} MiB > {} MiB)",
                used >> 20,
                limit >> 20
            )),
        }
    }
}

/// How a run ended, with what was measured of it.
#[derive(Debug)]
pub(crate) struct RunResult {
    pub(crate) outcome: TaskOutcome,
    pub(crate) peak_rss_bytes: Option<u64>,
}

impl From<TaskOutcome> for RunResult {
    fn from(outcome: TaskOutcome) -> Self {
        Self {
            outcome,
            peak_rss_bytes: None,
        }
    }
}

/// What every run on this worker shares.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub(crate) node: String,
    pub(crate) options: RunnerOptions,
    pub(crate) cache: FileCache,
    pub(crate) deps: Deps,
    /// The connection of the current session; `None` while the worker is reconnecting.
    pub(crate) client: watch::Receiver<Option<Client>>,
    pub(crate) tasks_dir: PathBuf,
    pub(crate) events: mpsc::Sender<Event>,
    /// Bytes of output on their way to the master; see [`crate::output::IN_FLIGHT_BUDGET`].
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    /// The worker's variables every spider starts from; see [`crate::sandbox::allowed_env`].
    pub(crate) spider_env: Arc<[(OsString, OsString)]>,
    /// Who spiders run as and what they may write.
    pub(crate) sandbox: Sandbox,
    /// Kills the runs' process groups if the worker dies or its lease runs out.
    pub(crate) watchdog: Watchdog,
    /// Each run's process group on disk, for a later life of the worker.
    pub(crate) records: Records,
    /// Until when the runs may go on; see [`crate::session`]. `None` before the first registration.
    pub(crate) lease: watch::Receiver<Option<tokio::time::Instant>>,
}

/// Waits until the lease has run out.
async fn lease_lost(lease: &mut watch::Receiver<Option<tokio::time::Instant>>) {
    loop {
        let until = *lease.borrow_and_update();
        let expired = async {
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expired => return,
            changed = lease.changed() => if changed.is_err() {
                return std::future::pending().await;
            },
        }
    }
}

/// Waits until a stop is requested. Never returns if the requester goes away without asking.
pub(crate) async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(reason) = stop.borrow_and_update().clone() {
            return reason;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Runs one task to its end.
pub(crate) async fn execute(
    ctx: &RunContext,
    task: Assignment,
    mut stop: watch::Receiver<Option<Stop>>,
) -> RunResult {
    let mut collector = Collector::new(
        task.task_id,
        task.lease,
        ctx.events.clone(),
        Arc::clone(&ctx.in_flight),
    );
    let dirs = RunDirs::new(&ctx.tasks_dir, &task.task_id.to_string());
    let prepared = tokio::select! {
        prepared = prepare(ctx, &task, &dirs, &mut collector) => prepared,
        reason = stopped(&mut stop) => {
            collector.flush().await;
            return reason.outcome(&ctx.node).into();
        }
    };
    let run_env = match prepared {
        Ok(run_env) => run_env,
        Err(err) => {
            collector.system(format!("[arachne] {err}"));
            collector.flush().await;
            let _ = dirs.remove().await;
            return TaskOutcome::Error {
                exit_code: None,
                signal: None,
                message: err.to_string(),
            }
            .into();
        }
    };
    let result = supervise(ctx, &task, (&dirs, &run_env), collector, stop).await;
    // Off the run's path: the slot is free and the end reported while the directory goes. What a shutdown
    // leaves behind is removed when the worker starts.
    let task_id = task.task_id;
    tokio::spawn(async move {
        if let Err(err) = dirs.remove().await {
            warn!(task_id = %task_id, error = %err, "could not remove the run's folders");
        }
    });
    result
}

/// Why a run could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error(transparent)]
    Sync(#[from] sync::Error),
    #[error(transparent)]
    Deps(#[from] deps::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Error),
}

/// Syncs the task's version, builds its working directory (and its private `HOME` and `/tmp`) and installs
/// the version's dependencies.
async fn prepare(
    ctx: &RunContext,
    task: &Assignment,
    dirs: &RunDirs,
    collector: &mut Collector,
) -> Result<RunEnv, PrepareError> {
    ctx.sandbox.create_private_dirs(dirs)?;
    let workdir = dirs.work.clone();
    if task.version.is_empty() {
        ctx.cache.empty_workdir(workdir).await?;
        return Ok(RunEnv::default());
    }
    if !ctx
        .cache
        .checkout_cached(&task.version, workdir.clone())
        .await?
    {
        let mut client = connected(ctx).await?;
        let synced = ctx
            .cache
            .sync_into(&mut client, task.spider_id, &task.version, workdir.clone())
            .await?;
        if synced.fetched_files > 0 {
            info!(task_id = %task.task_id, spider = %task.spider_name, version = %task.version,
                fetched = synced.fetched_files, files = synced.manifest.files.len(), bytes = synced.fetched_bytes,
                "synced spider files; the rest were cached");
        }
    }
    let install = InstallCtx {
        collector,
        spider_env: &ctx.spider_env,
        sandbox: &ctx.sandbox,
        dirs,
        max_line_bytes: ctx.options.max_line_bytes,
    };
    Ok(ctx.deps.prepare(&task.version, install).await?)
}

/// How long a run that needs files waits for the worker to reconnect to the master.
const RECONNECT_WAIT: Duration = Duration::from_secs(60);

async fn connected(ctx: &RunContext) -> Result<Client, sync::Error> {
    let mut slot = ctx.client.clone();
    let wait = slot.wait_for(Option::is_some);
    match tokio::time::timeout(RECONNECT_WAIT, wait).await {
        Ok(Ok(client)) => Ok(client.clone().expect("waited for a client")),
        _ => Err(sync::Error::Disconnected(RECONNECT_WAIT.as_secs())),
    }
}

fn command(
    ctx: &RunContext,
    task: &Assignment,
    (dirs, run_env): (&RunDirs, &RunEnv),
    command_line: &str,
) -> Command {
    let mut cmd = ctx.sandbox.command(
        Path::new("/bin/sh"),
        &["-c", command_line],
        dirs,
        None,
        &ctx.spider_env,
    );
    // Without this, Python buffers piped stdout and logs arrive in bursts long after they were printed.
    cmd.env("PYTHONUNBUFFERED", "1");
    let inherited = ctx
        .spider_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v);
    if let Some(path) = run_env.path(inherited) {
        cmd.env("PATH", path);
    }
    cmd.envs(run_env.vars.iter().map(|(k, v)| (k, v)));
    cmd.envs(&task.settings.env);
    cmd.env("ARACHNE_TASK_ID", task.task_id.to_string())
        .env("ARACHNE_SPIDER_ID", task.spider_id.to_string())
        .env("ARACHNE_SPIDER_NAME", &task.spider_name)
        .env("ARACHNE_NODE", &ctx.node)
        .env("CRAWLAB_TASK_ID", task.task_id.to_string());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0).kill_on_drop(true);
    cmd
}

/// A running spider: the group leader, its pid (which is the group id) and the stdin CANCEL goes to.
struct Process {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
}

/// The grace periods of one run's stop escalation.
#[derive(Debug, Clone, Copy)]
struct Escalation {
    cancel_grace: Duration,
    term_grace: Duration,
}

impl Process {
    /// Asks the spider to stop, then escalates. Returns once the group leader has exited.
    async fn terminate(
        &mut self,
        reason: &Stop,
        escalation: Escalation,
    ) -> std::io::Result<ExitStatus> {
        if *reason == Stop::LeaseLost {
            signal_group(self.pid, Signal::SIGKILL);
            return self.child.wait().await;
        }
        if let Some(mut stdin) = self.stdin.take() {
            let grace_seconds = escalation.cancel_grace.as_secs();
            let line = RunnerMessage::Cancel {
                reason: reason.cancel_reason(),
                grace_seconds,
            }
            .to_line();
            // A spider that never reads stdin must not block the cancel: the write is bounded in time.
            let _ =
                tokio::time::timeout(Duration::from_millis(200), stdin.write_all(line.as_bytes()))
                    .await;
            let _ = tokio::time::timeout(Duration::from_millis(50), stdin.flush()).await;
        }
        if let Ok(status) = tokio::time::timeout(escalation.cancel_grace, self.child.wait()).await {
            return status;
        }
        signal_group(self.pid, Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(escalation.term_grace, self.child.wait()).await {
            return status;
        }
        signal_group(self.pid, Signal::SIGKILL);
        self.child.wait().await
    }
}

/// How long a run goes before its process group is recorded on disk; see [`crate::watchdog::Records`].
const RECORD_AFTER: Duration = Duration::from_secs(1);

async fn sleep_for(limit: Option<u64>) {
    match limit {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        None => std::future::pending().await,
    }
}

async fn supervise(
    ctx: &RunContext,
    task: &Assignment,
    place: (&RunDirs, &RunEnv),
    mut collector: Collector,
    mut stop: watch::Receiver<Option<Stop>>,
) -> RunResult {
    // A plain Scrapy crawl writes its items to a feed the worker follows; see `scrapy_feed`.
    let feed = scrapy_feed::feed_path(&place.0.home);
    let fed = scrapy_feed::with_feed(&task.command_line, &feed);
    let command_line = fed.as_deref().unwrap_or(&task.command_line);
    let mut child = match command(ctx, task, place, command_line).spawn() {
        Ok(child) => child,
        Err(err) => {
            let message = format!("failed to start `sh -c {}`: {err}", task.command_line);
            collector.system(format!("[arachne] {message}"));
            collector.flush().await;
            return TaskOutcome::Error {
                exit_code: None,
                signal: None,
                message,
            }
            .into();
        }
    };
    let pid = child.id().expect("a just-spawned child has a pid");
    ctx.watchdog.add(pid).await;
    info!(task_id = %task.task_id, spider = %task.spider_name, pid, "spider started");
    let _ = ctx
        .events
        .send(
            WorkerToMaster::TaskStarted {
                task_id: task.task_id,
                lease: task.lease,
                pid,
                at: Utc::now(),
            }
            .into(),
        )
        .await;

    let (raw_tx, raw_rx) = output::raw_channel();
    let max_line = ctx.options.max_line_bytes;
    let mut readers = vec![
        output::spawn_reader(
            child.stdout.take().expect("stdout is piped"),
            Source::Pipe(LogStream::Stdout),
            max_line,
            raw_tx.clone(),
        ),
        output::spawn_reader(
            child.stderr.take().expect("stderr is piped"),
            Source::Pipe(LogStream::Stderr),
            max_line,
            raw_tx.clone(),
        ),
    ];
    // Told when the spider has exited, so the feed is read to its end and closed.
    let exited = CancellationToken::new();
    if fed.is_some() {
        let (read, write) = tokio::io::simplex(64 * 1024);
        let follow = scrapy_feed::follow(feed, write, exited.clone());
        let task_id = task.task_id;
        tokio::spawn(async move {
            if let Err(err) = follow.await {
                warn!(task_id = %task_id, error = %err, "reading the Scrapy feed failed");
            }
        });
        readers.push(output::spawn_reader(read, Source::Feed, max_line, raw_tx));
    } else {
        drop(raw_tx);
    }

    let peak = Arc::new(AtomicU64::new(0));
    let (over_tx, mut over_rx) = oneshot::channel();
    let limit = task.settings.memory_limit_mib.map(|mib| mib << 20);
    // Polled by the loop below rather than spawned: a task of its own cost every run a spawn and an abort,
    // while most short runs end before the first sample. It stops being sampled once the run is stopping.
    let mut sampler = std::pin::pin!(memory::watch(memory::Watch {
        pid,
        limit,
        peak: Arc::clone(&peak),
        over: over_tx,
    }));
    let collected = tokio::spawn(collector.run(raw_rx));
    let mut process = Process {
        stdin: child.stdin.take(),
        child,
        pid,
    };
    let escalation = Escalation {
        cancel_grace: task
            .settings
            .cancel_grace_secs
            .map(Duration::from_secs)
            .unwrap_or(ctx.options.cancel_grace),
        term_grace: ctx.options.term_grace,
    };

    let mut sampler_failed = None;
    let mut lease = ctx.lease.clone();
    // The record is for a worker whose watchdog died with it; a run that lasts a moment gets one, so a short
    // run does not pay three file operations for it.
    let record_at = tokio::time::Instant::now() + RECORD_AFTER;
    let mut recorded = false;
    let (status, stopped_by) = loop {
        let reason = tokio::select! {
            status = process.child.wait() => break (status, None),
            () = tokio::time::sleep_until(record_at), if !recorded => {
                ctx.records.write(task.task_id, pid);
                recorded = true;
                continue;
            }
            reason = stopped(&mut stop) => reason,
            () = lease_lost(&mut lease) => Stop::LeaseLost,
            () = sleep_for(task.settings.timeout_secs) => Stop::Timeout(task.settings.timeout_secs.unwrap_or(0)),
            Ok(over) = &mut over_rx => Stop::Memory(over),
            why = &mut sampler, if sampler_failed.is_none() => {
                warn!(task_id = %task.task_id, "{why}");
                sampler_failed = Some(why);
                continue;
            }
        };
        let status = process.terminate(&reason, escalation).await;
        break (status, Some(reason));
    };
    drop(process.stdin.take());
    exited.cancel();
    // The shell may be gone while something it started still runs and holds the pipes open.
    signal_group(pid, Signal::SIGKILL);
    ctx.watchdog.del(pid).await;
    if recorded {
        ctx.records.remove(task.task_id);
    }

    // Output still in the pipes is read to the end; a reader that cannot finish (a process that escaped the
    // group holds the pipe) is cut off so the run still ends.
    let mut readers_done = true;
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .is_err()
        {
            abort.abort();
            readers_done = false;
        }
    }
    let summary = collected.await.unwrap_or_default();
    if !readers_done {
        warn!(task_id = %task.task_id, "output pipe held open by a process outside the group; stopped reading");
    }
    let peak_rss_bytes = Some(peak.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0);
    let outcome = match (stopped_by, status) {
        (Some(reason), _) => reason.outcome(&ctx.node),
        (None, Err(err)) => TaskOutcome::Error {
            exit_code: None,
            signal: None,
            message: format!("waiting for the spider failed: {err}"),
        },
        (None, Ok(status)) => exit_outcome(status, summary.fatal_error),
    };
    let outcome = match (outcome, sampler_failed) {
        (TaskOutcome::Finished, Some(why)) if limit.is_some() => TaskOutcome::Error {
            exit_code: Some(0),
            signal: None,
            message: format!("memory limit not enforced: {why}"),
        },
        (outcome, _) => outcome,
    };
    RunResult {
        outcome,
        peak_rss_bytes,
    }
}

fn exit_outcome(status: ExitStatus, fatal_error: Option<String>) -> TaskOutcome {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = Signal::try_from(signal)
            .map(|s| s.as_str())
            .unwrap_or("unknown signal");
        return TaskOutcome::Error {
            exit_code: None,
            signal: Some(signal),
            message: format!("killed by signal {signal} ({name})"),
        };
    }
    let code = status.code().unwrap_or(-1);
    match (code, fatal_error) {
        (0, None) => TaskOutcome::Finished,
        (0, Some(error)) => TaskOutcome::Error {
            exit_code: Some(0),
            signal: None,
            message: format!("spider reported a fatal error: {error}"),
        },
        (code, _) => TaskOutcome::Error {
            exit_code: Some(code),
            signal: None,
            message: format!("exit status {code}"),
        },
    }
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // ESRCH (the group is already gone) is the expected, good case.
    let _ = killpg(Pid::from_raw(pid), signal);
}
