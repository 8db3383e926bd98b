//! One conformance suite for the `Store` trait, run against every backend: each case is a function of a
//! [`StoreUnderTest`], and [`conformance!`] makes one test of it per backend. A new backend gets a module there and
//! must pass every case unchanged.

use std::sync::Arc;

use arachne_master::store::embedded::EmbeddedStore;
use arachne_master::store::mongo::MongoStore;
use arachne_master::store::{ChildTotals, Store, TaskFilter};
use arachne_shared::results::{ItemCursor, ItemSearch};
use arachne_shared::spider::{Dedup, DedupMode};
use arachne_shared::{
    ItemRecord, LogLine, LogStream, Node, NodeStatus, Spider, SpiderId, Task, TaskId, TaskStatus,
    Token, TokenKind,
};
use chrono::Utc;

/// A backend with a place of its own: a fresh folder, or a fresh MongoDB database. Opening it again reopens the
/// same data, as a restarted master would.
struct StoreUnderTest {
    name: &'static str,
    dir: tempfile::TempDir,
    mongodb: Option<(String, String)>,
}

impl StoreUnderTest {
    async fn open(&self) -> Arc<dyn Store> {
        match &self.mongodb {
            None => Arc::new(EmbeddedStore::open(&self.dir.path().join("arachne.db")).unwrap()),
            Some((uri, database)) => Arc::new(
                MongoStore::connect(uri, Some(database), Some(RETENTION))
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// The retention a MongoDB store is opened with: its TTL indexes must say so.
const RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

impl StoreUnderTest {
    fn embedded() -> Self {
        Self {
            name: "embedded",
            dir: tempfile::tempdir().unwrap(),
            mongodb: None,
        }
    }

    /// A fresh database on the server `ARACHNE_TEST_MONGODB_URI` names (`scripts/mongodb` starts one;
    /// `.ci/run` always does); `None` without one.
    fn mongodb() -> Option<Self> {
        let uri = std::env::var("ARACHNE_TEST_MONGODB_URI")
            .ok()
            .filter(|u| !u.is_empty())?;
        Some(Self {
            name: "mongodb",
            dir: tempfile::tempdir().unwrap(),
            mongodb: Some((
                uri,
                format!("arachne_test_{}", uuid::Uuid::new_v4().simple()),
            )),
        })
    }
}

/// One test per case and backend (`embedded::CASE`, `mongodb::CASE`), so a failure names its backend and
/// never hides the other's result.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::StoreUnderTest::embedded()).await;
                }
            )+
        }
        mod mongodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = super::StoreUnderTest::mongodb() else {
                        eprintln!("skipped: ARACHNE_TEST_MONGODB_URI names no MongoDB server");
                        return;
                    };
                    super::$case(backend).await;
                }
            )+
        }
    };
}

conformance!(
    dispatch_order_is_priority_then_age_and_skips_assigned_tasks,
    updates_are_conditional_and_only_one_racer_wins,
    retried_log_and_item_batches_are_stored_once,
    items_are_deduplicated_by_key_across_tasks_of_a_collection,
    concurrent_writers_lose_nothing,
    listing_filters_pages_and_counts,
    everything_survives_reopening_and_names_stay_unique,
    a_fire_time_and_a_task_id_are_stored_once_and_a_refused_batch_writes_nothing,
    parents_are_never_dispatched_and_trees_list_by_parent_and_schedule,
    tasks_are_active_while_on_a_node_and_not_ended,
    schedules_are_stored_by_id_with_unique_names,
    ended_tasks_expire_with_their_logs_and_nothing_else_does,
    tokens_are_found_by_hash_with_unique_names_and_survive_reopening,
    tasks_filter_by_creation_time_and_an_ended_task_deletes_with_its_records,
    each_step_of_a_task_shows_in_every_query,
    a_spider_reads_as_last_written,
    a_deleted_spider_is_gone_and_its_name_free,
    a_removed_node_is_gone,
    deeply_nested_items_are_kept_whole,
    a_spider_s_items_are_found_across_its_tasks_newest_first,
    item_conditions_test_equality_containment_and_presence,
    item_searches_select_by_task_and_by_time,
    a_parent_counts_what_its_children_produced,
    tasks_are_read_back_in_the_order_they_ended,
    notification_rules_and_deliveries_are_kept_and_each_delivery_made_once,
    each_run_that_ends_is_counted_once_in_its_hour,
    users_have_unique_names_and_the_audit_log_reads_newest_first,
);

fn spider(name: &str) -> Spider {
    Spider::new(name, "true", Utc::now())
}

