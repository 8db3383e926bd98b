//! The harness the tests and the example programs (`bench`, `chaos`) share: a real master (HTTP + gRPC on
//! 127.0.0.1:0, embedded store in a temp dir, or MongoDB when `ARACHNE_TEST_MONGODB_URI` is set) with an
//! optional in-process worker, master processes that can be killed and restarted, workers, and helpers to make
//! spiders and wait on tasks with timeouts.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arachne_api_types::{CreateSpider, Task, TaskQuery};
use arachne_client::Client;
use arachne_master::{Config, Listeners, LocalWorker};
use arachne_shared::TaskId;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The API token every test master accepts and every test client sends.
pub const API_TOKEN: &str = "arachne_api_test-token-000000000000000";
/// The worker token every test master accepts and every test worker presents.
pub const WORKER_TOKEN: &str = "arachne_worker_test-token-000000000000";

/// Generous bound for anything a test waits on; a healthy run takes a fraction of it.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestMaster {
    pub client: Client,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// Where it serves Scrapyd's JSON API (not without tokens).
    pub scrapyd: Option<SocketAddr>,
    /// Where its records are, when on MongoDB.
    pub mongodb: Option<arachne_master::MongoConfig>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), arachne_master::Error>>>,
}

/// Runner timings short enough for tests; the escalation they drive is the production one.
pub fn quick_runner() -> arachne_worker::RunnerOptions {
    arachne_worker::RunnerOptions {
        cancel_grace: Duration::from_secs(1),
        term_grace: Duration::from_secs(1),
        writable: vec![shared_root().to_owned()],
        ..Default::default()
    }
}

/// The folder of this test process that test spiders may read and write besides their own (spiders run as
/// another user, confined to their own folders): gates a test opens and ledgers spiders append to.
pub fn shared_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        // A static is never dropped, so each test process clears what earlier, finished ones left.
        let prefix = "arachne-test-shared-";
        for entry in std::fs::read_dir(outside_tmp())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(prefix));
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let root = outside_tmp().join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        open_to_spiders(&root);
        root
    })
}

/// A folder every user can reach that is not under /tmp: a run whose folders are all outside /tmp gets a
/// private /tmp (the containment test checks that), and the checkout's own folders may not be reachable by
/// the spider user (a checkout under /root).
pub fn outside_tmp() -> &'static Path {
    Path::new("/var/tmp")
}

/// The python of a venv holding `packages` (installed from PyPI), made on first use and kept between test
/// runs outside the checkout, where the spider user (spiders run as their own user) can reach it; not in the
/// checkout, which may be under a home folder closed to other users. Built in a temporary folder and renamed
/// into place, so an interrupted install is never mistaken for a finished one.
pub fn venv_python(packages: &[&str]) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let venv = outside_tmp()
        .join("arachne-test-venvs")
        .join(packages.join("+"));
    let python = venv.join("bin").join("python");
    // One install at a time in this process; another process racing is handled by the rename.
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if python.exists() {
        return python;
    }
    std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
    let staging = venv.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("python3 runs");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The system's interpreter where there is one: spiders run as the spider user, who cannot reach an
    // interpreter installed in root's home (pyenv).
    let system = Path::new("/usr/bin/python3");
    let python3 = if system.exists() {
        system
    } else {
        Path::new("python3")
    };
    run(std::process::Command::new(python3)
        .args(["-m", "venv"])
        .arg(&staging));
    run(std::process::Command::new(staging.join("bin/python"))
        .args(["-m", "pip", "install", "-q"])
        .args(packages));
    if std::fs::rename(&staging, &venv).is_err() {
        // Another test process finished first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    python
}

/// A fresh folder in [`shared_root`], which spiders may read and write.
pub fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(shared_root()).unwrap();
    open_to_spiders(dir.path());
    dir
}

