//! Spiders that misbehave, run for real: nothing they print can hang the runner, lose output or crash it.

use arachne_test_support as common;

use arachne_api_types::{ItemQuery, LogQuery, RunTask};
use arachne_master::{Config, LocalWorker};
use arachne_shared::{LogLine, LogStream, TaskStatus};
use common::{TestMaster, create_spider, wait_done};

/// A master whose local worker cuts lines at 1 MiB, so a test can cross the limit without 16 MiB of output.
async fn master(data: &std::path::Path) -> TestMaster {
    let mut config = Config::new(data.to_owned());
    let mut runner = common::quick_runner();
    runner.max_line_bytes = 1 << 20;
    config.local_worker = Some(LocalWorker {
        runner,
        ..LocalWorker::default()
    });
    TestMaster::start_with(config).await
}

async fn run_spider(
    master: &TestMaster,
    name: &str,
    script: &str,
) -> (arachne_api_types::Task, Vec<LogLine>) {
    create_spider(
        &master.client,
        name,
        "python3 main.py",
        &[("main.py", script)],
    )
    .await;
    let task = master
        .client
        .run_task(&RunTask {
            spider: name.into(),
            param: None,
            priority: None,
            settings: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let task = wait_done(&master.client, task.id).await;
    let logs = common::all_logs(&master.client, task.id).await;
    (task, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_limit_is_cut_with_a_marker_and_the_task_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let master = master(data.path()).await;
    let script = r#"
import json, sys
sys.stdout.write("x" * (3 * 1024 * 1024) + "\n")
big = {"blob": "y" * (900 * 1024)}
print(json.dumps({"type": "INSERT_DATA", "payload": big}))
print("after")
"#;
    let (task, logs) = run_spider(&master, "long", script).await;
    assert_eq!(task.status, TaskStatus::Finished);
    assert!(logs[0].text.starts_with(&"x".repeat(1 << 20)));
    assert!(
        logs[0].text.ends_with(&format!(
            " [arachne: line truncated, {} more bytes dropped]",
            2 << 20
        )),
        "{}",
        &logs[0].text[(1 << 20) - 10..]
    );
    assert_eq!(
        logs[1].text, "after",
        "the reader went on after the long line"
    );
    // A 900 KiB message is well past Crawlab's 64 KiB scanner limit and still parsed.
    let items = master
        .client
        .items(task.id, &ItemQuery::default())
        .await
        .unwrap();
    assert_eq!(items[0].value()["blob"].as_str().unwrap().len(), 900 * 1024);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_output_becomes_lossy_text() {
    let data = tempfile::tempdir().unwrap();
    let master = master(data.path()).await;
    let script = r#"
import os, sys
sys.stdout.buffer.write(bytes(range(256)) * 400 + b"\n")
sys.stderr.buffer.write(b"\xff\xfe\x00bad utf-8\n")
print("done")
"#;
    let (task, logs) = run_spider(&master, "binary", script).await;
    assert_eq!(task.status, TaskStatus::Finished);
    assert!(
        logs.iter()
            .any(|l| l.stream == LogStream::Stderr && l.text == "\u{fffd}\u{fffd}\0bad utf-8"),
        "{logs:?}"
    );
    // Two pipes have no order between them, so only stdout's own order is checked.
    let stdout: Vec<_> = logs
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .collect();
    // The blob holds byte 10 once per 256 bytes, so it is 401 lines of lossy text, then "done".
    assert_eq!(stdout.len(), 402);
    assert_eq!(stdout.last().unwrap().text, "done");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_that_closes_stdout_is_tracked_until_it_exits() {
    let data = tempfile::tempdir().unwrap();
    let master = master(data.path()).await;
    let script = r#"
import os, sys, time
print("closing stdout", flush=True)
os.close(1)
time.sleep(0.5)
sys.stderr.write("still here\n")
sys.exit(3)
"#;
    let (task, logs) = run_spider(&master, "closer", script).await;
    assert_eq!(
        (task.status, task.exit_code),
        (TaskStatus::Error, Some(3)),
        "the exit code after stdout closed counts"
    );
    let texts: Vec<_> = logs.iter().map(|l| (l.stream, l.text.as_str())).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts.contains(&(LogStream::Stdout, "closing stdout")),
        "{texts:?}"
    );
    assert!(
        texts.contains(&(LogStream::Stderr, "still here")),
        "output after stdout closed is kept: {texts:?}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_loses_no_line_and_no_item() {
    let data = tempfile::tempdir().unwrap();
    let master = master(data.path()).await;
    let script = r#"
import json, sys
out = sys.stdout
for i in range(1, 100001):
    out.write(f"line {i}\n")
    if i % 10 == 0:
        out.write(json.dumps({"type": "INSERT_DATA", "payload": [{"i": i}]}) + "\n")
    if i % 25000 == 0:
        out.write('{"type": "INSERT_DATA", "payload": [1, 2]}\n')
"#;
    let (task, logs) = run_spider(&master, "flood", script).await;
    assert_eq!(task.status, TaskStatus::Finished);
    let lines: Vec<_> = logs
        .iter()
        .filter(|l| l.stream == LogStream::Stdout && l.text.starts_with("line "))
        .collect();
    assert_eq!(lines.len(), 100_000);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l.text == format!("line {}", i + 1)),
        "lines in order"
    );
    let warnings = logs
        .iter()
        .filter(|l| l.stream == LogStream::System && l.text.contains("payload[0] is a number"));
    assert_eq!(
        warnings.count(),
        4,
        "each malformed message is named, and the rest goes on"
    );
    assert_eq!(task.items, 10_000);
    assert_eq!(task.log_lines, logs.len() as u64);
    master.stop().await;
}

fn settings(
    timeout: Option<u64>,
    memory_mib: Option<u64>,
    env: &[(&str, &str)],
) -> arachne_shared::spider::RunSettings {
    arachne_shared::spider::RunSettings {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        timeout_secs: timeout,
        memory_limit_mib: memory_mib,
        cancel_grace_secs: Some(0),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_its_time_limit_ends_in_error_with_its_processes_gone() {
    let data = tempfile::tempdir().unwrap();
    let master = master(data.path()).await;
    let client = &master.client;
    let shared = common::shared_dir();
    let pid_file = shared.path().join("child.pid");
    let script = format!("sleep 1000 &\necho $! > {}\nwait\n", pid_file.display());
    create_spider(client, "slow", "sh run.sh", &[("run.sh", &script)]).await;
    let run = RunTask {
        spider: "slow".into(),
        param: None,
        priority: None,
        settings: Some(settings(Some(1), None, &[])),
        ..Default::default()
    };
    let task = wait_done(client, client.run_task(&run).await.unwrap().id).await;
    assert_eq!(
        (task.status, task.error.as_deref()),
        (TaskStatus::Error, Some("timed out after 1 s"))
    );
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::eventually("the spider's child to die", || async {
        std::fs::read_to_string(format!("/proc/{child}/stat")).map_or(true, |s| s.contains(") Z"))
    })
    .await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_its_memory_limit_is_stopped_and_says_by_how_much() {
    let data = tempfile::tempdir().unwrap();
    let master = master(data.path()).await;
    let client = &master.client;
    // Grows in a grandchild, so only a whole-tree measure sees it.
    let script = "python3 -c \"import time\nblocks = []\nwhile True:\n    blocks.append(bytearray(8 << 20))\n    time.sleep(0.02)\"\n";
    create_spider(client, "hungry", "sh run.sh", &[("run.sh", script)]).await;
    let run = RunTask {
        spider: "hungry".into(),
        param: None,
        priority: None,
        settings: Some(settings(Some(120), Some(64), &[])),
        ..Default::default()
    };
    let task = wait_done(client, client.run_task(&run).await.unwrap().id).await;
    assert_eq!(task.status, TaskStatus::Error);
    let error = task.error.unwrap();
    assert!(
        error.starts_with("memory limit exceeded (") && error.ends_with(" MiB > 64 MiB)"),
        "{error}"
    );
    assert!(
        task.peak_rss_bytes.unwrap() > 64 << 20,
        "the peak is recorded"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_settings_merge_over_the_spider_and_bad_ones_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let master = master(data.path()).await;
    let client = &master.client;
    create_spider(
        client,
        "envs",
        "sh run.sh",
        &[("run.sh", "echo \"$GREETING $TARGET\"\nsleep 1\n")],
    )
    .await;
    let spider = arachne_api_types::CreateSpider {
        name: "envs".into(),
        cmd: "sh run.sh".into(),
        settings: Some(settings(
            None,
            None,
            &[("GREETING", "hello"), ("TARGET", "spider")],
        )),
        ..Default::default()
    };
    client.put_spider(&spider).await.unwrap();
    let run = RunTask {
        spider: "envs".into(),
        param: None,
        priority: None,
        settings: Some(settings(None, None, &[("TARGET", "run")])),
        ..Default::default()
    };
    let task = wait_done(client, client.run_task(&run).await.unwrap().id).await;
    assert_eq!(task.status, TaskStatus::Finished);
    assert_eq!(task.settings.env["GREETING"], "hello");
    let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
    assert_eq!(logs[0].text, "hello run");
    assert!(
        task.peak_rss_bytes.is_some_and(|b| b > 0),
        "peak RSS is a task stat"
    );

    for (bad, needle) in [
        (
            settings(None, None, &[("ARACHNE_TASK_ID", "x")]),
            "settings.env: ARACHNE_TASK_ID is reserved",
        ),
        (
            settings(Some(0), None, &[]),
            "settings.timeout_secs must be at least 1",
        ),
        (
            settings(None, None, &[("A=B", "x")]),
            "settings.env: invalid variable name",
        ),
    ] {
        let run = RunTask {
            spider: "envs".into(),
            param: None,
            priority: None,
            settings: Some(bad),
            ..Default::default()
        };
        let err = client.run_task(&run).await.unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("400"), "{err}");
    }
    master.stop().await;
}
