//! One conformance suite for the `Store` trait, run against every backend. A backend is added to
//! [`backends`] and must pass every case unchanged.

use std::sync::Arc;

use arachne_master::store::embedded::EmbeddedStore;
use arachne_master::store::{Store, TaskFilter};
use arachne_shared::{
    ItemRecord, LogLine, LogStream, Node, NodeStatus, Spider, SpiderId, Task, TaskId, TaskStatus,
};
use chrono::Utc;

/// Opens a backend's store in a folder; calling it again on the same folder reopens the same data.
type Opener = Box<dyn Fn(&std::path::Path) -> Arc<dyn Store>>;

/// Every backend, each with a fresh folder of its own.
fn backends() -> Vec<(&'static str, tempfile::TempDir, Opener)> {
    vec![(
        "embedded",
        tempfile::tempdir().unwrap(),
        Box::new(|dir| {
            Arc::new(EmbeddedStore::open(&dir.join("arachne.db")).unwrap()) as Arc<dyn Store>
        }),
    )]
}

fn task(spider: &str, priority: u8) -> Task {
    let now = Utc::now();
    Task {
        id: TaskId::new(),
        spider_id: SpiderId::new(),
        spider_name: spider.into(),
        version: String::new(),
        cmd: "true".into(),
        param: None,
        priority,
        settings: Default::default(),
        peak_rss_bytes: None,
        wait_ms: None,
        run_ms: None,
        status: TaskStatus::Pending,
        node: None,
        pid: None,
        exit_code: None,
        signal: None,
        error: None,
        created_at: now,
        updated_at: now,
        transitions: vec![],
        log_lines: 0,
        items: 0,
        progress: None,
        errors: vec![],
        error_count: 0,
    }
}

