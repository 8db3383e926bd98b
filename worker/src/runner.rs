//! Runs one task: sync its files, spawn the spider in its own process group, stream its output, and stop it
//! on request with the escalation CANCEL on stdin → SIGTERM to the group → SIGKILL to the group.
//!
//! Whatever happens, the run ends with a [`TaskOutcome`] (a failing spider is an outcome, not an error) and
//! with no process of the group left behind.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
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
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::output::{self, Collector};
use crate::sync::{self, FileCache};

/// How runs are supervised.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// How long a spider has to exit after CANCEL on stdin before it gets SIGTERM.
    pub cancel_grace: Duration,
    /// How long after SIGTERM before SIGKILL.
    pub term_grace: Duration,
    /// Longest output line kept whole (and longest IPC message parsed); longer lines are cut with a marker.
    pub max_line_bytes: usize,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            cancel_grace: Duration::from_secs(5),
            term_grace: Duration::from_secs(3),
            max_line_bytes: 16 << 20,
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
    /// The session with the master broke, so the master has already written the task off.
    MasterLost,
}

impl Stop {
    fn cancel_reason(&self) -> CancelReason {
        match self {
            Stop::User(_) => CancelReason::User,
            Stop::Shutdown | Stop::MasterLost => CancelReason::Shutdown,
        }
    }

    fn outcome(&self, node: &str) -> TaskOutcome {
        match self {
            Stop::User(reason) => TaskOutcome::Cancelled {
                reason: reason.clone(),
            },
            Stop::Shutdown => TaskOutcome::Abnormal {
                reason: format!("worker {node} shut down while the task ran"),
            },
            Stop::MasterLost => TaskOutcome::Abnormal {
                reason: format!("worker {node} lost its master connection"),
            },
        }
    }
}

/// What every run on this worker shares.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub(crate) node: String,
    pub(crate) options: RunnerOptions,
    pub(crate) cache: FileCache,
    pub(crate) client: Client,
    pub(crate) tasks_dir: PathBuf,
    pub(crate) events: mpsc::Sender<WorkerToMaster>,
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
) -> TaskOutcome {
    let mut collector = Collector::new(task.task_id, ctx.events.clone());
    let workdir = ctx.tasks_dir.join(task.task_id.to_string());
    let prepared = tokio::select! {
        prepared = prepare(ctx, &task, workdir.clone()) => prepared,
        reason = stopped(&mut stop) => return reason.outcome(&ctx.node),
    };
    if let Err(err) = prepared {
        collector.system(format!("[arachne] {err}"));
        collector.flush().await;
        let _ = tokio::fs::remove_dir_all(&workdir).await;
        return TaskOutcome::Error {
            exit_code: None,
            signal: None,
            message: err.to_string(),
        };
    }
    let outcome = supervise(ctx, &task, &workdir, collector, stop).await;
    if let Err(err) = tokio::fs::remove_dir_all(&workdir).await {
        warn!(task_id = %task.task_id, error = %err, "could not remove the working directory");
    }
    outcome
}

async fn prepare(ctx: &RunContext, task: &Assignment, workdir: PathBuf) -> Result<(), sync::Error> {
    let source = if task.version.is_empty() {
        None
    } else {
        let mut client = ctx.client.clone();
        Some(
            ctx.cache
                .ensure(&mut client, task.spider_id, &task.version)
                .await?,
        )
    };
    sync::prepare_workdir(source, workdir).await
}

fn command(ctx: &RunContext, task: &Assignment, workdir: &std::path::Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&task.command_line).current_dir(workdir);
    // The worker's own settings (master address, tokens) stay out of the spider's environment.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("ARACHNE_") || key.starts_with("CRAWLAB_") {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("ARACHNE_TASK_ID", task.task_id.to_string())
        .env("ARACHNE_SPIDER_ID", task.spider_id.to_string())
        .env("ARACHNE_SPIDER_NAME", &task.spider_name)
        .env("ARACHNE_NODE", &ctx.node)
        .env("CRAWLAB_TASK_ID", task.task_id.to_string())
        // Without this, Python buffers piped stdout and logs arrive in bursts long after they were printed.
        .env("PYTHONUNBUFFERED", "1");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0).kill_on_drop(true);
    cmd
}

async fn supervise(
    ctx: &RunContext,
    task: &Assignment,
    workdir: &std::path::Path,
    mut collector: Collector,
    mut stop: watch::Receiver<Option<Stop>>,
) -> TaskOutcome {
    let mut child = match command(ctx, task, workdir).spawn() {
        Ok(child) => child,
        Err(err) => {
            let message = format!("failed to start `sh -c {}`: {err}", task.command_line);
            collector.system(format!("[arachne] {message}"));
            collector.flush().await;
            return TaskOutcome::Error {
                exit_code: None,
                signal: None,
                message,
            };
        }
    };
    let pid = child.id().expect("a just-spawned child has a pid");
    info!(task_id = %task.task_id, spider = %task.spider_name, pid, "spider started");
    let _ = ctx
        .events
        .send(WorkerToMaster::TaskStarted {
            task_id: task.task_id,
            pid,
            at: Utc::now(),
        })
        .await;

    let (raw_tx, raw_rx) = output::raw_channel();
    let readers = [
        output::spawn_reader(
            child.stdout.take().expect("stdout is piped"),
            LogStream::Stdout,
            ctx.options.max_line_bytes,
            raw_tx.clone(),
        ),
        output::spawn_reader(
            child.stderr.take().expect("stderr is piped"),
            LogStream::Stderr,
            ctx.options.max_line_bytes,
            raw_tx,
        ),
    ];
    let collected = tokio::spawn(collector.run(raw_rx));
    let mut stdin = child.stdin.take();

    let (status, stopped_by) = tokio::select! {
        status = child.wait() => (status, None),
        reason = stopped(&mut stop) => {
            let status = terminate(&mut child, pid, stdin.take(), &reason, &ctx.options).await;
            (status, Some(reason))
        }
    };
    drop(stdin);
    // The shell may be gone while something it started still runs and holds the pipes open.
    signal_group(pid, Signal::SIGKILL);

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

    if let Some(reason) = stopped_by {
        return reason.outcome(&ctx.node);
    }
    match status {
        Err(err) => TaskOutcome::Error {
            exit_code: None,
            signal: None,
            message: format!("waiting for the spider failed: {err}"),
        },
        Ok(status) => exit_outcome(status, summary.fatal_error),
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

/// Asks the spider to stop, then escalates. Returns once the group leader has exited.
async fn terminate(
    child: &mut Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    reason: &Stop,
    options: &RunnerOptions,
) -> std::io::Result<ExitStatus> {
    if let Some(mut stdin) = stdin {
        let line = RunnerMessage::Cancel {
            reason: reason.cancel_reason(),
            grace_seconds: options.cancel_grace.as_secs(),
        }
        .to_line();
        // A spider that never reads stdin must not block the cancel: the write is bounded in time.
        let _ = tokio::time::timeout(Duration::from_millis(200), stdin.write_all(line.as_bytes()))
            .await;
        let _ = tokio::time::timeout(Duration::from_millis(50), stdin.flush()).await;
    }
    if let Ok(status) = tokio::time::timeout(options.cancel_grace, child.wait()).await {
        return status;
    }
    signal_group(pid, Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(options.term_grace, child.wait()).await {
        return status;
    }
    signal_group(pid, Signal::SIGKILL);
    child.wait().await
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // ESRCH (the group is already gone) is the expected, good case.
    let _ = killpg(Pid::from_raw(pid), signal);
}
