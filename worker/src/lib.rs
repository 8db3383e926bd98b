//! The Arachne worker: holds a session with the master, syncs spider files, runs spider processes in runner
//! slots and streams their logs and items back.
//!
//! `arachne-worker` is a thin binary over [`run`]; the master calls the same [`run`] for its local worker, so a
//! local and a remote worker are the same code talking the same protocol (the local one over an in-process
//! link rather than the wire).

pub mod args;
mod deps;
mod lines;
mod memory;
mod metrics;
mod output;
mod runner;
mod session;
pub mod signals;
mod sync;
pub mod watchdog;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use arachne_proto::client::{LocalLink, Target};
pub use runner::RunnerOptions;

/// A worker's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The master: its gRPC endpoint (for example `http://127.0.0.1:9666`), or a link to the master of this
    /// process.
    pub master: Target,
    /// This node's unique name.
    pub name: String,
    /// How many spiders may run at once.
    pub max_runners: u32,
    /// Where spider versions are cached and runs get their working directories.
    pub work_dir: PathBuf,
    pub runner: RunnerOptions,
    /// How often the worker tells the master it is alive.
    pub heartbeat: Duration,
    /// The environment every spider starts from (each run adds its own variables on top).
    pub spider_env: Vec<(OsString, OsString)>,
    /// Shown with the node (`region=eu`, …).
    pub labels: BTreeMap<String, String>,
    /// The worker token presented to the master (`arachne-master token create NAME --kind worker`).
    pub token: Option<String>,
    /// The executable started as the process watchdog (see [`watchdog`]): an Arachne binary that calls
    /// [`watchdog::run_if_invoked`] first thing. This process's own executable by default.
    pub watchdog_exe: Option<PathBuf>,
}

/// This process's environment without the worker's own `ARACHNE_*` and `CRAWLAB_*` variables (its
/// configuration and secrets), which must never reach a spider.
pub fn inherited_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            !key.starts_with("ARACHNE_") && !key.starts_with("CRAWLAB_")
        })
        .collect()
}

impl Config {
    /// A configuration with default runner options.
    pub fn new(master: impl Into<Target>, name: impl Into<String>, work_dir: PathBuf) -> Self {
        Self {
            master: master.into(),
            name: name.into(),
            max_runners: 8,
            work_dir,
            runner: RunnerOptions::default(),
            heartbeat: Duration::from_secs(5),
            spider_env: inherited_env(),
            labels: BTreeMap::new(),
            token: None,
            watchdog_exe: None,
        }
    }
}

/// Errors that stop a worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot prepare the work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The master refused the worker's token: retrying cannot help, so the worker stops.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Watchdog(#[from] watchdog::Error),
    #[error("cannot find this program's own executable to start the process watchdog: {0}")]
    OwnExecutable(#[source] std::io::Error),
}

/// Runs the worker until `shutdown` is cancelled. Running spiders are stopped and their outcomes reported
/// before it returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if config.max_runners == 0 {
        return Err(Error::Config("max runners must be at least 1".into()));
    }
    arachne_shared::spider::validate_name("node", &config.name).map_err(Error::Config)?;
    let records = watchdog::Records::new(config.work_dir.join("runs"));
    // Processes an earlier life of this worker left running (its watchdog was killed with it) are killed
    // before anything else, and named to the master.
    let leftovers = {
        let records = records.clone();
        tokio::task::spawn_blocking(move || records.kill_leftovers())
            .await
            .unwrap_or_default()
    };
    // Leftovers of runs cut short by a crash would otherwise pile up.
    let _ = tokio::fs::remove_dir_all(config.work_dir.join("tasks")).await;
    sync::FileCache::new(config.work_dir.join("cache"))
        .sweep()
        .await;
    for dir in [
        config.work_dir.join("cache"),
        config.work_dir.join("tasks"),
        config.work_dir.join("runs"),
    ] {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| Error::WorkDir {
                path: dir.clone(),
                source,
            })?;
    }
    let exe = match &config.watchdog_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().map_err(Error::OwnExecutable)?,
    };
    let start = session::Start {
        watchdog: watchdog::Watchdog::start(exe).await?,
        records,
        leftovers,
    };
    session::run(config, start, shutdown)
        .await
        .map_err(Error::Refused)
}
