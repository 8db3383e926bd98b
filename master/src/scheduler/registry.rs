//! The registry of connected workers: their sessions, runner slots and the tasks each holds, when each was
//! last heard, and the nodes whose session broke and may still come back. In memory only: liveness and slot
//! counts cost no store write.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use arachne_proto::server::Outbound;
use arachne_shared::cluster::{MasterToWorker, Registration};
use arachne_shared::node::LoadLimits;
use arachne_shared::task::{has_labels, labels_text};
use arachne_shared::{NodeMetrics, Task, TaskId};
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock;

struct Connected {
    session: u64,
    outbound: Outbound,
    /// Ends the session; cancelled when the worker goes silent.
    kill: CancellationToken,
    max_runners: u32,
    enabled: bool,
    /// What the worker registered with; runs that require labels go only where all of them are.
    labels: BTreeMap<String, String>,
    /// Over these the node takes no new task.
    limits: LoadLimits,
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

impl Connected {
    /// What the node's load goes over, if anything.
    fn overloaded(&self) -> Option<String> {
        self.limits.exceeded(self.metrics.as_ref())
    }

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

/// What [`Registry::reserve`] found for a task.
pub(super) enum Reservation {
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

/// The connected workers, and the nodes that may still come back.
#[derive(Default)]
pub(crate) struct Registry {
    workers: Mutex<HashMap<String, Connected>>,
    /// Nodes whose session broke (or that were connected to a previous master) and may still come back for
    /// their tasks, with when they were last heard of.
    lost: Mutex<HashMap<String, Instant>>,
    next_session: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// Adds a worker with the tasks it still runs; refused if a worker of that name is connected. `greeting`
    /// goes to the worker before anything dispatch may send it: a worker takes no task before it is told it
    /// is registered. Returns the session number and the token that ends the session.
    pub(crate) fn register(
        &self,
        registration: &Registration,
        enabled: bool,
        limits: LoadLimits,
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
        let worker = Connected {
            session,
            outbound,
            kill: kill.clone(),
            max_runners: registration.max_runners,
            enabled,
            labels: registration.labels.clone(),
            limits,
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

    pub(crate) fn unreserve(&self, node: &str, task: TaskId) {
        if let Some(worker) = lock(&self.workers).get_mut(node) {
            worker.assigned.remove(&task);
        }
    }

    /// Notes that a worker is alive, with its latest metrics if it sent them. True when those metrics brought
    /// it back under its load thresholds: it may take tasks again.
    pub(crate) fn seen(&self, node: &str, metrics: Option<NodeMetrics>) -> bool {
        let mut workers = lock(&self.workers);
        let Some(worker) = workers.get_mut(node) else {
            return false;
        };
        worker.last_seen = Instant::now();
        worker.last_seen_at = Utc::now();
        if metrics.is_none() {
            return false;
        }
        let was_over = worker.overloaded().is_some();
        worker.metrics = metrics;
        was_over && worker.overloaded().is_none()
    }

    /// Offers `message` to every connected worker that is not leaving.
    pub(super) fn broadcast(&self, message: &MasterToWorker) {
        for worker in lock(&self.workers).values().filter(|w| !w.closing) {
            worker.outbound.offer(message.clone());
        }
    }

    /// Sets a connected worker's load thresholds.
    pub(super) fn set_limits(&self, node: &str, limits: LoadLimits) {
        if let Some(worker) = lock(&self.workers).get_mut(node) {
            worker.limits = limits;
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

    /// Connected, enabled nodes that have every one of `labels` (all of them when there are none), by name.
    pub(crate) fn online_with(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.workers)
            .iter()
            .filter(|(_, w)| !w.closing && w.enabled && has_labels(&w.labels, labels))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Free runner slots over all eligible nodes; `None` when no node is online and enabled.
    pub(super) fn free_slots(&self) -> Option<u32> {
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

    /// Picks a worker for `task` and reserves a slot: its pinned node, or the least loaded eligible one.
    pub(super) fn reserve(&self, task: &Task) -> Reservation {
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
                Some(w) if !has_labels(&w.labels, &task.node_labels) => {
                    return Reservation::Blocked(format!(
                        "node {pin} lacks the labels {}",
                        labels_text(&task.node_labels)
                    ));
                }
                Some(w) if let Some(over) = w.overloaded() => {
                    return Reservation::Blocked(format!(
                        "node {pin} is over its load threshold ({over})"
                    ));
                }
                Some(w) if !w.free() => return Reservation::Busy,
                Some(_) => pin.clone(),
            },
            None => {
                if !workers.values().any(|w| !w.closing && w.enabled) {
                    return Reservation::Blocked("no online, enabled node".into());
                }
                let labelled = |w: &Connected| has_labels(&w.labels, &task.node_labels);
                if !workers
                    .values()
                    .any(|w| !w.closing && w.enabled && labelled(w))
                {
                    return Reservation::Blocked(format!(
                        "no online, enabled node has the labels {}",
                        labels_text(&task.node_labels)
                    ));
                }
                let best = workers
                    .iter()
                    .filter(|(_, w)| w.free() && labelled(w) && w.overloaded().is_none())
                    .min_by(|(_, a), (_, b)| a.load().total_cmp(&b.load()));
                match best {
                    Some((name, _)) => name.clone(),
                    None => {
                        // Say so when load, not slots, keeps the task waiting.
                        let mut eligible = workers
                            .iter()
                            .filter(|(_, w)| !w.closing && w.enabled && labelled(w))
                            .peekable();
                        let over: Vec<String> = eligible
                            .clone()
                            .filter_map(|(name, w)| w.overloaded().map(|o| format!("{name}: {o}")))
                            .collect();
                        if eligible.peek().is_some() && over.len() == eligible.count() {
                            let mut over = over;
                            over.sort();
                            return Reservation::Blocked(format!(
                                "every eligible node is over its load threshold ({})",
                                over.join("; ")
                            ));
                        }
                        return Reservation::Busy;
                    }
                }
            }
        };
        let worker = workers.get_mut(&chosen).expect("chosen from the map");
        worker.assigned.insert(task.id);
        let outbound = worker.outbound.clone();
        Reservation::Reserved(chosen, outbound)
    }

    /// Enables or disables a connected worker. Running tasks are not touched.
    pub(super) fn set_enabled(&self, node: &str, enabled: bool) {
        if let Some(worker) = lock(&self.workers).get_mut(node) {
            worker.enabled = enabled;
        }
    }

    /// Sets a connected worker's runner slots; the way to its session, or `None` if it is not connected.
    pub(super) fn set_max_runners(&self, node: &str, max_runners: u32) -> Option<Outbound> {
        lock(&self.workers).get_mut(node).map(|w| {
            w.max_runners = max_runners;
            w.outbound.clone()
        })
    }

    /// The way to a connected worker's session, unless it is closing.
    pub(super) fn outbound(&self, node: &str) -> Option<Outbound> {
        lock(&self.workers)
            .get(node)
            .filter(|w| !w.closing)
            .map(|w| w.outbound.clone())
    }

    /// Ends the sessions of workers silent for longer than `timeout`.
    pub(super) fn end_silent(&self, timeout: Duration) {
        for worker in lock(&self.workers).values() {
            if !worker.closing && worker.last_seen.elapsed() > timeout {
                worker.kill.cancel();
            }
        }
    }

    /// The lost nodes that did not come back within `timeout`, forgotten here: their tasks are to be settled.
    pub(super) fn take_expired(&self, timeout: Duration) -> Vec<String> {
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
    }
}
