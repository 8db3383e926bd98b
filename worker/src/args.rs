//! What both binaries (`arachne-worker`, and `arachne-master` for its local worker) share on the command
//! line: the runner flags, so the two cannot drift apart, and reading a secret from the environment or a
//! file. Only binaries call these.

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
