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
mod outbox;
mod output;
pub mod process;
mod runner;
mod runners;
pub mod sandbox;
mod scrapy_feed;
mod scrapy_log;
mod session;
pub mod signals;
mod sync;
pub mod watchdog;

use std::collections::BTreeMap;
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
    /// Shown with the node (`region=eu`, …).
    pub labels: BTreeMap<String, String>,
    /// A certificate (PEM) trusted besides the public authorities when the master is `https://`: the
    /// master's own, or the authority that signed it.
    pub ca_pem: Option<Vec<u8>>,
    /// The worker token presented to the master (`arachne-master token create NAME --kind worker`).
    pub token: Option<String>,
    /// The executable started as the process watchdog (see [`watchdog`]): an Arachne binary whose `main` is
    /// [`process::main`]. This process's own executable by default. Spiders start through `arachne-sandbox` beside
    /// it (see [`sandbox`]), or through it when there is none.
    pub helper_exe: Option<PathBuf>,
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
            labels: BTreeMap::new(),
            ca_pem: None,
            token: None,
            helper_exe: None,
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
    #[error(
        "the master at {master} refused this worker's token ({reason}); give the worker a valid one in $ARACHNE_WORKER_TOKEN or --token-file"
    )]
    Refused { master: String, reason: String },
    #[error(transparent)]
    Watchdog(#[from] watchdog::Error),
    #[error("cannot find this program's own executable to start the process watchdog: {0}")]
    OwnExecutable(#[source] std::io::Error),
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
}

/// Runs the worker until `shutdown` is cancelled. Running spiders are stopped and their outcomes reported
/// before it returns.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if config.max_runners == 0 {
        return Err(Error::Config("max runners must be at least 1".into()));
    }
    // Absolute, as the sandbox names the runs' folders to a process started elsewhere.
    let work_dir = config.work_dir.clone();
    config.work_dir = tokio::fs::create_dir_all(&work_dir)
        .await
        .and(tokio::fs::canonicalize(&work_dir).await)
        .map_err(|source| Error::WorkDir {
            path: work_dir,
            source,
        })?;
    arachne_shared::spider::validate_name("node", &config.name).map_err(|e| Error::Config(e.0))?;
    let records = watchdog::Records::new(config.work_dir.join("runs"));
    // Processes an earlier life of this worker left running (its watchdog was killed with it) are killed
    // before anything else, and named to the master.
    let leftovers = {
        let records = records.clone();
        tokio::task::spawn_blocking(move || records.kill_leftovers())
            .await
            .unwrap_or_default()
    };
    let exe = match &config.helper_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().map_err(Error::OwnExecutable)?,
    };
    let sandbox = sandbox::Sandbox::start(
        sandbox::helper_beside(&exe),
        &config.runner.spider_user,
        config.runner.writable.clone(),
    )?;
    // Runs and environments live in the work folder, unless the spider user cannot reach it (a folder under
    // /root, say): then in a folder of their own under /var/lib/arachne.
    let parent = config
        .work_dir
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    let runs_root = match sandbox.check_reachable(parent) {
        Ok(()) => config.work_dir.clone(),
        Err(err) => {
            let fallback = sandbox::runs_root_for(&config.work_dir);
            tracing::info!(reason = %err, runs = %fallback.display(), "runs live outside the work folder");
            fallback
        }
    };
    // Leftovers of runs cut short by a crash would otherwise pile up.
    let _ = tokio::fs::remove_dir_all(runs_root.join("tasks")).await;
    sync::FileCache::new(config.work_dir.join("cache"), None)
        .sweep()
        .await;
    // The cache (which every run is copied from) and the run records are closed to spiders. The folders on
    // the way to the runs and the environments let a spider user through (search, no listing) to its own run
    // and its version's environment, which the runner hands it by name.
    let through = if sandbox.owner().is_some() {
        0o711
    } else {
        0o700
    };
    for (dir, mode) in [
        (config.work_dir.clone(), through),
        (config.work_dir.join("cache"), 0o700),
        (config.work_dir.join("runs"), 0o700),
        (runs_root.clone(), through),
        (runs_root.join("tasks"), through),
        (runs_root.join("envs"), through),
    ] {
        create_private_dir(&dir, mode)
            .await
            .map_err(|source| Error::WorkDir { path: dir, source })?;
    }
    sandbox.check_reachable(&runs_root.join("tasks"))?;
    let start = session::Start {
        watchdog: watchdog::Watchdog::start(exe).await?,
        sandbox,
        runs_root,
        records,
        leftovers,
    };
    session::run(config, start, shutdown).await
}

/// Creates `dir` if missing and sets its mode, whatever it was.
async fn create_private_dir(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).await
}
