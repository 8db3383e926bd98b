//! Dispatch and liveness: hands Pending tasks to connected workers with a free runner slot, highest priority
//! (1) first, then oldest, preferring the least loaded worker; and decides when a silent or vanished worker's
//! tasks are written off.
//!
//! Dispatch is push, and it runs only when something changed (a task was created, a worker connected, a task
//! ended), so idle workers cause no database queries. Pending tasks live in the store, so a master restart
//! loses none of them. A task whose constraints cannot be met (its node is offline or disabled, its spider is
//! at `max_instances`, its schedule's previous run is active) stays Pending with the reason on the task.
//!
//! Liveness is in memory: a worker that says nothing for `heartbeat_timeout` has its session ended, and a
//! worker whose session broke has the same time to come back and claim its running tasks before they are
//! settled (Abnormal, or retried).

mod lifecycle;
mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arachne_proto::server::Outbound;
use arachne_shared::cluster::{Assignment, MasterToWorker};
use arachne_shared::node::LoadLimits;
use arachne_shared::{Spider, Task, TaskId, TaskStatus};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub(crate) use self::lifecycle::recover;
pub(crate) use self::registry::Registry;
use self::registry::Reservation;
use crate::changes::Changes;
use crate::lock;
use crate::store::{ActiveScope, Store};
use crate::telemetry::Telemetry;

/// The most pending tasks one dispatch pass reads at a time.
const DISPATCH_BATCH: u32 = 256;
/// The fewest: a page is sized by the free slots, so a freed slot reads a couple of rows, not the whole queue;
/// it grows with the tasks a pass had to skip, so a queue whose head cannot run is still read in few pages.
const DISPATCH_MIN_PAGE: u32 = 2;

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// A worker silent this long is offline: its session is ended, and a worker whose session broke gets this
    /// long to reconnect before its tasks are settled.
    pub heartbeat_timeout: Duration,
    /// Cluster-wide load thresholds: a node over one takes no new task until it is back under it. A node's
    /// own threshold wins.
    pub load_limits: LoadLimits,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(15),
            load_limits: LoadLimits::default(),
        }
    }
}

/// Where one pending task stands after a dispatch look at it.
enum Placement {
    Assigned,
    /// Cannot run now for a reason worth showing.
    Blocked(String),
    /// Its retry backoff has not passed.
    Deferred(DateTime<Utc>),
    /// Eligible, but no eligible node has a free slot.
    NoSlot,
}

/// Dispatch and liveness over the registry of connected workers; the lifecycle that follows a task's end is in
/// [`lifecycle`].
pub(crate) struct Scheduler {
    store: Arc<dyn Store>,
    options: SchedulerOptions,
    pub(crate) registry: Registry,
    kick: Notify,
    /// The earliest retry backoff the last pass deferred, so the loop wakes for it.
    wake_at: Mutex<Option<DateTime<Utc>>>,
    changes: Arc<Changes>,
    /// Serialises parent-status updates: two children ending at once must not race on their parent.
    parents: tokio::sync::Mutex<()>,
    /// Serialises read-modify-writes of node records (a user's change, a worker registering or leaving): two
    /// at once would each write back the other's field as it was before.
    node_records: tokio::sync::Mutex<()>,
    telemetry: Arc<Telemetry>,
}

