//! Task routes beyond running one: listing by node and creation time, deleting an ended task with its
//! records, and exporting its items as CSV — through a real master, worker and spider processes.

use arachne_test_support as common;

use arachne_api_types::{RunTask, TaskQuery};
use arachne_shared::TaskStatus;
use common::{API_TOKEN, TestMaster, create_spider, wait_done};

const ITEMS: &str = r#"
import json
print("crawling", flush=True)
items = [
    {"url": "https://example.com/1", "title": "Say \"hi\", world", "price": 1.5},
    {"url": "https://example.com/2", "tags": ["a", "b"], "title": "two\nlines"},
    {"url": "https://example.com/3", "price": None, "stock": {"n": 3}},
]
print(json.dumps({"type": "INSERT_DATA", "payload": items}), flush=True)
"#;

fn run(spider: &str) -> RunTask {
    RunTask {
        spider: spider.into(),
        ..Default::default()
    }
}

/// A master with a local worker and the `items` spider (3 items a run).
async fn master_with_items(data: &std::path::Path) -> TestMaster {
    let master = TestMaster::start(data, true).await;
    create_spider(
        &master.client,
        "items",
        "python3 main.py",
        &[("main.py", ITEMS)],
    )
    .await;
    master
}

/// Runs `items` to its end.
async fn finished_items_run(client: &arachne_client::Client) -> arachne_api_types::Task {
    let done = wait_done(client, client.run_task(&run("items")).await.unwrap().id).await;
    assert_eq!((done.status, done.items), (TaskStatus::Finished, 3));
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_export_as_csv_a_column_per_field_in_first_seen_order() {
    let data = tempfile::tempdir().unwrap();
    let master = master_with_items(data.path()).await;
    let client = &master.client;
    let first = finished_items_run(client).await;
    // A column per field in the order fields first appear, RFC 4180 quoting.
    let http = common::http();
    let base = format!("http://{}/api/v1", master.http);
    let response = http
        .get(format!("{base}/tasks/{}/items?format=csv", first.id))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(".csv")
    );
    let expected = "url,title,price,tags,stock\r\n\
        https://example.com/1,\"Say \"\"hi\"\", world\",1.5,,\r\n\
        https://example.com/2,\"two\nlines\",,\"[\"\"a\"\",\"\"b\"\"]\",\r\n\
        https://example.com/3,,,,\"{\"\"n\"\":3}\"\r\n";
    assert_eq!(response.text().await.unwrap(), expected);
    let mut exported = Vec::new();
    client
        .export_items_csv(first.id, |chunk| {
            exported.extend_from_slice(chunk);
            true
        })
        .await
        .unwrap();
    assert_eq!(String::from_utf8(exported).unwrap(), expected);
    let limited = http
        .get(format!(
            "{base}/tasks/{}/items?format=csv&limit=1",
            first.id
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        limited,
        "url,title,price\r\nhttps://example.com/1,\"Say \"\"hi\"\", world\",1.5\r\n"
    );

    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_list_by_node_and_by_creation_time() {
    let data = tempfile::tempdir().unwrap();
    let master = master_with_items(data.path()).await;
    let client = &master.client;
    let first = finished_items_run(client).await;
    let second = finished_items_run(client).await;
    let http = common::http();
    let base = format!("http://{}/api/v1", master.http);

    let node = first.node.clone().expect("the task ran on a node");
    let ids = |query: TaskQuery| async move {
        let page = client.list_tasks(&query).await.unwrap();
        assert_eq!(page.items.len() as u64, page.total);
        page.items.into_iter().map(|t| t.id).collect::<Vec<_>>()
    };
    let on = |node: &str| TaskQuery {
        node: Some(node.into()),
        ..Default::default()
    };
    assert_eq!(ids(on(&node)).await, [second.id, first.id]);
    assert!(ids(on("no-such-node")).await.is_empty());
    let since_second = TaskQuery {
        since: Some(second.created_at),
        ..Default::default()
    };
    assert_eq!(ids(since_second).await, [second.id]);
    let before_second = TaskQuery {
        until: Some(second.created_at),
        ..Default::default()
    };
    assert_eq!(ids(before_second).await, [first.id]);
    let bad_time = http
        .get(format!("{base}/tasks?since=yesterday"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_time.status(), 400);
    assert!(bad_time.text().await.unwrap().contains("since"));

    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_deleted_only_once_ended_and_takes_its_logs_and_items() {
    let data = tempfile::tempdir().unwrap();
    let master = master_with_items(data.path()).await;
    let client = &master.client;
    create_spider(client, "sleeper", "sleep 600", &[("a", "b")]).await;
    let first = finished_items_run(client).await;
    let second = finished_items_run(client).await;
    let http = common::http();
    let base = format!("http://{}/api/v1", master.http);
    let ids = |query: TaskQuery| async move {
        let page = client.list_tasks(&query).await.unwrap();
        page.items.into_iter().map(|t| t.id).collect::<Vec<_>>()
    };

    // A task that has not ended cannot be deleted; once cancelled it can, with its logs and items.
    let sleeping = client.run_task(&run("sleeper")).await.unwrap();
    let refused = client.delete_task(sleeping.id).await.unwrap_err();
    assert!(
        matches!(&refused, arachne_client::Error::Api { status: 409, message, .. } if message.contains("has not ended")),
        "{refused}"
    );
    client.cancel_task(sleeping.id).await.unwrap();
    assert_eq!(
        wait_done(client, sleeping.id).await.status,
        TaskStatus::Cancelled
    );
    client.delete_task(sleeping.id).await.unwrap();
    client.delete_task(first.id).await.unwrap();
    for gone in [first.id, sleeping.id] {
        for path in [String::new(), "/logs".into(), "/items".into()] {
            let response = http
                .get(format!("{base}/tasks/{gone}{path}"))
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{gone}{path}");
        }
    }
    let missing = client.delete_task(first.id).await.unwrap_err();
    assert!(matches!(
        missing,
        arachne_client::Error::Api { status: 404, .. }
    ));
    // The other run and its records are untouched.
    assert_eq!(ids(TaskQuery::default()).await, [second.id]);
    assert_eq!(client.get_task(second.id).await.unwrap().items, 3);
    master.stop().await;
}

const PROGRESS: &str = r#"
import json, time
print("starting", flush=True)
print(json.dumps({"type": "STATUS", "payload": {"progress": 0.5, "message": "half way"}}), flush=True)
time.sleep(1)
print(json.dumps({"type": "INSERT_DATA", "payload": {"done": True}}), flush=True)
print(json.dumps({"type": "STATUS", "payload": {"progress": 1.0, "message": "done"}}), flush=True)
"#;

/// Reads Server-Sent Events from `response` until `done` holds for the events so far; (name, data) pairs.
async fn sse_until(
    response: reqwest::Response,
    mut done: impl FnMut(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    use futures_util::StreamExt;
    let mut body = response.bytes_stream();
    let (mut text, mut events) = (String::new(), Vec::new());
    tokio::time::timeout(common::TIMEOUT, async {
        while !done(&events) {
            let chunk = body.next().await.expect("the stream stays open").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                };
                if let (Some(event), Some(data)) = (field("event:"), field("data:")) {
                    events.push((event, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    })
    .await
    .expect("the expected events arrived in time");
    events
}

/// A master with a local worker and the `progress` spider.
async fn master_with_progress(data: &std::path::Path) -> TestMaster {
    let master = TestMaster::start(data, true).await;
    create_spider(
        &master.client,
        "progress",
        "python3 main.py",
        &[("main.py", PROGRESS)],
    )
    .await;
    master
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_carries_state_changes_and_progress() {
    let data = tempfile::tempdir().unwrap();
    let master = master_with_progress(data.path()).await;
    let client = &master.client;
    let http = common::http();
    let base = format!("http://{}", master.http);

    // The response's headers arrive only once the server has subscribed, so nothing after this is missed.
    let subscribed = http
        .get(format!("{base}/api/v1/events?spider=progress"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(subscribed.status(), 200);
    let task = client.run_task(&run("progress")).await.unwrap();
    let events = sse_until(subscribed, |events| {
        events.iter().any(|(_, t)| t["status"] == "finished")
    })
    .await;
    let mine: Vec<_> = events
        .iter()
        .filter(|(name, t)| name == "task" && t["id"] == task.id.to_string())
        .map(|(_, t)| t)
        .collect();
    let statuses: Vec<_> = mine.iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert!(statuses.contains(&"running"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"finished"), "{statuses:?}");
    let half = mine
        .iter()
        .find(|t| t["progress"]["progress"] == 0.5)
        .unwrap_or_else(|| panic!("no event carried the 50% STATUS: {mine:?}"));
    assert_eq!(half["status"], "running");
    assert_eq!(half["progress"]["message"], "half way");
    assert_eq!(mine.last().unwrap()["progress"]["progress"], 1.0);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_work_in_prometheus_text_behind_the_token() {
    let data = tempfile::tempdir().unwrap();
    let master = master_with_progress(data.path()).await;
    let client = &master.client;
    let task = client.run_task(&run("progress")).await.unwrap();
    assert_eq!(
        wait_done(client, task.id).await.status,
        TaskStatus::Finished
    );
    let http = common::http();
    let base = format!("http://{}", master.http);
    let unauthorized = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let scrape = || async {
        let response = http
            .get(format!("{base}/metrics"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.unwrap()
    };
    let series = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    // The slot is given back just after the task is stored as ended.
    common::eventually("the task's runner slot to be free", || async {
        series(&scrape().await, "arachne_runner_slots_in_use") == 0.0
    })
    .await;
    let text = scrape().await;
    let value = |name: &str| series(&text, name);
    assert_eq!(value("arachne_tasks{status=\"finished\"}"), 1.0);
    assert_eq!(value("arachne_tasks{status=\"running\"}"), 0.0);
    assert_eq!(value("arachne_nodes_online"), 1.0);
    assert_eq!(value("arachne_runner_slots"), 4.0);
    assert_eq!(value("arachne_items_ingested_total"), 1.0);
    assert!(value("arachne_log_lines_ingested_total") >= 1.0);
    assert_eq!(value("arachne_dispatch_latency_seconds_count"), 1.0);
    assert_eq!(
        value("arachne_dispatch_latency_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert_eq!(
        client.metrics().await.unwrap().lines().count(),
        text.lines().count()
    );
    master.stop().await;
}

/// Prints three lines and two items once `go` exists, then waits for `stop`: output with no state change.
const QUIET_OUTPUT: &str = r#"
import json, os, sys, time
folder = sys.argv[1]
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.01)
for i in range(1, 4):
    print("line %d" % i, flush=True)
print(json.dumps({"type": "INSERT_DATA", "payload": [{"n": 1}, {"n": 2}]}), flush=True)
while not os.path.exists(os.path.join(folder, "stop")):
    time.sleep(0.01)
"#;

/// A page watching one task sees its log and item counts grow while it runs, though no STATUS or state
/// change comes with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_watcher_sees_its_output_counts_grow_without_state_changes() {
    let data = tempfile::tempdir().unwrap();
    let signals = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    create_spider(
        client,
        "quiet",
        "python3 main.py",
        &[("main.py", QUIET_OUTPUT)],
    )
    .await;
    let task = client
        .run_task(&RunTask {
            param: Some(signals.path().display().to_string()),
            ..run("quiet")
        })
        .await
        .unwrap();
    let subscribed = common::http()
        .get(format!(
            "http://{}/api/v1/events?task={}",
            master.http, task.id
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(subscribed.status(), 200);
    common::eventually("the task to run", || async {
        client.get_task(task.id).await.unwrap().status == TaskStatus::Running
    })
    .await;
    std::fs::write(signals.path().join("go"), "").unwrap();
    let events = sse_until(subscribed, |events| {
        events
            .iter()
            .any(|(_, t)| t["items"] == 2 && t["log_lines"] == 3)
    })
    .await;
    let (_, counted) = events.last().unwrap();
    assert_eq!(counted["status"], "running", "{counted}");
    std::fs::write(signals.path().join("stop"), "").unwrap();
    assert_eq!(
        wait_done(client, task.id).await.status,
        TaskStatus::Finished
    );
    master.stop().await;
}

const SLOW_LINES: &str = r#"
import sys, time
for i in range(1, 301):
    print("line %d" % i, flush=True)
    time.sleep(0.003)
"#;

/// Forwards connections to `target`, counting them; the first is cut after `cut_after` bytes of its response,
/// as a dropped connection or a restarted proxy would cut it.
async fn flaky_proxy(
    target: std::net::SocketAddr,
    cut_after: u64,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                if !first {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let upstream = tokio::io::copy(&mut client_read, &mut server_write);
                let downstream = async {
                    let mut limited = tokio::io::AsyncReadExt::take(&mut server_read, cut_after);
                    let _ = tokio::io::copy(&mut limited, &mut client_write).await;
                    let _ = client_write.shutdown().await;
                };
                tokio::select! {
                    _ = upstream => {}
                    () = downstream => {}
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_log_follow_reconnects_and_resumes_with_no_gap_and_no_duplicate() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    create_spider(
        client,
        "slow",
        "python3 main.py",
        &[("main.py", SLOW_LINES)],
    )
    .await;
    let (proxy, connections) = flaky_proxy(master.http, 4_000).await;
    let through_proxy =
        arachne_client::Client::with_token(&format!("http://{proxy}"), API_TOKEN).unwrap();

    let task = client.run_task(&run("slow")).await.unwrap();
    let mut seqs = Vec::new();
    let mut texts = Vec::new();
    let mut ended = None;
    tokio::time::timeout(
        common::TIMEOUT,
        through_proxy.follow_logs(task.id, 0, |event| match event {
            arachne_client::FollowEvent::Line(line) => {
                seqs.push(line.seq);
                texts.push(line.text);
            }
            arachne_client::FollowEvent::End(task) => ended = Some(task.status),
        }),
    )
    .await
    .expect("the follow ends with the task")
    .unwrap();
    assert!(
        connections.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the first stream was cut, so the follower must have reconnected"
    );
    assert_eq!(ended, Some(TaskStatus::Finished));
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every line once, in order");
    for i in 1..=300 {
        assert!(texts.contains(&format!("line {i}")), "line {i} missing");
    }

    // An EventSource reconnecting with Last-Event-ID gets what follows that line, then the end.
    let response = common::http()
        .get(format!(
            "http://{}/api/v1/tasks/{}/logs?follow=true",
            master.http, task.id
        ))
        .bearer_auth(API_TOKEN)
        .header("Last-Event-ID", "250")
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    let ids: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id:")?.trim().parse().ok())
        .collect();
    assert_eq!(ids, (251..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(
        body.contains("event: end") || body.contains("event:end"),
        "{body}"
    );
    master.stop().await;
}
