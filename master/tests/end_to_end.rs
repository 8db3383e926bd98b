//! The whole path with real parts: upload a spider, run it on a worker, stream its logs, read its items, see
//! it end; failures, cancel, a separate worker process, and a master restart.

use arachne_test_support as common;

use arachne_api_types::{ItemQuery, LogQuery, RunTask, TaskQuery};
use arachne_client::FollowEvent;
use arachne_shared::{LogStream, NodeStatus, TaskStatus};
use common::{TestMaster, create_spider, eventually, wait_done, workspace_bin};

const LINES_SPIDER: &str = r#"
import json, sys
n = int(sys.argv[1])
for i in range(1, n + 1):
    print(f"line {i}")
    if i % 10 == 0:
        print(json.dumps({"type": "INSERT_DATA", "payload": [{"i": i}, {"i": i + 0.5}]}))
print("to stderr", file=sys.stderr)
"#;

/// Every state a task that ran and finished went through, in order.
const FULL_LIFE: [TaskStatus; 4] = [
    TaskStatus::Created,
    TaskStatus::Pending,
    TaskStatus::Running,
    TaskStatus::Finished,
];

fn states(task: &arachne_api_types::Task) -> Vec<TaskStatus> {
    task.transitions.iter().map(|t| t.status).collect()
}

