//! The notification service: rules (which events, of which tasks, go to which channel), the watcher that turns
//! task and node events into deliveries, and the sender that makes them.
//!
//! Architecture invariant: finding an event only records a delivery in the store; sending happens in its own
//! loop, so a channel that hangs or fails never slows a task's life-cycle, and a delivery recorded before a
//! restart is sent after it. A delivery's key (rule, trigger, subject) is unique in the store, so an event
//! seen twice (live, then again by the catch-up scan) is announced once.

mod send;

pub use send::{SIGNATURE_HEADER, signature};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arachne_shared::notify::{
    Delivery, DeliveryId, DeliveryStatus, Message, Notification, TaskSummary, Trigger,
};
use arachne_shared::{ChangeKind, Task, TaskId, TaskStatus};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::changes::Changes;
use crate::store::{self, Store, TaskFilter};

/// Why a rule could not be stored, found or tried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] arachne_shared::Invalid),
    #[error("notification {0:?} not found")]
    NotFound(String),
    #[error("notification {0:?} already exists")]
    Exists(String),
    #[error("spider {0:?} not found")]
    NoSpider(String),
    #[error("schedule {0:?} not found")]
    NoSchedule(String),
    #[error(transparent)]
    Channels(#[from] send::Error),
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The web UI's address as people reach it, for the links in messages (`https://arachne.example.com`);
    /// the HTTP listener's own address when `None`.
    pub public_url: Option<String>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts before a delivery is given up as failed.
    pub max_attempts: u32,
    /// The wait before the second attempt; each later one waits four times the one before.
    pub retry_base: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            timeout: Duration::from_secs(10),
            max_attempts: 6,
            retry_base: Duration::from_secs(5),
        }
    }
}

/// How many of a task's last log lines a message carries.
const LAST_LINES: u32 = 10;
/// How far back the watcher looks on start for task ends it may not have announced (a restart right after a
/// task ended).
const CATCH_UP: Duration = Duration::from_secs(600);
/// How often the watcher scans for task ends the change stream did not show it, and for long runs.
const SCAN_EVERY: Duration = Duration::from_secs(15);
/// Deliveries sent at once; the rest wait their turn.
const SENDING_AT_ONCE: usize = 8;
/// Node events waiting for the watcher. A worker registers or leaves a few times a minute at most.
const NODE_EVENTS: usize = 1024;

/// A node's session began or ended.
#[derive(Debug)]
struct NodeEvent {
    node: String,
    online: bool,
}

/// Rules, their deliveries, and the loops that make them.
pub struct Notifications {
    store: Arc<dyn Store>,
    config: NotifyConfig,
    /// Where links in messages point, without a trailing `/`.
    public_url: String,
    channels: send::Channels,
    /// The rules, as stored; read on every task change, written only by this service.
    rules: Mutex<Arc<Vec<Notification>>>,
    /// Wakes the sender: a delivery was recorded.
    recorded: Notify,
    node_events: mpsc::Sender<NodeEvent>,
    node_receiver: Mutex<Option<mpsc::Receiver<NodeEvent>>>,
    /// Nodes announced offline and not back yet: only their return is news. Every worker registers again
    /// after a master restart, and the master's stop is not theirs: a node offline before this start is not
    /// announced when it comes back.
    offline: Mutex<HashSet<String>>,
}

