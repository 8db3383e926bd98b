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

/// Installs the log subscriber: `RUST_LOG` if set, `info` otherwise.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}