fn open_to_spiders(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// With a test server named in `ARACHNE_TEST_MONGODB_URI`, every master keeps its records there: a database
/// per data folder, so a restarted master finds its predecessor's (and a test that fills the store before the
/// master starts fills the one the master will use).
pub fn use_test_store(config: &mut Config) {
    if let Some(uri) = std::env::var("ARACHNE_TEST_MONGODB_URI")
        .ok()
        .filter(|u| !u.is_empty())
    {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        config.data_dir.hash(&mut hasher);
        config.mongodb.get_or_insert(arachne_master::MongoConfig {
            uri,
            database: Some(format!("arachne_test_{:016x}", hasher.finish())),
        });
    }
}

impl TestMaster {
    pub async fn start(data_dir: &Path, local_worker: bool) -> Self {
        let mut config = Config::new(data_dir.to_owned());
        config.local_worker = local_worker.then(|| LocalWorker {
            runner: quick_runner(),
            max_runners: 4,
            ..LocalWorker::default()
        });
        Self::start_with(config).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::start_on(config, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a master whose gRPC listener is `grpc`: a restarted master takes its predecessor's address, so
    /// the workers find it again.
    pub async fn start_on(mut config: Config, grpc: SocketAddr) -> Self {
        if config.auth.required {
            config
                .auth
                .api_token
                .get_or_insert_with(|| API_TOKEN.into());
            config
                .auth
                .worker_token
                .get_or_insert_with(|| WORKER_TOKEN.into());
        }
        Self::launch(config, grpc).await
    }

    /// Starts a master without adding the test tokens (the client sends the configured API token, if any).
    pub async fn launch(mut config: Config, grpc: SocketAddr) -> Self {
        use_test_store(&mut config);
        if let Some(local) = &mut config.local_worker {
            local.helper_exe.get_or_insert_with(helper_exe);
        }
        let token = config.auth.api_token.clone();
        let mongodb = config.mongodb.clone();
        let tls = config.listen.tls.clone();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind(grpc).await.unwrap();
        // Scrapyd's API is served only with tokens.
        let scrapyd = match config.auth.required {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let scrapyd_addr = scrapyd.as_ref().map(|l| l.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(arachne_master::run(
            config,
            Listeners {
                http,
                grpc,
                scrapyd,
            },
            shutdown.clone(),
        ));
        // With TLS, the test's own certificate is the authority the client trusts.
        let ca = tls.map(|files| std::fs::read(files.cert).unwrap());
        let scheme = if ca.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{http_addr}");
        let client = Client::with_tls(&base, token.as_deref(), ca.as_deref()).unwrap();
        eventually("the API answers", || async {
            client.health().await.is_ok()
        })
        .await;
        Self {
            client,
            http: http_addr,
            grpc: grpc_addr,
            scrapyd: scrapyd_addr,
            mongodb,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Shuts the master down gracefully and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(TIMEOUT, handle)
            .await
            .expect("master stops in time")
            .unwrap()
            .unwrap();
    }

    /// Waits until `count` nodes are online.
    pub async fn wait_nodes_online(&self, count: usize) {
        eventually("nodes online", || async {
            let nodes = self.client.list_nodes().await.unwrap();
            nodes
                .iter()
                .filter(|n| n.status == arachne_shared::NodeStatus::Online)
                .count()
                == count
        })
        .await;
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `condition` every 20 ms until it holds; an error naming `what` after `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Polls `condition` until it holds, failing the test after [`TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if let Err(err) = until(what, TIMEOUT, condition).await {
        panic!("{err}");
    }
}

/// Polls `look` until it finds something, failing the test after [`TIMEOUT`].
pub async fn found<T, F, Fut>(what: &str, mut look: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(found) = look().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a spider folder with the given files.
pub fn spider_dir(files: &[(&str, impl AsRef<[u8]>)]) -> tempfile::TempDir {
    match folder_of(files) {
        Ok(dir) => dir,
        Err(err) => panic!("writing a spider folder: {err:#}"),
    }
}

/// A fresh folder holding `files` (path, content), parent folders made as needed.
fn folder_of(files: &[(&str, impl AsRef<[u8]>)]) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context;
    let dir = tempfile::tempdir()?;
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().context("a file has a folder")?)?;
        std::fs::write(path, content)?;
    }
    Ok(dir)
}

/// Creates a spider through the API from files, as `arachne spider create --dir` does; see [`spider`].
pub async fn create_spider(client: &Client, name: &str, cmd: &str, files: &[(&str, &str)]) {
    if let Err(err) = spider(client, name, cmd, files).await {
        panic!("creating spider {name}: {err:#}");
    }
}

/// Waits for a task (this attempt, not a retry of it) to end, through the API's long-poll.
pub async fn wait_done(client: &Client, id: TaskId) -> Task {
    let ended = tokio::time::timeout(TIMEOUT, async {
        loop {
            let task = client.wait_task(id, 5).await.unwrap();
            // The long-poll follows a failed attempt to its retry: this attempt has ended then.
            if task.id != id {
                return client.get_task(id).await.unwrap();
            }
            if task.status.is_terminal() {
                return task;
            }
        }
    })
    .await;
    match ended {
        Ok(task) => task,
        Err(_) => {
            // Say where it stuck, so a failure on a CI machine can be told apart from a slow one.
            let now = client.get_task(id).await;
            let nodes = client.list_nodes().await;
            panic!("task {id} did not end in time; now {now:#?}; nodes {nodes:#?}")
        }
    }
}

/// Creates a spider (or sets the command of one), with no files yet.
pub async fn put_spider(client: &Client, name: &str, cmd: &str) -> arachne_client::Result<()> {
    let spider = CreateSpider {
        name: name.into(),
        cmd: cmd.into(),
        ..Default::default()
    };
    client.put_spider(&spider).await.map(drop)
}

/// Runs `run` until its task ends: the task and its log.
pub async fn run_to_end(
    client: &Client,
    run: &arachne_api_types::RunTask,
) -> (Task, Vec<arachne_shared::LogLine>) {
    let task = wait_done(client, client.run_task(run).await.unwrap().id).await;
    let logs = all_logs(client, task.id).await;
    (task, logs)
}

/// Checks that a task finished, showing its error and its log when it did not.
pub fn assert_finished(task: &Task, logs: &impl std::fmt::Debug) {
    assert_eq!(
        task.status,
        arachne_shared::TaskStatus::Finished,
        "{:?}\n{logs:#?}",
        task.error
    );
}

/// Waits until the master acknowledges message `seq` of a session a test drives by hand.
pub async fn acknowledged(session: &mut arachne_proto::client::Session, seq: u64) {
    use arachne_shared::cluster::MasterToWorker;
    let acked = tokio::time::timeout(TIMEOUT, async {
        while let Some(message) = session.next().await {
            if let MasterToWorker::Ack { seq: acked } = message.unwrap()
                && acked >= seq
            {
                return;
            }
        }
        panic!("the session ended before message {seq} was acknowledged");
    })
    .await;
    assert!(acked.is_ok(), "message {seq} was not acknowledged in time");
}

/// Every log line of a task, paging through the API.
pub async fn all_logs(client: &Client, id: TaskId) -> Vec<arachne_shared::LogLine> {
    let mut logs: Vec<arachne_shared::LogLine> = Vec::new();
    loop {
        let after = logs.last().map(|l| l.seq);
        let query = arachne_api_types::LogQuery::page(after, Some(10_000));
        let page = client.logs(id, &query).await.unwrap();
        if page.is_empty() {
            return logs;
        }
        logs.extend(page);
    }
}

/// The master binary on `data_dir`, on ports the system picks, with no local worker and the test tokens.
pub fn master_command(data_dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(workspace_bin("arachne-master"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .arg("--no-local-worker")
        .env("ARACHNE_API_TOKEN", API_TOKEN)
        .env("ARACHNE_WORKER_TOKEN", WORKER_TOKEN);
    command
}

/// A binary of this workspace, built by `cargo test --workspace` next to the test executables.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// The process watchdog of workers running in a test process (whose own executable is the test harness).
pub fn helper_exe() -> PathBuf {
    workspace_bin("arachne-worker")
}

/// A worker running in the test process (the same library `arachne-worker` runs).
pub struct TestWorker {
    pub name: String,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), arachne_worker::Error>>>,
    dir: tempfile::TempDir,
}

impl TestWorker {
    pub fn start(master: &str, name: &str, max_runners: u32) -> Self {
        Self::start_labelled(master, name, max_runners, &[])
    }

    /// A worker that registers with these labels.
    pub fn start_labelled(
        master: &str,
        name: &str,
        max_runners: u32,
        labels: &[(&str, &str)],
    ) -> Self {
        Self::start_in(
            master,
            name,
            max_runners,
            labels,
            tempfile::tempdir().unwrap(),
        )
    }

    /// A worker on `dir` (a stopped worker's, from [`TestWorker::stop_keeping_dir`]: a restart).
    pub fn start_in(
        master: &str,
        name: &str,
        max_runners: u32,
        labels: &[(&str, &str)],
        dir: tempfile::TempDir,
    ) -> Self {
        let mut config = arachne_worker::Config::new(master, name, dir.path().to_owned());
        config.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config.max_runners = max_runners;
        config.runner = quick_runner();
        config.heartbeat = Duration::from_millis(200);
        config.token = Some(WORKER_TOKEN.into());
        config.helper_exe = Some(helper_exe());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(arachne_worker::run(config, shutdown.clone()));
        Self {
            name: name.into(),
            shutdown,
            handle: Some(handle),
            dir,
        }
    }

    /// The worker's work directory (its file cache and the runs' working directories).
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shuts the worker down gracefully and waits until it has stopped.
    pub async fn stop(self) {
        self.stop_keeping_dir().await;
    }

    /// [`TestWorker::stop`], handing back its work directory for a restart.
    pub async fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(TIMEOUT, handle)
            .await
            .expect("worker stops in time")
            .unwrap()
            .unwrap();
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `arachne-master` binary on a data folder, killed with SIGKILL and started again on the same ports.
/// Its standard error goes to the test's captured output, so a failing test shows what the master said.
pub struct MasterProcess {
    pub child: std::process::Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    local_worker: bool,
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A master that exited before it listened, with what it wrote to standard error.
struct Exited(String);

impl MasterProcess {
    pub fn spawn(data_dir: &Path, http: SocketAddr, grpc: SocketAddr) -> Self {
        Self::spawn_with(data_dir, http, grpc, false)
    }

    /// With or without its local worker.
    pub fn spawn_with(
        data_dir: &Path,
        http: SocketAddr,
        grpc: SocketAddr,
        local_worker: bool,
    ) -> Self {
        Self::spawn_env(data_dir, (http, grpc), local_worker, &[])
    }

    /// With these variables in its environment too; an empty value removes the variable (the test
    /// tokens among them). Returns once the master listens. Ports from [`free_port`] may be taken by
    /// another socket before the master binds them: then it starts again on two fresh ones.
    pub fn spawn_env(
        data_dir: &Path,
        (http, grpc): (SocketAddr, SocketAddr),
        local_worker: bool,
        env: &[(&str, &str)],
    ) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (mut http, mut grpc) = (http, grpc);
        let mut attempts = 0;
        loop {
            match Self::start(data_dir, (http, grpc), local_worker, &env) {
                Ok(child) => {
                    return Self {
                        child,
                        http,
                        grpc,
                        data_dir: data_dir.to_owned(),
                        env,
                        local_worker,
                    };
                }
                Err(Exited(stderr)) => {
                    attempts += 1;
                    assert!(
                        attempts < 5 && stderr.contains("binding the"),
                        "the master exited on start:\n{stderr}"
                    );
                    (http, grpc) = (free_port(), free_port());
                }
            }
        }
    }

    /// Starts the binary and waits until its HTTP port accepts connections or it exits.
    fn start(
        data_dir: &Path,
        (http, grpc): (SocketAddr, SocketAddr),
        local_worker: bool,
        env: &[(String, String)],
    ) -> Result<std::process::Child, Exited> {
        let mut command = std::process::Command::new(workspace_bin("arachne-master"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http", &http.to_string(), "--grpc", &grpc.to_string()])
            .args(["--examples-dir", "/nonexistent"])
            .arg("--spider-writable")
            .arg(shared_root())
            .env("ARACHNE_API_TOKEN", API_TOKEN)
            .env("ARACHNE_WORKER_TOKEN", WORKER_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            match value.as_str() {
                "" => command.env_remove(key),
                value => command.env(key, value),
            };
        }
        if !local_worker {
            command.arg("--no-local-worker");
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (said, exited) = std::sync::mpsc::channel();
        // A thread inherits the test's output capture: what the master says shows with a failure.
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[master] {line}");
                all.push_str(&line);
                all.push('\n');
            }
            let _ = said.send(all);
        });
        let deadline = std::time::Instant::now() + TIMEOUT;
        let exit = loop {
            if std::net::TcpStream::connect(http).is_ok() {
                // Listening; unless the port was another socket's and the master is exiting over it.
                match exited.recv_timeout(Duration::from_millis(50)) {
                    Ok(stderr) => break Exited(stderr),
                    Err(_) => return Ok(child),
                }
            }
            if let Ok(stderr) = exited.recv_timeout(Duration::from_millis(20)) {
                break Exited(stderr);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                break Exited(format!(
                    "(killed: it did not listen on {http} within {TIMEOUT:?})"
                ));
            }
        };
        let _ = child.wait();
        Err(exit)
    }

    pub async fn client(&self) -> Client {
        let client = Client::with_token(&format!("http://{}", self.http), API_TOKEN).unwrap();
        eventually("the master answers", || async {
            client.health().await.is_ok()
        })
        .await;
        client
    }

    /// Kills the master and starts it again on the same ports and data folder.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.restart();
    }

    /// Starts the master again, on the same ports and data folder, after it was killed.
    pub fn restart(&mut self) {
        let _ = self.child.wait();
        match Self::start(
            &self.data_dir,
            (self.http, self.grpc),
            self.local_worker,
            &self.env,
        ) {
            Ok(child) => self.child = child,
            Err(Exited(stderr)) => panic!("the restarted master exited:\n{stderr}"),
        }
    }
}

/// Waits until a worker of the master `client` talks to is online.
pub async fn wait_online(client: &Client) {
    eventually("the worker is online", || async {
        client
            .list_nodes()
            .await
            .unwrap()
            .iter()
            .any(|n| n.status == arachne_shared::NodeStatus::Online)
    })
    .await;
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client for requests the API client does not make (raw bodies, bad headers). TLS goes through
/// the ring provider, as everywhere in the project; reqwest is built without one of its own.
/// A Python web service a test or the benchmark starts (Scrapyd, ScrapydWeb): `python -m module` in `home`,
/// on a free port, after `config(port)` is written to `home/config_file`. Waits until `probe` (a path) answers;
/// starts it again on another port if it exited first (another socket took the port meanwhile), three times
/// at most, then panics with what it wrote to standard error. Returns the process (killed when dropped) and
/// its URL.
pub async fn start_python_service(
    python: &Path,
    module: &str,
    home: &Path,
    config_file: &str,
    config: impl Fn(u16) -> String,
    probe: &str,
) -> (tokio::process::Child, String) {
    let said = home.join(format!("{module}.log"));
    for _attempt in 0..3 {
        let port = free_port().port();
        std::fs::write(home.join(config_file), config(port)).unwrap();
        let mut child = tokio::process::Command::new(python)
            .args(["-m", module])
            .current_dir(home)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&said).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if http().get(format!("{url}{probe}")).send().await.is_ok() {
                return (child, url);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{module} never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let output = std::fs::read_to_string(&said).unwrap_or_default();
    panic!("{module} exited three times before answering; it said:\n{output}");
}

/// The HTTP status and message of an API refusal; panics on anything else.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, arachne_client::Error>) -> (u16, String) {
    match result {
        Err(arachne_client::Error::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Expects `result` to be a 409 refusal whose message holds `text`.
pub fn assert_conflict<T: std::fmt::Debug>(result: Result<T, arachne_client::Error>, text: &str) {
    let (status, message) = refusal(result);
    assert_eq!(status, 409, "{message}");
    assert!(message.contains(text), "{text:?} is not in {message:?}");
}

/// The master's OpenAPI document, read with the admin token.
pub async fn openapi_document(master: &TestMaster) -> serde_json::Value {
    http()
        .get(format!("http://{}/api/v1/openapi.json", master.http))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub fn http() -> reqwest::Client {
    http_builder().build().unwrap()
}

/// The builder of [`http`], for a client with settings of its own.
pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Creates (or updates) the spider `name` running `cmd`, with `files` (path, content) as its folder.
pub async fn spider(
    client: &Client,
    name: &str,
    cmd: &str,
    files: &[(&str, impl AsRef<[u8]>)],
) -> anyhow::Result<()> {
    let dir = folder_of(files)?;
    put_spider(client, name, cmd).await?;
    client
        .upload_files(name, arachne_shared::archive::pack_dir(dir.path())?)
        .await?;
    Ok(())
}

/// Peak and current resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Every task the master lists, page by page.
pub async fn all_tasks(client: &Client) -> arachne_client::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    loop {
        let query = TaskQuery {
            limit: Some(1000),
            offset: Some(tasks.len() as u32),
            ..Default::default()
        };
        let page = client.list_tasks(&query).await?.items;
        if page.is_empty() {
            return Ok(tasks);
        }
        tasks.extend(page);
    }
}
