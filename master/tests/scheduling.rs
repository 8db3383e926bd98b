//! Scheduling with several real workers: run modes and task trees, constraints with visible reasons,
//! max_instances, cron schedules with their overlap and misfire policies, and the failures that must never
//! strand a task (a worker killed mid-task, a master restarted mid-task).

use arachne_test_support as common;

use std::time::Duration;

use arachne_api_types::{CreateSpider, RunTask, ScheduleSpec, Task, TaskQuery, UpdateNode};
use arachne_client::Client;
use arachne_master::Config;
use arachne_shared::{RunMode, TaskStatus};
use chrono::{DateTime, Timelike, Utc};
use common::{TestMaster, TestWorker, create_spider, eventually, wait_done};

/// A master without a local worker, so the test decides which workers exist.
fn bare_config(dir: &std::path::Path, heartbeat_timeout: Duration) -> Config {
    let mut config = Config::new(dir.to_owned());
    config.local_worker = None;
    config.scheduler.heartbeat_timeout = heartbeat_timeout;
    config
}

fn run(spider: &str, mode: RunMode, nodes: &[&str]) -> RunTask {
    RunTask {
        spider: spider.into(),
        mode: Some(mode),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

async fn tasks_where(client: &Client, query: TaskQuery) -> Vec<Task> {
    let query = TaskQuery {
        limit: Some(1000),
        ..query
    };
    client.list_tasks(&query).await.unwrap().items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_modes_build_task_trees_and_a_parent_follows_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path(), Duration::from_secs(15))).await;
    let client = &master.client;
    let workers: Vec<TestWorker> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| TestWorker::start(&master.grpc_url(), name, 2))
        .collect();
    master.wait_nodes_online(3).await;
    // Fails on w2 only, so a parent can have one failed child.
    let script = "echo \"on $ARACHNE_NODE\"\nif [ \"$ARACHNE_NODE\" = w2 ] && [ -z \"$PASS\" ]; then exit 3; fi\n";
    create_spider(client, "where", "sh main.sh", &[("main.sh", script)]).await;

    // random: one task, on some node.
    let task = client
        .run_task(&run("where", RunMode::Random, &[]))
        .await
        .unwrap();
    assert_eq!(task.children, 0);
    let done = wait_done(client, task.id).await;
    assert!(done.node.is_some(), "{done:?}");

    // nodes: one task per named node, each pinned to it, under one parent.
    let parent = client
        .run_task(&run("where", RunMode::Nodes, &["w1", "w3"]))
        .await
        .unwrap();
    assert_eq!(parent.children, 2);
    let parent = wait_done(client, parent.id).await;
    assert_eq!(parent.status, TaskStatus::Finished, "{parent:?}");
    let tree = client.task_tree(parent.id).await.unwrap();
    let mut nodes: Vec<_> = tree
        .children_tasks
        .iter()
        .map(|c| c.node.clone().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["w1", "w3"]);

    // all: one child per online node; w2's child fails, so the parent is Error.
    let parent = client
        .run_task(&run("where", RunMode::All, &[]))
        .await
        .unwrap();
    assert_eq!(parent.children, 3);
    let parent = wait_done(client, parent.id).await;
    assert_eq!(parent.status, TaskStatus::Error, "{parent:?}");
    assert!(
        parent.error.as_deref().unwrap().contains("1 of 3"),
        "{parent:?}"
    );
    let children = client.task_tree(parent.id).await.unwrap().children_tasks;
    let failed: Vec<&Task> = children
        .iter()
        .filter(|c| c.status == TaskStatus::Error)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].node.as_deref(), Some("w2"));

    // Restarting the parent re-runs only the child that did not finish.
    client
        .put_spider(&CreateSpider {
            name: "where".into(),
            cmd: "sh main.sh".into(),
            settings: Some(arachne_shared::spider::RunSettings {
                env: [("PASS".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let restarted = client.restart_task(parent.id).await.unwrap();
    assert_eq!(restarted.id, parent.id);
    let parent = wait_done(client, parent.id).await;
    let children = client.task_tree(parent.id).await.unwrap().children_tasks;
    assert_eq!(children.len(), 4, "one new attempt: {children:#?}");
    let retry = children.iter().find(|c| c.attempt == 2).unwrap();
    assert_eq!(retry.first_attempt, Some(failed[0].id));
    assert_eq!(retry.pinned_node.as_deref(), Some("w2"));
    // The restart ran with the task's own settings, so it failed again: the parent says so.
    assert_eq!(retry.status, TaskStatus::Error);
    assert_eq!(parent.status, TaskStatus::Error);

    // The CLI shows the tree.
    let output = std::process::Command::new(common::workspace_bin("arachne"))
        .args(["--server", &format!("http://{}", master.http)])
        .env("ARACHNE_TOKEN", common::API_TOKEN)
        .args(["task", "show", &parent.id.to_string(), "--recursive"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let children = client.task_tree(parent.id).await.unwrap().children_tasks;
    for child in &children {
        assert!(text.contains(&child.id.to_string()), "{text}");
    }

    // A child cannot be deleted on its own (its parent's status depends on it); the parent goes with them all.
    let refused = client.delete_task(children[0].id).await.unwrap_err();
    assert!(
        refused.to_string().contains("delete the parent"),
        "{refused}"
    );
    client.delete_task(parent.id).await.unwrap();
    for gone in std::iter::once(parent.id).chain(children.iter().map(|c| c.id)) {
        assert!(
            client.get_task(gone).await.is_err(),
            "{gone} outlived its parent's deletion"
        );
    }

    // Cancelling a parent cancels every child.
    create_spider(client, "slow", "sleep 30", &[("x", "")]).await;
    let parent = client
        .run_task(&run("slow", RunMode::All, &[]))
        .await
        .unwrap();
    eventually("every child runs", || async {
        let children = client.task_tree(parent.id).await.unwrap().children_tasks;
        children.iter().all(|c| c.status == TaskStatus::Running)
    })
    .await;
    assert_eq!(
        client.get_task(parent.id).await.unwrap().status,
        TaskStatus::Running
    );
    client.cancel_task(parent.id).await.unwrap();
    let parent = wait_done(client, parent.id).await;
    assert_eq!(parent.status, TaskStatus::Cancelled);
    let children = client.task_tree(parent.id).await.unwrap().children_tasks;
    assert!(
        children.iter().all(|c| c.status == TaskStatus::Cancelled),
        "{children:#?}"
    );
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmet_constraints_keep_a_task_pending_with_its_reason_until_they_are_met() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path(), Duration::from_secs(15))).await;
    let client = &master.client;
    let w1 = TestWorker::start(&master.grpc_url(), "w1", 2);
    let w2 = TestWorker::start(&master.grpc_url(), "w2", 2);
    master.wait_nodes_online(2).await;
    create_spider(client, "quick", "echo hi", &[("x", "")]).await;

    // Unknown nodes are refused outright; known but offline ones wait.
    let err = client
        .run_task(&run("quick", RunMode::Nodes, &["nope"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown node \"nope\""), "{err}");
    w2.stop().await;
    master.wait_nodes_online(1).await;
    let pinned = client
        .run_task(&run("quick", RunMode::Nodes, &["w2"]))
        .await
        .unwrap();
    eventually("the reason shows", || async {
        let task = client.get_task(pinned.id).await.unwrap();
        task.pending_reason.as_deref() == Some("no online node among [w2]")
    })
    .await;

    // A disabled node gets nothing new.
    let disable = UpdateNode {
        enabled: Some(false),
        ..Default::default()
    };
    let node = client.update_node("w1", &disable).await.unwrap();
    assert!(!node.enabled);
    let random = client
        .run_task(&run("quick", RunMode::Random, &[]))
        .await
        .unwrap();
    eventually("the reason shows", || async {
        let task = client.get_task(random.id).await.unwrap();
        task.pending_reason.as_deref() == Some("no online, enabled node")
    })
    .await;
    let err = client
        .run_task(&run("quick", RunMode::All, &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no online, enabled node"), "{err}");
    let enable = UpdateNode {
        enabled: Some(true),
        ..Default::default()
    };
    client.update_node("w1", &enable).await.unwrap();
    assert_eq!(
        wait_done(client, random.id).await.node.as_deref(),
        Some("w1")
    );

    // The pinned task starts as soon as its node is back.
    let w2 = TestWorker::start(&master.grpc_url(), "w2", 2);
    let pinned = wait_done(client, pinned.id).await;
    assert_eq!(pinned.status, TaskStatus::Finished);
    assert_eq!(pinned.node.as_deref(), Some("w2"));
    assert_eq!(pinned.pending_reason, None);
    drop((w1, w2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_instances_caps_running_tasks_across_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path(), Duration::from_secs(15))).await;
    let client = &master.client;
    let workers = [
        TestWorker::start(&master.grpc_url(), "w1", 4),
        TestWorker::start(&master.grpc_url(), "w2", 4),
    ];
    master.wait_nodes_online(2).await;
    create_spider(client, "capped", "sleep 0.5", &[("x", "")]).await;
    client
        .put_spider(&CreateSpider {
            name: "capped".into(),
            cmd: "sleep 0.5".into(),
            max_instances: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            client
                .run_task(&run("capped", RunMode::Random, &[]))
                .await
                .unwrap()
                .id,
        );
    }
    let most_at_once = std::cell::Cell::new(0);
    let saw_reason = std::cell::Cell::new(false);
    eventually("all ended", || async {
        let tasks = tasks_where(
            client,
            TaskQuery {
                spider: Some("capped".into()),
                ..Default::default()
            },
        )
        .await;
        let running = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Running)
            .count();
        most_at_once.set(most_at_once.get().max(running));
        let waiting = tasks.iter().any(|t| {
            t.pending_reason
                .as_deref()
                .is_some_and(|r| r.contains("of at most 2 instances"))
        });
        saw_reason.set(saw_reason.get() || waiting);
        tasks.iter().all(|t| t.status.is_terminal())
    })
    .await;
    assert!(
        most_at_once.get() <= 2,
        "{} ran at once",
        most_at_once.get()
    );
    assert!(saw_reason.get(), "a waiting task said why");
    // Exactly: no two intervals of three tasks overlap at one instant.
    let mut tasks = Vec::new();
    for id in ids {
        tasks.push(client.get_task(id).await.unwrap());
    }
    assert!(tasks.iter().all(|t| t.status == TaskStatus::Finished));
    for t in &tasks {
        let start = t.started_at.unwrap();
        let overlapping = tasks
            .iter()
            .filter(|o| o.started_at.unwrap() <= start && o.ended_at.unwrap() > start)
            .count();
        assert!(overlapping <= 2, "{overlapping} tasks ran at {start}");
    }
    drop(workers);
}

/// Runs go only to nodes with every label they require; one that no online node matches waits and says why,
/// and starts when such a node comes. Mode all covers only the labelled nodes; a schedule's runs carry its
/// labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_that_require_node_labels_go_only_where_the_labels_are() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path(), Duration::from_secs(15))).await;
    let client = &master.client;
    let eu = TestWorker::start_labelled(
        &master.grpc_url(),
        "eu-1",
        2,
        &[("region", "eu"), ("gpu", "1")],
    );
    let us = TestWorker::start_labelled(&master.grpc_url(), "us-1", 2, &[("region", "us")]);
    let eu2 = TestWorker::start_labelled(&master.grpc_url(), "eu-2", 2, &[("region", "eu")]);
    master.wait_nodes_online(3).await;
    create_spider(
        client,
        "where",
        "sh main.sh",
        &[("main.sh", "echo \"on $ARACHNE_NODE\"\n")],
    )
    .await;
    let labelled = |mode: RunMode, labels: &[(&str, &str)]| RunTask {
        node_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..run("where", mode, &[])
    };

    // Every label is required: region=eu and gpu=1 is eu-1 alone, every time.
    for _ in 0..4 {
        let task = client
            .run_task(&labelled(
                RunMode::Random,
                &[("region", "eu"), ("gpu", "1")],
            ))
            .await
            .unwrap();
        let done = wait_done(client, task.id).await;
        assert_eq!(done.node.as_deref(), Some("eu-1"), "{done:?}");
        assert_eq!(done.node_labels["gpu"], "1");
    }
    // Mode all: a child on each eu node, none on us-1.
    let parent = client
        .run_task(&labelled(RunMode::All, &[("region", "eu")]))
        .await
        .unwrap();
    assert_eq!(parent.children, 2);
    wait_done(client, parent.id).await;
    let mut nodes: Vec<String> = client
        .task_tree(parent.id)
        .await
        .unwrap()
        .children_tasks
        .into_iter()
        .map(|c| c.node.unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["eu-1", "eu-2"]);
    let none = client
        .run_task(&labelled(RunMode::All, &[("region", "ap")]))
        .await
        .unwrap_err();
    assert!(none.to_string().contains("region=ap"), "{none}");

    // No online node has region=ap: the task waits, saying so, and runs once such a node registers.
    let waiting = client
        .run_task(&labelled(RunMode::Random, &[("region", "ap")]))
        .await
        .unwrap();
    let reason = common::found("the task says why it waits", || async {
        client.get_task(waiting.id).await.unwrap().pending_reason
    })
    .await;
    assert!(reason.contains("labels region=ap"), "{reason}");
    let ap = TestWorker::start_labelled(&master.grpc_url(), "ap-1", 1, &[("region", "ap")]);
    let done = wait_done(client, waiting.id).await;
    assert_eq!(done.node.as_deref(), Some("ap-1"));

    // A schedule's runs require its labels too.
    let spec = ScheduleSpec {
        node_labels: [("region".to_owned(), "us".to_owned())].into(),
        ..schedule("us-only", "where", "0 0 1 1 *")
    };
    client.create_schedule(&spec).await.unwrap();
    let task = client.run_schedule("us-only").await.unwrap();
    assert_eq!(
        wait_done(client, task.id).await.node.as_deref(),
        Some("us-1")
    );
    for worker in [eu, us, eu2, ap] {
        worker.stop().await;
    }
}

/// A node over a load threshold takes no new task, and the task says why; the node's own threshold wins over
/// the cluster-wide one, and raising it lets the task run. Memory in use is above 1% on any machine, so a 1%
/// threshold is exceeded for certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_over_its_load_threshold_takes_no_new_task_until_it_is_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = bare_config(dir.path(), Duration::from_secs(15));
    config.scheduler.load_limits.memory_percent = Some(1.0);
    let master = TestMaster::start_with(config).await;
    let client = &master.client;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    // Its load is known once it has sent a heartbeat with metrics.
    eventually("the node reports its load", || async {
        client.list_nodes().await.unwrap()[0].metrics.is_some()
    })
    .await;
    create_spider(client, "light", "sh main.sh", &[("main.sh", "echo done\n")]).await;
    let task = client
        .run_task(&run("light", RunMode::Random, &[]))
        .await
        .unwrap();
    let reason = common::found("the task says why it waits", || async {
        client.get_task(task.id).await.unwrap().pending_reason
    })
    .await;
    assert!(
        reason.contains("over its load threshold")
            && reason.contains("w1: memory")
            && reason.contains("> 1%"),
        "{reason}"
    );

    // A bad threshold is refused, naming it.
    let bad = client
        .update_node(
            "w1",
            &UpdateNode {
                max_memory_percent: Some(150.0),
                ..UpdateNode::default()
            },
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("max_memory_percent"), "{bad}");
    // The node's own threshold wins over the cluster-wide one: the task runs.
    let node = client
        .update_node(
            "w1",
            &UpdateNode {
                max_memory_percent: Some(100.0),
                ..UpdateNode::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(node.max_memory_percent, Some(100.0));
    let done = wait_done(client, task.id).await;
    assert_eq!(done.status, TaskStatus::Finished, "{done:?}");
    worker.stop().await;
}

fn schedule(name: &str, spider: &str, cron: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        spider: spider.into(),
        cron: cron.into(),
        ..ScheduleSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_schedules_fire_on_seconds_and_honour_overlap_policies() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start(dir.path(), true).await;
    let client = &master.client;
    master.wait_nodes_online(1).await;
    create_spider(client, "slow", "sleep 2", &[("x", "")]).await;

    // Bad expressions are refused naming the field; a good one shows its next 5 fire times.
    let err = client
        .create_schedule(&schedule("bad", "slow", "61 * * * *"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid minute field \"61\""),
        "{err}"
    );
    let err = client
        .create_schedule(&ScheduleSpec {
            timezone: Some("Mars/Base".into()),
            ..schedule("bad", "slow", "* * * * *")
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("time zone"), "{err}");
    let view = client
        .create_schedule(&ScheduleSpec {
            timezone: Some("Europe/Berlin".into()),
            enabled: Some(false),
            ..schedule("nightly", "slow", "30 2 * * *")
        })
        .await
        .unwrap();
    assert!(
        view.next.is_empty(),
        "a disabled schedule has no next fire times"
    );
    let view = client.set_schedule_enabled("nightly", true).await.unwrap();
    assert_eq!(view.next.len(), 5);
    assert!(view.next.iter().all(|t| t.minute() == 30));

    // Every second, but skip while the previous run is active: runs never overlap.
    let skip = client
        .create_schedule(&ScheduleSpec {
            overlap: Some(arachne_shared::schedule::OverlapPolicy::Skip),
            ..schedule("every-second-skip", "slow", "* * * * * *")
        })
        .await
        .unwrap()
        .schedule;
    let by_schedule = TaskQuery {
        schedule: Some(skip.id),
        ..Default::default()
    };
    eventually("two runs of the schedule", || async {
        tasks_where(client, by_schedule.clone()).await.len() >= 2
    })
    .await;
    client
        .set_schedule_enabled("every-second-skip", false)
        .await
        .unwrap();
    let tasks = tasks_where(client, by_schedule.clone()).await;
    for task in &tasks {
        wait_done(client, task.id).await;
    }
    let mut tasks = tasks_where(client, by_schedule).await;
    tasks.sort_by_key(|t| t.fire_time);
    for pair in tasks.windows(2) {
        assert!(
            pair[1].started_at.unwrap() >= pair[0].ended_at.unwrap(),
            "runs overlapped: {pair:#?}"
        );
        assert!(pair[1].fire_time > pair[0].fire_time);
    }
    assert!(tasks.iter().all(|t| t.fire_time.is_some()));

    // queue: each fire makes a task, but each waits for the one before.
    let queue = client
        .create_schedule(&ScheduleSpec {
            overlap: Some(arachne_shared::schedule::OverlapPolicy::Queue),
            ..schedule("every-second-queue", "slow", "* * * * * *")
        })
        .await
        .unwrap()
        .schedule;
    let by_schedule = TaskQuery {
        schedule: Some(queue.id),
        ..Default::default()
    };
    let saw_queued = std::cell::Cell::new(false);
    eventually("a queued run waits for the one before", || async {
        let tasks = tasks_where(client, by_schedule.clone()).await;
        let running = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Running)
            .count();
        assert!(running <= 1, "{running} runs of a queue schedule at once");
        let queued = tasks.iter().any(|t| {
            t.pending_reason
                .as_deref()
                .is_some_and(|r| r.contains("overlap policy queue"))
        });
        saw_queued.set(saw_queued.get() || queued);
        saw_queued.get()
    })
    .await;
    client.delete_schedule("every-second-queue").await.unwrap();
    let err = client.get_schedule("every-second-queue").await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");

    // run-now starts a run marked with the schedule but no fire time.
    let task = client.run_schedule("nightly").await.unwrap();
    assert!(task.schedule_id.is_some() && task.fire_time.is_none());
    for task in tasks_where(client, TaskQuery::default()).await {
        if !task.status.is_terminal() {
            let _ = client.cancel_task(task.id).await;
        }
    }
}

/// Waits until the wall clock passes `at`: the test needs time itself to pass (a master's downtime).
async fn until(at: DateTime<Utc>) {
    eventually("the clock to pass a moment", || async { Utc::now() > at }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_fire_times_run_once_or_not_at_all_after_a_master_restart() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start(dir.path(), true).await;
    let client = &master.client;
    create_spider(client, "quick", "true", &[("x", "")]).await;
    // Three fire times, a few seconds out and a second apart; the next ones are a minute later.
    let base = Utc::now().with_nanosecond(0).unwrap() + chrono::Duration::seconds(4);
    let seconds: Vec<String> = (0..3)
        .map(|i| ((base.second() + i) % 60).to_string())
        .collect();
    let cron = format!("{} * * * * *", seconds.join(","));
    let once = client
        .create_schedule(&schedule("once", "quick", &cron))
        .await
        .unwrap()
        .schedule;
    let skip = client
        .create_schedule(&ScheduleSpec {
            misfire: Some(arachne_shared::schedule::MisfirePolicy::Skip),
            ..schedule("skip", "quick", &cron)
        })
        .await
        .unwrap()
        .schedule;
    let grpc = master.grpc;
    master.stop().await;
    let last = base + chrono::Duration::seconds(2);
    assert!(
        Utc::now() < base,
        "the master stopped before the first fire time"
    );
    until(last + chrono::Duration::milliseconds(500)).await;

    let master = TestMaster::start_on(Config::new(dir.path().to_owned()), grpc).await;
    let client = &master.client;
    eventually("both schedules handled their missed fire times", || async {
        let once = client.get_schedule("once").await.unwrap().schedule;
        let skip = client.get_schedule("skip").await.unwrap().schedule;
        once.last_fire == Some(last) && skip.last_fire == Some(last)
    })
    .await;
    let ran = tasks_where(
        client,
        TaskQuery {
            schedule: Some(once.id),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ran.len(), 1, "three missed fire times run once: {ran:#?}");
    assert_eq!(ran[0].fire_time, Some(last));
    assert_eq!(
        wait_done(client, ran[0].id).await.status,
        TaskStatus::Finished
    );
    let skipped = tasks_where(
        client,
        TaskQuery {
            schedule: Some(skip.id),
            ..Default::default()
        },
    )
    .await;
    assert!(skipped.is_empty(), "{skipped:#?}");
}

fn spawn_worker(
    master: &TestMaster,
    name: &str,
    work_dir: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(common::workspace_bin("arachne-worker"))
        .args(["--master", &master.grpc_url(), "--name", name])
        .env("ARACHNE_WORKER_TOKEN", common::WORKER_TOKEN)
        .args(["--max-runners", "2", "--heartbeat-secs", "1"])
        .arg("--work-dir")
        .arg(work_dir)
        .arg("--spider-writable")
        .arg(common::shared_root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_tasks_become_abnormal_and_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path(), Duration::from_secs(3))).await;
    let client = &master.client;
    let work = tempfile::tempdir().unwrap();
    let mut worker = spawn_worker(&master, "doomed", work.path());
    master.wait_nodes_online(1).await;
    create_spider(client, "long", "sleep 60", &[("x", "")]).await;
    let first = client
        .run_task(&RunTask {
            settings: Some(arachne_shared::spider::RunSettings {
                retries: Some(1),
                ..Default::default()
            }),
            ..run("long", RunMode::Random, &[])
        })
        .await
        .unwrap();
    eventually("the task runs", || async {
        client.get_task(first.id).await.unwrap().status == TaskStatus::Running
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let first = wait_done(client, first.id).await;
    kill_group(first.pid);
    assert_eq!(first.status, TaskStatus::Abnormal);
    assert!(
        first.error.as_deref().unwrap().contains("doomed"),
        "{first:?}"
    );
    // The retry is its own task, linked to the first, waiting for a node.
    let retry = tasks_where(client, TaskQuery::default())
        .await
        .into_iter()
        .find(|t| t.first_attempt == Some(first.id))
        .expect("a retry was created");
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.status, TaskStatus::Pending);

    // A worker that restarts under the same name reports what it runs: nothing, so the retry that went to it
    // before the restart is written off at once.
    let mut worker = spawn_worker(&master, "doomed", work.path());
    eventually("the retry runs", || async {
        client.get_task(retry.id).await.unwrap().status == TaskStatus::Running
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let mut worker = spawn_worker(&master, "doomed", work.path());
    let retry = wait_done(client, retry.id).await;
    kill_group(retry.pid);
    assert_eq!(retry.status, TaskStatus::Abnormal);
    // The retry may be written off by the old session's end before the new one registers.
    eventually("the restarted worker is online", || async {
        let nodes = client.list_nodes().await.unwrap();
        nodes[0].status == arachne_shared::NodeStatus::Online
            && (nodes[0].metrics.is_some() || nodes[0].running == 0)
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_restart_mid_task_loses_no_log_line_or_item_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(bare_config(dir.path(), Duration::from_secs(15))).await;
    let worker = TestWorker::start(&master.grpc_url(), "steady", 2);
    master.wait_nodes_online(1).await;
    let script = r#"
import json, sys, time
for i in range(400):
    print(f"line {i}", flush=True)
    print(json.dumps({"type": "INSERT_DATA", "payload": {"i": i}}), flush=True)
    time.sleep(0.01)
"#;
    create_spider(
        &master.client,
        "steady",
        "python3 main.py",
        &[("main.py", script)],
    )
    .await;
    let task = master
        .client
        .run_task(&run("steady", RunMode::Random, &[]))
        .await
        .unwrap();
    eventually("some lines arrived", || async {
        master.client.get_task(task.id).await.unwrap().log_lines > 20
    })
    .await;
    let grpc = master.grpc;
    master.stop().await;

    let master = TestMaster::start_on(bare_config(dir.path(), Duration::from_secs(15)), grpc).await;
    let client = &master.client;
    let done = wait_done(client, task.id).await;
    assert_eq!(done.status, TaskStatus::Finished, "{done:?}");
    let logs = common::all_logs(client, task.id).await;
    let texts: Vec<&str> = logs.iter().map(|l| l.text.as_str()).collect();
    let expected: Vec<String> = (0..400).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected, "every line once, in order");
    assert_eq!(done.log_lines, 400);
    let items = client
        .items(
            task.id,
            &arachne_api_types::ItemQuery {
                limit: Some(10_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let values: Vec<u64> = items
        .iter()
        .map(|i| i.value()["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        values,
        (0..400).collect::<Vec<_>>(),
        "every item once, in order"
    );
    assert_eq!(done.items, 400);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_node_is_removed_only_when_nothing_needs_it() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let client = &master.client;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    create_spider(client, "s", "true", &[("a", "b")]).await;

    common::assert_conflict(client.remove_node("w1").await, "is online");
    worker.stop().await;
    eventually("w1 is offline", || async {
        client
            .list_nodes()
            .await
            .unwrap()
            .iter()
            .all(|n| n.name != "w1" || n.status.as_str() == "offline")
    })
    .await;

    // A task pinned to it waits for it, and a schedule names it: each keeps the node.
    let pinned = client
        .run_task(&RunTask {
            spider: "s".into(),
            mode: Some(RunMode::Nodes),
            nodes: vec!["w1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    common::assert_conflict(client.remove_node("w1").await, &pinned.id.to_string());
    client.cancel_task(pinned.id).await.unwrap();
    wait_done(client, pinned.id).await;
    client
        .create_schedule(&ScheduleSpec {
            name: "on-w1".into(),
            spider: "s".into(),
            cron: "0 3 * * *".into(),
            mode: Some(RunMode::Nodes),
            nodes: vec!["w1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    common::assert_conflict(client.remove_node("w1").await, "on-w1");
    client.delete_schedule("on-w1").await.unwrap();

    client.remove_node("w1").await.unwrap();
    assert!(
        client
            .list_nodes()
            .await
            .unwrap()
            .iter()
            .all(|n| n.name != "w1")
    );
    assert_eq!(common::refusal(client.remove_node("w1").await).0, 404);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_to_one_node_all_take() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start(dir.path(), true).await;
    let client = &master.client;
    master.wait_nodes_online(1).await;
    let name = client.list_nodes().await.unwrap()[0].name.clone();
    // Two users changing different settings of one node at the same moment: neither change is lost.
    for round in 0..20u32 {
        let enabled = round % 2 == 1;
        let memory = f32::from(50 + round as u8);
        let enable = UpdateNode {
            enabled: Some(enabled),
            ..UpdateNode::default()
        };
        let limit = UpdateNode {
            max_memory_percent: Some(memory),
            ..UpdateNode::default()
        };
        let slots = UpdateNode {
            max_runners: Some(round + 1),
            ..UpdateNode::default()
        };
        let (a, b, c) = tokio::join!(
            client.update_node(&name, &enable),
            client.update_node(&name, &limit),
            client.update_node(&name, &slots),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        let node = client.list_nodes().await.unwrap().remove(0);
        assert_eq!(
            (node.enabled, node.max_memory_percent, node.max_runners),
            (enabled, Some(memory), round + 1),
            "round {round}: {node:?}"
        );
    }
}