fn run(spider: &str) -> RunTask {
    RunTask {
        spider: spider.into(),
        param: None,
        priority: None,
        settings: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_runs_and_its_logs_and_items_arrive_in_order() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    create_spider(
        client,
        "lines",
        "python3 main.py",
        &[("main.py", LINES_SPIDER)],
    )
    .await;

    let task = client
        .run_task(&RunTask {
            param: Some("300".into()),
            ..run("lines")
        })
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Pending);

    // A follower started right away sees every line once, in order, and then the end.
    let mut followed = Vec::new();
    let mut end = None;
    tokio::time::timeout(
        common::TIMEOUT,
        client.follow_logs(task.id, 0, |event| match event {
            FollowEvent::Line(line) => followed.push(line),
            FollowEvent::End(task) => end = Some(task),
        }),
    )
    .await
    .expect("follow ends when the task ends")
    .unwrap();
    let end = end.expect("an end event");
    assert_eq!(end.status, TaskStatus::Finished);

    let task = wait_done(client, task.id).await;
    assert_eq!(task.status, TaskStatus::Finished);
    assert_eq!(task.exit_code, Some(0));
    assert_eq!(task.node.as_deref(), Some("local"));
    assert!(
        task.wait_ms.is_some() && task.run_ms.is_some(),
        "wait and run durations are task stats"
    );
    assert_eq!(states(&task), FULL_LIFE);
    assert!(
        task.transitions.windows(2).all(|w| w[0].at <= w[1].at),
        "{:?}",
        task.transitions
    );

    let logs = common::all_logs(client, task.id).await;
    assert_eq!(logs, followed, "the follower saw exactly what was stored");
    let stdout: Vec<_> = logs
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.text.clone())
        .collect();
    let expected: Vec<_> = (1..=300).map(|i| format!("line {i}")).collect();
    assert_eq!(
        stdout, expected,
        "log lines in order, IPC lines not among them"
    );
    assert!(
        logs.iter()
            .any(|l| l.stream == LogStream::Stderr && l.text == "to stderr")
    );
    assert!(
        logs.iter().enumerate().all(|(i, l)| l.seq == i as u64 + 1),
        "sequence numbers without gaps"
    );
    assert_eq!(task.log_lines, logs.len() as u64);

    let items = client
        .items(
            task.id,
            &ItemQuery {
                limit: Some(10_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let values: Vec<f64> = items
        .iter()
        .map(|i| i.value()["i"].as_f64().unwrap())
        .collect();
    let expected: Vec<f64> = (1..=30)
        .flat_map(|k| [k as f64 * 10.0, k as f64 * 10.0 + 0.5])
        .collect();
    assert_eq!(values, expected, "items in order");
    assert_eq!(task.items, 60);

    // Paging by sequence number.
    let page = client
        .logs(
            task.id,
            &LogQuery {
                after: Some(100),
                limit: Some(5),
                follow: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|l| l.seq).collect::<Vec<_>>(),
        [101, 102, 103, 104, 105]
    );
    master.stop().await;
}

/// A worker holds a task's start back for a moment and sends a short, silent run's start with its end. The
/// task's record must not show it: pid, start, durations and every state, on the local worker (in-process
/// link) and on a worker over gRPC alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_silent_task_records_its_start_like_any_other() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let remote = common::TestWorker::start(&master.grpc_url(), "remote", 1);
    master.wait_nodes_online(2).await;
    create_spider(client, "silent", "true", &[("README", "x")]).await;
    for node in ["local", "remote"] {
        let spec = RunTask {
            mode: Some(arachne_shared::RunMode::Nodes),
            nodes: vec![node.into()],
            ..run("silent")
        };
        let queued = client.run_task(&spec).await.unwrap();
        let task = wait_done(client, queued.id).await;
        assert_eq!(
            (task.status, task.node.as_deref()),
            (TaskStatus::Finished, Some(node))
        );
        assert!(task.pid.is_some_and(|pid| pid > 0), "{task:?}");
        assert_eq!(states(&task), FULL_LIFE, "on {node}");
        // To the millisecond: a store may keep no finer (MongoDB's dates), and the start is often within the
        // millisecond of the creation.
        let ms = |at: chrono::DateTime<chrono::Utc>| at.timestamp_millis();
        let started = ms(task.started_at.expect("a start time"));
        let (created, ended) = (ms(task.created_at), ms(task.ended_at.unwrap()));
        assert!(created <= started && started <= ended, "{task:?}");
        assert!(task.wait_ms.is_some() && task.run_ms.is_some(), "{task:?}");
    }
    remote.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_spider_ends_in_error_with_its_exit_code() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    create_spider(
        client,
        "fails",
        "sh run.sh",
        &[("run.sh", "echo going down >&2\nexit 7\n")],
    )
    .await;
    let task = client.run_task(&run("fails")).await.unwrap();
    let task = wait_done(client, task.id).await;
    assert_eq!(task.status, TaskStatus::Error);
    assert_eq!(task.exit_code, Some(7));
    assert_eq!(task.error.as_deref(), Some("exit status 7"));
    let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
    assert_eq!(logs[0].text, "going down");

    // A command that does not exist is an Error too, with the shell's message in the log.
    create_spider(client, "missing", "./no-such-program", &[("README", "x")]).await;
    let task = wait_done(client, client.run_task(&run("missing")).await.unwrap().id).await;
    assert_eq!(
        (task.status, task.exit_code),
        (TaskStatus::Error, Some(127))
    );
    master.stop().await;
}

/// Whether `pid` is a live process. A zombie (killed, not yet reaped by its new parent) counts as dead.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_whole_process_group() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    // The spider ignores CANCEL and SIGTERM and leaves a grandchild behind: only a group SIGKILL ends both.
    let script = "trap '' TERM\nsleep 1000 &\necho \"grandchild $!\"\necho started\nwhile true; do sleep 0.1; done\n";
    create_spider(client, "stubborn", "sh run.sh", &[("run.sh", script)]).await;
    let task = client.run_task(&run("stubborn")).await.unwrap();
    eventually("the spider to start", || async {
        let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
        logs.iter().any(|l| l.text == "started")
    })
    .await;
    let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
    let grandchild: i32 = logs
        .iter()
        .find_map(|l| l.text.strip_prefix("grandchild "))
        .unwrap()
        .parse()
        .unwrap();
    let shell = client
        .get_task(task.id)
        .await
        .unwrap()
        .pid
        .expect("a running task has a pid") as i32;
    assert!(process_alive(grandchild) && process_alive(shell));

    let cancelling = client.cancel_task(task.id).await.unwrap();
    assert_eq!(
        cancelling.status,
        TaskStatus::Running,
        "a running task is cancelled by its worker"
    );
    let task = wait_done(client, task.id).await;
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.error.as_deref(), Some("cancelled by user"));
    // SIGKILL has been sent to the group once the task is Cancelled; the kernel finishes the job promptly.
    eventually("the spider and its grandchild to die", || async {
        !process_alive(grandchild) && !process_alive(shell)
    })
    .await;

    // Cancelling an ended task is a conflict, and an unknown task is not found.
    let err = client.cancel_task(task.id).await.unwrap_err().to_string();
    assert!(
        err.contains("already ended") && err.contains("409"),
        "{err}"
    );
    let err = client
        .cancel_task(arachne_shared::TaskId::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found") && err.contains("404"), "{err}");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_that_honours_cancel_exits_cleanly_as_cancelled() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let script = r#"
import json, sys
print("waiting for orders", flush=True)
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "CANCEL":
        print("got CANCEL:", message["payload"]["reason"], flush=True)
        sys.exit(0)
"#;
    create_spider(client, "polite", "python3 main.py", &[("main.py", script)]).await;
    let task = client.run_task(&run("polite")).await.unwrap();
    eventually("the spider to start", || async {
        client
            .logs(task.id, &LogQuery::default())
            .await
            .unwrap()
            .iter()
            .any(|l| l.text == "waiting for orders")
    })
    .await;
    client.cancel_task(task.id).await.unwrap();
    let task = wait_done(client, task.id).await;
    assert_eq!(task.status, TaskStatus::Cancelled);
    let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
    assert!(
        logs.iter().any(|l| l.text == "got CANCEL: user"),
        "{logs:?}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_task_needs_no_worker() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let client = &master.client;
    create_spider(client, "queued", "true", &[("x", "")]).await;
    let task = client.run_task(&run("queued")).await.unwrap();
    let task = client.cancel_task(task.id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_worker_process_connects_and_runs_tasks() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let client = &master.client;
    // The spider looks for the worker's token in its own environment and in its ancestors' (the worker's).
    let run_sh = "p=$PPID; leak=no
for i in 1 2 3; do
  if grep -q \"$SECRET\" /proc/$p/environ 2>/dev/null; then leak=yes; fi
  p=$(cut -d' ' -f4 /proc/$p/stat 2>/dev/null || echo 1)
done
echo \"on $ARACHNE_NODE as $ARACHNE_TASK_ID, token ${ARACHNE_WORKER_TOKEN:-unseen}, environ leak $leak\"
";
    create_spider(
        client,
        "remote",
        &format!("SECRET={} sh run.sh", common::WORKER_TOKEN),
        &[("run.sh", run_sh)],
    )
    .await;
    let queued = client.run_task(&run("remote")).await.unwrap();

    let work_dir = tempfile::tempdir().unwrap();
    let mut worker = tokio::process::Command::new(workspace_bin("arachne-worker"))
        .args([
            "--master",
            &master.grpc_url(),
            "--name",
            "far-away",
            "--max-runners",
            "3",
        ])
        .arg("--work-dir")
        .arg(work_dir.path())
        .env("RUST_LOG", "warn")
        // The worker's own secrets must not reach spiders.
        .env("ARACHNE_WORKER_TOKEN", common::WORKER_TOKEN)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    master.wait_nodes_online(1).await;
    let nodes = client.list_nodes().await.unwrap();
    assert_eq!(
        (
            nodes[0].name.as_str(),
            nodes[0].max_runners,
            nodes[0].status
        ),
        ("far-away", 3, NodeStatus::Online)
    );

    // The task queued before any worker existed runs as soon as one connects.
    let task = wait_done(client, queued.id).await;
    assert_eq!(
        (task.status, task.node.as_deref()),
        (TaskStatus::Finished, Some("far-away"))
    );
    let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
    assert_eq!(
        logs[0].text,
        format!("on far-away as {}, token unseen, environ leak no", task.id,)
    );

    // A worker that goes away is shown offline.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(common::TIMEOUT, worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful worker exit, got {status}");
    master.wait_nodes_online(0).await;
    assert_eq!(
        client.list_nodes().await.unwrap()[0].status,
        NodeStatus::Offline
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restart_keeps_spiders_tasks_logs_items_nodes_and_the_queue() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    create_spider(
        &master.client,
        "lines",
        "python3 main.py",
        &[("main.py", LINES_SPIDER)],
    )
    .await;
    let done = master
        .client
        .run_task(&RunTask {
            param: Some("20".into()),
            ..run("lines")
        })
        .await
        .unwrap();
    let done = wait_done(&master.client, done.id).await;
    let logs = master
        .client
        .logs(done.id, &LogQuery::default())
        .await
        .unwrap();
    let items = master
        .client
        .items(done.id, &ItemQuery::default())
        .await
        .unwrap();
    master.stop().await;

    // Restarted without a worker, a task queued now must wait, and survive another restart.
    let master = TestMaster::start(data.path(), false).await;
    let client = &master.client;
    assert_eq!(client.get_spider("lines").await.unwrap().name, "lines");
    assert_eq!(client.get_task(done.id).await.unwrap(), done);
    assert_eq!(
        client.logs(done.id, &LogQuery::default()).await.unwrap(),
        logs
    );
    assert_eq!(
        client.items(done.id, &ItemQuery::default()).await.unwrap(),
        items
    );
    let nodes = client.list_nodes().await.unwrap();
    assert_eq!(
        (nodes[0].name.as_str(), nodes[0].status),
        ("local", NodeStatus::Offline)
    );
    let queued = client
        .run_task(&RunTask {
            param: Some("3".into()),
            ..run("lines")
        })
        .await
        .unwrap();
    master.stop().await;

    let master = TestMaster::start(data.path(), true).await;
    let task = wait_done(&master.client, queued.id).await;
    assert_eq!(
        task.status,
        TaskStatus::Finished,
        "the queued task ran after the restart"
    );
    let page = master
        .client
        .list_tasks(&TaskQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.items[0].id, queued.id, "newest first");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_a_clean_directory_with_their_environment() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let script = "ls -a | tr '\\n' ' '; echo; echo leftover > written.txt; \
                  echo \"spider=$ARACHNE_SPIDER_NAME crawlab=$CRAWLAB_TASK_ID\"\n";
    create_spider(
        client,
        "env",
        "sh run.sh",
        &[("run.sh", script), ("data/input.txt", "x")],
    )
    .await;
    for _ in 0..2 {
        let task = wait_done(client, client.run_task(&run("env")).await.unwrap().id).await;
        assert_eq!(task.status, TaskStatus::Finished);
        let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
        assert_eq!(
            logs[0].text, ". .. data run.sh ",
            "no file of an earlier run leaks in"
        );
        assert_eq!(logs[1].text, format!("spider=env crawlab={}", task.id));
    }
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_master_stop_settles_running_tasks_through_the_local_worker() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    create_spider(
        &master.client,
        "forever",
        "sh run.sh",
        &[("run.sh", "echo up\nwhile true; do sleep 0.1; done\n")],
    )
    .await;
    let task = master.client.run_task(&run("forever")).await.unwrap();
    eventually("the spider to start", || async {
        master.client.get_task(task.id).await.unwrap().status == TaskStatus::Running
    })
    .await;
    let pid = master.client.get_task(task.id).await.unwrap().pid.unwrap() as i32;
    master.stop().await;
    assert!(!process_alive(pid), "the spider outlived the master");

    // The worker stopped first and its report was stored: no task is left Running, and the reason is the
    // worker's own, not the restart fallback.
    let master = TestMaster::start(data.path(), false).await;
    let task = master.client.get_task(task.id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Abnormal);
    assert_eq!(
        task.error.as_deref(),
        Some("worker local shut down while the task ran")
    );
    let logs = master
        .client
        .logs(task.id, &LogQuery::default())
        .await
        .unwrap();
    assert_eq!(logs[0].text, "up");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_errors_show_on_the_task_and_a_fatal_error_fails_it() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let script = r#"
import json, sys
def send(kind, payload):
    print(json.dumps({"type": kind, "payload": payload}), flush=True)
send("STATUS", {"progress": 0.1, "message": "page 1/10"})
send("ERROR", {"message": "HTTP 503 on page 2", "fatal": False, "url": "https://example.com/2"})
send("STATUS", {"progress": 0.5, "message": "page 5/10", "stats": {"pages": 5}})
sys.stdin.readline()  # stays running until it gets CANCEL
"#;
    create_spider(
        client,
        "reporter",
        "python3 main.py",
        &[("main.py", script)],
    )
    .await;
    let task = client.run_task(&run("reporter")).await.unwrap();
    eventually("progress to show while the task runs", || async {
        let task = client.get_task(task.id).await.unwrap();
        task.status == TaskStatus::Running
            && task.progress.as_ref().and_then(|p| p.status.progress) == Some(0.5)
    })
    .await;
    client.cancel_task(task.id).await.unwrap();
    let task = wait_done(client, task.id).await;
    assert_eq!(task.status, TaskStatus::Cancelled);
    let progress = task
        .progress
        .expect("the last status is kept after the end");
    assert_eq!(progress.status.message.as_deref(), Some("page 5/10"));
    assert_eq!(progress.status.stats.unwrap()["pages"], 5);
    assert_eq!(task.error_count, 1);
    assert_eq!(task.errors[0].error.message, "HTTP 503 on page 2");
    assert_eq!(task.errors[0].error.extra["url"], "https://example.com/2");

    let fatal = "import json\nprint(json.dumps({'type': 'ERROR', 'payload': {'message': 'banned', 'fatal': True}}))\n";
    create_spider(client, "banned", "python3 main.py", &[("main.py", fatal)]).await;
    let task = wait_done(client, client.run_task(&run("banned")).await.unwrap().id).await;
    assert_eq!((task.status, task.exit_code), (TaskStatus::Error, Some(0)));
    assert_eq!(
        task.error.as_deref(),
        Some("spider reported a fatal error: banned")
    );
    assert!(task.errors[0].error.fatal);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_runners_change_at_run_time_and_tasks_beyond_them_wait() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    master.wait_nodes_online(1).await;
    let one = arachne_api_types::UpdateNode {
        max_runners: Some(1),
        ..Default::default()
    };
    assert_eq!(
        client.update_node("local", &one).await.unwrap().max_runners,
        1
    );

    let release = data.path().join("release");
    let script = format!(
        "while [ ! -f {} ]; do sleep 0.05; done\n",
        release.display()
    );
    create_spider(client, "gated", "sh run.sh", &[("run.sh", &script)]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(client.run_task(&run("gated")).await.unwrap().id);
    }
    let statuses = || async {
        let mut statuses = Vec::new();
        for id in &ids {
            statuses.push(client.get_task(*id).await.unwrap().status);
        }
        statuses
    };
    eventually("one task to run", || async {
        statuses().await.contains(&TaskStatus::Running)
    })
    .await;
    let now = statuses().await;
    assert_eq!(
        now,
        [
            TaskStatus::Running,
            TaskStatus::Pending,
            TaskStatus::Pending
        ],
        "oldest first, one slot"
    );
    let pending = client.get_task(ids[2]).await.unwrap();
    assert_eq!(
        pending.node, None,
        "a task beyond the limit is not handed out"
    );

    let three = arachne_api_types::UpdateNode {
        max_runners: Some(3),
        ..Default::default()
    };
    client.update_node("local", &three).await.unwrap();
    eventually("all three to run", || async {
        statuses().await.iter().all(|s| *s == TaskStatus::Running)
    })
    .await;
    std::fs::write(&release, "").unwrap();
    for id in &ids {
        assert_eq!(wait_done(client, *id).await.status, TaskStatus::Finished);
    }

    let zero = arachne_api_types::UpdateNode {
        max_runners: Some(0),
        ..Default::default()
    };
    let err = client
        .update_node("local", &zero)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_runners must be 1 to 10000") && err.contains("400"),
        "{err}"
    );
    let err = client
        .update_node("nowhere", &three)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node \"nowhere\" not found") && err.contains("404"),
        "{err}"
    );
    master.stop().await;

    // The setting outlives the session: the local worker registers with 4 and is held to 3.
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    let node = master.client.list_nodes().await.unwrap().remove(0);
    assert_eq!((node.max_runners, node.max_runners_override), (3, Some(3)));
    master.stop().await;
}

