//! What both binaries (`arachne-worker`, and `arachne-master` for its local worker) share on the command
//! line: the runner flags, so the two cannot drift apart, and the log setup. Only binaries call these.

use std::time::Duration;

use crate::RunnerOptions;
use crate::sandbox::SpiderUser;

/// Flags that set [`RunnerOptions`].
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    /// Seconds a spider has to exit after a cancel before SIGTERM (a spider or run can set its own).
    #[arg(long, default_value_t = 5)]
    pub cancel_grace: u64,
    /// Longest output line kept whole, and longest IPC message parsed, in MiB; longer lines are cut.
    #[arg(long, default_value_t = 16)]
    pub max_line_mib: usize,
    /// The user spiders (and their dependency installs) run as. Default: when started as root, the user
    /// `arachne-spider`, created if missing (`nobody` if it cannot be); otherwise the worker's own user.
    #[arg(long, env = "ARACHNE_SPIDER_USER")]
    pub spider_user: Option<String>,
    /// A variable of the worker's environment to pass to spiders, on top of PATH, LANG, LANGUAGE, LC_* and TZ;
    /// repeatable. No other variable of the worker reaches a spider.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// A folder spiders may write in besides their own run folders (an export folder shared by runs, say);
    /// repeatable. It must exist, and the spider user needs permission to write there.
    #[arg(long = "spider-writable", value_name = "DIR")]
    pub spider_writable: Vec<std::path::PathBuf>,
}

impl From<RunnerArgs> for RunnerOptions {
    fn from(args: RunnerArgs) -> Self {
        RunnerOptions {
            cancel_grace: Duration::from_secs(args.cancel_grace),
            max_line_bytes: args.max_line_mib << 20,
            spider_user: args.spider_user.map_or(SpiderUser::Auto, SpiderUser::Named),
            pass_env: args.pass_env,
            writable: args.spider_writable,
            ..RunnerOptions::default()
        }
    }
}

/// A secret from the environment variable `var`, else from `file`: never from a flag, as every user of the
/// machine can read a command line.
pub fn secret(var: &str, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(value) = std::env::var_os(var) {
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("${var} is not valid UTF-8"))?;
        return Ok(Some(value.trim().to_owned()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|err| anyhow::anyhow!("reading the secret file {}: {err}", file.display()))?;
    Ok(Some(text.trim().to_owned()))
}

/// The `main` of a binary that runs a worker: the process watchdog or the sandbox helper if it was started as
/// one (and nothing else), otherwise `run` on a multi-threaded runtime, with the log subscriber installed and the process sealed
/// first.
pub fn main<F: std::future::Future<Output = anyhow::Result<()>>>(
    run: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    crate::watchdog::run_if_invoked();
    crate::sandbox::run_if_invoked();
    init_tracing();
    seal_process();
    tokio::runtime::Runtime::new()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?
        .block_on(run())
}

/// Installs the log subscriber: `RUST_LOG` if set, `info` otherwise. Colours only on a terminal (and not
/// with `NO_COLOR` set): a log that goes to a file or a collector is plain text.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Keeps this process's memory and environment (tokens, the MongoDB URI) from the spiders it starts when they
/// run as the same user, who may otherwise read `/proc/<pid>/environ` of its parent. A spider
/// itself is dumpable again, as `exec` resets the flag. Only the process-wide binaries call this.
pub fn seal_process() {
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %err, "cannot hide this process's environment from spiders");
    }
}
