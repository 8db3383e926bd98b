//! Dispatch: hands Pending tasks to connected workers with a free runner slot, highest priority (1) first,
//! then oldest, preferring the least loaded worker.
//!
//! Dispatch is push, and it runs only when something changed (a task was created, a worker connected, a task
//! ended), so idle workers cause no database queries. Pending tasks live in the store, so a master restart
//! loses none of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arachne_proto::server::Outbound;
use arachne_shared::cluster::{Assignment, MasterToWorker, Registration};
use arachne_shared::{Task, TaskId, TaskStatus};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::store::{Store, TaskFilter};

/// How many pending tasks one dispatch pass reads at a time.
const DISPATCH_BATCH: u32 = 64;
/// Capacity of the change-notice channel; a receiver that lags just re-reads the store.
const CHANGES_CAPACITY: usize = 1024;

struct Worker {
    session: u64,
    outbound: Outbound,
    max_runners: u32,
    /// Tasks handed to this worker that have not ended.
    assigned: HashSet<TaskId>,
    /// When the worker last spoke; kept in memory only, so heartbeats cost no database write.
    last_seen: chrono::DateTime<chrono::Utc>,
    /// The session is ending: it gets no new tasks, but keeps its name until its tasks are settled, so a
    /// reconnecting worker of the same name cannot get tasks that are about to be requeued.
    closing: bool,
}

/// The registry of connected workers and the dispatch loop.
pub(crate) struct Scheduler {
    store: Arc<dyn Store>,
    workers: Mutex<HashMap<String, Worker>>,
    next_session: std::sync::atomic::AtomicU64,
    kick: Notify,
    changes: broadcast::Sender<TaskId>,
}