/// A worker that reconnects resends what the master never acknowledged, possibly for a task that was deleted
/// meanwhile: the master acknowledges those batches (so the worker forgets them) and stores none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_for_a_task_the_store_does_not_know_are_acknowledged_and_not_stored() {
    use arachne_shared::cluster::{Registration, WorkerEnvelope, WorkerToMaster};
    use arachne_shared::{ItemRecord, LogLine, TaskId};

    let data = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(data.path().to_owned());
    common::use_test_store(&mut config);
    let master = TestMaster::start_with(config.clone()).await;
    let mut grpc =
        arachne_proto::client::Client::connect(&master.grpc_url(), Some(common::WORKER_TOKEN))
            .await
            .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut session = grpc.session(rx).await.unwrap();
    let ghost = TaskId::new();
    let register = WorkerToMaster::Register(Registration {
        name: "resender".into(),
        max_runners: 1,
        version: "test".into(),
        labels: Default::default(),
        running: Vec::new(),
        leftovers: Vec::new(),
        cached_versions: Vec::new(),
    });
    let logs = WorkerToMaster::Logs {
        task_id: ghost,
        lease: 1,
        lines: vec![LogLine {
            seq: 1,
            stream: LogStream::Stdout,
            text: "a line of a deleted task".into(),
            at: chrono::Utc::now(),
        }],
    };
    let item = serde_json::value::RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
    let items = WorkerToMaster::Items {
        task_id: ghost,
        lease: 1,
        items: vec![ItemRecord::new(1, item).unwrap()],
    };
    for (seq, message) in [(0, register), (1, logs), (2, items)] {
        tx.send(WorkerEnvelope { seq, message }).await.unwrap();
    }
    common::acknowledged(&mut session, 2).await;
    assert!(
        master.client.get_task(ghost).await.is_err(),
        "the task does not exist"
    );
    drop(tx);
    master.stop().await;

    let store = arachne_master::open_store(&config).await.unwrap();
    assert_eq!(store.logs(ghost, 0, 10).await.unwrap(), Vec::new());
}