impl Scheduler {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        options: SchedulerOptions,
        changes: Arc<Changes>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            store,
            options,
            registry: Registry::default(),
            kick: Notify::new(),
            wake_at: Mutex::new(None),
            changes,
            parents: tokio::sync::Mutex::new(()),
            node_records: tokio::sync::Mutex::new(()),
            telemetry,
        }
    }

    /// Held from reading a node record to writing it back.
    pub(crate) async fn lock_node_records(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.node_records.lock().await
    }

    pub(crate) fn heartbeat_timeout(&self) -> Duration {
        self.options.heartbeat_timeout
    }

    /// How long a worker's runs go on after the last heartbeat the master answered: two thirds of the
    /// heartbeat timeout. The master settles a silent worker's tasks only after the whole timeout, so the
    /// worker (or its watchdog) has stopped them a third of the timeout before a retry can start elsewhere.
    pub(crate) fn lease(&self) -> Duration {
        self.options.heartbeat_timeout * 2 / 3
    }

    /// The load thresholds of a node: its own, else the cluster-wide ones.
    pub(crate) fn load_limits(&self, node: Option<&arachne_shared::Node>) -> LoadLimits {
        self.options.load_limits.for_node(node)
    }

    /// Sets a connected node's load thresholds (its own over the cluster-wide ones) and dispatches, since a
    /// node may take tasks again.
    pub(crate) fn set_load_limits(&self, node: &arachne_shared::Node) {
        self.registry
            .set_limits(&node.name, self.load_limits(Some(node)));
        self.kick();
    }

    /// Tells every connected worker to drop these deleted versions from its file cache. A worker whose queue
    /// is full misses it and is told when it registers again.
    pub(crate) fn forget_versions(&self, versions: Vec<String>) {
        self.registry
            .broadcast(&MasterToWorker::Forget { versions });
    }

    /// Asks for a dispatch pass.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Frees the slot a task held, and dispatches into it.
    pub(crate) fn release(&self, node: &str, task: TaskId) {
        self.registry.unreserve(node, task);
        self.kick();
    }

    /// Enables or disables a connected worker at once. Running tasks are not touched.
    pub(crate) fn set_enabled(&self, node: &str, enabled: bool) {
        self.registry.set_enabled(node, enabled);
        self.kick();
    }

    /// Changes a connected worker's runner slots at once and tells it. Tasks beyond the new limit keep
    /// running; no new one starts until the node is under it. False if the worker is not connected.
    pub(crate) async fn set_max_runners(&self, node: &str, max_runners: u32) -> bool {
        let Some(outbound) = self.registry.set_max_runners(node, max_runners) else {
            return false;
        };
        self.kick();
        outbound
            .send(MasterToWorker::SetMaxRunners { max_runners })
            .await
            .is_ok()
    }

    /// Sends a cancel to the worker running `task`. False if that worker is not connected.
    pub(crate) async fn send_cancel(&self, node: &str, task: TaskId, reason: &str) -> bool {
        match self.registry.outbound(node) {
            Some(outbound) => outbound
                .send(MasterToWorker::Cancel {
                    task_id: task,
                    reason: reason.to_owned(),
                })
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Dispatches whenever kicked, and watches liveness, until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = (self.options.heartbeat_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut liveness = tokio::time::interval(tick);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(err) = self.dispatch().await {
                error!(error = %err, "dispatch failed; retrying on the next change");
            }
            let wake_at = *lock(&self.wake_at);
            let deferred = async {
                match wake_at {
                    Some(at) => {
                        let wait = (at - Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.kick.notified() => {}
                () = deferred => {}
                _ = liveness.tick() => self.watch_liveness().await,
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Ends the sessions of silent workers, and settles the tasks of lost ones that did not come back.
    async fn watch_liveness(&self) {
        let timeout = self.options.heartbeat_timeout;
        self.registry.end_silent(timeout);
        for name in self.registry.take_expired(timeout) {
            let reason = format!(
                "node {name} went offline: no contact for {} s",
                timeout.as_secs_f32()
            );
            if let Err(err) = self.settle_node(&name, &reason, &HashSet::new()).await {
                error!(node = %name, error = %err, "cannot settle the tasks of a lost node");
                self.registry.mark_lost(&name);
            }
        }
    }

    async fn dispatch(&self) -> crate::store::Result<()> {
        let now = Utc::now();
        let mut spiders: HashMap<String, Option<Spider>> = HashMap::new();
        let mut wake_at: Option<DateTime<Utc>> = None;
        let mut offset = 0;
        'pages: loop {
            // Every eligible node busy: nothing could be placed, so nothing is read. With no eligible node
            // at all the pass goes on, to tell each task why it waits.
            let limit = match self.registry.free_slots() {
                Some(0) => break,
                Some(free) => (free * 2)
                    .max(offset)
                    .clamp(DISPATCH_MIN_PAGE, DISPATCH_BATCH),
                None => DISPATCH_BATCH,
            };
            let pending = self.store.dispatchable(limit, offset).await?;
            let page_full = pending.len() == limit as usize;
            for task in pending {
                match self.place(&task, now, &mut spiders).await? {
                    Placement::Assigned => {}
                    Placement::NoSlot => offset += 1,
                    Placement::Deferred(at) => {
                        offset += 1;
                        wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                    }
                    Placement::Blocked(reason) => {
                        offset += 1;
                        if task.pending_reason.as_deref() != Some(&reason) {
                            self.set_pending_reason(task.id, Some(reason)).await?;
                        }
                    }
                }
                if self.registry.free_slots() == Some(0) {
                    break 'pages;
                }
            }
            if !page_full {
                break;
            }
        }
        *lock(&self.wake_at) = wake_at;
        Ok(())
    }

    async fn set_pending_reason(
        &self,
        id: TaskId,
        reason: Option<String>,
    ) -> crate::store::Result<()> {
        let updated = self
            .store
            .update_task(
                id,
                &[TaskStatus::Pending],
                Box::new(move |t| {
                    if t.node.is_some() || t.pending_reason == reason {
                        return false;
                    }
                    t.pending_reason = reason.clone();
                    true
                }),
            )
            .await?;
        if updated.is_some() {
            self.changes.changed(id);
        }
        Ok(())
    }

    /// Looks at one pending task: places it, or says why not.
    async fn place(
        &self,
        task: &Task,
        now: DateTime<Utc>,
        spiders: &mut HashMap<String, Option<Spider>>,
    ) -> crate::store::Result<Placement> {
        if let Some(at) = task.not_before.filter(|at| *at > now) {
            return Ok(Placement::Deferred(at));
        }
        if let Some(key) = &task.exclusive
            && self
                .store
                .count_active(&ActiveScope::Exclusive(key.clone()))
                .await?
                > 0
        {
            return Ok(Placement::Blocked(
                "waiting for the schedule's previous run to end (overlap policy queue)".into(),
            ));
        }
        if !spiders.contains_key(&task.spider_name) {
            let spider = self.store.spider_by_name(&task.spider_name).await?;
            spiders.insert(task.spider_name.clone(), spider);
        }
        let limit = spiders
            .get(&task.spider_name)
            .and_then(|s| s.as_ref()?.max_instances);
        if let Some(max) = limit {
            let active = self
                .store
                .count_active(&ActiveScope::Spider(task.spider_name.clone()))
                .await?;
            if active >= u64::from(max) {
                return Ok(Placement::Blocked(format!(
                    "spider {} already runs {active} of at most {max} instances",
                    task.spider_name
                )));
            }
        }
        let (node, outbound) = match self.registry.reserve(task) {
            Reservation::Reserved(node, outbound) => (node, outbound),
            Reservation::Busy => return Ok(Placement::NoSlot),
            Reservation::Blocked(reason) => return Ok(Placement::Blocked(reason)),
        };
        if !self.assign(task, &node, &outbound).await? {
            self.registry.unreserve(&node, task.id);
        }
        Ok(Placement::Assigned)
    }

    /// Records the assignment and sends it. False if the task was no longer dispatchable or the worker left.
    async fn assign(
        &self,
        task: &Task,
        node: &str,
        outbound: &Outbound,
    ) -> crate::store::Result<bool> {
        let assigned_node = node.to_owned();
        let claimed = self
            .store
            .update_task(
                task.id,
                &[TaskStatus::Pending],
                Box::new(move |t| {
                    if t.node.is_some() {
                        return false;
                    }
                    t.node = Some(assigned_node.clone());
                    t.lease += 1;
                    t.pending_reason = None;
                    t.updated_at = Utc::now();
                    true
                }),
            )
            .await?;
        let Some(task) = claimed else {
            return Ok(false);
        };
        let assignment = Assignment {
            task_id: task.id,
            lease: task.lease,
            spider_id: task.spider_id,
            spider_name: task.spider_name.clone(),
            version: task.version.clone(),
            command_line: task.command_line(),
            settings: task.settings.clone(),
        };
        if outbound
            .send(MasterToWorker::Assign(assignment))
            .await
            .is_err()
        {
            warn!(task_id = %task.id, node, "worker left before it got the task; back to the queue");
            self.requeue(task.id).await?;
            return Ok(false);
        }
        let ready = task
            .not_before
            .map_or(task.created_at, |t| t.max(task.created_at));
        self.telemetry
            .dispatched((Utc::now() - ready).to_std().unwrap_or_default());
        info!(task_id = %task.id, node, spider = %task.spider_name, "task dispatched");
        self.changes.changed(task.id);
        Ok(true)
    }
}
