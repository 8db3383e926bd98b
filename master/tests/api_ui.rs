//! What the web UI needs from the API beyond the task routes: the embedded UI itself, searching a task's log
//! in bounded steps, and checking a cron expression as it is typed — through a real master, worker and
//! spider process.

use arachne_test_support as common;

use arachne_api_types::{CronQuery, LogSearchQuery, RunTask};
use arachne_client::Error;
use arachne_shared::TaskStatus;
use common::{TestMaster, create_spider, wait_done};

/// 120,000 lines (more than one search request scans), every 25,000th holding the needle, in varying case.
const LONG_LOG: &str = r#"
for i in range(1, 120001):
    print(f"row {i} Needle" if i % 25000 == 0 else f"row {i}")
"#;

fn api_error(result: Result<impl std::fmt::Debug, Error>) -> (u16, String) {
    match result {
        Err(Error::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_is_searched_in_bounded_steps_to_its_end() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    create_spider(client, "long", "python3 main.py", &[("main.py", LONG_LOG)]).await;
    let run = RunTask {
        spider: "long".into(),
        ..Default::default()
    };
    let task = wait_done(client, client.run_task(&run).await.unwrap().id).await;
    assert_eq!(task.status, TaskStatus::Finished);
    assert_eq!(task.log_lines, 120_000);

    // Each step scans a bounded stretch; a client goes on from `scanned_to` until `done`.
    let mut query = LogSearchQuery {
        q: "nEEDLE".into(),
        ..Default::default()
    };
    let (mut found, mut steps) = (Vec::new(), 0);
    loop {
        let step = client.search_logs(task.id, &query).await.unwrap();
        steps += 1;
        assert!(step.scanned_to > query.after.unwrap_or(0) || step.done);
        found.extend(step.lines.into_iter().map(|l| (l.seq, l.text)));
        if step.done {
            break;
        }
        query.after = Some(step.scanned_to);
    }
    let expected: Vec<(u64, String)> = (1..=4)
        .map(|k| (k * 25_000, format!("row {} Needle", k * 25_000)))
        .collect();
    assert_eq!(found, expected);
    assert!(
        steps >= 3,
        "120,000 lines take several bounded steps, not {steps}"
    );

    // A match limit stops the step right after the last match; the next step starts after it.
    let first = client
        .search_logs(
            task.id,
            &LogSearchQuery {
                q: "needle".into(),
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((first.lines.len(), first.scanned_to), (1, 25_000));
    assert!(!first.done);

    let empty = LogSearchQuery::default();
    let (status, message) = api_error(client.search_logs(task.id, &empty).await);
    assert_eq!((status, message.as_str()), (400, "q must not be empty"));
    let unknown = arachne_shared::TaskId::new();
    let query = LogSearchQuery {
        q: "x".into(),
        ..Default::default()
    };
    assert_eq!(api_error(client.search_logs(unknown, &query).await).0, 404);
    master.stop().await;
}

#[tokio::test]
async fn cron_expressions_are_checked_with_their_next_fire_times() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let client = &master.client;
    let check = |cron: &str, tz: Option<&str>| CronQuery {
        cron: cron.into(),
        tz: tz.map(Into::into),
    };

    let every_10s = client
        .check_cron(&check("*/10 * * * * *", None))
        .await
        .unwrap();
    assert_eq!(every_10s.next.len(), 5);
    for pair in every_10s.next.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 10);
    }
    let berlin = client
        .check_cron(&check("0 9 * * *", Some("Europe/Berlin")))
        .await
        .unwrap();
    for at in &berlin.next {
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 in summer.
        let utc = at.format("%H:%M").to_string();
        assert!(utc == "08:00" || utc == "07:00", "{at}");
    }

    let (status, message) = api_error(client.check_cron(&check("61 * * * *", None)).await);
    assert_eq!(status, 400);
    assert!(message.contains("minute field \"61\""), "{message}");
    let (status, message) = api_error(client.check_cron(&check("* * *", None)).await);
    assert_eq!(status, 400);
    assert!(message.contains("has 3 fields"), "{message}");
    let (status, message) = api_error(
        client
            .check_cron(&check("@daily", Some("Mars/Olympus")))
            .await,
    );
    assert_eq!(status, 400);
    assert!(
        message.contains("unknown time zone \"Mars/Olympus\""),
        "{message}"
    );
    master.stop().await;
}

#[tokio::test]
async fn the_master_serves_its_web_ui_without_a_token() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let http = common::http();
    let base = format!("http://{}", master.http);

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"src="/ui/js/app.js""#));

    // Every module the app imports is served, as JavaScript.
    for module in [
        "app",
        "api",
        "dom",
        "logview",
        "nodes",
        "schedules",
        "spiders",
        "tasks",
    ] {
        let js = http
            .get(format!("{base}/ui/js/{module}.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(js.status(), 200, "{module}.js");
        assert!(
            js.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
    }
    let missing = http
        .get(format!("{base}/ui/js/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["message"], "no UI asset \"js/nope.js\"");

    // The data behind it still needs the token.
    let tasks = http
        .get(format!("{base}/api/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(tasks.status(), 401);
    master.stop().await;
}
