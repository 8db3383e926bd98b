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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arachne_proto::server::Outbound;
use arachne_shared::cluster::{Assignment, MasterToWorker, Registration};
use arachne_shared::{
    ChangeKind, NodeMetrics, Spider, Task, TaskChanged, TaskId, TaskOutcome, TaskStatus,
};
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::store::{ActiveScope, Store, TaskFilter};
use crate::store_health::StoreHealth;
use crate::telemetry::Telemetry;

/// The most pending tasks one dispatch pass reads at a time.
const DISPATCH_BATCH: u32 = 256;
/// The fewest: a page is sized by the free slots, so a freed slot reads a couple of rows, not the whole queue;
/// it grows with the tasks a pass had to skip, so a queue whose head cannot run is still read in few pages.
const DISPATCH_MIN_PAGE: u32 = 2;
/// Capacity of the change-notice channel; a receiver that lags just re-reads the store.
const CHANGES_CAPACITY: usize = 1024;

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// A worker silent this long is offline: its session is ended, and a worker whose session broke gets this
    /// long to reconnect before its tasks are settled.
    pub heartbeat_timeout: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(15),
        }
    }
}

struct Worker {
    session: u64,
    outbound: Outbound,
    /// Ends the session; cancelled when the worker goes silent.
    kill: CancellationToken,
    max_runners: u32,
    enabled: bool,
    /// Tasks handed to this worker that have not ended.
    assigned: HashSet<TaskId>,
    /// When the worker last spoke; kept in memory only, so heartbeats cost no database write.
    last_seen: Instant,
    last_seen_at: DateTime<Utc>,
    metrics: Option<NodeMetrics>,
    /// The session is ending: it gets no new tasks, but keeps its name until its tasks are settled, so a
    /// reconnecting worker of the same name cannot get tasks that are about to be requeued.
    closing: bool,
}

impl Worker {
    fn free(&self) -> bool {
        !self.closing && self.enabled && (self.assigned.len() as u32) < self.max_runners
    }

    fn load(&self) -> f64 {
        self.assigned.len() as f64 / f64::from(self.max_runners.max(1))
    }
}

/// What the session of a connected worker knows that the store does not.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) running: u32,
    pub(crate) last_seen: DateTime<Utc>,
    pub(crate) metrics: Option<NodeMetrics>,
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

/// What [`Scheduler::reserve`] found for a task.
enum Reservation {
    /// A slot on this node, with the way to its session.
    Reserved(String, Outbound),
    /// Every node that may take it is full: it waits for a slot.
    Busy,
    /// No node may take it now; the reason is shown on the task.
    Blocked(String),
}

/// Why a worker could not be registered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegisterError {
    #[error("a worker named {0:?} is already connected")]
    NameTaken(String),
    #[error("the worker's session closed while it registered")]
    Gone,
}

