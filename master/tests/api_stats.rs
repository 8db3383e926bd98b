//! `GET /api/v1/stats` against a real master whose spiders really ran: the totals, the series, the spiders,
//! the slowest and most failing, and the nodes; all from the roll-ups the store keeps as runs end.

use arachne_test_support as common;

use arachne_api_types::{RunTask, StatsQuery};
use arachne_shared::TaskStatus;
use common::{TestMaster, create_spider, wait_done};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_overview_counts_what_ended_per_day_and_per_spider() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start(dir.path(), true).await;
    let client = &master.client;
    master.wait_nodes_online(1).await;
    let item = r#"import json; print(json.dumps({"type": "INSERT_DATA", "payload": [{"n": 1}, {"n": 2}]}))"#;
    create_spider(client, "good", "python3 main.py", &[("main.py", item)]).await;
    create_spider(client, "bad", "sh main.sh", &[("main.sh", "exit 1\n")]).await;
    let mut ended = Vec::new();
    for spider in ["good", "good", "good", "bad", "bad"] {
        let run = RunTask {
            spider: spider.into(),
            ..RunTask::default()
        };
        let task = wait_done(client, client.run_task(&run).await.unwrap().id).await;
        ended.push((spider, task.status, task.id));
    }
    assert_eq!(
        ended
            .iter()
            .filter(|(_, s, _)| *s == TaskStatus::Finished)
            .count(),
        3,
        "{ended:?}"
    );

    let week = client.stats(&StatsQuery::default()).await.unwrap();
    assert_eq!(week.days, 7);
    let t = &week.totals;
    assert_eq!(
        (t.runs, t.finished, t.error, t.items),
        (5, 3, 2, 6),
        "{t:?}"
    );
    assert_eq!(t.success_rate, Some(0.6));
    assert!(
        t.run_time_p50_ms.is_some() && t.run_time_p95_ms >= t.run_time_p50_ms,
        "{t:?}"
    );
    assert_eq!(week.series.len(), 7);
    assert_eq!(week.series.iter().map(|p| p.runs.runs).sum::<u64>(), 5);
    assert_eq!(
        week.series.last().unwrap().runs.runs,
        5,
        "today's runs are the last day's"
    );
    let per_spider: Vec<_> = week
        .spiders
        .iter()
        .map(|s| (s.spider.as_str(), s.runs.runs, s.runs.items))
        .collect();
    assert_eq!(per_spider, [("good", 3, 6), ("bad", 2, 0)]);
    assert_eq!(
        week.most_failing
            .iter()
            .map(|s| s.spider.as_str())
            .collect::<Vec<_>>(),
        ["bad"]
    );
    assert_eq!(week.slowest.len(), 2);
    assert_eq!((week.running, week.pending), (0, 0));
    assert!(
        week.nodes
            .iter()
            .any(|n| n.name == "local" && n.online && n.max_runners == 4),
        "{:?}",
        week.nodes
    );

    // One day is the last 24 hours, per hour; one spider's runs only.
    let day = client
        .stats(&StatsQuery {
            days: Some(1),
            spider: Some("bad".into()),
        })
        .await
        .unwrap();
    assert_eq!(day.series.len(), 24);
    assert_eq!(
        (day.totals.runs, day.totals.error, day.totals.success_rate),
        (2, 2, Some(0.0))
    );
    assert_eq!(day.series.iter().map(|p| p.runs.runs).sum::<u64>(), 2);

    // The figures are history: deleting a task does not rewrite them.
    client.delete_task(ended[0].2).await.unwrap();
    let after = client.stats(&StatsQuery::default()).await.unwrap();
    assert_eq!(after.totals, week.totals);

    let (status, message) = common::refusal(
        client
            .stats(&StatsQuery {
                days: Some(0),
                spider: None,
            })
            .await,
    );
    assert_eq!(status, 400);
    assert!(message.contains("days must be 1 to 366"), "{message}");
    let (status, message) = common::refusal(
        client
            .stats(&StatsQuery {
                days: None,
                spider: Some("nope".into()),
            })
            .await,
    );
    assert_eq!(
        (status, message.contains("spider \"nope\" not found")),
        (404, true),
        "{message}"
    );
    master.stop().await;
}