fn task(spider_name: &str, priority: u8) -> Task {
    let mut task = Task::pending(&spider(spider_name), Utc::now());
    task.priority = priority;
    task
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

async fn dispatch_order_is_priority_then_age_and_skips_assigned_tasks(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
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
        .dispatchable(10, 0)
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
    assert_eq!(store.dispatchable(2, 0).await.unwrap().len(), 2, "{name}");
}

async fn updates_are_conditional_and_only_one_racer_wins(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
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

    // Sixteen claims race for one pending task, through two stores on the same data as two masters
    // would hold; exactly one gets it.
    let other = backend.open().await;
    let racers = (0..16).map(|i| {
        let store = Arc::clone(if i % 2 == 0 { &store } else { &other });
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

async fn retried_log_and_item_batches_are_stored_once(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
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
    store
        .insert_items(&t.item_target(), &[item(1), item(2)])
        .await
        .unwrap();
    store
        .insert_items(&t.item_target(), &[item(2), item(3)])
        .await
        .unwrap();
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

/// An item of `url` (none when empty) from producer `by`.
fn page(seq: u64, url: &str, by: &str) -> ItemRecord {
    let mut item = serde_json::json!({"by": by});
    if !url.is_empty() {
        item["url"] = url.into();
    }
    ItemRecord::from_object(seq, item.as_object().unwrap())
}

/// `(url, by)` of a task's stored items, in order.
async fn pages(store: &dyn Store, task: &Task) -> Vec<(String, String)> {
    let items = store.items(task.id, 0, 100).await.unwrap();
    items
        .iter()
        .map(|i| {
            let v = i.value();
            let text = |f: &str| v[f].as_str().unwrap_or("").to_owned();
            (text("url"), text("by"))
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(u, b)| (u.to_string(), b.to_string()))
        .collect()
}

async fn items_are_deduplicated_by_key_across_tasks_of_a_collection(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    for mode in [DedupMode::Ignore, DedupMode::Overwrite] {
        let mut spider = spider(&format!("dedup_{mode}"));
        spider.dedup = Some(Dedup {
            keys: vec!["url".into()],
            mode,
        });
        let first = Task::pending(&spider, Utc::now());
        let second = Task::pending(&spider, Utc::now());
        // Same collection, no de-duplication: its items are never compared.
        let mut plain_spider = spider.clone();
        plain_spider.dedup = None;
        let plain = Task::pending(&plain_spider, Utc::now());
        // Another collection: its keys are its own.
        let mut other_spider = spider.clone();
        other_spider.results_collection = Some(format!("other_{mode}"));
        let other = Task::pending(&other_spider, Utc::now());
        for t in [&first, &second, &plain, &other] {
            store.insert_task(t).await.unwrap();
        }
        let first_batch = [page(1, "a", "1"), page(2, "b", "1"), page(3, "", "1")];
        store
            .insert_items(&first.item_target(), &first_batch)
            .await
            .unwrap();
        // A key twice in one batch, a key the first task stored, a new key, and an item without a key.
        let second_batch = [
            page(1, "c", "2"),
            page(2, "c", "2b"),
            page(3, "a", "2"),
            page(4, "", "2"),
        ];
        store
            .insert_items(&second.item_target(), &second_batch)
            .await
            .unwrap();
        // Retried batches change nothing.
        store
            .insert_items(&second.item_target(), &second_batch)
            .await
            .unwrap();
        store
            .insert_items(&first.item_target(), &first_batch[..2])
            .await
            .unwrap();
        store
            .insert_items(&plain.item_target(), &[page(1, "a", "p")])
            .await
            .unwrap();
        store
            .insert_items(&other.item_target(), &[page(1, "a", "o")])
            .await
            .unwrap();

        let (first_kept, second_kept) = match mode {
            DedupMode::Ignore => (
                pairs(&[("a", "1"), ("b", "1"), ("", "1")]),
                pairs(&[("c", "2"), ("", "2")]),
            ),
            DedupMode::Overwrite => (
                pairs(&[("b", "1"), ("", "1")]),
                pairs(&[("c", "2b"), ("a", "2"), ("", "2")]),
            ),
        };
        assert_eq!(pages(&*store, &first).await, first_kept, "{name} {mode}");
        assert_eq!(pages(&*store, &second).await, second_kept, "{name} {mode}");
        assert_eq!(
            pages(&*store, &plain).await,
            pairs(&[("a", "p")]),
            "{name} {mode}"
        );
        assert_eq!(
            pages(&*store, &other).await,
            pairs(&[("a", "o")]),
            "{name} {mode}"
        );
        let produced = |t: &Task| {
            let store = Arc::clone(&store);
            let id = t.id;
            async move { store.get_task(id).await.unwrap().unwrap().items }
        };
        assert_eq!(
            (produced(&first).await, produced(&second).await),
            (3, 4),
            "{name} {mode}: a task's counter is the items it produced"
        );
    }
}

async fn concurrent_writers_lose_nothing(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
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

async fn listing_filters_pages_and_counts(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
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

async fn everything_survives_reopening_and_names_stay_unique(backend: StoreUnderTest) {
    let name = backend.name;
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
        max_instances: Some(2),
        results_collection: Some("items_s".into()),
        dedup: Some(Dedup {
            keys: vec!["url".into()],
            mode: DedupMode::Ignore,
        }),
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
        enabled: false,
        labels: [("region".to_owned(), "eu".to_owned())].into(),
        metrics: None,
        max_cpu_percent: Some(90.0),
        max_memory_percent: None,
    };
    let t = task("s", 5);
    {
        let store = backend.open().await;
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
    let store = backend.open().await;
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

/// A run on two nodes for one schedule fire time: the parent and its two children (exclusive key "k"),
/// stored.
struct Tree {
    parent: Task,
    kids: Vec<Task>,
    schedule: arachne_shared::ScheduleId,
    fire: chrono::DateTime<Utc>,
}

async fn insert_tree(store: &dyn Store) -> Tree {
    let schedule = arachne_shared::ScheduleId::new();
    let fire = Utc::now();
    let mut parent = task("tree", 5);
    parent.children = 2;
    parent.schedule_id = Some(schedule);
    parent.fire_time = Some(fire);
    let mut kids = Vec::new();
    for node in ["a", "b"] {
        let mut child = task("tree", 5);
        child.parent_id = Some(parent.id);
        child.pinned_node = Some(node.into());
        child.schedule_id = Some(schedule);
        child.exclusive = Some("k".into());
        kids.push(child);
    }
    let mut all = vec![parent.clone()];
    all.extend(kids.clone());
    store.insert_tasks(&all).await.unwrap();
    Tree {
        parent,
        kids,
        schedule,
        fire,
    }
}

async fn a_fire_time_and_a_task_id_are_stored_once_and_a_refused_batch_writes_nothing(
    backend: StoreUnderTest,
) {
    let (name, store) = (backend.name, backend.open().await);
    let Tree {
        kids,
        schedule,
        fire,
        ..
    } = insert_tree(store.as_ref()).await;
    // One fire time, one run: a second parent for it is refused, and nothing of it is written.
    let mut again = task("tree", 5);
    again.schedule_id = Some(schedule);
    again.fire_time = Some(fire);
    let other = task("tree", 5);
    let err = store
        .insert_tasks(&[other.clone(), again])
        .await
        .unwrap_err();
    assert!(
        matches!(err, arachne_master::store::Error::Duplicate(_)),
        "{name}: {err}"
    );
    assert!(
        store.get_task(other.id).await.unwrap().is_none(),
        "{name}: all or nothing"
    );
    // A task id is stored once: inserting it again is refused, and the stored task is unchanged.
    let stored = &kids[0];
    let mut twin = stored.clone();
    twin.priority = 9;
    let err = store.insert_tasks(&[twin]).await.unwrap_err();
    assert!(
        matches!(&err, arachne_master::store::Error::Duplicate(what) if what.contains(&stored.id.to_string())),
        "{name}: {err}"
    );
    assert_eq!(
        store.get_task(stored.id).await.unwrap().unwrap().priority,
        stored.priority,
        "{name}"
    );
}

async fn parents_are_never_dispatched_and_trees_list_by_parent_and_schedule(
    backend: StoreUnderTest,
) {
    let (name, store) = (backend.name, backend.open().await);
    let Tree {
        parent,
        kids,
        schedule,
        ..
    } = insert_tree(store.as_ref()).await;
    // Parents are never dispatched themselves; their children are.
    let ids: Vec<_> = store
        .dispatchable(10, 0)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [kids[0].id, kids[1].id], "{name}");
    assert_eq!(
        store.dispatchable(10, 1).await.unwrap().len(),
        1,
        "{name}: offset"
    );

    let filter = TaskFilter {
        parent_id: Some(parent.id),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_tasks(&filter).await.unwrap().1, 2, "{name}");
    let filter = TaskFilter {
        schedule_id: Some(schedule),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_tasks(&filter).await.unwrap().1, 3, "{name}");
}

async fn tasks_are_active_while_on_a_node_and_not_ended(backend: StoreUnderTest) {
    use arachne_master::store::ActiveScope;
    let (name, store) = (backend.name, backend.open().await);
    let Tree { kids, schedule, .. } = insert_tree(store.as_ref()).await;
    let exclusive = ActiveScope::Exclusive("k".into());
    assert_eq!(
        store.count_active(&exclusive).await.unwrap(),
        0,
        "{name}: unassigned is not active"
    );
    store
        .update_task(
            kids[0].id,
            &[TaskStatus::Pending],
            Box::new(|t| {
                t.node = Some("a".into());
                true
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.count_active(&exclusive).await.unwrap(), 1, "{name}");
    assert_eq!(
        store
            .count_active(&ActiveScope::Spider("tree".into()))
            .await
            .unwrap(),
        1,
        "{name}"
    );
    assert_eq!(
        store
            .count_active(&ActiveScope::Schedule(schedule))
            .await
            .unwrap(),
        1,
        "{name}"
    );
    store
        .update_task(
            kids[0].id,
            &[TaskStatus::Pending],
            Box::new(|t| {
                t.set_status(TaskStatus::Running, Utc::now());
                true
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.count_active(&exclusive).await.unwrap(),
        1,
        "{name}: running counts"
    );
    store
        .update_task(
            kids[0].id,
            &[TaskStatus::Running],
            Box::new(|t| {
                t.finish(&arachne_shared::TaskOutcome::Finished, Utc::now());
                true
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.count_active(&exclusive).await.unwrap(),
        0,
        "{name}: ended does not"
    );
}

async fn schedules_are_stored_by_id_with_unique_names(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let now = Utc::now();
    let schedule = arachne_shared::Schedule {
        id: arachne_shared::ScheduleId::new(),
        name: "nightly".into(),
        spider: "s".into(),
        cron: "0 3 * * *".into(),
        timezone: "Europe/Berlin".into(),
        mode: arachne_shared::RunMode::Nodes,
        nodes: vec!["a".into()],
        param: Some("-x".into()),
        priority: 2,
        settings: Default::default(),
        enabled: true,
        overlap: arachne_shared::schedule::OverlapPolicy::Queue,
        misfire: arachne_shared::schedule::MisfirePolicy::Skip,
        last_fire: Some(now),
        created_at: now,
        updated_at: now,
        labels: Default::default(),
        node_labels: Default::default(),
    };
    store.put_schedule(&schedule).await.unwrap();
    let mut changed = schedule.clone();
    changed.cron = "0 4 * * *".into();
    store.put_schedule(&changed).await.unwrap();
    assert_eq!(
        store.get_schedule(schedule.id).await.unwrap(),
        Some(changed.clone()),
        "{name}"
    );
    let clash = arachne_shared::Schedule {
        id: arachne_shared::ScheduleId::new(),
        ..schedule.clone()
    };
    let err = store.put_schedule(&clash).await.unwrap_err();
    assert!(
        matches!(err, arachne_master::store::Error::Duplicate(_)),
        "{name}: {err}"
    );
    assert_eq!(store.list_schedules().await.unwrap(), [changed], "{name}");
    assert!(store.delete_schedule(schedule.id).await.unwrap(), "{name}");
    assert!(!store.delete_schedule(schedule.id).await.unwrap(), "{name}");
    assert!(store.list_schedules().await.unwrap().is_empty(), "{name}");
}

async fn ended_tasks_expire_with_their_logs_and_nothing_else_does(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let long_ago = Utc::now() - chrono::Duration::days(40);
    let ended = |at: chrono::DateTime<Utc>| {
        let mut t = task("old", 5);
        t.created_at = at;
        t.set_status(TaskStatus::Running, at);
        t.set_status(TaskStatus::Finished, at);
        t
    };
    let old = ended(long_ago);
    let recent = ended(Utc::now() - chrono::Duration::hours(1));
    let mut old_running = task("old", 5);
    old_running.created_at = long_ago;
    old_running.set_status(TaskStatus::Running, long_ago);
    let mut old_pending = task("old", 5);
    old_pending.created_at = long_ago;
    for t in [&old, &recent, &old_running, &old_pending] {
        store.insert_task(t).await.unwrap();
    }
    store.append_logs(old.id, &lines(1..=3)).await.unwrap();
    store.append_logs(recent.id, &lines(1..=3)).await.unwrap();
    // Reading a task, however often, never removes it.
    for _ in 0..20 {
        assert!(store.get_task(old.id).await.unwrap().is_some(), "{name}");
    }

    let cutoff = Utc::now() - chrono::Duration::days(30);
    assert_eq!(
        store.delete_ended_before(cutoff).await.unwrap(),
        1,
        "{name}"
    );
    assert!(store.get_task(old.id).await.unwrap().is_none(), "{name}");
    assert!(
        store.logs(old.id, 0, 100).await.unwrap().is_empty(),
        "{name}"
    );
    assert_eq!(
        store.logs(recent.id, 0, 100).await.unwrap().len(),
        3,
        "{name}"
    );
    for kept in [&recent, &old_running, &old_pending] {
        let found = store.get_task(kept.id).await.unwrap();
        assert_eq!(found.map(|t| t.status), Some(kept.status), "{name}");
    }
    assert_eq!(
        store.delete_ended_before(cutoff).await.unwrap(),
        0,
        "{name}"
    );

    if let Some((uri, database)) = &backend.mongodb {
        // The server expires them on its own too: a TTL index on both collections, with the retention.
        let client = ::mongodb::Client::with_uri_str(uri).await.unwrap();
        let db = client.database(database);
        for collection in ["tasks", "task_logs"] {
            let coll = db.collection::<bson::Document>(collection);
            let mut indexes = coll.list_indexes().await.unwrap();
            let mut ttl = None;
            while indexes.advance().await.unwrap() {
                let index = indexes.deserialize_current().unwrap();
                if index.keys == bson::doc! {"ended_at": 1} {
                    ttl = index.options.and_then(|o| o.expire_after);
                }
            }
            assert_eq!(ttl, Some(RETENTION), "{collection}");
        }
    }
}

async fn tokens_are_found_by_hash_with_unique_names_and_survive_reopening(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let token = |token_name: &str, secret: &str, kind| Token {
        name: token_name.into(),
        kind,
        hash: Token::hash_of(secret),
        created_at: arachne_shared::from_millis(Utc::now().timestamp_millis()),
        role: arachne_shared::Role::Admin,
        user: None,
        expires_at: None,
        session: false,
    };
    let mut ci = token("ci", "secret-1", TokenKind::Api);
    // A user's token, with its role and expiry, reads back whole.
    ci.role = arachne_shared::Role::Developer;
    ci.user = Some("ada".into());
    ci.expires_at = Some(
        arachne_shared::from_millis(Utc::now().timestamp_millis()) + chrono::Duration::days(30),
    );
    store.insert_token(&ci).await.unwrap();
    store
        .insert_token(&token("rack-2", "secret-2", TokenKind::Worker))
        .await
        .unwrap();
    let clash = store
        .insert_token(&token("ci", "secret-3", TokenKind::Api))
        .await;
    assert!(
        matches!(clash, Err(arachne_master::store::Error::Duplicate(_))),
        "{name}: {clash:?}"
    );
    let store = backend.open().await;
    assert_eq!(
        store
            .token_by_hash(&Token::hash_of("secret-1"))
            .await
            .unwrap(),
        Some(ci),
        "{name}"
    );
    assert_eq!(
        store.token_by_hash("secret-1").await.unwrap(),
        None,
        "{name}"
    );
    let names: Vec<String> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["ci", "rack-2"], "{name}");
    assert!(store.delete_token("ci").await.unwrap(), "{name}");
    assert!(!store.delete_token("ci").await.unwrap(), "{name}");
    assert_eq!(
        store
            .token_by_hash(&Token::hash_of("secret-1"))
            .await
            .unwrap(),
        None,
        "{name}: a revoked token opens nothing"
    );
}

async fn tasks_filter_by_creation_time_and_an_ended_task_deletes_with_its_records(
    backend: StoreUnderTest,
) {
    let name = backend.name;
    let store = backend.open().await;
    // Creation-time filters work to the millisecond, the precision of an id's time.
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let hours_ago = |h: i64| now - chrono::Duration::hours(h);
    let mut made = Vec::new();
    for h in [3, 2, 1] {
        let mut t = task("timed", 5);
        // Ids carry their creation time; these are made as if created hours apart.
        t.id = TaskId::first_at(hours_ago(h));
        t.created_at = hours_ago(h);
        store.insert_task(&t).await.unwrap();
        made.push(t);
    }
    let ids = |filter: TaskFilter| {
        let store = Arc::clone(&store);
        async move {
            let (tasks, total) = store.list_tasks(&filter).await.unwrap();
            assert_eq!(tasks.len() as u64, total);
            tasks.into_iter().map(|t| t.id).collect::<Vec<_>>()
        }
    };
    let window = |since: Option<i64>, until: Option<chrono::DateTime<Utc>>| TaskFilter {
        spider_name: Some("timed".into()),
        created_since: since.map(hours_ago),
        created_until: until,
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        ids(window(Some(2), None)).await,
        [made[2].id, made[1].id],
        "{name}"
    );
    assert_eq!(
        ids(window(None, Some(hours_ago(1)))).await,
        [made[1].id, made[0].id],
        "{name}"
    );
    assert_eq!(
        ids(window(Some(2), Some(hours_ago(1)))).await,
        [made[1].id],
        "{name}"
    );
    let just_after = made[0].created_at + chrono::Duration::milliseconds(1);
    assert_eq!(
        ids(window(None, Some(just_after))).await,
        [made[0].id],
        "{name}"
    );

    let mut ended = task("gone", 5);
    ended.set_status(TaskStatus::Running, now);
    ended.set_status(TaskStatus::Finished, now);
    let mut running = task("gone", 5);
    running.set_status(TaskStatus::Running, now);
    for t in [&ended, &running] {
        store.insert_task(t).await.unwrap();
        store.append_logs(t.id, &lines(1..=3)).await.unwrap();
        let items = [page(1, "https://a", "x"), page(2, "https://b", "x")];
        store.insert_items(&t.item_target(), &items).await.unwrap();
    }
    assert!(
        !store.delete_task(&running).await.unwrap(),
        "{name}: a running task stays"
    );
    assert!(
        store.get_task(running.id).await.unwrap().is_some(),
        "{name}"
    );
    assert_eq!(
        store.logs(running.id, 0, 10).await.unwrap().len(),
        3,
        "{name}"
    );
    assert!(store.delete_task(&ended).await.unwrap(), "{name}");
    assert!(store.get_task(ended.id).await.unwrap().is_none(), "{name}");
    assert!(
        store.logs(ended.id, 0, 10).await.unwrap().is_empty(),
        "{name}"
    );
    assert!(
        store.items(ended.id, 0, 10).await.unwrap().is_empty(),
        "{name}"
    );
    assert_eq!(
        store.items(running.id, 0, 10).await.unwrap().len(),
        2,
        "{name}"
    );
    assert!(
        !store.delete_task(&ended).await.unwrap(),
        "{name}: deleting twice finds nothing"
    );
}

/// Every step of a task's life changes a different set of queried fields (the embedded store writes only the
/// columns that changed); each query must see every step.
async fn each_step_of_a_task_shows_in_every_query(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let t = task("steps", 5);
    store.insert_task(&t).await.unwrap();
    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let with = |status: TaskStatus, node: Option<&str>| TaskFilter {
        spider_name: Some("steps".into()),
        status: Some(status),
        node: node.map(str::to_owned),
        limit: 10,
        ..Default::default()
    };
    let spider_scope = arachne_master::store::ActiveScope::Spider("steps".into());

    let step = |change: Box<dyn FnMut(&mut Task) -> bool + Send>| {
        let store = Arc::clone(&store);
        async move {
            store
                .update_task(t.id, &TaskStatus::ALL, change)
                .await
                .unwrap()
                .expect("the change applies")
        }
    };
    step(Box::new(|t| {
        t.priority = 2;
        true
    }))
    .await;
    assert_eq!(
        store.dispatchable(10, 0).await.unwrap()[0].priority,
        2,
        "{name}"
    );

    step(Box::new(|t| {
        t.node = Some("n1".into());
        true
    }))
    .await;
    assert!(
        store.dispatchable(10, 0).await.unwrap().is_empty(),
        "{name}"
    );
    let (pending, _) = store
        .list_tasks(&with(TaskStatus::Pending, Some("n1")))
        .await
        .unwrap();
    assert_eq!(ids(pending), [t.id], "{name}: assigned, listed by node");
    assert_eq!(
        store.count_active(&spider_scope).await.unwrap(),
        1,
        "{name}"
    );

    step(Box::new(|t| {
        t.set_status(TaskStatus::Running, Utc::now());
        true
    }))
    .await;
    let (running, _) = store
        .list_tasks(&with(TaskStatus::Running, Some("n1")))
        .await
        .unwrap();
    assert_eq!(ids(running), [t.id], "{name}: running");
    let (pending, _) = store
        .list_tasks(&with(TaskStatus::Pending, None))
        .await
        .unwrap();
    assert!(pending.is_empty(), "{name}: no longer pending");

    let ended = Utc::now() - chrono::Duration::hours(2);
    step(Box::new(move |t| {
        t.finish(&arachne_shared::TaskOutcome::Finished, ended);
        true
    }))
    .await;
    let (finished, _) = store
        .list_tasks(&with(TaskStatus::Finished, Some("n1")))
        .await
        .unwrap();
    assert_eq!(ids(finished), [t.id], "{name}: finished");
    assert_eq!(
        store.count_active(&spider_scope).await.unwrap(),
        0,
        "{name}"
    );
    let counts = store.count_by_status().await.unwrap();
    assert!(
        counts.contains(&(TaskStatus::Finished, 1)),
        "{name}: {counts:?}"
    );
    // The end time is what the retention sweep goes by.
    let cutoff = Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        store.delete_ended_before(cutoff).await.unwrap(),
        1,
        "{name}"
    );
    assert!(store.get_task(t.id).await.unwrap().is_none(), "{name}");
}

/// A spider is always read as last written: after a change, a rename, and a write refused as a duplicate
/// (the embedded store keeps spiders it has read in memory).
async fn a_spider_reads_as_last_written(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let mut s = spider("first");
    s.version = "v1".into();
    store.put_spider(&s).await.unwrap();
    let read = |n: &'static str| {
        let store = Arc::clone(&store);
        async move { store.spider_by_name(n).await.unwrap().map(|s| s.version) }
    };
    assert_eq!(read("first").await.as_deref(), Some("v1"), "{name}");

    s.version = "v2".into();
    store.put_spider(&s).await.unwrap();
    assert_eq!(read("first").await.as_deref(), Some("v2"), "{name}");

    s.name = "renamed".into();
    store.put_spider(&s).await.unwrap();
    assert_eq!(read("first").await, None, "{name}: the old name is gone");
    assert_eq!(read("renamed").await.as_deref(), Some("v2"), "{name}");

    let mut clash = spider("renamed");
    clash.version = "v9".into();
    assert!(store.put_spider(&clash).await.is_err(), "{name}");
    assert_eq!(read("renamed").await.as_deref(), Some("v2"), "{name}");
}

async fn a_deleted_spider_is_gone_and_its_name_free(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let gone = spider("gone");
    let kept = spider("kept");
    store.put_spider(&gone).await.unwrap();
    store.put_spider(&kept).await.unwrap();
    // Read once, so a cached copy would be what a wrong delete leaves behind.
    assert!(store.spider_by_name("gone").await.unwrap().is_some());

    assert!(store.delete_spider(gone.id).await.unwrap(), "{name}");
    assert!(
        store.spider_by_name("gone").await.unwrap().is_none(),
        "{name}"
    );
    let names: Vec<String> = store
        .list_spiders()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["kept"], "{name}");
    assert!(
        !store.delete_spider(gone.id).await.unwrap(),
        "{name}: a second delete finds nothing"
    );

    let again = spider("gone");
    store.put_spider(&again).await.unwrap();
    assert_eq!(
        store.spider_by_name("gone").await.unwrap().map(|s| s.id),
        Some(again.id),
        "{name}"
    );
}

async fn a_removed_node_is_gone(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let node = |n: &str| arachne_shared::Node {
        name: n.into(),
        status: arachne_shared::NodeStatus::Offline,
        max_runners: 2,
        max_runners_override: None,
        running: 0,
        version: "0.1.0".into(),
        registered_at: Utc::now(),
        last_seen: Utc::now(),
        enabled: true,
        labels: Default::default(),
        metrics: None,
        max_cpu_percent: None,
        max_memory_percent: None,
    };
    store.put_node(&node("gone")).await.unwrap();
    store.put_node(&node("kept")).await.unwrap();
    assert!(store.delete_node("gone").await.unwrap(), "{name}");
    let names: Vec<String> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["kept"], "{name}");
    assert!(
        !store.delete_node("gone").await.unwrap(),
        "{name}: a second removal finds nothing"
    );
}

/// An item nested deeper than a MongoDB document may be (or than a JSON reader goes) is stored and read back
/// whole, and two such items under de-duplication are both kept rather than merged.
async fn deeply_nested_items_are_kept_whole(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let mut spider = spider("deep");
    spider.dedup = Some(Dedup {
        keys: vec!["url".into()],
        mode: DedupMode::Ignore,
    });
    let task = Task::pending(&spider, Utc::now());
    store.insert_task(&task).await.unwrap();
    let deep = |depth: usize, leaf: u32| {
        let text = format!(
            r#"{{"url":{}{leaf}{},"n":{leaf}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        serde_json::value::RawValue::from_string(text).unwrap()
    };
    let items = [
        ItemRecord::new(1, deep(150, 1)).unwrap(),
        ItemRecord::new(2, deep(300, 2)).unwrap(),
        ItemRecord::new(3, deep(300, 3)).unwrap(),
    ];
    store
        .insert_items(&task.item_target(), &items)
        .await
        .unwrap();
    let read = store.items(task.id, 0, 10).await.unwrap();
    let texts: Vec<&str> = read.iter().map(|i| i.data.get()).collect();
    let expected: Vec<&str> = items.iter().map(|i| i.data.get()).collect();
    assert_eq!(texts, expected, "{name}");
}

/// A spider with two tasks of items, and a second spider of the same name writing to the same collection.
struct ItemsOfTwoRuns {
    spider: Spider,
    first: Task,
    second: Task,
}

async fn items_of_two_runs(store: &dyn Store) -> ItemsOfTwoRuns {
    let spider = spider("results");
    let first = Task::pending(&spider, Utc::now());
    let second = Task::pending(&spider, Utc::now());
    // Another spider of the same name (one deleted and made again, say) in the same collection.
    let mut neighbour = self::spider("results");
    neighbour.results_collection = Some(spider.results_collection());
    let theirs = Task::pending(&neighbour, Utc::now());
    store
        .insert_tasks(&[first.clone(), second.clone(), theirs.clone()])
        .await
        .unwrap();
    // As the spider wrote them: the stores keep the fields' order.
    let item = |seq, text: &str| {
        ItemRecord::new(
            seq,
            serde_json::value::RawValue::from_string(text.into()).unwrap(),
        )
        .unwrap()
    };
    let first_items = [
        item(
            1,
            r#"{"title":"Red book","price":10,"stock":true,"note":null}"#,
        ),
        item(2, r#"{"title":"blue","price":"10","tags":["a","b"]}"#),
    ];
    let second_items = [
        item(1, r#"{"title":"green","price":12.5,"meta":{"lang":"en"}}"#),
        item(2, r#"{"title":"Book of red","price":11,"stock":false}"#),
        item(3, r#"{"title":"a","tags":"a"}"#),
    ];
    store
        .insert_items(&first.item_target(), &first_items)
        .await
        .unwrap();
    store
        .insert_items(&second.item_target(), &second_items)
        .await
        .unwrap();
    store
        .insert_items(&theirs.item_target(), &[item(1, r#"{"title":"theirs"}"#)])
        .await
        .unwrap();
    ItemsOfTwoRuns {
        spider,
        first,
        second,
    }
}

fn search(spider: &Spider) -> ItemSearch {
    ItemSearch {
        spider: spider.id,
        spider_name: spider.name.clone(),
        collection: spider.results_collection(),
        task: None,
        since: None,
        until: None,
        conditions: Vec::new(),
        after: None,
        limit: 100,
    }
}

/// `(task, seq)` of what a search finds, and how many it counts.
async fn found(store: &dyn Store, search: &ItemSearch) -> (Vec<(TaskId, u64)>, u64) {
    let items = store.find_items(search).await.unwrap();
    let count = store.count_items(search).await.unwrap();
    (items.iter().map(|i| (i.task_id, i.seq)).collect(), count)
}

async fn a_spider_s_items_are_found_across_its_tasks_newest_first(backend: StoreUnderTest) {
    let store = backend.open().await;
    let runs = items_of_two_runs(store.as_ref()).await;
    let (first, second) = (runs.first.id, runs.second.id);
    let all = vec![
        (second, 3),
        (second, 2),
        (second, 1),
        (first, 2),
        (first, 1),
    ];
    assert_eq!(
        found(store.as_ref(), &search(&runs.spider)).await,
        (all.clone(), 5),
        "{}",
        backend.name
    );
    let items = store.find_items(&search(&runs.spider)).await.unwrap();
    assert_eq!(
        items[0].data.get(),
        r#"{"title":"a","tags":"a"}"#,
        "{}",
        backend.name
    );
    assert_eq!(
        items[4].data.get(),
        r#"{"title":"Red book","price":10,"stock":true,"note":null}"#
    );
    assert!(items.iter().all(|i| i.at <= Utc::now()), "{}", backend.name);

    // Pages of two, each after the last item of the one before; the count is the whole set's.
    let mut paged = Vec::new();
    let mut query = ItemSearch {
        limit: 2,
        ..search(&runs.spider)
    };
    loop {
        let (page, count) = found(store.as_ref(), &query).await;
        assert_eq!(count, 5, "{}", backend.name);
        let Some(&(task, seq)) = page.last() else {
            break;
        };
        paged.extend(page);
        query.after = Some(ItemCursor { task, seq });
    }
    assert_eq!(paged, all, "{}", backend.name);
}

async fn item_conditions_test_equality_containment_and_presence(backend: StoreUnderTest) {
    let store = backend.open().await;
    let runs = items_of_two_runs(store.as_ref()).await;
    let (first, second) = (runs.first.id, runs.second.id);
    for (conditions, expected) in [
        // A number field equals the number the text spells, a string field the text.
        (vec!["price=10"], vec![(first, 2), (first, 1)]),
        (vec!["price=12.5"], vec![(second, 1)]),
        (vec!["stock=true"], vec![(first, 1)]),
        (vec!["stock=false"], vec![(second, 2)]),
        (vec!["note=null"], vec![(first, 1)]),
        (vec!["meta.lang=en"], vec![(second, 1)]),
        // An array is not equal to one of its elements.
        (vec!["tags=a"], vec![(second, 3)]),
        // Containment is of strings, case-sensitive.
        (vec!["title~book"], vec![(first, 1)]),
        (vec!["title~ook"], vec![(second, 2), (first, 1)]),
        (vec!["price~1"], vec![(first, 2)]),
        // Presence, null included.
        (vec!["note"], vec![(first, 1)]),
        (vec!["meta.lang"], vec![(second, 1)]),
        (vec!["missing"], vec![]),
        // All conditions hold.
        (vec!["title~ook", "price=11"], vec![(second, 2)]),
        (vec!["stock", "price=10"], vec![(first, 1)]),
    ] {
        let query = ItemSearch {
            conditions: conditions.iter().map(|c| c.parse().unwrap()).collect(),
            ..search(&runs.spider)
        };
        let count = expected.len() as u64;
        assert_eq!(
            found(store.as_ref(), &query).await,
            (expected, count),
            "{} {conditions:?}",
            backend.name
        );
    }
}

async fn item_searches_select_by_task_and_by_time(backend: StoreUnderTest) {
    let store = backend.open().await;
    let before = Utc::now() - chrono::Duration::seconds(1);
    let runs = items_of_two_runs(store.as_ref()).await;
    let after = Utc::now() + chrono::Duration::seconds(1);
    let first = runs.first.id;
    let of_first = ItemSearch {
        task: Some(first),
        ..search(&runs.spider)
    };
    assert_eq!(
        found(store.as_ref(), &of_first).await,
        (vec![(first, 2), (first, 1)], 2),
        "{}",
        backend.name
    );
    for (since, until, count) in [
        (Some(before), Some(after), 5),
        (Some(after), None, 0),
        (None, Some(before), 0),
    ] {
        let query = ItemSearch {
            since,
            until,
            ..search(&runs.spider)
        };
        assert_eq!(
            found(store.as_ref(), &query).await.1,
            count,
            "{} {since:?}..{until:?}",
            backend.name
        );
    }
}

async fn a_parent_counts_what_its_children_produced(backend: StoreUnderTest) {
    let store = backend.open().await;
    let tree = insert_tree(store.as_ref()).await;
    let lonely = task("lonely", 5);
    store.insert_task(&lonely).await.unwrap();
    for (kid, (items, log_lines)) in tree.kids.iter().zip([(2, 3), (1, 4)]) {
        let batch: Vec<ItemRecord> = (1..=items).map(|seq| page(seq, "", "kid")).collect();
        store
            .insert_items(&kid.item_target(), &batch)
            .await
            .unwrap();
        store
            .append_logs(kid.id, &lines(1..=log_lines))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .child_totals(&[tree.parent.id, lonely.id])
            .await
            .unwrap(),
        [ChildTotals {
            parent: tree.parent.id,
            items: 3,
            log_lines: 7,
        }],
        "{}",
        backend.name
    );
    assert!(store.child_totals(&[]).await.unwrap().is_empty());
}

async fn tasks_are_read_back_in_the_order_they_ended(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let base =
        arachne_shared::from_millis(Utc::now().timestamp_millis()) - chrono::Duration::minutes(5);
    let ended = |minutes: i64| {
        let mut t = task("order", 5);
        t.set_status(TaskStatus::Running, base);
        t.set_status(TaskStatus::Error, base + chrono::Duration::minutes(minutes));
        t
    };
    // Made in one order, ended in another; two end at the same millisecond.
    let (third, first, second_a, second_b) = (ended(3), ended(1), ended(2), ended(2));
    let running = task("order", 5);
    for t in [&third, &first, &second_a, &second_b, &running] {
        store.insert_task(t).await.unwrap();
    }
    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let all = ids(store.ended_since(base, None, 10).await.unwrap());
    let (a, b) = if second_a.id < second_b.id {
        (second_a.id, second_b.id)
    } else {
        (second_b.id, second_a.id)
    };
    assert_eq!(all, vec![first.id, a, b, third.id], "{name}");
    // Paging from the last one read: the rest, none twice.
    let at = base + chrono::Duration::minutes(2);
    assert_eq!(
        ids(store.ended_since(at, Some(a), 10).await.unwrap()),
        vec![b, third.id],
        "{name}"
    );
    assert_eq!(
        ids(store.ended_since(at, None, 1).await.unwrap()),
        vec![a],
        "{name}"
    );
}

async fn notification_rules_and_deliveries_are_kept_and_each_delivery_made_once(
    backend: StoreUnderTest,
) {
    use arachne_shared::notify::{
        Channel, Delivery, DeliveryId, DeliveryStatus, Message, Notification, Trigger,
    };
    let name = backend.name;
    let store = backend.open().await;
    let rule = |rule_name: &str| Notification {
        name: rule_name.into(),
        channel: Channel::Webhook {
            url: "http://127.0.0.1:1/hook".into(),
            secret: Some("s".into()),
        },
        triggers: vec![Trigger::Error],
        longer_than_minutes: None,
        spider: None,
        schedule: None,
        enabled: true,
        created_at: arachne_shared::from_millis(Utc::now().timestamp_millis()),
    };
    store.put_notification(&rule("ops")).await.unwrap();
    store.put_notification(&rule("alerts")).await.unwrap();
    let mut changed = rule("ops");
    changed.triggers.push(Trigger::Abnormal);
    store.put_notification(&changed).await.unwrap();
    let now = arachne_shared::from_millis(Utc::now().timestamp_millis());
    let delivery = |rule: &str, subject: &str, due_in: i64| Delivery {
        id: DeliveryId::new(),
        notification: rule.into(),
        channel: "webhook".into(),
        trigger: "error".into(),
        subject: subject.into(),
        message: Message {
            title: "t".into(),
            event: "error".into(),
            task: None,
            node: None,
            link: None,
            at: now,
        },
        status: DeliveryStatus::Pending,
        attempts: 0,
        response_status: None,
        error: None,
        created_at: now,
        next_attempt_at: now + chrono::Duration::seconds(due_in),
        delivered_at: None,
    };
    let later = delivery("ops", "task:1", 60);
    let sooner = delivery("ops", "task:2", 0);
    let other = delivery("alerts", "task:1", 30);
    for d in [&later, &sooner, &other] {
        assert!(store.insert_delivery(d).await.unwrap(), "{name}");
    }
    // The same rule, trigger and subject again is not a second delivery.
    assert!(
        !store
            .insert_delivery(&delivery("ops", "task:1", 0))
            .await
            .unwrap(),
        "{name}"
    );
    let pending = |list: Vec<Delivery>| list.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        pending(store.pending_deliveries(10).await.unwrap()),
        vec![sooner.id, other.id, later.id],
        "{name}"
    );
    let mut done = sooner.clone();
    done.status = DeliveryStatus::Delivered;
    done.attempts = 1;
    done.response_status = Some(204);
    store.put_delivery(&done).await.unwrap();
    assert_eq!(
        pending(store.pending_deliveries(10).await.unwrap()),
        vec![other.id, later.id],
        "{name}"
    );

    // All of it survives reopening; deleting a rule keeps its deliveries as history.
    drop(store);
    let store = backend.open().await;
    let rules: Vec<_> = store
        .list_notifications()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.triggers, r.channel))
        .collect();
    assert_eq!(
        rules,
        vec![
            (
                "alerts".into(),
                vec![Trigger::Error],
                rule("alerts").channel
            ),
            (
                "ops".into(),
                changed.triggers.clone(),
                changed.channel.clone()
            ),
        ],
        "{name}"
    );
    assert!(store.delete_notification("ops").await.unwrap(), "{name}");
    assert!(!store.delete_notification("ops").await.unwrap(), "{name}");
    assert_eq!(store.list_notifications().await.unwrap().len(), 1, "{name}");
    let ops = store.list_deliveries(Some("ops"), 10).await.unwrap();
    assert_eq!(ops, vec![done.clone(), later.clone()], "{name}");
    assert_eq!(
        pending(store.list_deliveries(None, 2).await.unwrap()),
        vec![other.id, done.id],
        "{name}"
    );
}

async fn each_run_that_ends_is_counted_once_in_its_hour(backend: StoreUnderTest) {
    let name = backend.name;
    let store = backend.open().await;
    let started = Utc::now() - chrono::Duration::seconds(90);
    let end = |status: TaskStatus| -> arachne_master::store::TaskChange {
        Box::new(move |t: &mut Task| {
            t.set_status(status, Utc::now());
            true
        })
    };
    let mut runs = Vec::new();
    for (spider, status) in [
        ("a", TaskStatus::Finished),
        ("a", TaskStatus::Finished),
        ("a", TaskStatus::Error),
        ("b", TaskStatus::Abnormal),
    ] {
        let mut t = task(spider, 5);
        t.set_status(TaskStatus::Running, started);
        store.insert_task(&t).await.unwrap();
        runs.push((t.id, status));
    }
    store.append_logs(runs[0].0, &lines(1..=2)).await.unwrap();
    for &(id, status) in &runs {
        store
            .update_task(id, &[TaskStatus::Running], end(status))
            .await
            .unwrap()
            .unwrap();
    }
    // A later change of an ended task (its retry noted, say) is not another run.
    store
        .update_task(
            runs[2].0,
            &[TaskStatus::Error],
            Box::new(|t: &mut Task| {
                t.retried_by = Some(TaskId::new());
                true
            }),
        )
        .await
        .unwrap()
        .unwrap();
    // A parent sums its children up; it is not a run of its own.
    let mut parent = task("a", 5);
    parent.children = 2;
    store.insert_task(&parent).await.unwrap();
    store
        .update_task(parent.id, &[TaskStatus::Pending], end(TaskStatus::Finished))
        .await
        .unwrap()
        .unwrap();
    // A task that never started has no run time.
    let never = task("b", 5);
    store.insert_task(&never).await.unwrap();
    store
        .update_task(never.id, &[TaskStatus::Pending], end(TaskStatus::Cancelled))
        .await
        .unwrap()
        .unwrap();

    let since = Utc::now() - chrono::Duration::hours(2);
    let mut all = arachne_shared::stats::HourStats::default();
    let rows = store.run_stats(since, None).await.unwrap();
    for row in &rows {
        all.add(row);
    }
    assert_eq!(
        (all.finished, all.error, all.abnormal, all.cancelled),
        (2, 1, 1, 1),
        "{name}: {rows:?}"
    );
    let timed: u64 = all.run_times.iter().sum();
    assert_eq!(timed, 4, "{name}: the four that ran have a run time");
    let p50 = all.run_time_quantile(0.5).unwrap();
    assert!(
        (60_000..=120_000).contains(&p50),
        "{name}: about 90 s, got {p50}"
    );
    let only_b = store.run_stats(since, Some("b")).await.unwrap();
    assert!(
        only_b.iter().all(|r| r.spider == "b") && !only_b.is_empty(),
        "{name}: {only_b:?}"
    );
    assert!(
        store
            .run_stats(Utc::now() + chrono::Duration::hours(2), None)
            .await
            .unwrap()
            .is_empty(),
        "{name}"
    );
    // The roll-ups are stored: they survive reopening.
    drop(store);
    let store = backend.open().await;
    assert_eq!(store.run_stats(since, None).await.unwrap(), rows, "{name}");
}

async fn users_have_unique_names_and_the_audit_log_reads_newest_first(backend: StoreUnderTest) {
    use arachne_shared::{AuditEntry, AuditId, Role, User};
    let name = backend.name;
    let store = backend.open().await;
    let user = |user_name: &str, role| User {
        name: user_name.into(),
        role,
        password_hash: format!("$argon2id$hash-of-{user_name}"),
        created_at: arachne_shared::from_millis(Utc::now().timestamp_millis()),
    };
    store
        .insert_user(&user("ada", Role::Developer))
        .await
        .unwrap();
    store.insert_user(&user("bob", Role::Viewer)).await.unwrap();
    let clash = store.insert_user(&user("ada", Role::Admin)).await;
    assert!(
        matches!(clash, Err(arachne_master::store::Error::Duplicate(_))),
        "{name}: {clash:?}"
    );
    let mut promoted = user("bob", Role::Admin);
    promoted.created_at = store.user_by_name("bob").await.unwrap().unwrap().created_at;
    assert!(store.replace_user(&promoted).await.unwrap(), "{name}");
    assert!(
        !store
            .replace_user(&user("nobody", Role::Admin))
            .await
            .unwrap(),
        "{name}: no such user to replace"
    );
    assert_eq!(
        store.user_by_name("bob").await.unwrap(),
        Some(promoted),
        "{name}"
    );
    assert_eq!(store.user_by_name("nobody").await.unwrap(), None, "{name}");

    let entry = |actor: &str, action: &str| AuditEntry {
        id: AuditId::new(),
        at: arachne_shared::from_millis(Utc::now().timestamp_millis()),
        actor: actor.into(),
        action: action.into(),
        target: "/api/v1/spiders/s".into(),
        status: 201,
    };
    let entries = [
        entry("ada", "POST /api/v1/spiders"),
        entry("bob", "DELETE /api/v1/spiders/{name}"),
        entry("ada", "POST /api/v1/tasks"),
    ];
    for e in &entries {
        store.insert_audit(e).await.unwrap();
    }
    // Written twice (a retried request), an entry is there once.
    store.insert_audit(&entries[0]).await.unwrap();
    let store = backend.open().await;
    let ids = |list: Vec<AuditEntry>| list.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_audit(None, None, 10).await.unwrap()),
        [entries[2].id, entries[1].id, entries[0].id],
        "{name}"
    );
    assert_eq!(
        ids(store.list_audit(Some("ada"), None, 10).await.unwrap()),
        [entries[2].id, entries[0].id],
        "{name}"
    );
    assert_eq!(
        ids(store
            .list_audit(None, Some(entries[2].id), 1)
            .await
            .unwrap()),
        [entries[1].id],
        "{name}: the page before an entry"
    );
    let names: Vec<_> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["ada", "bob"], "{name}");
    assert!(store.delete_user("ada").await.unwrap(), "{name}");
    assert!(!store.delete_user("ada").await.unwrap(), "{name}");
}