fn lines(range: std::ops::RangeInclusive<u64>) -> Vec<LogLine> {
    range
        .map(|seq| LogLine {
            seq,
            stream: LogStream::Stdout,
            text: format!("line {seq}"),
            at: Utc::now(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_order_is_priority_then_age_and_skips_assigned_tasks() {
    for (name, dir, open) in backends() {
        let store = open(dir.path());
        let low_old = task("s", 9);
        let high = task("s", 1);
        let default_a = task("s", 5);
        let default_b = task("s", 5);
        let mut assigned = task("s", 1);
        assigned.node = Some("n".into());
        for t in [&low_old, &high, &default_a, &default_b, &assigned] {
            store.insert_task(t).await.unwrap();
        }
        let order: Vec<_> = store
            .dispatchable(10)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(
            order,
            [high.id, default_a.id, default_b.id, low_old.id],
            "{name}"
        );
        assert_eq!(store.dispatchable(2).await.unwrap().len(), 2, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_conditional_and_only_one_racer_wins() {
    for (name, dir, open) in backends() {
        let store = open(dir.path());
        let t = task("s", 5);
        store.insert_task(&t).await.unwrap();
        let wrong = store
            .update_task(t.id, &[TaskStatus::Running], Box::new(|_| true))
            .await
            .unwrap();
        assert!(wrong.is_none(), "{name}: status did not match");
        let declined = store
            .update_task(
                t.id,
                &[TaskStatus::Pending],
                Box::new(|t| {
                    t.pid = Some(1);
                    false
                }),
            )
            .await
            .unwrap();
        assert!(declined.is_none(), "{name}: change declined");
        assert_eq!(
            store.get_task(t.id).await.unwrap().unwrap().pid,
            None,
            "{name}: a declined change is not written"
        );
        let missing = store
            .update_task(TaskId::new(), &[TaskStatus::Pending], Box::new(|_| true))
            .await
            .unwrap();
        assert!(missing.is_none(), "{name}");

        // Sixteen claims race for one pending task; exactly one gets it.
        let racers = (0..16).map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .update_task(
                        t.id,
                        &[TaskStatus::Pending],
                        Box::new(move |t| {
                            t.node = Some(format!("n{i}"));
                            t.set_status(TaskStatus::Running, Utc::now());
                            true
                        }),
                    )
                    .await
                    .unwrap()
                    .is_some()
            })
        });
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.unwrap());
        }
        assert_eq!(winners, 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_log_and_item_batches_are_stored_once() {
    for (name, dir, open) in backends() {
        let store = open(dir.path());
        let t = task("s", 5);
        store.insert_task(&t).await.unwrap();
        store.append_logs(t.id, &lines(1..=3)).await.unwrap();
        store.append_logs(t.id, &lines(2..=5)).await.unwrap();
        let stored: Vec<_> = store
            .logs(t.id, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.seq)
            .collect();
        assert_eq!(stored, [1, 2, 3, 4, 5], "{name}");
        assert_eq!(
            store.logs(t.id, 3, 1).await.unwrap()[0].text,
            "line 4",
            "{name}: paging by sequence"
        );

        let item =
            |seq| ItemRecord::from_object(seq, serde_json::json!({"n": seq}).as_object().unwrap());
        store.insert_items(t.id, &[item(1), item(2)]).await.unwrap();
        store.insert_items(t.id, &[item(2), item(3)]).await.unwrap();
        let items = store.items(t.id, 0, 100).await.unwrap();
        assert_eq!(
            items
                .iter()
                .map(|i| i.value()["n"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [1, 2, 3],
            "{name}"
        );
        let counted = store.get_task(t.id).await.unwrap().unwrap();
        assert_eq!(
            (counted.log_lines, counted.items),
            (5, 3),
            "{name}: counters count each record once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_nothing() {
    for (name, dir, open) in backends() {
        let store = open(dir.path());
        let tasks: Vec<_> = (0..8).map(|_| task("s", 5)).collect();
        for t in &tasks {
            store.insert_task(t).await.unwrap();
        }
        let writers = tasks.iter().map(|t| {
            let (store, id) = (Arc::clone(&store), t.id);
            tokio::spawn(async move {
                for batch in 0..20u64 {
                    store
                        .append_logs(id, &lines(batch * 50 + 1..=batch * 50 + 50))
                        .await
                        .unwrap();
                }
            })
        });
        for writer in writers {
            writer.await.unwrap();
        }
        for t in &tasks {
            let stored = store.logs(t.id, 0, 10_000).await.unwrap();
            assert_eq!(stored.len(), 1000, "{name}");
            assert!(
                stored
                    .iter()
                    .enumerate()
                    .all(|(i, l)| l.seq == i as u64 + 1),
                "{name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_pages_and_counts() {
    for (name, dir, open) in backends() {
        let store = open(dir.path());
        let mut ids = Vec::new();
        for i in 0..25 {
            let mut t = task(if i % 2 == 0 { "even" } else { "odd" }, 5);
            if i % 5 == 0 {
                t.status = TaskStatus::Finished;
                t.node = Some("n1".into());
            }
            store.insert_task(&t).await.unwrap();
            ids.push(t.id);
        }
        let page = |filter: TaskFilter| {
            let store = Arc::clone(&store);
            async move { store.list_tasks(&filter).await.unwrap() }
        };
        let (first, total) = page(TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(total, 25, "{name}");
        let newest_first: Vec<_> = ids.iter().rev().take(10).copied().collect();
        assert_eq!(
            first.iter().map(|t| t.id).collect::<Vec<_>>(),
            newest_first,
            "{name}"
        );
        let (last, _) = page(TaskFilter {
            limit: 10,
            offset: 20,
            ..Default::default()
        })
        .await;
        assert_eq!(last.len(), 5, "{name}");
        let (even, total) = page(TaskFilter {
            spider_name: Some("even".into()),
            limit: 100,
            ..Default::default()
        })
        .await;
        assert_eq!((even.len(), total), (13, 13), "{name}");
        let finished = TaskFilter {
            status: Some(TaskStatus::Finished),
            node: Some("n1".into()),
            limit: 100,
            ..Default::default()
        };
        assert_eq!(page(finished).await.1, 5, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopening_and_names_stay_unique() {
    for (name, dir, open) in backends() {
        let now = Utc::now();
        let spider = Spider {
            id: SpiderId::new(),
            name: "s".into(),
            cmd: "true".into(),
            version: "v1".into(),
            file_count: 1,
            total_bytes: 2,
            created_at: now,
            updated_at: now,
            settings: Default::default(),
        };
        let node = Node {
            name: "n".into(),
            status: NodeStatus::Online,
            max_runners: 3,
            max_runners_override: None,
            running: 1,
            version: "0".into(),
            registered_at: now,
            last_seen: now,
        };
        let t = task("s", 5);
        {
            let store = open(dir.path());
            store.put_spider(&spider).await.unwrap();
            let clash = Spider {
                id: SpiderId::new(),
                ..spider.clone()
            };
            assert!(
                store
                    .put_spider(&clash)
                    .await
                    .unwrap_err()
                    .to_string()
                    .contains("already exists"),
                "{name}"
            );
            store.put_node(&node).await.unwrap();
            store.insert_task(&t).await.unwrap();
            store.append_logs(t.id, &lines(1..=2)).await.unwrap();
        }
        let store = open(dir.path());
        let reread = store.spider_by_name("s").await.unwrap().unwrap();
        assert_eq!(
            (reread.id, reread.version.as_str()),
            (spider.id, "v1"),
            "{name}"
        );
        assert_eq!(store.list_spiders().await.unwrap().len(), 1, "{name}");
        assert_eq!(
            store.list_nodes().await.unwrap()[0].max_runners,
            3,
            "{name}"
        );
        let again = store.get_task(t.id).await.unwrap().unwrap();
        assert_eq!((again.id, again.log_lines), (t.id, 2), "{name}");
        // Reading does not consume: a task's status is there however often it is asked for.
        assert!(store.get_task(t.id).await.unwrap().is_some(), "{name}");
    }
}