impl Scheduler {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            workers: Mutex::new(HashMap::new()),
            next_session: Default::default(),
            kick: Notify::new(),
            changes: broadcast::channel(CHANGES_CAPACITY).0,
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Worker>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for a dispatch pass.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Tells followers that a task changed.
    pub(crate) fn changed(&self, id: TaskId) {
        let _ = self.changes.send(id);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TaskId> {
        self.changes.subscribe()
    }

    /// Adds a worker; refused if a worker of that name is connected. Returns the session number.
    pub(crate) fn register(
        &self,
        registration: &Registration,
        outbound: Outbound,
    ) -> Result<u64, String> {
        let mut workers = self.workers();
        if workers.contains_key(&registration.name) {
            return Err(format!(
                "a worker named {:?} is already connected",
                registration.name
            ));
        }
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let worker = Worker {
            session,
            outbound,
            max_runners: registration.max_runners,
            assigned: HashSet::new(),
            closing: false,
            last_seen: chrono::Utc::now(),
        };
        workers.insert(registration.name.clone(), worker);
        Ok(session)
    }

    /// Stops handing tasks to a worker whose session is ending.
    pub(crate) fn close(&self, name: &str, session: u64) {
        if let Some(worker) = self
            .workers()
            .get_mut(name)
            .filter(|w| w.session == session)
        {
            worker.closing = true;
        }
    }

    /// Removes a worker's session (if it is still the current one).
    pub(crate) fn unregister(&self, name: &str, session: u64) {
        let mut workers = self.workers();
        if workers.get(name).is_some_and(|w| w.session == session) {
            workers.remove(name);
        }
    }

    /// Frees the slot a task held, and dispatches into it.
    pub(crate) fn release(&self, node: &str, task: TaskId) {
        self.unreserve(node, task);
        self.kick();
    }

    fn unreserve(&self, node: &str, task: TaskId) {
        if let Some(worker) = self.workers().get_mut(node) {
            worker.assigned.remove(&task);
        }
    }

    /// Notes that a worker is alive.
    pub(crate) fn heartbeat(&self, node: &str) {
        if let Some(worker) = self.workers().get_mut(node) {
            worker.last_seen = chrono::Utc::now();
        }
    }

    /// What only the live session knows of a connected worker: tasks handed to it and not ended, and when it
    /// last spoke. `None` if it is not connected.
    pub(crate) fn live(&self, node: &str) -> Option<(u32, chrono::DateTime<chrono::Utc>)> {
        self.workers()
            .get(node)
            .map(|w| (w.assigned.len() as u32, w.last_seen))
    }

    /// Changes a connected worker's runner slots at once and tells it. Tasks beyond the new limit keep
    /// running; no new one starts until the node is under it. False if the worker is not connected.
    pub(crate) async fn set_max_runners(&self, node: &str, max_runners: u32) -> bool {
        let outbound = self.workers().get_mut(node).map(|w| {
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
        let outbound = self.workers().get(node).map(|w| w.outbound.clone());
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

    /// Dispatches whenever kicked, until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.dispatch().await {
                error!(error = %err, "dispatch failed; retrying on the next change");
            }
            tokio::select! {
                () = self.kick.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Picks the least loaded worker with a free slot and reserves the slot for `task`.
    fn reserve(&self, task: TaskId) -> Option<(String, Outbound)> {
        let mut workers = self.workers();
        let (name, worker) = workers
            .iter_mut()
            .filter(|(_, w)| !w.closing && (w.assigned.len() as u32) < w.max_runners)
            .min_by(|(_, a), (_, b)| {
                let load = |w: &Worker| w.assigned.len() as f64 / f64::from(w.max_runners.max(1));
                load(a).total_cmp(&load(b))
            })?;
        worker.assigned.insert(task);
        Some((name.clone(), worker.outbound.clone()))
    }

    async fn dispatch(&self) -> crate::store::Result<()> {
        loop {
            let pending = self.store.dispatchable(DISPATCH_BATCH).await?;
            let batch_full = pending.len() == DISPATCH_BATCH as usize;
            for task in pending {
                let Some((node, outbound)) = self.reserve(task.id) else {
                    return Ok(());
                };
                if !self.assign(&task, &node, &outbound).await? {
                    self.unreserve(&node, task.id);
                }
            }
            if !batch_full {
                return Ok(());
            }
        }
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
                    t.node = Some(assigned_node);
                    t.updated_at = chrono::Utc::now();
                    true
                }),
            )
            .await?;
        let Some(task) = claimed else {
            return Ok(false);
        };
        let assignment = Assignment {
            task_id: task.id,
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
                    t.node = None;
                    t.updated_at = chrono::Utc::now();
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

    /// Settles the tasks of a node that is gone, through [`settle`], and wakes whoever waits on them.
    pub(crate) async fn settle_node(&self, node: &str, reason: &str) -> crate::store::Result<()> {
        let settled = settle(self.store.as_ref(), Some(node), reason).await?;
        for id in &settled.abnormal {
            warn!(task_id = %id, node, "task marked abnormal: {reason}");
        }
        for id in settled.requeued.iter().chain(&settled.abnormal) {
            self.changed(*id);
        }
        if !settled.requeued.is_empty() {
            self.kick();
        }
        Ok(())
    }
}

/// The tasks [`settle`] changed.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    pub(crate) requeued: Vec<TaskId>,
    pub(crate) abnormal: Vec<TaskId>,
}

/// Settles the tasks in flight on `node`, or on every node when `None`. A task handed out but never started
/// (or only Created) goes back to the queue; a running one becomes Abnormal with `reason`. The master's
/// start-up and the end of a worker's session both use this, so no task is left Pending on a dead node or
/// Running forever.
pub(crate) async fn settle(
    store: &dyn Store,
    node: Option<&str>,
    reason: &str,
) -> crate::store::Result<Settled> {
    let mut settled = Settled::default();
    for status in [
        TaskStatus::Created,
        TaskStatus::Pending,
        TaskStatus::Running,
    ] {
        // Settled rows leave the filter; rows already in place (queued, unassigned) stay, and paging skips them.
        let mut in_place = 0;
        loop {
            let filter = TaskFilter {
                node: node.map(str::to_owned),
                status: Some(status),
                limit: 500,
                offset: in_place,
                ..Default::default()
            };
            let (tasks, _) = store.list_tasks(&filter).await?;
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                if status == TaskStatus::Pending && task.node.is_none() {
                    in_place += 1;
                    continue;
                }
                let now = chrono::Utc::now();
                let change: crate::store::TaskChange = if status == TaskStatus::Running {
                    let reason = reason.to_owned();
                    Box::new(move |t| {
                        t.finish(&arachne_shared::TaskOutcome::Abnormal { reason }, now);
                        true
                    })
                } else {
                    Box::new(move |t| {
                        if t.status == TaskStatus::Created {
                            t.set_status(TaskStatus::Pending, now);
                        }
                        t.node = None;
                        t.updated_at = now;
                        true
                    })
                };
                // `None`: the task changed meanwhile, so it has left the filter anyway.
                match store.update_task(task.id, &[status], change).await? {
                    Some(_) if status == TaskStatus::Running => settled.abnormal.push(task.id),
                    Some(_) => settled.requeued.push(task.id),
                    None => {}
                }
            }
        }
    }
    Ok(settled)
}
