//! Notifications against real receivers: a local HTTP server that checks the webhook's signature and plays a
//! Slack endpoint, and a local SMTP sink, both started by the test; a real master and real spider processes.

use arachne_test_support as common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arachne_api_types::{DeliveryQuery, RunTask};
use arachne_client::Client;
use arachne_master::Config;
use arachne_shared::TaskStatus;
use arachne_shared::notify::{
    Channel, Delivery, DeliveryStatus, Notification, SmtpSecurity, Trigger,
};
use arachne_shared::spider::SECRET_MASK;
use axum::http::{HeaderMap, StatusCode};
use common::{TestMaster, TestWorker, create_spider, eventually, found, wait_done};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the receiver got: the path, the signature header, the body.
type Received = Arc<Mutex<Vec<(String, Option<String>, serde_json::Value)>>>;

/// A local HTTP receiver. It answers each request with the next status of `answers` (the last one for the
/// rest); while `hang` is set, it takes requests and does not answer.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Received,
    answers: Arc<Mutex<Vec<u16>>>,
    hang: Arc<AtomicBool>,
}

impl Receiver {
    async fn start(answers: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            received: Arc::default(),
            answers: Arc::new(Mutex::new(answers.to_vec())),
            hang: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(Self::take))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    async fn take(
        axum::extract::State(this): axum::extract::State<Self>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        while this.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let signature = headers
            .get("x-arachne-signature")
            .map(|v| v.to_str().unwrap().to_owned());
        // A signature must be of these very bytes, under the rule's secret.
        if let Some(signature) = &signature {
            assert_eq!(*signature, arachne_master::notify::signature(SECRET, &body));
        }
        let json = serde_json::from_slice(&body).unwrap();
        let path = uri.path().to_owned();
        this.received.lock().unwrap().push((path, signature, json));
        let mut answers = this.answers.lock().unwrap();
        let status = if answers.len() > 1 {
            answers.remove(0)
        } else {
            answers[0]
        };
        StatusCode::from_u16(status).unwrap()
    }

    fn bodies(&self, path: &str) -> Vec<(Option<String>, serde_json::Value)> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, s, b)| (s.clone(), b.clone()))
            .collect()
    }
}

const SECRET: &str = "webhook-secret";

/// A master with a local worker, and notifications quick to retry and to time out.
fn with_worker(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir.to_owned());
    config.local_worker = Some(arachne_master::LocalWorker {
        runner: common::quick_runner(),
        ..Default::default()
    });
    quick(&mut config);
    config
}

/// A master with no worker of its own, and notifications quick to retry and to time out.
fn without_worker(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir.to_owned());
    config.local_worker = None;
    quick(&mut config);
    config
}

fn quick(config: &mut Config) {
    config.notify.retry_base = Duration::from_millis(100);
    config.notify.timeout = Duration::from_millis(500);
    config.notify.public_url = Some("https://arachne.example.com/".into());
}

fn rule(name: &str, channel: Channel, triggers: &[Trigger]) -> Notification {
    Notification {
        name: name.into(),
        channel,
        triggers: triggers.to_vec(),
        longer_than_minutes: None,
        spider: None,
        schedule: None,
        enabled: true,
        created_at: chrono::Utc::now(),
    }
}

async fn deliveries(client: &Client, notification: &str) -> Vec<Delivery> {
    let query = DeliveryQuery {
        notification: Some(notification.into()),
        limit: Some(100),
    };
    client.list_deliveries(&query).await.unwrap()
}

/// Waits until `notification` has `count` deliveries, none pending; they are returned newest first.
async fn settled(client: &Client, notification: &str, count: usize) -> Vec<Delivery> {
    found(
        &format!("{count} settled deliveries of {notification}"),
        || async {
            let all = deliveries(client, notification).await;
            (all.len() == count && all.iter().all(|d| d.status != DeliveryStatus::Pending))
                .then_some(all)
        },
    )
    .await
}

