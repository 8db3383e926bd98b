//! Faults never falsify a task: a task that ends while the master is away keeps its true outcome, a task
//! ever started is never started again, a queued task is never failed for a slot count the master got wrong.
//! Each test is the bounded form of a `scripts/chaos` scenario, against real masters, workers and spiders.

use arachne_test_support as common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arachne_api_types::{RunTask, Task};
use arachne_client::Client;
use arachne_master::Config;
use arachne_shared::{RunMode, TaskStatus};
use common::{
    MasterProcess, TestMaster, TestWorker, all_tasks, create_spider, eventually, found, free_port,
    wait_done, wait_online,
};

/// A master without a local worker, so the test decides which workers exist.
fn bare_config(dir: &Path) -> Config {
    let mut config = Config::new(dir.to_owned());
    config.local_worker = None;
    config
}

fn run_with_retries(spider: &str, retries: u32) -> RunTask {
    RunTask {
        spider: spider.into(),
        mode: Some(RunMode::Random),
        settings: Some(arachne_shared::spider::RunSettings {
            retries: Some(retries),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The texts of a task's log lines.
async fn log_texts(client: &Client, id: arachne_shared::TaskId) -> Vec<String> {
    common::all_logs(client, id)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect()
}

/// A spider that prints `start`, waits for the file `$GO`, then prints `item` and `end` and touches `$DONE`
/// as its last act.
const GATED: &str = "echo start\nwhile [ ! -e \"$GO\" ]; do sleep 0.02; done\necho item\necho end\ntouch \"$DONE\"\n";

/// Runs [`GATED`] with a retry left and waits until it runs and printed its first line.
async fn start_gated(client: &Client, go: &Path, done: &Path) -> Task {
    create_spider(client, "gated", "sh main.sh", &[("main.sh", GATED)]).await;
    let mut spec = run_with_retries("gated", 1);
    let settings = spec.settings.as_mut().unwrap();
    settings.env.insert("GO".into(), go.display().to_string());
    settings
        .env
        .insert("DONE".into(), done.display().to_string());
    let task = client.run_task(&spec).await.unwrap();
    eventually("the task runs and printed its first line", || async {
        let task = client.get_task(task.id).await.unwrap();
        task.status == TaskStatus::Running && task.log_lines >= 1
    })
    .await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_ends_while_the_master_is_away_keeps_its_true_end_and_is_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let gate = common::shared_dir();
    let (go, done) = (gate.path().join("go"), gate.path().join("done"));
    let master = TestMaster::start_with(bare_config(dir.path())).await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    let task = start_gated(&master.client, &go, &done).await;

    let grpc = master.grpc;
    master.stop().await;
    // The spider ends while no master is there, and the worker has finished with the run.
    std::fs::write(&go, "").unwrap();
    let run_dir = worker.work_dir().join("tasks").join(task.id.to_string());
    eventually("the run ended on the worker", || async {
        done.exists() && !run_dir.exists()
    })
    .await;

    let master = TestMaster::start_on(bare_config(dir.path()), grpc).await;
    let client = &master.client;
    let ended = wait_done(client, task.id).await;
    assert_eq!(ended.status, TaskStatus::Finished, "{ended:#?}");
    assert_eq!(ended.exit_code, Some(0), "{ended:#?}");
    assert_eq!(log_texts(client, task.id).await, ["start", "item", "end"]);
    let tasks = all_tasks(client).await.unwrap();
    assert_eq!(tasks.len(), 1, "no retry of a finished task: {tasks:#?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_while_a_queue_drains_runs_every_task_exactly_once() {
    const TASKS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let ledger = common::shared_dir();
    let ledger = ledger.path().join("runs");
    let mut master = MasterProcess::spawn(dir.path(), free_port(), free_port());
    let client = master.client().await;
    let worker = TestWorker::start(&format!("http://{}", master.grpc), "w1", 4);
    wait_online(&client).await;
    // Every run leaves its task id in the ledger; a run twice leaves it twice.
    let script = format!("echo \"$ARACHNE_TASK_ID\" >> {}\n", ledger.display());
    create_spider(&client, "noop", "sh main.sh", &[("main.sh", &script)]).await;
    let mut ids = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        ids.push(
            client
                .run_task(&run_with_retries("noop", 1))
                .await
                .unwrap()
                .id,
        );
    }
    eventually("the queue drains", || async {
        std::fs::read_to_string(&ledger).is_ok_and(|runs| runs.lines().count() >= TASKS / 10)
    })
    .await;
    master.kill_and_restart();
    let client = master.client().await;
    for id in &ids {
        let task = wait_done(&client, *id).await;
        assert_eq!(task.status, TaskStatus::Finished, "{task:#?}");
    }
    let tasks = all_tasks(&client).await.unwrap();
    assert_eq!(tasks.len(), TASKS, "no retries were needed");
    let mut runs: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&ledger).unwrap().lines() {
        *runs.entry(line.to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    assert_eq!(runs.len(), TASKS);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_ends_while_a_killed_master_is_down_is_finished_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gate = common::shared_dir();
    let (go, done) = (gate.path().join("go"), gate.path().join("done"));
    let mut master = MasterProcess::spawn(dir.path(), free_port(), free_port());
    let client = master.client().await;
    let worker = TestWorker::start(&format!("http://{}", master.grpc), "w1", 2);
    wait_online(&client).await;
    let task = start_gated(&client, &go, &done).await;
    master.child.kill().unwrap();
    master.child.wait().unwrap();
    std::fs::write(&go, "").unwrap();
    let run_dir = worker.work_dir().join("tasks").join(task.id.to_string());
    eventually("the run ended on the worker", || async {
        done.exists() && !run_dir.exists()
    })
    .await;
    master.restart();
    let client = master.client().await;
    let ended = wait_done(&client, task.id).await;
    assert_eq!(ended.status, TaskStatus::Finished, "{ended:#?}");
    assert_eq!(log_texts(&client, task.id).await, ["start", "item", "end"]);
    assert_eq!(all_tasks(&client).await.unwrap().len(), 1, "no retry");
    worker.stop().await;
}

/// The pids of the live processes in process group `pgid` (zombies, which are already dead, left out).
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str()) {
            members.push(pid);
        }
    }
    members
}

/// The watchdog process a worker (or a master's local worker) started.
fn watchdog_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: u32 = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let is_watchdog = cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == arachne_worker::watchdog::WATCHDOG_ARG.as_bytes());
            (ppid == parent && is_watchdog).then_some(pid)
        })
}