/// The registry of connected workers, the dispatch loop and the liveness watch.
pub(crate) struct Scheduler {
    store: Arc<dyn Store>,
    options: SchedulerOptions,
    workers: Mutex<HashMap<String, Worker>>,
    /// Nodes whose session broke (or that were connected to a previous master) and may still come back for
    /// their tasks, with when they were last heard of.
    lost: Mutex<HashMap<String, Instant>>,
    next_session: std::sync::atomic::AtomicU64,
    kick: Notify,
    /// The earliest retry backoff the last pass deferred, so the loop wakes for it.
    wake_at: Mutex<Option<DateTime<Utc>>>,
    changes: broadcast::Sender<TaskChanged>,
    /// Serialises parent-status updates: two children ending at once must not race on their parent.
    parents: tokio::sync::Mutex<()>,
    pub(crate) telemetry: Telemetry,
    /// Whether the store takes the workers' reports.
    pub(crate) store_health: StoreHealth,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Scheduler {
    pub(crate) fn new(store: Arc<dyn Store>, options: SchedulerOptions) -> Self {
        Self {
            store,
            options,
            workers: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
            next_session: Default::default(),
            kick: Notify::new(),
            wake_at: Mutex::new(None),
            changes: broadcast::channel(CHANGES_CAPACITY).0,
            parents: tokio::sync::Mutex::new(()),
            telemetry: Telemetry::default(),
            store_health: StoreHealth::default(),
        }
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

    /// Asks for a dispatch pass.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Tells followers that a task's record changed.
    pub(crate) fn changed(&self, id: TaskId) {
        self.announce(id, ChangeKind::State);
    }

    /// Tells followers that a task has new log lines or items.
    pub(crate) fn output(&self, id: TaskId) {
        self.announce(id, ChangeKind::Output);
    }

    fn announce(&self, task_id: TaskId, kind: ChangeKind) {
        let _ = self.changes.send(TaskChanged { task_id, kind });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TaskChanged> {
        self.changes.subscribe()
    }

    /// Adds a worker with the tasks it still runs; refused if a worker of that name is connected. `greeting`
    /// goes to the worker before anything dispatch may send it: a worker takes no task before it is told it
    /// is registered. Returns the session number and the token that ends the session.
    pub(crate) fn register(
        &self,
        registration: &Registration,
        enabled: bool,
        kept: HashSet<TaskId>,
        outbound: Outbound,
        greeting: Vec<MasterToWorker>,
    ) -> Result<(u64, CancellationToken), RegisterError> {
        let mut workers = lock(&self.workers);
        if workers.contains_key(&registration.name) {
            return Err(RegisterError::NameTaken(registration.name.clone()));
        }
        for message in greeting {
            // A new session's queue is empty, so this fails only if the worker is already gone.
            if !outbound.offer(message) {
                return Err(RegisterError::Gone);
            }
        }
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kill = CancellationToken::new();
        let worker = Worker {
            session,
            outbound,
            kill: kill.clone(),
            max_runners: registration.max_runners,
            enabled,
            assigned: kept,
            closing: false,
            last_seen: Instant::now(),
            last_seen_at: Utc::now(),
            metrics: None,
        };
        workers.insert(registration.name.clone(), worker);
        lock(&self.lost).remove(&registration.name);
        Ok((session, kill))
    }

    /// Stops handing tasks to a worker whose session is ending.
    pub(crate) fn close(&self, name: &str, session: u64) {
        if let Some(worker) = lock(&self.workers)
            .get_mut(name)
            .filter(|w| w.session == session)
        {
            worker.closing = true;
        }
    }

    /// Removes a worker's session (if it is still the current one).
    pub(crate) fn unregister(&self, name: &str, session: u64) {
        let mut workers = lock(&self.workers);
        if workers.get(name).is_some_and(|w| w.session == session) {
            workers.remove(name);
        }
    }

    /// Gives a node whose session broke `heartbeat_timeout` to come back before its tasks are settled.
    pub(crate) fn mark_lost(&self, name: &str) {
        lock(&self.lost).insert(name.to_owned(), Instant::now());
    }

    /// Frees the slot a task held, and dispatches into it.
    pub(crate) fn release(&self, node: &str, task: TaskId) {
        self.unreserve(node, task);
        self.kick();
    }

    fn unreserve(&self, node: &str, task: TaskId) {
        if let Some(worker) = lock(&self.workers).get_mut(node) {
            worker.assigned.remove(&task);
        }
    }

    /// Notes that a worker is alive, with its latest metrics if it sent them.
    pub(crate) fn seen(&self, node: &str, metrics: Option<NodeMetrics>) {
        if let Some(worker) = lock(&self.workers).get_mut(node) {
            worker.last_seen = Instant::now();
            worker.last_seen_at = Utc::now();
            if metrics.is_some() {
                worker.metrics = metrics;
            }
        }
    }

    /// What only the live session knows of a connected worker; `None` if it is not connected.
    pub(crate) fn live(&self, node: &str) -> Option<Live> {
        lock(&self.workers)
            .get(node)
            .filter(|w| !w.closing)
            .map(|w| Live {
                running: w.assigned.len() as u32,
                last_seen: w.last_seen_at,
                metrics: w.metrics.clone(),
            })
    }

    /// Connected workers: how many, their runner slots, and how many slots hold a task.
    pub(crate) fn slots(&self) -> (u64, u64, u64) {
        lock(&self.workers).values().filter(|w| !w.closing).fold(
            (0, 0, 0),
            |(nodes, slots, used), w| {
                (
                    nodes + 1,
                    slots + u64::from(w.max_runners),
                    used + w.assigned.len() as u64,
                )
            },
        )
    }

    /// Connected, enabled nodes, by name.
    pub(crate) fn online_enabled(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.workers)
            .iter()
            .filter(|(_, w)| !w.closing && w.enabled)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Enables or disables a connected worker at once. Running tasks are not touched.
    pub(crate) fn set_enabled(&self, node: &str, enabled: bool) {
        if let Some(worker) = lock(&self.workers).get_mut(node) {
            worker.enabled = enabled;
        }
        self.kick();
    }

    /// Changes a connected worker's runner slots at once and tells it. Tasks beyond the new limit keep
    /// running; no new one starts until the node is under it. False if the worker is not connected.
    pub(crate) async fn set_max_runners(&self, node: &str, max_runners: u32) -> bool {
        let outbound = lock(&self.workers).get_mut(node).map(|w| {
            w.max_runners = max_runners;
            w.outbound.clone()
        });
        let Some(outbound) = outbound else {
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
        let outbound = lock(&self.workers)
            .get(node)
            .filter(|w| !w.closing)
            .map(|w| w.outbound.clone());
        match outbound {
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
        for worker in lock(&self.workers).values() {
            if !worker.closing && worker.last_seen.elapsed() > timeout {
                worker.kill.cancel();
            }
        }
        let expired: Vec<String> = {
            let workers = lock(&self.workers);
            let mut lost = lock(&self.lost);
            let expired: Vec<String> = lost
                .iter()
                .filter(|(name, since)| since.elapsed() > timeout && !workers.contains_key(*name))
                .map(|(name, _)| name.clone())
                .collect();
            for name in &expired {
                lost.remove(name);
            }
            expired
        };
        for name in expired {
            let reason = format!(
                "node {name} went offline: no contact for {} s",
                timeout.as_secs_f32()
            );
            if let Err(err) = self.settle_node(&name, &reason, &HashSet::new()).await {
                error!(node = %name, error = %err, "cannot settle the tasks of a lost node");
                self.mark_lost(&name);
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
            let limit = match self.free_slots() {
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
                if self.free_slots() == Some(0) {
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

    /// Free runner slots over all eligible nodes; `None` when no node is online and enabled.
    fn free_slots(&self) -> Option<u32> {
        let workers = lock(&self.workers);
        let eligible = workers.values().any(|w| !w.closing && w.enabled);
        eligible.then(|| {
            workers
                .values()
                .filter(|w| w.free())
                .map(|w| w.max_runners - w.assigned.len() as u32)
                .sum()
        })
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
            self.changed(id);
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
        let (node, outbound) = match self.reserve(task) {
            Reservation::Reserved(node, outbound) => (node, outbound),
            Reservation::Busy => return Ok(Placement::NoSlot),
            Reservation::Blocked(reason) => return Ok(Placement::Blocked(reason)),
        };
        if !self.assign(task, &node, &outbound).await? {
            self.unreserve(&node, task.id);
        }
        Ok(Placement::Assigned)
    }

    /// Picks a worker for `task` and reserves a slot: its pinned node, or the least loaded eligible one.
    fn reserve(&self, task: &Task) -> Reservation {
        let mut workers = lock(&self.workers);
        let chosen = match &task.pinned_node {
            Some(pin) => match workers.get(pin) {
                None => return Reservation::Blocked(format!("no online node among [{pin}]")),
                Some(w) if w.closing => {
                    return Reservation::Blocked(format!("no online node among [{pin}]"));
                }
                Some(w) if !w.enabled => {
                    return Reservation::Blocked(format!("node {pin} is disabled"));
                }
                Some(w) if !w.free() => return Reservation::Busy,
                Some(_) => pin.clone(),
            },
            None => {
                if !workers.values().any(|w| !w.closing && w.enabled) {
                    return Reservation::Blocked("no online, enabled node".into());
                }
                let best = workers
                    .iter()
                    .filter(|(_, w)| w.free())
                    .min_by(|(_, a), (_, b)| a.load().total_cmp(&b.load()));
                match best {
                    Some((name, _)) => name.clone(),
                    None => return Reservation::Busy,
                }
            }
        };
        let worker = workers.get_mut(&chosen).expect("chosen from the map");
        worker.assigned.insert(task.id);
        let outbound = worker.outbound.clone();
        Reservation::Reserved(chosen, outbound)
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
        self.changed(task.id);
        Ok(true)
    }

    /// Puts a task that was handed to a node but never started back in the queue.
    pub(crate) async fn requeue(&self, id: TaskId) -> crate::store::Result<()> {
        let requeued = self
            .store
            .update_task(
                id,
                &[TaskStatus::Pending],
                Box::new(|t| {
                    t.requeue(Utc::now());
                    true
                }),
            )
            .await?;
        if requeued.is_some() {
            self.changed(id);
            self.kick();
        }
        Ok(())
    }

    /// Settles the tasks in flight on `node`, except those in `keep` (which the node still runs): a task
    /// handed out but never started goes back to the queue; a running one becomes Abnormal with `reason`,
    /// and is retried if it has retries left.
    pub(crate) async fn settle_node(
        &self,
        node: &str,
        reason: &str,
        keep: &HashSet<TaskId>,
    ) -> crate::store::Result<()> {
        let mut requeued = false;
        for status in [TaskStatus::Pending, TaskStatus::Running] {
            // Settled rows leave the filter; kept rows stay, and paging skips them.
            let mut in_place = 0;
            loop {
                let filter = TaskFilter {
                    node: Some(node.to_owned()),
                    status: Some(status),
                    limit: 500,
                    offset: in_place,
                    ..Default::default()
                };
                let (tasks, _) = self.store.list_tasks(&filter).await?;
                if tasks.is_empty() {
                    break;
                }
                for task in tasks {
                    if keep.contains(&task.id) {
                        in_place += 1;
                        continue;
                    }
                    let now = Utc::now();
                    let change: crate::store::TaskChange = if status == TaskStatus::Running {
                        let reason = reason.to_owned();
                        Box::new(move |t| {
                            let reason = reason.clone();
                            t.finish(&TaskOutcome::Abnormal { reason }, now);
                            // Written off: what the old run still sends is refused.
                            t.lease += 1;
                            true
                        })
                    } else {
                        Box::new(move |t| {
                            t.requeue(now);
                            true
                        })
                    };
                    // `None`: the task changed meanwhile, so it has left the filter anyway.
                    match self.store.update_task(task.id, &[status], change).await? {
                        Some(task) if status == TaskStatus::Running => {
                            warn!(task_id = %task.id, node, "task marked abnormal: {reason}");
                            self.unreserve(node, task.id);
                            self.ended(&task).await;
                        }
                        Some(task) => {
                            self.unreserve(node, task.id);
                            self.changed(task.id);
                            requeued = true;
                        }
                        None => {}
                    }
                }
            }
        }
        if requeued {
            self.kick();
        }
        Ok(())
    }

    /// Everything that follows a task reaching its end: a retry when it failed and has retries left, its
    /// parent's status, and the followers' wake-up. Failures are logged: the end itself is already stored.
    pub(crate) async fn ended(&self, task: &Task) {
        self.changed(task.id);
        if let Err(err) = self.retry(task).await {
            error!(task_id = %task.id, error = %err, "cannot create the retry of a failed task");
        }
        if let Some(parent) = task.parent_id
            && let Err(err) = self.refresh_parent(parent).await
        {
            error!(task_id = %parent, error = %err, "cannot update a parent task's status");
        }
    }

    async fn retry(&self, task: &Task) -> crate::store::Result<()> {
        if !task.will_retry() {
            return Ok(());
        }
        let now = Utc::now();
        let delay = task.settings.retry_delay(task.attempt + 1);
        let not_before =
            (!delay.is_zero()).then(|| now + chrono::Duration::from_std(delay).unwrap_or_default());
        let next = task.next_attempt(now, not_before);
        self.store.insert_task(&next).await?;
        // The failed attempt points at its retry, so whoever waits for the run follows it.
        let next_id = next.id;
        self.store
            .update_task(
                task.id,
                &TaskStatus::ALL,
                Box::new(move |t| {
                    t.retried_by = Some(next_id);
                    true
                }),
            )
            .await?;
        self.changed(task.id);
        info!(task_id = %next.id, first_attempt = %next.first_attempt.unwrap_or(task.id), attempt = next.attempt,
            delay_secs = delay.as_secs(), spider = %next.spider_name, "retrying a failed task");
        self.changed(next.id);
        self.kick();
        Ok(())
    }

    /// Derives a parent's status from its children and stores it if it changed.
    pub(crate) async fn refresh_parent(&self, parent: TaskId) -> crate::store::Result<()> {
        let _serial = self.parents.lock().await;
        let filter = TaskFilter {
            parent_id: Some(parent),
            ..Default::default()
        };
        let children = self.store.all_tasks(&filter).await?;
        if children.is_empty() {
            return Ok(());
        }
        let derived = arachne_shared::task::parent_status(&children);
        let failed = children
            .iter()
            .filter(|c| matches!(c.status, TaskStatus::Error | TaskStatus::Abnormal))
            .count();
        let total = children.len();
        let updated = self
            .store
            .update_task(
                parent,
                &TaskStatus::ALL,
                Box::new(move |t| {
                    if t.status == derived {
                        return false;
                    }
                    let now = Utc::now();
                    t.error = (derived == TaskStatus::Error)
                        .then(|| format!("{failed} of {total} child tasks failed"));
                    t.set_status(derived, now);
                    true
                }),
            )
            .await?;
        if updated.is_some() {
            self.changed(parent);
        }
        Ok(())
    }
}

/// Makes tasks left Created by a crash Pending, and lists the nodes that had tasks in flight when the previous
/// master stopped: they get the usual time to reconnect and claim them.
pub(crate) async fn recover(store: &dyn Store) -> crate::store::Result<HashSet<String>> {
    let mut nodes = HashSet::new();
    for status in [
        TaskStatus::Created,
        TaskStatus::Pending,
        TaskStatus::Running,
    ] {
        let mut offset = 0;
        loop {
            let filter = TaskFilter {
                status: Some(status),
                limit: 500,
                offset,
                ..Default::default()
            };
            let (tasks, _) = store.list_tasks(&filter).await?;
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                if status == TaskStatus::Created {
                    let change: crate::store::TaskChange = Box::new(|t| {
                        t.set_status(TaskStatus::Pending, Utc::now());
                        true
                    });
                    store.update_task(task.id, &[status], change).await?;
                    continue;
                }
                offset += 1;
                if let Some(node) = task.node {
                    nodes.insert(node);
                }
            }
        }
    }
    Ok(nodes)
}