fn run(spider: &str) -> RunTask {
    RunTask {
        spider: spider.into(),
        ..RunTask::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_ends_are_announced_on_a_signed_webhook_and_on_slack_and_a_failed_post_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_worker(dir.path());
    let master = TestMaster::start_with(config).await;
    let client = &master.client;
    master.wait_nodes_online(1).await;
    // The first POST fails on the receiver's side; the second is taken.
    let receiver = Receiver::start(&[503, 200]).await;
    let chat_receiver = Receiver::start(&[200]).await;
    let spider = "import json\nfor i in range(15): print(f'line {i}')\nprint(json.dumps({'type': 'ERROR', 'payload': {'message': 'banned', 'fatal': True}}))\nraise SystemExit(3)\n";
    create_spider(client, "fails", "python3 main.py", &[("main.py", spider)]).await;
    create_spider(client, "empty", "true", &[("x", "")]).await;

    let hook = Channel::Webhook {
        url: format!("{}/hook", receiver.url),
        secret: Some(SECRET.into()),
    };
    let mut ops = rule("ops", hook, &[Trigger::Error, Trigger::FatalError]);
    ops.spider = Some("fails".into());
    let shown = client.create_notification(&ops).await.unwrap();
    // The secret never comes back.
    assert_eq!(
        shown.channel,
        Channel::Webhook {
            url: format!("{}/hook", receiver.url),
            secret: Some(SECRET_MASK.into())
        }
    );
    let slack = Channel::Slack {
        url: format!("{}/slack", chat_receiver.url),
    };
    client
        .create_notification(&rule("chat", slack, &[Trigger::NoItems, Trigger::Error]))
        .await
        .unwrap();

    let failed = wait_done(client, client.run_task(&run("fails")).await.unwrap().id).await;
    assert_eq!(failed.status, TaskStatus::Error);
    let empty = wait_done(client, client.run_task(&run("empty")).await.unwrap().id).await;
    assert_eq!(empty.status, TaskStatus::Finished);

    // The webhook rule, limited to `fails`: its error and its fatal ERROR, each once, the error after a retry.
    let ops_done = settled(client, "ops", 2).await;
    let mut triggers: Vec<_> = ops_done.iter().map(|d| d.trigger.as_str()).collect();
    triggers.sort();
    assert_eq!(triggers, ["error", "fatal_error"]);
    assert!(
        ops_done
            .iter()
            .all(|d| d.status == DeliveryStatus::Delivered
                && d.response_status == Some(200)
                && d.channel == "webhook"),
        "{ops_done:#?}"
    );
    assert_eq!(
        ops_done.iter().map(|d| d.attempts).sum::<u32>(),
        3,
        "one of them was tried twice: {ops_done:#?}"
    );
    let hooks = receiver.bodies("/hook");
    assert_eq!(hooks.len(), 3, "{hooks:#?}");
    assert!(
        hooks.iter().all(|(signature, _)| signature.is_some()),
        "every POST is signed"
    );
    let (_, error) = hooks.iter().find(|(_, b)| b["trigger"] == "error").unwrap();
    let task = &error["message"]["task"];
    assert_eq!(task["spider"], "fails");
    assert_eq!(task["status"], "error");
    assert_eq!(task["node"], "local");
    assert_eq!(task["items"], 0);
    assert!(task["duration_ms"].as_u64().is_some(), "{error}");
    // The last ten log lines, the newest last.
    let lines: Vec<&str> = task["last_log_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(lines.contains(&"line 14"), "{lines:?}");
    assert_eq!(
        error["message"]["link"],
        format!("https://arachne.example.com/#/tasks/{}", failed.id)
    );
    assert!(
        error["text"]
            .as_str()
            .unwrap()
            .contains("fails ended as error"),
        "{error}"
    );

    // The Slack rule covers every spider: the error, and the run that finished with no items.
    let chat = settled(client, "chat", 2).await;
    assert!(
        chat.iter()
            .all(|d| d.status == DeliveryStatus::Delivered && d.attempts == 1),
        "{chat:#?}"
    );
    let texts: Vec<String> = chat_receiver
        .bodies("/slack")
        .into_iter()
        .map(|(s, b)| {
            assert!(s.is_none(), "a Slack channel has no secret");
            b["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("empty finished with no items") && t.contains("items: 0")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("fails ended as error") && t.contains("node: local")),
        "{texts:?}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_are_checked_their_secrets_kept_when_sent_back_masked_and_a_test_message_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(without_worker(dir.path())).await;
    let client = &master.client;
    let receiver = Receiver::start(&[204]).await;
    let hook = |url: String| Channel::Webhook {
        url,
        secret: Some(SECRET.into()),
    };

    let bad = client
        .create_notification(&rule("x", hook("ftp://nowhere".into()), &[Trigger::Error]))
        .await;
    let (status, message) = common::refusal(bad);
    assert_eq!(status, 400);
    assert!(message.contains("channel.url"), "{message}");
    let none = client
        .create_notification(&rule("x", hook(receiver.url.clone()), &[]))
        .await;
    assert!(common::refusal(none).1.contains("triggers"));
    let mut unknown = rule("x", hook(receiver.url.clone()), &[Trigger::Error]);
    unknown.spider = Some("nope".into());
    assert!(
        common::refusal(client.create_notification(&unknown).await)
            .1
            .contains("spider \"nope\" not found")
    );

    let ops = rule(
        "ops",
        hook(format!("{}/hook", receiver.url)),
        &[Trigger::Error],
    );
    client.create_notification(&ops).await.unwrap();
    common::assert_conflict(client.create_notification(&ops).await, "already exists");
    // Sent back as shown (masked), the secret is kept: the test message is still signed with it.
    let mut shown = client.get_notification("ops").await.unwrap();
    shown.triggers.push(Trigger::Abnormal);
    let replaced = client.replace_notification(&shown).await.unwrap();
    assert_eq!(replaced.triggers, [Trigger::Error, Trigger::Abnormal]);
    let test = client.test_notification("ops").await.unwrap();
    assert_eq!(test.trigger, "test");
    let done = settled(client, "ops", 1).await;
    assert_eq!(
        (done[0].id, done[0].status, done[0].response_status),
        (test.id, DeliveryStatus::Delivered, Some(204))
    );
    let hooks = receiver.bodies("/hook");
    assert_eq!(hooks.len(), 1);
    assert!(
        hooks[0].0.is_some(),
        "signed with the kept secret (the receiver checks it)"
    );

    // A receiver that refuses for good (a 4xx) is not tried again.
    let gone = Receiver::start(&[404]).await;
    client
        .create_notification(&rule("gone", hook(gone.url.clone()), &[Trigger::Error]))
        .await
        .unwrap();
    client.test_notification("gone").await.unwrap();
    let failed = settled(client, "gone", 1).await;
    assert_eq!(
        (
            failed[0].status,
            failed[0].attempts,
            failed[0].response_status
        ),
        (DeliveryStatus::Failed, 1, Some(404))
    );
    assert!(
        failed[0].error.as_deref().unwrap().contains("404"),
        "{failed:?}"
    );

    client.delete_notification("gone").await.unwrap();
    assert_eq!(
        common::refusal(client.get_notification("gone").await).0,
        404
    );
    // Its deliveries stay as history.
    assert_eq!(deliveries(client, "gone").await.len(), 1);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_channel_holds_no_task_and_a_restart_loses_no_pending_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = with_worker(dir.path());
        // Far apart, so the delivery is still pending when the master stops.
        config.notify.retry_base = Duration::from_secs(1);
        config
    };
    let master = TestMaster::start_with(config()).await;
    let client = &master.client;
    master.wait_nodes_online(1).await;
    let receiver = Receiver::start(&[200]).await;
    receiver.hang.store(true, Ordering::SeqCst);
    create_spider(client, "quick", "true", &[("x", "")]).await;
    let hook = Channel::Webhook {
        url: format!("{}/hook", receiver.url),
        secret: None,
    };
    client
        .create_notification(&rule("slow", hook, &[Trigger::Finished]))
        .await
        .unwrap();
    // Every run ends on time while the channel takes each POST and never answers.
    for _ in 0..5 {
        let task = wait_done(client, client.run_task(&run("quick")).await.unwrap().id).await;
        assert_eq!(task.status, TaskStatus::Finished);
    }
    let waiting = found("five deliveries tried and waiting", || async {
        let all = deliveries(client, "slow").await;
        (all.len() == 5 && all.iter().all(|d| d.attempts >= 1)).then_some(all)
    })
    .await;
    assert!(
        waiting.iter().all(|d| d.status == DeliveryStatus::Pending
            && d.error.as_deref().is_some_and(|e| e.contains("timed out"))),
        "{waiting:#?}"
    );
    master.stop().await;

    // The channel answers again; a restarted master makes the deliveries the stopped one could not.
    receiver.hang.store(false, Ordering::SeqCst);
    let before = receiver.bodies("/hook").len();
    let master = TestMaster::start_with(config()).await;
    let done = settled(&master.client, "slow", 5).await;
    assert!(
        done.iter()
            .all(|d| d.status == DeliveryStatus::Delivered && d.attempts >= 2),
        "{done:#?}"
    );
    let tasks: std::collections::HashSet<_> = receiver.bodies("/hook")[before..]
        .iter()
        .map(|(_, b)| b["message"]["task"]["id"].clone())
        .collect();
    assert_eq!(tasks.len(), 5, "each run announced once after the restart");
    master.stop().await;
}

/// A receiver, and the rule "nodes" that posts every node going offline or coming back to it.
async fn announcing_nodes(client: &Client) -> Receiver {
    let receiver = Receiver::start(&[200]).await;
    let hook = Channel::Webhook {
        url: format!("{}/hook", receiver.url),
        secret: None,
    };
    let nodes = rule("nodes", hook, &[Trigger::NodeOffline, Trigger::NodeOnline]);
    client.create_notification(&nodes).await.unwrap();
    receiver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_going_offline_and_coming_back_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(without_worker(dir.path())).await;
    let client = &master.client;
    let receiver = announcing_nodes(client).await;
    // Its first registration is not news.
    let worker = TestWorker::start(&master.grpc_url(), "w1", 1);
    master.wait_nodes_online(1).await;
    let kept = worker.stop_keeping_dir().await;
    let offline = settled(client, "nodes", 1).await;
    assert_eq!(
        (
            offline[0].trigger.as_str(),
            offline[0].message.node.as_deref()
        ),
        ("node_offline", Some("w1"))
    );
    assert_eq!(
        offline[0].message.link.as_deref(),
        Some("https://arachne.example.com/#/nodes")
    );
    let worker = TestWorker::start_in(&master.grpc_url(), "w1", 1, &[], kept);
    master.wait_nodes_online(1).await;
    let both = settled(client, "nodes", 2).await;
    assert_eq!(both[0].trigger, "node_online");
    assert_eq!(both[0].message.title, "node w1 is back online");
    let texts: Vec<String> = receiver
        .bodies("/hook")
        .iter()
        .map(|(_, b)| b["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    worker.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_reconnecting_to_a_restarted_master_are_not_news() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(without_worker(dir.path())).await;
    let grpc = master.grpc;
    let _receiver = announcing_nodes(&master.client).await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 1);
    master.wait_nodes_online(1).await;
    master.stop().await;
    // The worker waits for the master and registers again with the new one: no node went anywhere.
    let master = TestMaster::start_on(without_worker(dir.path()), grpc).await;
    master.wait_nodes_online(1).await;
    // Node events are announced in order: once the worker's real departure is, its return would have been.
    worker.stop().await;
    let announced = settled(&master.client, "nodes", 1).await;
    assert_eq!(announced[0].trigger, "node_offline", "{announced:#?}");
    master.stop().await;
}

/// The mails an SMTP sink took: each one's envelope lines and data.
type Mails = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A local SMTP sink: takes every message and keeps its envelope and data.
async fn smtp_sink() -> (u16, Mails) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails: Mails = Arc::default();
    let kept = Arc::clone(&mails);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let mails = Arc::clone(&kept);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut envelope = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line
                        .split([' ', ':'])
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink\r\n",
                        "MAIL" | "RCPT" => {
                            envelope.push(line.clone());
                            b"250 OK\r\n"
                        }
                        "DATA" => {
                            write.write_all(b"354 go on\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(line)) = lines.next_line().await {
                                if line == "." {
                                    break;
                                }
                                data.push_str(&line);
                                data.push('\n');
                            }
                            mails
                                .lock()
                                .unwrap()
                                .push((std::mem::take(&mut envelope), data));
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 OK\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, mails)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_email_is_sent_over_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_worker(dir.path());
    let master = TestMaster::start_with(config).await;
    let client = &master.client;
    master.wait_nodes_online(1).await;
    let (port, mails) = smtp_sink().await;
    let email = Channel::Email {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        from: "arachne@example.com".into(),
        to: vec!["ops@example.com".into(), "dev@example.com".into()],
    };
    client
        .create_notification(&rule("mail", email, &[Trigger::Finished]))
        .await
        .unwrap();
    create_spider(
        client,
        "hello",
        "sh main.sh",
        &[("main.sh", "echo hello from the spider\n")],
    )
    .await;
    let task = wait_done(client, client.run_task(&run("hello")).await.unwrap().id).await;
    assert_eq!(task.status, TaskStatus::Finished);
    let sent = settled(client, "mail", 1).await;
    assert_eq!(
        (
            sent[0].status,
            sent[0].response_status,
            sent[0].channel.as_str()
        ),
        (DeliveryStatus::Delivered, Some(250), "email")
    );
    eventually("the sink has the mail", || async {
        !mails.lock().unwrap().is_empty()
    })
    .await;
    let (envelope, data) = mails.lock().unwrap()[0].clone();
    assert!(
        envelope.iter().any(|l| l.contains("<arachne@example.com>")),
        "{envelope:?}"
    );
    assert!(
        envelope.iter().any(|l| l.contains("<ops@example.com>"))
            && envelope.iter().any(|l| l.contains("<dev@example.com>")),
        "{envelope:?}"
    );
    assert!(data.contains("Subject: hello ended as finished"), "{data}");
    assert!(
        data.contains("hello from the spider"),
        "the last log lines: {data}"
    );
    assert!(
        data.contains(&format!("https://arachne.example.com/#/tasks/{}", task.id)),
        "{data}"
    );
    master.stop().await;
}
