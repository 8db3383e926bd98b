//! The Arachne master: stores spiders and tasks, dispatches tasks to workers over gRPC, and serves the HTTP
//! API. `arachne-master` is a thin binary over [`run`], so tests start exactly what users run.

pub mod access;
pub mod auth;
mod changes;
mod cron;
pub mod files;
mod folders;
mod http;
mod listen;
mod mongo_docs;
pub mod nodes;
pub mod notify;
pub mod removal;
pub mod results;
pub mod runs;
mod scheduler;
pub mod schedules;
pub mod scrapy;
mod sessions;
pub mod spiders;
pub mod stats;
pub mod store;
mod store_health;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arachne_web_api::{Backend, RouterOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Auth;
pub use crate::auth::AuthConfig;
use crate::files::{SpiderFiles, UploadLimits};
use crate::http::MasterApi;
pub use crate::listen::{ListenConfig, TlsFiles};
use crate::scheduler::Scheduler;
pub use crate::scheduler::SchedulerOptions;
use crate::sessions::Sessions;
use crate::store::{Store, embedded::EmbeddedStore};

/// Locks a mutex, through poisoning: what the master's mutexes guard stays usable after a panic in another
/// holder (maps and counters changed in single steps, a SQLite connection that rolls back unfinished work), so
/// one panic must not make it unreachable for the rest of the process.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The master's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded store and spider files live.
    pub data_dir: PathBuf,
    /// Keeps tasks, logs, items, spiders, schedules and nodes in MongoDB instead of the embedded store.
    pub mongodb: Option<MongoConfig>,
    /// How long ended tasks and their logs are kept (items stay); `None` keeps them forever.
    pub retention: Option<std::time::Duration>,
    /// Spider folders (each with an `arachne.toml`) registered on start if no spider of that name exists.
    pub examples_dir: Option<PathBuf>,
    /// A folder of spider folders (each with an `arachne.toml`) kept in sync: edits become new versions.
    pub spiders_dir: Option<PathBuf>,
    /// Runs a worker inside the master process; `None` turns it off.
    pub local_worker: Option<LocalWorker>,
    pub upload: UploadLimits,
    /// Tokens for the API and for workers. `http.require_token` follows `auth.required`.
    pub auth: AuthConfig,
    pub http: RouterOptions,
    /// Connection limits and TLS of both listeners.
    pub listen: ListenConfig,
    pub scheduler: SchedulerOptions,
    /// The pip requirement for Scrapy that a deployed egg's venv gets besides the egg's own requirements; ""
    /// for none (Scrapy is then expected on the workers' PATH).
    pub scrapy_requirement: String,
    pub notify: notify::NotifyConfig,
}

/// Where the MongoDB store is.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// A `mongodb://` or `mongodb+srv://` connection string.
    pub uri: String,
    /// The database; when `None`, the one the URI names, else `arachne`.
    pub database: Option<String>,
}

/// The worker the master runs in its own process.
#[derive(Debug, Clone)]
pub struct LocalWorker {
    pub name: String,
    pub max_runners: u32,
    pub runner: arachne_worker::RunnerOptions,
    /// How often it tells the master it is alive; must be well under the master's heartbeat timeout.
    pub heartbeat: std::time::Duration,
    /// The process watchdog's executable (see `arachne_worker::watchdog`); this process's own by default.
    pub helper_exe: Option<PathBuf>,
}

impl Default for LocalWorker {
    fn default() -> Self {
        Self {
            name: "local".into(),
            max_runners: 4,
            runner: Default::default(),
            heartbeat: std::time::Duration::from_secs(5),
            helper_exe: None,
        }
    }
}

