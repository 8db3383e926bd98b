//! What both binaries (`arachne-worker`, and `arachne-master` for its local worker) share on the command
//! line: the runner flags, so the two cannot drift apart, and the log setup. Only binaries call these.

use std::time::Duration;

use crate::RunnerOptions;

/// Flags that set [`RunnerOptions`].
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    /// Seconds a spider has to exit after a cancel before SIGTERM (a spider or run can set its own).
    #[arg(long, default_value_t = 5)]
    pub cancel_grace: u64,
    /// Longest output line kept whole, and longest IPC message parsed, in MiB; longer lines are cut.
    #[arg(long, default_value_t = 16)]
    pub max_line_mib: usize,
}

impl From<RunnerArgs> for RunnerOptions {
    fn from(args: RunnerArgs) -> Self {
        RunnerOptions {
            cancel_grace: Duration::from_secs(args.cancel_grace),
            max_line_bytes: args.max_line_mib << 20,
            ..RunnerOptions::default()
        }
    }
}

/// The `main` of a binary that runs a worker: the process watchdog if it was started as one (and nothing
/// else), otherwise `run` on a multi-threaded runtime, with the log subscriber installed and the process sealed
/// first.
pub fn main<F: std::future::Future<Output = anyhow::Result<()>>>(
    run: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    crate::watchdog::run_if_invoked();
    init_tracing();
    seal_process();
    tokio::runtime::Runtime::new()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?
        .block_on(run())
}

/// Installs the log subscriber: `RUST_LOG` if set, `info` otherwise.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Keeps this process's memory and environment (tokens, the MongoDB URI) from the spiders it starts: they run
/// as the same user, and a same-user process may otherwise read `/proc/<pid>/environ` of its parent. A spider
/// itself is dumpable again, as `exec` resets the flag. Only the process-wide binaries call this.
pub fn seal_process() {
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %err, "cannot hide this process's environment from spiders");
    }
}