/// Waits at most `within` for `condition`, polling it; fails the test after that.
async fn within(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let waited = common::until(what, within, || std::future::ready(condition())).await;
    if let Err(err) = waited {
        panic!("not within {within:?}: {err}");
    }
}

fn worker_process(grpc: &str, name: &str, work_dir: &Path) -> std::process::Child {
    std::process::Command::new(common::workspace_bin("arachne-worker"))
        .args(["--master", grpc, "--name", name])
        .env("ARACHNE_WORKER_TOKEN", common::WORKER_TOKEN)
        .args([
            "--max-runners",
            "2",
            "--heartbeat-secs",
            "1",
            "--cancel-grace",
            "1",
        ])
        .arg("--work-dir")
        .arg(work_dir)
        .arg("--spider-writable")
        .arg(common::shared_root())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Ignores SIGTERM, keeps a grandchild that ignores it too, and writes nothing.
const STUBBORN: &str =
    "trap '' TERM\nsh -c 'trap \"\" TERM; exec sleep 313' &\nwhile true; do sleep 1; done\n";

fn with_heartbeat_timeout(dir: &Path, timeout: Duration) -> Config {
    let mut config = bare_config(dir);
    config.scheduler.heartbeat_timeout = timeout;
    config
}

/// Starts the stubborn spider and waits until its whole tree (the shell, its grandchild, a sleep) runs.
async fn stubborn_task(client: &Client) -> Task {
    create_spider(client, "stubborn", "sh main.sh", &[("main.sh", STUBBORN)]).await;
    let task = client
        .run_task(&run_with_retries("stubborn", 0))
        .await
        .unwrap();
    found("the stubborn tree runs", || async {
        let task = client.get_task(task.id).await.unwrap();
        let ready = task.status == TaskStatus::Running
            && task.pid.is_some_and(|pid| group_members(pid).len() >= 3);
        ready.then_some(task)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_process_of_a_run_outlives_its_killed_worker() {
    let dir = tempfile::tempdir().unwrap();
    let master =
        TestMaster::start_with(with_heartbeat_timeout(dir.path(), Duration::from_secs(3))).await;
    let work = tempfile::tempdir().unwrap();
    let mut worker = worker_process(&master.grpc_url(), "w1", work.path());
    master.wait_nodes_online(1).await;
    let task = stubborn_task(&master.client).await;
    let pgid = task.pid.unwrap();
    worker.kill().unwrap();
    worker.wait().unwrap();
    within(
        Duration::from_secs(2),
        "the run's processes are gone",
        || group_members(pgid).is_empty(),
    )
    .await;
    let ended = wait_done(&master.client, task.id).await;
    assert_eq!(ended.status, TaskStatus::Abnormal, "{ended:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_process_of_a_run_outlives_a_killed_master_with_its_local_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = MasterProcess::spawn_with(dir.path(), free_port(), free_port(), true);
    let client = master.client().await;
    let task = stubborn_task(&client).await;
    let pgid = task.pid.unwrap();
    master.child.kill().unwrap();
    master.child.wait().unwrap();
    within(
        Duration::from_secs(2),
        "the run's processes are gone",
        || group_members(pgid).is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_worker_kills_what_its_previous_life_left_running_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path())).await;
    let work = tempfile::tempdir().unwrap();
    let mut worker = worker_process(&master.grpc_url(), "w1", work.path());
    master.wait_nodes_online(1).await;
    let task = stubborn_task(&master.client).await;
    let pgid = task.pid.unwrap();
    let record = work.path().join("runs").join(task.id.to_string());
    eventually("the run's process group is recorded", || async {
        record.exists()
    })
    .await;
    // The worker dies with its watchdog: nothing kills the run.
    let watchdog = watchdog_of(worker.id()).expect("the worker has a watchdog");
    signal(watchdog, nix::sys::signal::Signal::SIGKILL);
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(
        !group_members(pgid).is_empty(),
        "the run outlived its worker"
    );

    let mut worker = worker_process(&master.grpc_url(), "w1", work.path());
    within(
        Duration::from_secs(10),
        "the restarted worker killed the leftovers",
        || group_members(pgid).is_empty(),
    )
    .await;
    let ended = wait_done(&master.client, task.id).await;
    assert_eq!(ended.status, TaskStatus::Abnormal, "{ended:#?}");
    let said = found("the task's log says what was killed", || async {
        log_texts(&master.client, task.id)
            .await
            .into_iter()
            .find(|line| line.contains("restarted and killed"))
    })
    .await;
    assert!(said.contains(&pgid.to_string()), "{said}");
    worker.kill().unwrap();
    worker.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_worker_s_run_ends_before_its_retry_starts_and_writes_nothing_after_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = common::shared_dir();
    let ledger = ledger_dir.path().join("ticks");
    let master =
        TestMaster::start_with(with_heartbeat_timeout(dir.path(), Duration::from_secs(3))).await;
    let client = &master.client;
    let work = tempfile::tempdir().unwrap();
    let mut frozen = worker_process(&master.grpc_url(), "frozen", work.path());
    master.wait_nodes_online(1).await;
    // Every tick goes to the ledger, a log line and an item: in the ledger, ticks of two attempts that overlap
    // would interleave.
    let script = format!(
        "while true; do echo \"$ARACHNE_TASK_ID\" >> {}; echo tick; echo '{{\"type\": \"INSERT_DATA\", \"payload\": {{\"t\": 1}}}}'; sleep 0.02; done\n",
        ledger.display()
    );
    create_spider(client, "ticker", "sh main.sh", &[("main.sh", &script)]).await;
    let first = client
        .run_task(&run_with_retries("ticker", 1))
        .await
        .unwrap();
    eventually("the first attempt ticks", || async {
        client.get_task(first.id).await.unwrap().items > 5
    })
    .await;

    signal(frozen.id(), nix::sys::signal::Signal::SIGSTOP);
    let spare = TestWorker::start(&master.grpc_url(), "spare", 2);
    let first = wait_done(client, first.id).await;
    assert_eq!(first.status, TaskStatus::Abnormal, "{first:#?}");
    let pgid = first.pid.unwrap();
    assert!(
        group_members(pgid).is_empty(),
        "the frozen worker's run still runs after the master wrote it off"
    );
    let retry = found("the retry runs on the spare worker", || async {
        all_tasks(client)
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.first_attempt == Some(first.id) && t.items > 5)
    })
    .await;
    assert_eq!(retry.node.as_deref(), Some("spare"));

    // The frozen worker wakes, reconnects, and sends what it buffered; then it stops, after the master has
    // taken (and acknowledged) its last message.
    signal(frozen.id(), nix::sys::signal::Signal::SIGCONT);
    eventually("the frozen worker is back", || async {
        client.list_nodes().await.unwrap().iter().any(|n| {
            n.name == "frozen"
                && n.status == arachne_shared::NodeStatus::Online
                && n.metrics.is_some()
        })
    })
    .await;
    signal(frozen.id(), nix::sys::signal::Signal::SIGTERM);
    let stopped = tokio::task::spawn_blocking(move || frozen.wait().unwrap())
        .await
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");

    let after = client.get_task(first.id).await.unwrap();
    assert_eq!(
        (after.status, after.log_lines, after.items),
        (first.status, first.log_lines, first.items),
        "nothing of the superseded attempt was stored after its end"
    );
    assert_eq!(
        common::all_logs(client, first.id).await.len() as u64,
        first.log_lines
    );
    let ticks = std::fs::read_to_string(&ledger).unwrap();
    let first_id = first.id.to_string();
    let ticks: Vec<&str> = ticks.lines().collect();
    let last_of_first = ticks.iter().rposition(|l| *l == first_id).unwrap();
    let first_of_retry = ticks
        .iter()
        .position(|l| *l == retry.id.to_string())
        .unwrap();
    assert!(
        last_of_first < first_of_retry,
        "the attempts overlapped: attempt 1 ticked at line {last_of_first}, after the retry's first tick at line {first_of_retry}"
    );
    client.cancel_task(retry.id).await.unwrap();
    wait_done(client, retry.id).await;
    spare.stop().await;
}

/// A session may write only to tasks its node holds, under the lease of their assignment: a rogue worker
/// with a valid token, writing into a task that runs on another node, has every message acknowledged (so it
/// would not resend them) and none stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_writes_nothing_into_a_task_its_node_does_not_hold() {
    use arachne_shared::cluster::{
        Registration, TaskEnd, TaskReport, WorkerEnvelope, WorkerToMaster,
    };
    use arachne_shared::{ItemRecord, LogLine, LogStream, TaskOutcome};

    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path())).await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    let client = &master.client;
    create_spider(
        client,
        "idle",
        "sh main.sh",
        &[("main.sh", "echo up\nsleep 60\n")],
    )
    .await;
    let task = client.run_task(&run_with_retries("idle", 0)).await.unwrap();
    let task = found("the task runs", || async {
        let task = client.get_task(task.id).await.unwrap();
        (task.status == TaskStatus::Running && task.log_lines == 1).then_some(task)
    })
    .await;

    let mut grpc =
        arachne_proto::client::Client::connect(&master.grpc_url(), Some(common::WORKER_TOKEN))
            .await
            .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut session = grpc.session(rx).await.unwrap();
    let register = WorkerToMaster::Register(Registration {
        name: "rogue".into(),
        max_runners: 1,
        version: "test".into(),
        labels: Default::default(),
        running: Vec::new(),
        leftovers: Vec::new(),
        cached_versions: Vec::new(),
    });
    let (task_id, lease) = (task.id, task.lease);
    let at = chrono::Utc::now();
    let item = serde_json::value::RawValue::from_string(r#"{"forged":1}"#.into()).unwrap();
    let messages = [
        WorkerToMaster::Logs {
            task_id,
            lease,
            lines: vec![LogLine {
                seq: 2,
                stream: LogStream::Stdout,
                text: "forged".into(),
                at,
            }],
        },
        WorkerToMaster::Items {
            task_id,
            lease,
            items: vec![ItemRecord::new(1, item).unwrap()],
        },
        WorkerToMaster::Report(TaskReport {
            task_id,
            lease,
            status: Some(arachne_shared::ipc::StatusPayload {
                progress: Some(0.9),
                message: Some("forged".into()),
                stats: None,
            }),
            errors: Vec::new(),
            errors_before: 0,
            at,
        }),
        WorkerToMaster::TaskEnded(TaskEnd {
            task_id,
            lease,
            outcome: TaskOutcome::Finished,
            at,
            peak_rss_bytes: None,
            started: None,
        }),
    ];
    tx.send(WorkerEnvelope {
        seq: 0,
        message: register,
    })
    .await
    .unwrap();
    for (seq, message) in (1..).zip(messages) {
        tx.send(WorkerEnvelope { seq, message }).await.unwrap();
    }
    common::acknowledged(&mut session, 4).await;
    let after = client.get_task(task.id).await.unwrap();
    assert_eq!(after.status, TaskStatus::Running, "{after:#?}");
    assert_eq!((after.log_lines, after.items), (1, 0), "{after:#?}");
    assert!(after.progress.is_none(), "{after:#?}");
    assert_eq!(log_texts(client, task.id).await, ["up"]);
    drop(tx);
    client.cancel_task(task.id).await.unwrap();
    assert_eq!(
        wait_done(client, task.id).await.status,
        TaskStatus::Cancelled
    );
    worker.stop().await;
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop; `None` where this machine does not allow
/// mounting (the test then says so and checks nothing).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn health(http: SocketAddr) -> (u16, serde_json::Value) {
    let response = common::http()
        .get(format!("http://{http}/health"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_delays_a_run_s_records_and_falsifies_nothing() {
    if std::env::var_os("ARACHNE_TEST_MONGODB_URI").is_some_and(|uri| !uri.is_empty()) {
        eprintln!("skipped: the store is MongoDB, not on the master's data disk");
        return;
    }
    let Some(disk) = SmallDisk::mount("48m") else {
        eprintln!("skipped: this machine does not allow mounting a small tmpfs");
        return;
    };
    let gate = common::shared_dir();
    let go = gate.path().join("go");
    let master = TestMaster::start_with(bare_config(&disk.path().join("data"))).await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    let client = &master.client;
    let script = "i=0; while [ $i -lt 2000 ]; do echo \"before $i\"; i=$((i+1)); done\n\
        while [ ! -e \"$GO\" ]; do sleep 0.02; done\n\
        i=0; while [ $i -lt 2000 ]; do echo \"after $i\"; i=$((i+1)); done\n";
    create_spider(client, "chatty", "sh main.sh", &[("main.sh", script)]).await;
    let mut spec = run_with_retries("chatty", 0);
    let settings = spec.settings.as_mut().unwrap();
    settings.env.insert("GO".into(), go.display().to_string());
    let task = client.run_task(&spec).await.unwrap();
    eventually("the first half is stored", || async {
        client.get_task(task.id).await.unwrap().log_lines == 2000
    })
    .await;

    let filler = disk.fill();
    std::fs::write(&go, "").unwrap();
    let run_dir = worker.work_dir().join("tasks").join(task.id.to_string());
    eventually("the spider ends while the disk is full", || async {
        !run_dir.exists()
    })
    .await;
    let failing = found("/health says the store fails", || async {
        let (status, body) = health(master.http).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(failing["status"], "failing", "{failing}");
    assert!(
        failing["store_error"].as_str().unwrap().contains("full"),
        "{failing}"
    );
    let during = client.get_task(task.id).await.unwrap();
    assert_eq!(
        during.status,
        TaskStatus::Running,
        "not falsified while the disk is full: {during:#?}"
    );
    let nodes = client.list_nodes().await.unwrap();
    assert_eq!(
        nodes[0].status,
        arachne_shared::NodeStatus::Online,
        "{nodes:#?}"
    );

    std::fs::remove_file(&filler).unwrap();
    let ended = wait_done(client, task.id).await;
    assert_eq!(ended.status, TaskStatus::Finished, "{ended:#?}");
    let expected: Vec<String> = (0..2000)
        .map(|i| format!("before {i}"))
        .chain((0..2000).map(|i| format!("after {i}")))
        .collect();
    assert_eq!(log_texts(client, task.id).await, expected);
    eventually("/health is ok again", || async {
        health(master.http).await.0 == 200
    })
    .await;
    worker.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_started_on_a_full_disk_says_so_and_where() {
    let Some(disk) = SmallDisk::mount("2m") else {
        eprintln!("skipped: this machine does not allow mounting a small tmpfs");
        return;
    };
    disk.fill();
    let data = disk.path().join("data");
    let output = common::master_command(&data)
        .env_remove("RUST_BACKTRACE")
        .env_remove("ARACHNE_MONGODB_URI")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no space left on device"), "{stderr}");
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A master whose output goes to a file or a pipe (a service manager, `docker logs`) writes plain text: no
/// colour codes for a log reader to choke on.
#[test]
fn the_master_logs_plain_text_when_its_output_is_not_a_terminal() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut master = common::master_command(data.path())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = master.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let started = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let done = line.contains("master started");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = master.kill();
    let _ = master.wait();
    assert!(started, "the master did not start: {seen:#?}");
    assert!(
        seen.iter().all(|l| !l.contains('\x1b')),
        "colour codes in a piped log: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_a_crash_cut_short_are_cleared_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir
        .path()
        .join("spiders/.staging/0190a000-0000-7000-8000-000000000000");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("main.py"), vec![b'x'; 4096]).unwrap();
    let master = TestMaster::start_with(bare_config(dir.path())).await;
    assert!(
        !dir.path().join("spiders/.staging").exists(),
        "the staging folder was not cleared"
    );
    master.stop().await;
}

/// After a flood the embedded store's write-ahead log goes back to at most 16 MiB, even with no write after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_s_log_shrinks_after_a_flood() {
    use arachne_master::store::{CatalogStore, OutputStore, TaskStore};
    use arachne_shared::{LogLine, LogStream};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("arachne.db");
    let store = arachne_master::store::embedded::EmbeddedStore::open(&path).unwrap();
    let spider = arachne_shared::Spider::new("flood", "true", chrono::Utc::now());
    store.put_spider(&spider).await.unwrap();
    let task = arachne_shared::Task::pending(&spider, chrono::Utc::now());
    store.insert_task(&task).await.unwrap();
    let text = "x".repeat(1000);
    let wal = dir.path().join("arachne.db-wal");
    let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    // The checkpointer may already truncate the log during the flood: the flood was big enough when the log
    // was seen over the limit, or seen shrinking (only a truncation shrinks it, and only past the limit).
    let (mut largest, mut shrank, mut last) = (0, false, 0);
    for batch in 0..40u64 {
        let lines: Vec<LogLine> = (0..1000u64)
            .map(|i| LogLine {
                seq: batch * 1000 + i + 1,
                stream: LogStream::Stdout,
                text: text.clone(),
                at: chrono::Utc::now(),
            })
            .collect();
        store.append_logs(task.id, &lines).await.unwrap();
        let now = size();
        (largest, shrank, last) = (largest.max(now), shrank || now < last, now);
    }
    assert!(
        largest > 16 << 20 || shrank,
        "the flood was too small to test with: the log reached {largest} bytes"
    );
    within(Duration::from_secs(30), "the log is truncated", || {
        size() <= 16 << 20
    })
    .await;
}

/// A SecantusDB server of the test's own (the binary `scripts/mongodb` names), on a fixed port and storage
/// folder so it can be stopped and started again in place.
struct OwnMongo {
    bin: PathBuf,
    port: u16,
    storage: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnMongo {
    fn start() -> Option<Self> {
        let bin = PathBuf::from(std::env::var_os("ARACHNE_TEST_MONGODB_BIN")?);
        let mut server = Self {
            bin,
            port: free_port().port(),
            storage: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.resume();
        Some(server)
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    fn resume(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.storage.path().join("db"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Stops the server with SIGTERM, which writes out what it acknowledged. Not SIGKILL: SecantusDB keeps no
    /// journal and ignores `j: true` (measured: 100 journaled, acknowledged inserts were all gone after a kill
    /// within a second of them, all there after a kill 1 s later, a checkpoint), so a kill would test the
    /// test server's durability, not Arachne's. A real MongoDB keeps journaled writes through a kill.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

impl Drop for OwnMongo {
    fn drop(&mut self) {
        self.stop();
    }
}

fn on_own_mongo(dir: &Path, server: &OwnMongo) -> Config {
    let mut config = bare_config(dir);
    config.mongodb = Some(arachne_master::MongoConfig {
        uri: server.uri(),
        database: Some("arachne_outage".into()),
    });
    config
}

/// A MongoDB that goes away for a while mid-run delays the run's records and falsifies none of them; and a
/// master whose MongoDB is gone still stops within its bound, leaving the rest for its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mongodb_outage_mid_run_loses_nothing_and_does_not_hold_a_stopping_master() {
    let Some(mut server) = OwnMongo::start() else {
        eprintln!("skipped: no MongoDB test server binary (run under scripts/mongodb)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gate = common::shared_dir();
    let go = gate.path().join("go");
    let master = TestMaster::start_on(
        on_own_mongo(dir.path(), &server),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    let client = &master.client;
    let script = "i=0; while [ $i -lt 100 ]; do echo \"line $i\"; i=$((i+1)); done\n\
        echo '{\"type\": \"INSERT_DATA\", \"payload\": [{\"n\": 1}, {\"n\": 2}, {\"n\": 3}, {\"n\": 4}, {\"n\": 5}, {\"n\": 6}, {\"n\": 7}, {\"n\": 8}, {\"n\": 9}, {\"n\": 10}]}'\n\
        while [ ! -e \"$GO\" ]; do sleep 0.02; done\n\
        i=100; while [ $i -lt 200 ]; do echo \"line $i\"; i=$((i+1)); done\n\
        echo '{\"type\": \"INSERT_DATA\", \"payload\": [{\"n\": 11}, {\"n\": 12}, {\"n\": 13}, {\"n\": 14}, {\"n\": 15}, {\"n\": 16}, {\"n\": 17}, {\"n\": 18}, {\"n\": 19}, {\"n\": 20}]}'\n";
    create_spider(client, "steady", "sh main.sh", &[("main.sh", script)]).await;
    let mut spec = run_with_retries("steady", 0);
    let settings = spec.settings.as_mut().unwrap();
    settings.env.insert("GO".into(), go.display().to_string());
    let task = client.run_task(&spec).await.unwrap();
    eventually("the first half is stored", || async {
        client
            .get_task(task.id)
            .await
            .is_ok_and(|t| t.log_lines == 100 && t.items == 10)
    })
    .await;

    // The database goes away; the spider writes its second half and ends meanwhile.
    server.stop();
    std::fs::write(&go, "").unwrap();
    let run_dir = worker.work_dir().join("tasks").join(task.id.to_string());
    eventually("the spider ends while the database is away", || async {
        !run_dir.exists()
    })
    .await;
    server.resume();
    let ended = wait_done(client, task.id).await;
    assert_eq!(ended.status, TaskStatus::Finished, "{ended:#?}");
    assert_eq!((ended.log_lines, ended.items), (200, 20), "{ended:#?}");
    let expected: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    assert_eq!(log_texts(client, task.id).await, expected);

    // Gone again, with a task running: the master still stops within its bound.
    create_spider(
        client,
        "idle",
        "sh main.sh",
        &[("main.sh", "echo up\nsleep 60\n")],
    )
    .await;
    let idle = client.run_task(&run_with_retries("idle", 0)).await.unwrap();
    eventually("the idle task runs", || async {
        client
            .get_task(idle.id)
            .await
            .is_ok_and(|t| t.status == TaskStatus::Running && t.log_lines == 1)
    })
    .await;
    server.stop();
    worker.stop().await;
    let stopped = tokio::time::timeout(Duration::from_secs(30), master.stop()).await;
    assert!(
        stopped.is_ok(),
        "the master did not stop while its MongoDB was away"
    );
}