impl Config {
    /// Defaults: a local worker, no example spiders.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            mongodb: None,
            retention: Some(DEFAULT_RETENTION),
            examples_dir: None,
            spiders_dir: None,
            local_worker: Some(LocalWorker::default()),
            upload: UploadLimits::default(),
            auth: AuthConfig::default(),
            http: RouterOptions::default(),
            listen: ListenConfig::default(),
            scheduler: SchedulerOptions::default(),
            scrapy_requirement: DEFAULT_SCRAPY_REQUIREMENT.into(),
            notify: notify::NotifyConfig::default(),
        }
    }
}

/// The sockets the master serves on, bound by the caller so tests can use port 0.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    /// Scrapyd's JSON API (`--scrapyd`), when it is served.
    pub scrapyd: Option<TcpListener>,
}

/// Errors that stop the master.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no space left on device for the store in {path} ({free} bytes free): free some space and start again"
    )]
    NoSpace {
        path: PathBuf,
        free: u64,
        #[source]
        source: store::Error,
    },
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] store::Error),
    #[error("spider files: {0}")]
    Files(#[from] files::Error),
    #[error("tokens: {0}")]
    Auth(#[from] auth::Error),
    #[error(
        "authentication can be turned off only while every listener is on loopback, but {0} is not"
    )]
    Insecure(SocketAddr),
    #[error(
        "Scrapyd's API (--scrapyd) cannot be served without tokens: its clients post plain forms, which any web page can send to a loopback port, and an egg it takes is code"
    )]
    ScrapydWithoutTokens,
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] arachne_proto::listen::TlsError),
    #[error("grpc server: {0}")]
    Grpc(#[from] arachne_proto::Error),
    #[error("local worker: {0}")]
    Worker(#[from] arachne_worker::Error),
    #[error("notifications: {0}")]
    Notify(#[from] notify::Error),
}

/// How long ended tasks and their logs are kept by default.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// How often ended tasks past their retention are removed. MongoDB also expires them on its own (TTL index).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes ended tasks past `retention`, at start and then every [`SWEEP_EVERY`]. Only the clock decides:
/// reading a task never removes it.
async fn sweep_ended(
    store: Arc<dyn Store>,
    retention: std::time::Duration,
    stop: CancellationToken,
) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    loop {
        let cutoff = chrono::Utc::now().checked_sub_signed(retention);
        if let Some(cutoff) = cutoff {
            match store.delete_ended_before(cutoff).await {
                Ok(0) => {}
                Ok(removed) => {
                    info!(tasks = removed, %cutoff, "removed ended tasks past their retention")
                }
                Err(err) => warn!(error = %err, "sweeping ended tasks failed; trying again later"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The store `config` names, and where spider files live with it: MongoDB with GridFS beside it, or the
/// embedded store with the files in the data folder. The one place the backend is chosen.
async fn open_backends(config: &Config) -> Result<(Arc<dyn Store>, SpiderFiles), Error> {
    prepare_data_dir(config)?;
    let spiders_dir = config.data_dir.join("spiders");
    Ok(match &config.mongodb {
        Some(mongo) => {
            let store = store::mongo::MongoStore::connect(
                &mongo.uri,
                mongo.database.as_deref(),
                config.retention,
            )
            .await?;
            let files =
                SpiderFiles::in_mongodb(store.database(), spiders_dir, config.upload.clone())
                    .await?;
            (Arc::new(store), files)
        }
        None => (
            Arc::new(open_embedded(config)?),
            SpiderFiles::new(spiders_dir, config.upload.clone()),
        ),
    })
}

/// The store `config` names, for commands that work on it without running the master (`token`).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, Error> {
    Ok(open_backends(config).await?.0)
}

/// Creates the data folder and closes it to other users: everything in it (the store, spider files, the first
/// API token) is the master's alone. A local worker's spiders, which may run as another user, are let through
/// (search, no listing) to their own runs in `local-worker/`.
fn prepare_data_dir(config: &Config) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if config.local_worker.is_some() {
        0o711
    } else {
        0o700
    };
    let spiders = config.data_dir.join("spiders");
    for (dir, mode) in [(&config.data_dir, mode), (&spiders, 0o700)] {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
            .map_err(|source| Error::DataDir {
                path: dir.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Opens the embedded store in the data folder, readable by the master's user only (SQLite gives its journal
/// files the database file's mode).
fn open_embedded(config: &Config) -> Result<EmbeddedStore, Error> {
    use std::os::unix::fs::PermissionsExt;
    let path = config.data_dir.join("arachne.db");
    let store = EmbeddedStore::open(&path).map_err(|source| {
        // SQLite says only that the disk is full or that I/O failed; the filesystem says whether it has room,
        // and where.
        match free_bytes(&config.data_dir) {
            Some(free) if free < LOW_SPACE => Error::NoSpace {
                path: config.data_dir.clone(),
                free,
                source,
            },
            _ => source.into(),
        }
    })?;
    for file in ["arachne.db", "arachne.db-wal", "arachne.db-shm"] {
        let file = config.data_dir.join(file);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::DataDir {
                    path: file,
                    source: err,
                });
            }
            _ => {}
        }
    }
    Ok(store)
}

/// Below this, a store that cannot open is taken to be out of space.
const LOW_SPACE: u64 = 1 << 20;

/// Bytes an unprivileged process may still write under `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() * stat.fragment_size())
}

/// Runs the master until `shutdown` is cancelled. The local worker stops first, so its running tasks are
/// settled and reported before the servers close.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let guards = config.listen.guards()?;
    let grpc_addr = listeners.grpc.local_addr().map_err(Error::Listener)?;
    let http_addr = listeners.http.local_addr().map_err(Error::Listener)?;
    let scrapyd_addr = match &listeners.scrapyd {
        Some(listener) => Some(listener.local_addr().map_err(Error::Listener)?),
        None => None,
    };
    if !config.auth.required
        && let Some(open) = [http_addr, grpc_addr]
            .into_iter()
            .chain(scrapyd_addr)
            .find(|a| !a.ip().is_loopback())
    {
        return Err(Error::Insecure(open));
    }
    if !config.auth.required && scrapyd_addr.is_some() {
        return Err(Error::ScrapydWithoutTokens);
    }
    let (store, files) = open_backends(&config).await?;
    // What uploads cut short by a crash left half checked; no upload is under way yet.
    files.sweep_staging().await;
    // Tokens are all authentication needs of the store: it holds that capability only.
    let tokens: Arc<dyn store::TokenStore> = Arc::clone(&store) as _;
    let auth = Arc::new(Auth::start(tokens, &config.auth, &config.data_dir).await?);
    let changes = Arc::new(changes::Changes::default());
    let telemetry = Arc::new(telemetry::Telemetry::default());
    let health = Arc::new(store_health::StoreHealth::default());
    let scheduler = Arc::new(Scheduler::new(
        Arc::clone(&store),
        config.scheduler.clone(),
        Arc::clone(&changes),
        Arc::clone(&telemetry),
    ));
    recover(store.as_ref(), &scheduler).await?;
    let notifications = Arc::new(
        notify::Notifications::new(Arc::clone(&store), config.notify.clone(), http_addr).await?,
    );
    let spiders = Arc::new(spiders::Spiders::new(
        Arc::clone(&store),
        files.clone(),
        Arc::clone(&scheduler),
    ));
    let runs = Arc::new(runs::Runs::new(
        Arc::clone(&store),
        Arc::clone(&scheduler),
        Arc::clone(&changes),
        Arc::clone(&spiders),
    ));
    let schedules = Arc::new(schedules::Schedules::new(
        Arc::clone(&store),
        Arc::clone(&runs),
    ));
    let removal = Arc::new(removal::Removal::new(
        Arc::clone(&spiders),
        Arc::clone(&schedules),
        Arc::clone(&runs),
    ));
    let scrapy = Arc::new(scrapy::Scrapy {
        spiders: Arc::clone(&spiders),
        runs: Arc::clone(&runs),
        removal: Arc::clone(&removal),
        store: Arc::clone(&store),
        changes: Arc::clone(&changes),
        requirement: config.scrapy_requirement.clone(),
        listed: Default::default(),
    });
    if let Some(dir) = &config.examples_dir {
        folders::register_examples(&spiders, dir).await;
    }

    // Not a child of `shutdown`: the servers must outlive the local worker so its last reports get stored.
    let servers = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(Arc::clone(&scheduler).run(servers.clone()));
    tracker.spawn(cron::run(
        Arc::clone(&schedules),
        Arc::clone(&store),
        servers.clone(),
    ));
    tracker.spawn(Arc::clone(&notifications).watch(Arc::clone(&changes), servers.clone()));
    tracker.spawn(Arc::clone(&notifications).send(servers.clone()));
    if let Some(retention) = config.retention {
        tracker.spawn(sweep_ended(Arc::clone(&store), retention, servers.clone()));
    }
    let folder_report = Arc::new(folders::FolderReport::default());
    if let Some(dir) = &config.spiders_dir {
        tracker.spawn(folders::watch(
            Arc::clone(&spiders),
            Arc::clone(&folder_report),
            dir.clone(),
            servers.clone(),
        ));
    }
    let nodes = Arc::new(nodes::Nodes::new(
        Arc::clone(&store),
        Arc::clone(&scheduler),
    ));
    let api = Arc::new(MasterApi {
        folders: http::WatchedFolders {
            dir: config.spiders_dir.clone(),
            report: folder_report,
        },
        results: Arc::new(results::Results::new(
            Arc::clone(&store),
            Arc::clone(&spiders),
        )),
        spiders: Arc::clone(&spiders),
        runs,
        schedules,
        scrapy,
        removal,
        overview: stats::Overview::new(Arc::clone(&store), Arc::clone(&nodes)),
        nodes,
        notifications: Arc::clone(&notifications),
        access: access::Access::new(Arc::clone(&store), Arc::clone(&auth)),
        store: Arc::clone(&store),
        scheduler: Arc::clone(&scheduler),
        changes: Arc::clone(&changes),
        telemetry: Arc::clone(&telemetry),
        health: Arc::clone(&health),
        auth: Arc::clone(&auth),
    });
    let sessions = Arc::new(Sessions {
        spiders: Arc::clone(&spiders),
        notifications,
        store,
        scheduler,
        changes,
        telemetry,
        health,
        files,
        auth: Arc::clone(&auth),
        shutdown: servers.clone(),
    });
    // The local worker talks to the cluster service in-process: no encoding, socket or HTTP/2 for its messages.
    let link = arachne_worker::LocalLink::new(Arc::clone(&sessions) as _);
    // A server that stops on its own takes the master down with it, through its drop guard.
    let (http_conns, grpc_conns, scrapyd_conns) = listen::accept(listeners, guards, &servers);
    let (grpc_guard, grpc_shutdown) = (servers.clone().drop_guard(), servers.clone());
    let grpc = tracker.spawn(async move {
        let _guard = grpc_guard;
        arachne_proto::server::serve(grpc_conns, sessions, grpc_shutdown).await
    });
    // Uploads are spooled beside the spider files (not in a /tmp that may be memory), in unnamed files.
    let upload_dir = config.data_dir.join("spiders").join(".uploads");
    std::fs::create_dir_all(&upload_dir).map_err(|source| Error::DataDir {
        path: upload_dir.clone(),
        source,
    })?;
    let http_options = RouterOptions {
        require_token: config.auth.required,
        upload_dir: Some(upload_dir),
        ..config.http.clone()
    };
    let header_timeout = config.listen.header_timeout;
    if let Some(conns) = scrapyd_conns {
        let options = arachne_web_api::scrapyd::ScrapydOptions {
            node_name: node_name(),
            max_egg_bytes: config.http.max_upload_bytes,
        };
        let router =
            arachne_web_api::scrapyd::router(Arc::clone(&api) as Arc<dyn Backend>, &options);
        let (guard, shutdown) = (servers.clone().drop_guard(), servers.clone());
        tracker.spawn(async move {
            let _guard = guard;
            listen::serve_http(conns, router, header_timeout, shutdown).await;
        });
        info!(scrapyd_addr = %scrapyd_addr.expect("a listener"), "serving Scrapyd's API");
    }
    let router = arachne_web_api::router(api as Arc<dyn Backend>, &http_options);
    let (http_guard, http_shutdown) = (servers.clone().drop_guard(), servers.clone());
    let http = tracker.spawn(async move {
        let _guard = http_guard;
        listen::serve_http(http_conns, router, header_timeout, http_shutdown).await;
    });
    info!(%http_addr, %grpc_addr, data_dir = %config.data_dir.display(), "master started");

    let worker_shutdown = CancellationToken::new();
    let worker = config.local_worker.clone().map(|local| {
        let mut worker_config = arachne_worker::Config::new(
            arachne_worker::Target::Local(link.clone()),
            local.name,
            config.data_dir.join("local-worker"),
        );
        worker_config.max_runners = local.max_runners;
        worker_config.runner = local.runner;
        worker_config.heartbeat = local.heartbeat;
        worker_config.helper_exe = local.helper_exe;
        tokio::spawn(arachne_worker::run(worker_config, worker_shutdown.clone()))
    });

    // Either a shutdown, or a server that died on its own, ends the master.
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = servers.cancelled() => {}
    }
    worker_shutdown.cancel();
    if let Some(worker) = worker {
        match worker.await {
            Ok(result) => result?,
            Err(err) => warn!(error = %err, "local worker task failed"),
        }
    }
    servers.cancel();
    tracker.close();
    let rest = async {
        tracker.wait().await;
        link.sessions_ended().await;
        match grpc.await {
            Ok(result) => result?,
            Err(err) => warn!(error = %err, "grpc server task failed"),
        }
        if let Err(err) = http.await {
            warn!(error = %err, "http server task failed");
        }
        Ok::<(), Error>(())
    };
    // A store that does not answer (a MongoDB gone away) must not hold the master: what could not be written
    // now is settled by the next start, as after a kill.
    match tokio::time::timeout(STOP_GRACE, rest).await {
        Ok(stopped) => stopped?,
        Err(_) => warn!(
            grace_secs = STOP_GRACE.as_secs(),
            "the master's tasks did not stop in time (is the store answering?); stopping without them"
        ),
    }
    info!("master stopped");
    Ok(())
}

/// What a deployed egg's venv installs for Scrapy by default.
pub const DEFAULT_SCRAPY_REQUIREMENT: &str = "scrapy";

/// What Scrapyd's API answers as `node_name`: this machine's host name, as Scrapyd's does.
fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "arachne".to_owned())
}

/// How long the master waits, once its local worker has stopped, for its servers and tasks to finish.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes over what a previous run of the master left. Pending tasks stay queued. Nodes that had tasks in
/// flight get the heartbeat timeout to reconnect and claim them (their spiders may well still be running);
/// what no node claims by then is settled.
async fn recover(store: &dyn Store, scheduler: &Scheduler) -> Result<(), store::Error> {
    let waiting = scheduler::recover(store).await?;
    for node in &waiting {
        scheduler.registry.mark_lost(node);
    }
    let mut nodes = store.list_nodes().await?;
    for node in &mut nodes {
        node.status = arachne_shared::NodeStatus::Offline;
        node.running = 0;
        store.put_node(node).await?;
    }
    if !waiting.is_empty() {
        info!(
            nodes = waiting.len(),
            "waiting for nodes with tasks in flight to reconnect"
        );
    }
    Ok(())
}