impl Notifications {
    /// Loads the rules.
    pub(crate) async fn new(
        store: Arc<dyn Store>,
        config: NotifyConfig,
        http_addr: std::net::SocketAddr,
    ) -> Result<Self> {
        let rules = store.list_notifications().await?;
        let (node_events, node_receiver) = mpsc::channel(NODE_EVENTS);
        let public_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            // A wildcard address is no place to point a browser at: this machine's name is.
            None if http_addr.ip().is_unspecified() => {
                format!("http://{}:{}", crate::node_name(), http_addr.port())
            }
            None => format!("http://{http_addr}"),
        };
        Ok(Self {
            public_url,
            channels: send::Channels::new()?,
            store,
            config,
            rules: Mutex::new(Arc::new(rules)),
            recorded: Notify::new(),
            node_events,
            node_receiver: Mutex::new(Some(node_receiver)),
            offline: Mutex::default(),
        })
    }

    fn rules(&self) -> Arc<Vec<Notification>> {
        Arc::clone(&crate::lock(&self.rules))
    }

    async fn reload(&self) -> Result<()> {
        let rules = self.store.list_notifications().await?;
        *crate::lock(&self.rules) = Arc::new(rules);
        Ok(())
    }

    /// Every rule, by name, as stored (secrets included: the API masks them).
    pub fn list(&self) -> Vec<Notification> {
        self.rules().as_ref().clone()
    }

    pub fn get(&self, name: &str) -> Result<Notification> {
        self.rules()
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    /// Stores a new rule; `replace` lets it take the place of the one of that name, whose masked secrets it
    /// keeps and whose creation time stays.
    pub async fn put(&self, mut rule: Notification, replace: bool) -> Result<Notification> {
        match self.get(&rule.name) {
            Ok(stored) if replace => {
                rule.keep_secrets_of(&stored);
                rule.created_at = stored.created_at;
            }
            Ok(_) => return Err(Error::Exists(rule.name)),
            Err(_) if replace => return Err(Error::NotFound(rule.name)),
            Err(_) => rule.created_at = Utc::now(),
        }
        rule.validate()?;
        if let Some(spider) = &rule.spider
            && self.store.spider_by_name(spider).await?.is_none()
        {
            return Err(Error::NoSpider(spider.clone()));
        }
        if let Some(schedule) = &rule.schedule
            && !self
                .store
                .list_schedules()
                .await?
                .iter()
                .any(|s| &s.name == schedule)
        {
            return Err(Error::NoSchedule(schedule.clone()));
        }
        self.store.put_notification(&rule).await?;
        self.reload().await?;
        info!(notification = %rule.name, "notification stored");
        Ok(rule)
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        if !self.store.delete_notification(name).await? {
            return Err(Error::NotFound(name.to_owned()));
        }
        self.reload().await?;
        Ok(())
    }

    /// Records a test message on the rule's channel; the sender makes it like any other.
    pub async fn test(&self, name: &str) -> Result<Delivery> {
        let rule = self.get(name)?;
        let now = Utc::now();
        let message = Message {
            title: format!("Test message of notification {name}"),
            event: "test".into(),
            task: None,
            node: None,
            link: Some(format!("{}/#/notifications", self.public_url())),
            at: now,
        };
        let delivery = delivery(
            &rule,
            "test",
            format!("test:{}", DeliveryId::new()),
            message,
        );
        self.record(&delivery).await?;
        Ok(delivery)
    }

    /// Deliveries, newest first; one rule's when named.
    pub async fn deliveries(
        &self,
        notification: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        Ok(self.store.list_deliveries(notification, limit).await?)
    }

    /// A worker registered. Never waits: the watcher takes it from a queue.
    pub(crate) fn node_online(&self, node: &str) {
        self.node_event(node, true);
    }

    /// A worker's session ended (not by the master's own shutdown).
    pub(crate) fn node_offline(&self, node: &str) {
        self.node_event(node, false);
    }

    fn node_event(&self, node: &str, online: bool) {
        let event = NodeEvent {
            node: node.to_owned(),
            online,
        };
        if let Err(err) = self.node_events.try_send(event) {
            warn!(node, online, error = %err, "node event not announced: the notification queue is full");
        }
    }

    fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Stores a delivery (once per key) and wakes the sender.
    async fn record(&self, delivery: &Delivery) -> Result<bool> {
        let new = self.store.insert_delivery(delivery).await?;
        if new {
            self.recorded.notify_one();
        }
        Ok(new)
    }

    /// Turns task and node events into deliveries until `stop`.
    pub(crate) async fn watch(self: Arc<Self>, changes: Arc<Changes>, stop: CancellationToken) {
        let mut tasks = changes.subscribe();
        let Some(mut nodes) = crate::lock(&self.node_receiver).take() else {
            return;
        };
        let mut scan = Scan {
            since: Utc::now() - CATCH_UP,
            after: None,
        };
        let mut tick = tokio::time::interval(SCAN_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = tasks.recv() => match change {
                    Ok(change) if change.kind == ChangeKind::State => {
                        if let Err(err) = self.task_changed(change.task_id).await {
                            warn!(task_id = %change.task_id, error = %err, "cannot check a task for notifications; the next scan will");
                        }
                    }
                    Ok(_) => {}
                    // The scan finds the ends it missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(event) = nodes.recv() => {
                    if let Err(err) = self.node_changed(event).await {
                        warn!(error = %err, "cannot record a node notification");
                    }
                }
                _ = tick.tick() => {
                    if let Err(err) = self.scan(&mut scan).await {
                        warn!(error = %err, "scanning for notifications failed; trying again later");
                    }
                }
            }
        }
    }

    async fn task_changed(&self, id: TaskId) -> Result<()> {
        let rules = self.rules();
        if !rules.iter().any(|r| r.enabled) {
            return Ok(());
        }
        if let Some(task) = self.store.get_task(id).await? {
            self.check_task(&rules, &task, Utc::now()).await?;
        }
        Ok(())
    }

    /// Tasks that ended since the last scan, and runs past a rule's time limit.
    async fn scan(&self, scan: &mut Scan) -> Result<()> {
        let rules = self.rules();
        let now = Utc::now();
        if !rules.iter().any(|r| r.enabled) {
            // Nothing to announce now, nor later for what ends now.
            *scan = Scan {
                since: now,
                after: None,
            };
            return Ok(());
        }
        loop {
            let ended = self.store.ended_since(scan.since, scan.after, 500).await?;
            for task in &ended {
                self.check_task(&rules, task, now).await?;
            }
            match ended.last() {
                Some(last) => {
                    *scan = Scan {
                        since: last.ended_at().unwrap_or(scan.since),
                        after: Some(last.id),
                    }
                }
                None => break,
            }
        }
        if rules
            .iter()
            .any(|r| r.enabled && r.longer_than_minutes.is_some())
        {
            let running = TaskFilter {
                status: Some(TaskStatus::Running),
                ..TaskFilter::default()
            };
            for task in self.store.all_tasks(&running).await? {
                self.check_task(&rules, &task, now).await?;
            }
        }
        Ok(())
    }

    /// Records a delivery for each rule `task` sets off now.
    async fn check_task(
        &self,
        rules: &[Notification],
        task: &Task,
        now: DateTime<Utc>,
    ) -> Result<()> {
        // A parent only sums up its children, which are announced themselves.
        if task.children > 0 {
            return Ok(());
        }
        let mut schedule_name = None;
        // Read once, for the first rule that fires, and shared by every message about this task.
        let mut cached: Option<TaskSummary> = None;
        for rule in rules.iter().filter(|r| r.enabled) {
            let triggers = fired(rule, task, now);
            if triggers.is_empty() || !self.in_scope(rule, task, &mut schedule_name).await? {
                continue;
            }
            let summary = match cached.take() {
                Some(read) => read,
                None => self.task_summary(task, &schedule_name).await?,
            };
            for trigger in &triggers {
                let message = self.task_message(task, trigger, summary.clone());
                let subject = format!("task:{}", task.id);
                self.record(&delivery(rule, trigger, subject, message))
                    .await?;
            }
            cached = Some(summary);
        }
        Ok(())
    }

    /// Whether `task` is one `rule` covers: its spider and schedule, when it names them.
    async fn in_scope(
        &self,
        rule: &Notification,
        task: &Task,
        schedule_name: &mut Option<String>,
    ) -> Result<bool> {
        if rule.spider.as_ref().is_some_and(|s| *s != task.spider_name) {
            return Ok(false);
        }
        if schedule_name.is_none()
            && let Some(id) = task.schedule_id
        {
            *schedule_name = self.store.get_schedule(id).await?.map(|s| s.name);
        }
        Ok(rule
            .schedule
            .as_ref()
            .is_none_or(|wanted| schedule_name.as_ref() == Some(wanted)))
    }

    /// What every message about `task` says of it, its last log lines included.
    async fn task_summary(&self, task: &Task, schedule: &Option<String>) -> Result<TaskSummary> {
        let after = task.log_lines.saturating_sub(LAST_LINES.into());
        let last_log_lines = self
            .store
            .logs(task.id, after, LAST_LINES)
            .await?
            .into_iter()
            .map(|line| line.text)
            .collect();
        let duration_ms = task.started_at().map(|start| {
            let end = task.ended_at().unwrap_or_else(Utc::now);
            (end - start).num_milliseconds().max(0) as u64
        });
        let fatal = task.errors.iter().rev().find(|e| e.error.fatal);
        Ok(TaskSummary {
            id: task.id,
            spider: task.spider_name.clone(),
            status: task.status,
            node: task.node.clone(),
            duration_ms,
            items: task.items,
            error: task
                .error
                .clone()
                .or_else(|| fatal.map(|e| e.error.message.clone())),
            schedule: schedule.clone(),
            last_log_lines,
        })
    }

    /// The message `trigger` sends about `task`.
    fn task_message(&self, task: &Task, trigger: &str, summary: TaskSummary) -> Message {
        let title = match trigger {
            "longer_than" => format!("{} is still running on {}", task.spider_name, node_of(task)),
            "no_items" => format!("{} finished with no items", task.spider_name),
            "fatal_error" => format!("{} reported a fatal error", task.spider_name),
            _ => format!("{} ended as {}", task.spider_name, task.status),
        };
        Message {
            title,
            event: trigger.to_owned(),
            task: Some(summary),
            node: None,
            link: Some(format!("{}/#/tasks/{}", self.public_url(), task.id)),
            at: Utc::now(),
        }
    }

    async fn node_changed(&self, event: NodeEvent) -> Result<()> {
        let NodeEvent { node, online } = event;
        let news = {
            let mut offline = crate::lock(&self.offline);
            if online {
                offline.remove(&node)
            } else {
                offline.insert(node.clone())
            }
        };
        // A worker that reconnects after the master restarted was never announced offline.
        if !news {
            return Ok(());
        }
        let trigger = if online {
            Trigger::NodeOnline
        } else {
            Trigger::NodeOffline
        };
        let now = Utc::now();
        for rule in self.rules().iter().filter(|r| r.fires_on(trigger)) {
            let message = Message {
                title: if online {
                    format!("node {node} is back online")
                } else {
                    format!("node {node} went offline")
                },
                event: trigger.to_string(),
                task: None,
                node: Some(node.clone()),
                link: Some(format!("{}/#/nodes", self.public_url())),
                at: now,
            };
            let subject = format!("node:{node}@{}", now.timestamp_millis());
            self.record(&delivery(rule, trigger.as_str(), subject, message))
                .await?;
        }
        Ok(())
    }

    /// Makes due deliveries until `stop`: the earliest first, a few at once, each attempt bounded by the
    /// timeout; a failed attempt is tried again later, four times further apart each time.
    pub(crate) async fn send(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = match self.send_due().await {
                Ok(wait) => wait,
                Err(err) => {
                    warn!(error = %err, "cannot read pending deliveries; trying again shortly");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.recorded.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends what is due; how long until the next pending delivery is.
    async fn send_due(&self) -> Result<Duration> {
        const BATCH: u32 = 64;
        let pending = self.store.pending_deliveries(BATCH).await?;
        let full = pending.len() == BATCH as usize;
        let now = Utc::now();
        let (due, later): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|d| d.next_attempt_at <= now);
        let sent_some = !due.is_empty();
        let rules = self.rules();
        let results: Vec<Result<()>> = futures_util::stream::iter(due)
            .map(|delivery| self.attempt(&rules, delivery))
            .buffer_unordered(SENDING_AT_ONCE)
            .collect()
            .await;
        results.into_iter().collect::<Result<()>>()?;
        let wait = match later.first() {
            // A full batch may have had more due behind it.
            _ if full && sent_some => Duration::ZERO,
            Some(next) => (next.next_attempt_at - Utc::now())
                .to_std()
                .unwrap_or_default(),
            None => Duration::from_secs(60),
        };
        Ok(wait.min(Duration::from_secs(60)))
    }

    async fn attempt(&self, rules: &[Notification], mut delivery: Delivery) -> Result<()> {
        let Some(rule) = rules.iter().find(|r| r.name == delivery.notification) else {
            delivery.status = DeliveryStatus::Failed;
            delivery.error = Some("the notification was deleted before this could be sent".into());
            return Ok(self.store.put_delivery(&delivery).await?);
        };
        delivery.attempts += 1;
        let (status, error, again) = match self
            .channels
            .send(&rule.channel, &delivery, self.config.timeout)
            .await
        {
            send::Attempt::Taken(status) => {
                delivery.status = DeliveryStatus::Delivered;
                delivery.response_status = Some(status);
                delivery.error = None;
                delivery.delivered_at = Some(Utc::now());
                return Ok(self.store.put_delivery(&delivery).await?);
            }
            send::Attempt::Retry { status, error } => (status, error, true),
            send::Attempt::Refused { status, error } => (status, error, false),
        };
        warn!(notification = %delivery.notification, delivery = %delivery.id, attempt = delivery.attempts, %error, "a notification was not delivered");
        delivery.response_status = status;
        delivery.error = Some(error);
        if again && delivery.attempts < self.config.max_attempts {
            let factor = 4u32.saturating_pow(delivery.attempts - 1);
            let wait = self.config.retry_base.saturating_mul(factor);
            delivery.next_attempt_at =
                Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        } else {
            delivery.status = DeliveryStatus::Failed;
        }
        Ok(self.store.put_delivery(&delivery).await?)
    }
}

/// Where the catch-up scan of ended tasks has got to.
struct Scan {
    since: DateTime<Utc>,
    after: Option<TaskId>,
}

/// The triggers of `rule` that `task` sets off at `now`, by name.
fn fired(rule: &Notification, task: &Task, now: DateTime<Utc>) -> Vec<String> {
    let mut fired = Vec::new();
    // A rule announces what happens after it was made, not a backlog.
    let happened = task.ended_at().unwrap_or(now);
    if happened < rule.created_at {
        return fired;
    }
    if let Some(ended) = Trigger::ended(task.status)
        && rule.fires_on(ended)
    {
        fired.push(ended.to_string());
    }
    if task.status == TaskStatus::Finished && task.items == 0 && rule.fires_on(Trigger::NoItems) {
        fired.push(Trigger::NoItems.to_string());
    }
    if rule.fires_on(Trigger::FatalError) && task.errors.iter().any(|e| e.error.fatal) {
        fired.push(Trigger::FatalError.to_string());
    }
    if let (Some(minutes), Some(started), TaskStatus::Running) =
        (rule.longer_than_minutes, task.started_at(), task.status)
        && rule.enabled
        && now - started >= chrono::Duration::minutes(minutes.into())
    {
        fired.push("longer_than".into());
    }
    fired
}

fn node_of(task: &Task) -> &str {
    task.node.as_deref().unwrap_or("no node")
}

fn delivery(rule: &Notification, trigger: &str, subject: String, message: Message) -> Delivery {
    let now = Utc::now();
    Delivery {
        id: DeliveryId::new(),
        notification: rule.name.clone(),
        channel: rule.channel.kind().to_owned(),
        trigger: trigger.to_owned(),
        subject,
        message,
        status: DeliveryStatus::Pending,
        attempts: 0,
        response_status: None,
        error: None,
        created_at: now,
        next_attempt_at: now,
        delivered_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arachne_shared::Spider;
    use arachne_shared::notify::Channel;

    fn rule(triggers: &[Trigger], longer_than_minutes: Option<u32>) -> Notification {
        Notification {
            name: "r".into(),
            channel: Channel::Slack {
                url: "http://h".into(),
            },
            triggers: triggers.to_vec(),
            longer_than_minutes,
            spider: None,
            schedule: None,
            enabled: true,
            created_at: Utc::now() - chrono::Duration::hours(1),
        }
    }

    fn running_since(minutes: i64) -> Task {
        let start = Utc::now() - chrono::Duration::minutes(minutes);
        let mut task = Task::pending(&Spider::new("s", "true", start), start);
        task.set_status(TaskStatus::Running, start);
        task
    }

    #[test]
    fn a_run_is_announced_once_it_passes_the_rule_s_minutes() {
        let rule = rule(&[], Some(30));
        assert!(fired(&rule, &running_since(29), Utc::now()).is_empty());
        assert_eq!(
            fired(&rule, &running_since(31), Utc::now()),
            ["longer_than"]
        );
        let mut ended = running_since(31);
        ended.set_status(TaskStatus::Finished, Utc::now());
        assert!(
            fired(&rule, &ended, Utc::now()).is_empty(),
            "an ended run is not running long"
        );
    }

    #[test]
    fn a_rule_announces_only_what_ended_after_it_was_made() {
        let mut task = running_since(120);
        task.set_status(
            TaskStatus::Error,
            Utc::now() - chrono::Duration::minutes(90),
        );
        let rule = rule(&[Trigger::Error], None);
        assert!(fired(&rule, &task, Utc::now()).is_empty());
        task.set_status(TaskStatus::Error, Utc::now());
        assert_eq!(fired(&rule, &task, Utc::now()), ["error"]);
        let disabled = Notification {
            enabled: false,
            ..rule
        };
        assert!(fired(&disabled, &task, Utc::now()).is_empty());
    }
}
