//! The master's side of worker sessions: registration, task progress, logs and items into the store, and the
//! settling of a node's tasks when its session ends.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arachne_proto::server::{BlobStream, Handler, Inbound, Outbound, Rejection};
use arachne_shared::cluster::{
    HeldTask, Leftover, MasterToWorker, ProcessStart, Registration, TaskEnd, TaskReport, WINDOW,
    WINDOW_BYTES, WorkerEnvelope, WorkerToMaster,
};
use arachne_shared::files::Manifest;
use arachne_shared::{
    ItemTarget, LogLine, LogStream, Node, NodeStatus, SpiderId, Task, TaskId, TaskStatus,
};
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::changes::Changes;
use crate::files::{self, SpiderFiles};
use crate::scheduler::Scheduler;
use crate::store::{Store, TaskFilter};
use crate::store_health::{StoreHealth, retrying};
use crate::telemetry::Telemetry;

/// How long a new session may take to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves worker sessions.
pub(crate) struct Sessions {
    /// What a registering worker is told of the versions it caches that were deleted meanwhile.
    pub(crate) spiders: Arc<crate::spiders::Spiders>,
    /// Told when a node comes online or goes offline.
    pub(crate) notifications: Arc<crate::notify::Notifications>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) changes: Arc<Changes>,
    /// What the workers' reports add up to, for `/metrics`.
    pub(crate) telemetry: Arc<Telemetry>,
    /// Whether the store takes the workers' reports, for `/health`.
    pub(crate) health: Arc<StoreHealth>,
    pub(crate) files: SpiderFiles,
    pub(crate) auth: Arc<crate::auth::Auth>,
    pub(crate) shutdown: CancellationToken,
}

/// Whether `task` is held by `node` under `lease`: handed to it by the assignment that lease names, and not
/// written off since. Only then may the node write to the task.
fn holds(task: &Task, node: &str, lease: u64) -> bool {
    task.node.as_deref() == Some(node) && task.lease == lease
}

/// Where the items of a session's tasks go and the lease each is held under, read from each task once rather
/// than for every batch. Only tasks this node holds are kept: a batch for a task the store does not know, or
/// that this node no longer holds under the batch's lease, is refused.
#[derive(Default)]
struct ItemTargets(HashMap<TaskId, (u64, ItemTarget)>);

impl ItemTargets {
    async fn get(
        &mut self,
        store: &dyn Store,
        node: &str,
        held: HeldTask,
    ) -> crate::store::Result<Option<&ItemTarget>> {
        // A lease other than the one remembered may be a newer assignment to this node: read again.
        if self
            .0
            .get(&held.task_id)
            .is_none_or(|(lease, _)| *lease != held.lease)
        {
            self.0.remove(&held.task_id);
            if let Some(task) = store.get_task(held.task_id).await?
                && holds(&task, node, held.lease)
            {
                self.0
                    .insert(held.task_id, (held.lease, task.item_target()));
            }
        }
        Ok(self.0.get(&held.task_id).map(|(_, target)| target))
    }

    fn forget(&mut self, task_id: TaskId) {
        self.0.remove(&task_id);
    }
}

/// Log and item batches of one session stored at once; see [`Sessions::serve`].
const WRITES_IN_FLIGHT: usize = 4;

/// A batch's store write, retried until it is stored, yielding the batch's sequence number.
type Write<'a> = Pin<Box<dyn Future<Output = u64> + Send + 'a>>;

/// A worker's message, sorted: a batch of output (stored beside others) or anything else.
enum Sorted {
    Output(HeldTask, Output),
    Other(WorkerToMaster),
}

/// A batch of a task's output from its worker.
enum Output {
    Lines(Vec<LogLine>),
    Items(Vec<arachne_shared::ItemRecord>),
}

impl Output {
    /// The task and output a log or item batch carries; any other message back.
    fn of(message: WorkerToMaster) -> Sorted {
        match message {
            WorkerToMaster::Logs {
                task_id,
                lease,
                lines,
            } => Sorted::Output(HeldTask { task_id, lease }, Self::Lines(lines)),
            WorkerToMaster::Items {
                task_id,
                lease,
                items,
            } => Sorted::Output(HeldTask { task_id, lease }, Self::Items(items)),
            other => Sorted::Other(other),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Lines(lines) => lines.len(),
            Self::Items(items) => items.len(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Self::Lines(_) => "log lines",
            Self::Items(_) => "items",
        }
    }
}

/// Cumulative acknowledgements to a worker.
#[derive(Default)]
struct Acks {
    /// An acknowledgement that did not fit in the outbound queue; acks are cumulative, so only the latest
    /// matters, and it is offered again shortly.
    unsent: Option<u64>,
}

impl Acks {
    fn offer(&mut self, outbound: &Outbound, seq: u64) {
        if seq > 0 {
            let sent = outbound.offer(MasterToWorker::Ack { seq });
            self.unsent = (!sent).then_some(seq);
        }
    }

    fn retry(&mut self, outbound: &Outbound) {
        if let Some(seq) = self.unsent.take() {
            self.offer(outbound, seq);
        }
    }
}

/// Why a worker's session ended, which decides what happens to its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The worker closed its side. A worker leaving on purpose does so after reporting its last task, but a
    /// worker that gave up on a session closes it the same way, so its tasks get the time to come back too.
    Left,
    /// The worker said nothing for the heartbeat timeout.
    Silent,
    /// The connection broke, or a report could not be stored: the worker may come back for its tasks.
    Broken,
    /// The master is shutting down: tasks stay as they are for the next master to take back.
    MasterShutdown,
}

#[async_trait::async_trait]
impl Handler for Sessions {
    async fn authorize(&self, token: Option<&str>) -> Result<(), Rejection> {
        if !self.auth.required() {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(Rejection::Unauthenticated(
                "no worker token: start the worker with $ARACHNE_WORKER_TOKEN or --token-file (arachne-master token create NAME --kind worker makes one)".into(),
            ));
        };
        match self.auth.check_worker(token).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Rejection::Unauthenticated(
                "the worker token is unknown or revoked".into(),
            )),
            Err(err) => Err(Rejection::Internal(format!(
                "checking the worker token failed: {err}"
            ))),
        }
    }

    async fn session(&self, mut inbound: Inbound, outbound: Outbound) {
        let registration = match tokio::time::timeout(REGISTER_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(envelope))) => match envelope.message {
                WorkerToMaster::Register(registration) => registration,
                other => {
                    let message = format!("the first message must be Register, got {other:?}");
                    return outbound.reject(Rejection::Refused(message)).await;
                }
            },
            Ok(Some(Err(err))) => {
                return warn!(error = %err, "worker session failed before registering");
            }
            Ok(None) => return,
            Err(_) => {
                return outbound
                    .reject(Rejection::Refused("no Register within 10 s".into()))
                    .await;
            }
        };
        let name = registration.name.clone();
        if let Err(arachne_shared::Invalid(message)) =
            arachne_shared::spider::validate_name("node", &name)
        {
            return outbound.reject(Rejection::Refused(message)).await;
        }
        let Some((node, session, kill)) = self.admit(&registration, &outbound).await else {
            return;
        };
        let end = self.serve(&node, &mut inbound, &outbound, &kill).await;
        self.scheduler.registry.close(&name, session);
        let timeout = self.scheduler.heartbeat_timeout().as_secs_f32();
        let settle_now = match end {
            SessionEnd::Silent => Some(format!(
                "node {name} went offline: no heartbeat for {timeout} s"
            )),
            SessionEnd::Left | SessionEnd::Broken => {
                self.scheduler.registry.mark_lost(&name);
                None
            }
            SessionEnd::MasterShutdown => None,
        };
        if let Some(reason) = settle_now
            && let Err(err) = self
                .scheduler
                .settle_node(&name, &reason, &HashSet::new())
                .await
        {
            error!(node = %name, error = %err, "cannot settle the tasks of a disconnected node");
            self.scheduler.registry.mark_lost(&name);
        }
        self.scheduler.registry.unregister(&name, session);
        // Re-read: a user may have changed the node while the session ran.
        let record = self.scheduler.lock_node_records().await;
        let mut node = self.stored_node(&name).await.unwrap_or(node);
        node.status = NodeStatus::Offline;
        node.running = 0;
        node.last_seen = Utc::now();
        if let Err(err) = self.store.put_node(&node).await {
            error!(node = %name, error = %err, "cannot record the node offline");
        }
        drop(record);
        // The master stopping is not the node going away.
        if !matches!(end, SessionEnd::MasterShutdown) {
            self.notifications.node_offline(&name);
        }
        info!(node = %name, ?end, "worker disconnected");
    }

    async fn manifest(&self, spider_id: SpiderId, version: String) -> Result<Manifest, Rejection> {
        self.files
            .manifest(spider_id, &version)
            .await
            .map_err(|err| files_rejection(spider_id, &version, err))
    }

    async fn fetch_blobs(
        &self,
        spider_id: SpiderId,
        version: String,
        sha256: Vec<String>,
    ) -> Result<BlobStream, Rejection> {
        let chunks = self
            .files
            .stream_blobs(spider_id, &version, sha256)
            .await
            .map_err(|err| files_rejection(spider_id, &version, err))?;
        let chunks = futures_util::stream::unfold(chunks, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            Some((
                chunk.map_err(|err| Rejection::Internal(err.to_string())),
                chunks,
            ))
        });
        Ok(Box::pin(chunks))
    }
}

fn files_rejection(spider_id: SpiderId, version: &str, err: files::Error) -> Rejection {
    match err {
        files::Error::NotFound(_) => {
            Rejection::NotFound(format!("spider {spider_id} has no version {version:?}"))
        }
        files::Error::NoSuchFile { .. } => Rejection::NotFound(err.to_string()),
        other => Rejection::Internal(other.to_string()),
    }
}

impl Sessions {
    async fn stored_node(&self, name: &str) -> Option<Node> {
        let nodes = self.store.list_nodes().await.ok()?;
        nodes.into_iter().find(|n| n.name == name)
    }

    /// Takes a worker in: reconciles the tasks it says it still runs with those the store has on it, registers
    /// it, and tells it what to stop. `None` if it was refused.
    async fn admit(
        &self,
        registration: &Registration,
        outbound: &Outbound,
    ) -> Option<(Node, u64, CancellationToken)> {
        let name = registration.name.clone();
        let record = self.scheduler.lock_node_records().await;
        let stored = self.stored_node(&name).await;
        let max_runners_override = stored.as_ref().and_then(|n| n.max_runners_override);
        let enabled = stored.as_ref().is_none_or(|n| n.enabled);
        let registered = registration.max_runners;
        let effective = Registration {
            max_runners: max_runners_override.unwrap_or(registered),
            ..registration.clone()
        };
        let in_flight = match self.in_flight(&name).await {
            Ok(held) => held,
            Err(err) => {
                let message = format!("the master cannot read its tasks: {err}");
                outbound.reject(Rejection::Internal(message)).await;
                return None;
            }
        };
        // The worker names every task it still owes an outcome for, under the lease it was given: those the
        // store still has on this node under that lease carry on (a running one runs, an ended one's end is
        // on its way); the rest of the node's tasks the worker does not have, so they are settled.
        let reported: HashSet<HeldTask> = registration.running.iter().copied().collect();
        let keep: HashSet<TaskId> = in_flight
            .intersection(&reported)
            .map(|held| held.task_id)
            .collect();
        let unknown: Vec<TaskId> = reported
            .difference(&in_flight)
            .map(|held| held.task_id)
            .collect();
        // Before registering, so no task handed to the new session can be mistaken for a leftover.
        let reason = format!("worker {name} restarted and no longer runs the task");
        if let Err(err) = self.scheduler.settle_node(&name, &reason, &keep).await {
            let message = format!("the master cannot settle the node's tasks: {err}");
            outbound.reject(Rejection::Internal(message)).await;
            return None;
        }
        self.record_leftovers(&name, &registration.leftovers).await;
        let mut greeting = vec![MasterToWorker::Registered {
            lease_ms: self.scheduler.lease().as_millis() as u64,
        }];
        // Versions deleted while the worker was away go from its cache; a failure only leaves them there.
        match self.spiders.stale(&registration.cached_versions).await {
            Ok(stale) if !stale.is_empty() => {
                greeting.push(MasterToWorker::Forget { versions: stale })
            }
            Ok(_) => {}
            Err(err) => {
                warn!(node = %name, error = %err, "cannot tell which cached versions were deleted")
            }
        }
        if effective.max_runners != registered {
            greeting.push(MasterToWorker::SetMaxRunners {
                max_runners: effective.max_runners,
            });
        }
        let (session, kill) = match self.scheduler.registry.register(
            &effective,
            enabled,
            self.scheduler.load_limits(stored.as_ref()),
            keep.clone(),
            outbound.clone(),
            greeting,
        ) {
            Ok(registered) => registered,
            Err(err) => {
                outbound.reject(Rejection::Refused(err.to_string())).await;
                return None;
            }
        };
        let now = Utc::now();
        let node = Node {
            name: name.clone(),
            status: NodeStatus::Online,
            max_runners: effective.max_runners,
            max_runners_override,
            running: keep.len() as u32,
            version: registration.version.clone(),
            registered_at: stored.as_ref().map(|n| n.registered_at).unwrap_or(now),
            last_seen: now,
            enabled,
            labels: registration.labels.clone(),
            metrics: None,
            max_cpu_percent: stored.as_ref().and_then(|n| n.max_cpu_percent),
            max_memory_percent: stored.as_ref().and_then(|n| n.max_memory_percent),
        };
        if let Err(err) = self.store.put_node(&node).await {
            error!(node = %name, error = %err, "cannot record the node");
        }
        drop(record);
        self.notifications.node_online(&name);
        let mut accepted = true;
        for task_id in unknown {
            // Most often a task whose end the master stored just before it stopped; the cancel is a no-op then.
            info!(task_id = %task_id, node = %name, "the worker holds a task the master does not expect of it; cancelling it there");
            let cancel = MasterToWorker::Cancel {
                task_id,
                reason: "the task ended or moved while its worker was away".into(),
            };
            accepted = accepted && outbound.send(cancel).await.is_ok();
        }
        if !keep.is_empty() {
            info!(node = %name, tasks = keep.len(), "worker reattached its running tasks");
        }
        info!(node = %name, max_runners = node.max_runners, "worker connected");
        self.scheduler.kick();
        accepted.then_some((node, session, kill))
    }

    /// Tells the tasks whose leftover processes a restarted worker killed, in their logs.
    async fn record_leftovers(&self, node: &str, leftovers: &[Leftover]) {
        for leftover in leftovers {
            let task = match self.store.get_task(leftover.task_id).await {
                Ok(Some(task)) if task.node.as_deref() == Some(node) => task,
                Ok(_) => continue,
                Err(err) => {
                    warn!(task_id = %leftover.task_id, error = %err, "cannot read a task to note its leftover processes");
                    continue;
                }
            };
            let pids: Vec<String> = leftover.pids.iter().map(ToString::to_string).collect();
            let line = LogLine {
                seq: task.log_lines + 1,
                stream: LogStream::System,
                text: format!(
                    "[arachne] worker {node} restarted and killed {} process(es) this run had left running: {}",
                    pids.len(),
                    pids.join(", ")
                ),
                at: Utc::now(),
            };
            match self.store.append_logs(task.id, &[line]).await {
                Ok(()) => self.changes.output(task.id),
                Err(err) => {
                    warn!(task_id = %task.id, error = %err, "cannot note a task's leftover processes")
                }
            }
        }
    }

    /// Tasks the store has handed to `node` that have not ended, with their leases.
    async fn in_flight(&self, node: &str) -> crate::store::Result<HashSet<HeldTask>> {
        let mut held = HashSet::new();
        for status in [TaskStatus::Pending, TaskStatus::Running] {
            let filter = TaskFilter {
                node: Some(node.to_owned()),
                status: Some(status),
                ..Default::default()
            };
            held.extend(
                self.store
                    .all_tasks(&filter)
                    .await?
                    .into_iter()
                    .map(|t| HeldTask {
                        task_id: t.id,
                        lease: t.lease,
                    }),
            );
        }
        Ok(held)
    }

    /// Reads the worker's messages until the session ends. Heartbeats are answered here at once; every other
    /// message goes, in order, to [`Sessions::process`], which stores it and acknowledges it. The two run side
    /// by side, so a store that fails or stalls (retried with backoff, see [`crate::store_health`]) delays
    /// acknowledgements, never the heartbeats: neither side mistakes a slow disk for a dead worker.
    async fn serve(
        &self,
        node: &Node,
        inbound: &mut Inbound,
        outbound: &Outbound,
        kill: &CancellationToken,
    ) -> SessionEnd {
        // A worker keeps at most WINDOW messages unacknowledged, and the master acknowledges a message only
        // after taking it from here, so a worker that keeps the rule never finds this full.
        let (queue, queued) = mpsc::channel(WINDOW);
        // Bytes queued for the processor: bounded too, as a message may be anything up to the wire's limit.
        let queued_bytes = AtomicUsize::new(0);
        let process = self.process(node, queued, &queued_bytes, outbound);
        tokio::pin!(process);
        loop {
            let envelope = tokio::select! {
                // The processor ends only once its queue closes, which this loop holds open.
                () = &mut process => return SessionEnd::Broken,
                message = inbound.next() => message,
                () = kill.cancelled() => return SessionEnd::Silent,
                () = self.shutdown.cancelled() => return SessionEnd::MasterShutdown,
            };
            let envelope = match envelope {
                Some(Ok(envelope)) => envelope,
                Some(Err(err)) => {
                    warn!(node = %node.name, error = %err, "worker session broke");
                    return SessionEnd::Broken;
                }
                None => return SessionEnd::Left,
            };
            let metrics = match envelope.message {
                WorkerToMaster::Heartbeat { beat, ref metrics } => {
                    // Renews the worker's lease on its runs. Kept in memory: an idle cluster writes nothing.
                    outbound.offer(MasterToWorker::Heard { beat });
                    Some(metrics.clone())
                }
                _ => None,
            };
            if self.scheduler.registry.seen(&node.name, metrics.clone()) {
                self.scheduler.kick();
            }
            if metrics.is_some() {
                continue;
            }
            let bytes = envelope.message.approx_bytes();
            let held = queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            if held > WINDOW_BYTES || queue.try_send(envelope).is_err() {
                warn!(node = %node.name, held_bytes = held,
                    "the worker sent more unacknowledged messages than its window allows; ending its session");
                return SessionEnd::Broken;
            }
        }
    }

    /// Stores the worker's messages in order and acknowledges each once stored; runs until `queued` closes.
    ///
    /// Log and item batches are written up to [`WRITES_IN_FLIGHT`] at a time: both writes are idempotent and
    /// independent of their order (logs are named by their first line, counters are `$max`-style, item
    /// de-duplication compares sequence numbers), so a batch need not wait for the one before it. Any other
    /// message first waits for every write before it, so a task's end is stored after all its records.
    /// Acknowledgements still go out in order: a write is acknowledged only once every earlier one is stored.
    /// A write that fails is tried again with backoff until it succeeds; nothing is acknowledged meanwhile, so
    /// the worker holds it, and the rest, until then.
    async fn process(
        &self,
        node: &Node,
        mut queued: mpsc::Receiver<WorkerEnvelope>,
        queued_bytes: &AtomicUsize,
        outbound: &Outbound,
    ) {
        let mut acks = Acks::default();
        let mut targets = ItemTargets::default();
        let mut writes: FuturesOrdered<Write<'_>> = FuturesOrdered::new();
        loop {
            let retry_ack = async {
                match acks.unsent {
                    Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    None => std::future::pending().await,
                }
            };
            let envelope = tokio::select! {
                Some(seq) = writes.next() => {
                    acks.offer(outbound, seq);
                    continue;
                }
                envelope = queued.recv(), if writes.len() < WRITES_IN_FLIGHT => match envelope {
                    Some(envelope) => {
                        queued_bytes.fetch_sub(envelope.message.approx_bytes(), Ordering::Relaxed);
                        envelope
                    }
                    None => return,
                },
                () = retry_ack => {
                    acks.retry(outbound);
                    continue;
                }
            };
            let seq = envelope.seq;
            if !matches!(
                envelope.message,
                WorkerToMaster::Logs { .. } | WorkerToMaster::Items { .. }
            ) {
                while let Some(seq) = writes.next().await {
                    acks.offer(outbound, seq);
                }
            }
            match self
                .handle(node, seq, envelope.message, outbound, &mut targets)
                .await
            {
                Some(write) => writes.push_back(write),
                None => acks.offer(outbound, seq),
            }
        }
    }

    /// A batch of log lines or items as its store write, refused (and acknowledged unstored) when the node
    /// does not hold the task under that lease: a batch resent after a reconnect may be for a task deleted
    /// meanwhile (stored, it would be an orphan no sweep removes), or written off since (its run was
    /// superseded).
    async fn store_output<'a>(
        &'a self,
        node: &'a Node,
        seq: u64,
        held: HeldTask,
        output: Output,
        targets: &mut ItemTargets,
    ) -> Write<'a> {
        let (store, health) = (&self.store, &self.health);
        let target = retrying!(
            health,
            "reading a task",
            targets.get(store.as_ref(), &node.name, held)
        )
        .cloned();
        Box::pin(async move {
            let Some(target) = target else {
                warn!(node = %node.name, task_id = %held.task_id, lease = held.lease, count = output.len(),
                    "refusing {} of a task this node does not hold under that lease", output.what());
                return seq;
            };
            match output {
                Output::Lines(lines) => {
                    retrying!(
                        health,
                        "storing log lines",
                        store.append_logs(target.task, &lines)
                    );
                    self.telemetry.ingested(0, lines.len());
                }
                Output::Items(items) => {
                    retrying!(health, "storing items", store.insert_items(&target, &items));
                    self.telemetry.ingested(items.len(), 0);
                }
            }
            self.changes.output(target.task);
            seq
        })
    }

    /// Handles one message, trying each store call again until it succeeds. A log or item batch comes back
    /// as its store write, for `process` to run beside others; anything else is done when this returns.
    async fn handle<'a>(
        &'a self,
        node: &'a Node,
        seq: u64,
        message: WorkerToMaster,
        outbound: &Outbound,
        targets: &mut ItemTargets,
    ) -> Option<Write<'a>> {
        let message = match Output::of(message) {
            Sorted::Output(held, output) => {
                return Some(self.store_output(node, seq, held, output, targets).await);
            }
            Sorted::Other(message) => message,
        };
        let store = &self.store;
        let health = &self.health;
        match message {
            WorkerToMaster::Register(_) => {
                warn!(node = %node.name, "ignoring a second Register in one session");
            }
            // Answered as it arrives, in `serve`.
            WorkerToMaster::Heartbeat { .. } => {}
            WorkerToMaster::TaskStarted {
                task_id,
                lease,
                pid,
                at,
            } => {
                let (held, start) = (HeldTask { task_id, lease }, ProcessStart { pid, at });
                retrying!(
                    health,
                    "recording a task's start",
                    self.started(node, held, start, outbound)
                );
            }
            // Taken above.
            WorkerToMaster::Logs { .. } | WorkerToMaster::Items { .. } => {}
            WorkerToMaster::Report(report) => {
                let (task_id, lease) = (report.task_id, report.lease);
                // Reports may arrive for a task that just ended (the end was sent right after): keep them too.
                let update = || -> crate::store::TaskChange {
                    let (name, report) = (node.name.clone(), report.clone());
                    Box::new(move |t: &mut Task| {
                        if !holds(t, &name, report.lease) {
                            return false;
                        }
                        let TaskReport {
                            status,
                            errors,
                            errors_before,
                            at,
                            ..
                        } = report.clone();
                        t.record_report(status, errors, errors_before, at);
                        true
                    })
                };
                let stored = retrying!(
                    health,
                    "storing a task's report",
                    store.update_task(task_id, &TaskStatus::ALL, update())
                );
                if stored.is_some() {
                    self.changes.changed(task_id);
                } else {
                    warn!(node = %node.name, task_id = %task_id, lease,
                        "refusing a report of a task this node does not hold under that lease");
                }
            }
            WorkerToMaster::TaskRefused {
                task_id,
                lease,
                reason,
            } => {
                targets.forget(task_id);
                let held = HeldTask { task_id, lease };
                retrying!(
                    health,
                    "requeueing a refused task",
                    self.refused(node, held, &reason)
                );
            }
            WorkerToMaster::TaskEnded(ended) => {
                targets.forget(ended.task_id);
                retrying!(
                    health,
                    "recording a task's end",
                    self.ended(node, ended.clone())
                );
            }
        }
        None
    }

    async fn started(
        &self,
        node: &Node,
        held: HeldTask,
        start: ProcessStart,
        outbound: &Outbound,
    ) -> crate::store::Result<()> {
        let HeldTask { task_id, lease } = held;
        let name = node.name.clone();
        let updated = self
            .store
            .update_task(
                task_id,
                &[TaskStatus::Pending],
                Box::new(move |t| {
                    if !holds(t, &name, lease) {
                        return false;
                    }
                    t.pid = Some(start.pid);
                    t.set_status(TaskStatus::Running, start.at);
                    true
                }),
            )
            .await?;
        self.changes.changed(task_id);
        if let Some(task) = updated {
            if let Some(parent) = task.parent_id {
                self.scheduler.refresh_parent(parent).await?;
            }
            return Ok(());
        }
        let current = self.store.get_task(task_id).await?;
        let resent = current.is_some_and(|t| {
            holds(&t, &node.name, lease)
                && (t.status == TaskStatus::Running || t.status.is_terminal())
        });
        if !resent {
            // Cancelled, handed elsewhere or written off while the worker was preparing it: stop it there too.
            // Sent from its own task, so this session never waits on a worker that may be waiting on it.
            warn!(task_id = %task_id, node = %node.name, "a task started that is no longer this node's; cancelling it");
            let outbound = outbound.clone();
            tokio::spawn(async move {
                let cancel = MasterToWorker::Cancel {
                    task_id,
                    reason: "the task was cancelled before it started".into(),
                };
                let _ = outbound.send(cancel).await;
            });
        }
        Ok(())
    }

    async fn ended(&self, node: &Node, ended: TaskEnd) -> crate::store::Result<()> {
        let (task_id, lease, status) = (ended.task_id, ended.lease, ended.outcome.status());
        let name = node.name.clone();
        let updated = self
            .store
            .update_task(
                task_id,
                &[TaskStatus::Pending, TaskStatus::Running],
                Box::new(move |t| {
                    if !holds(t, &name, lease) {
                        return false;
                    }
                    // A short run's start comes with its end: the task goes through Running in one write.
                    if let Some(start) = ended.started.filter(|_| t.status == TaskStatus::Pending) {
                        t.pid = Some(start.pid);
                        t.set_status(TaskStatus::Running, start.at);
                    }
                    t.finish(&ended.outcome, ended.at);
                    t.peak_rss_bytes = ended.peak_rss_bytes.or(t.peak_rss_bytes);
                    true
                }),
            )
            .await?;
        match updated {
            Some(task) => {
                self.scheduler.release(&node.name, task_id);
                info!(task_id = %task_id, node = %node.name, %status, "task ended");
                self.scheduler.ended(&task).await;
            }
            None => {
                // A resent end, or one of a superseded run. The slot is freed unless the task was handed to
                // this node again under a newer lease: that run holds it now.
                let current = self.store.get_task(task_id).await?;
                let rerun_here = current.is_some_and(|t| {
                    t.node.as_deref() == Some(node.name.as_str())
                        && t.lease != lease
                        && !t.status.is_terminal()
                });
                if !rerun_here {
                    self.scheduler.release(&node.name, task_id);
                }
                warn!(task_id = %task_id, node = %node.name, lease, %status,
                    "refusing the end of a task that already ended or that this node no longer holds under that lease")
            }
        }
        Ok(())
    }

    /// A worker will not run a task it was handed: it never started, so it goes back to the queue.
    async fn refused(&self, node: &Node, held: HeldTask, reason: &str) -> crate::store::Result<()> {
        let name = node.name.clone();
        let requeued = self
            .store
            .update_task(
                held.task_id,
                &[TaskStatus::Pending],
                Box::new(move |t| {
                    if !holds(t, &name, held.lease) {
                        return false;
                    }
                    t.requeue(Utc::now());
                    true
                }),
            )
            .await?;
        if requeued.is_some() {
            warn!(task_id = %held.task_id, node = %node.name, %reason, "a worker refused a task; back to the queue");
            self.scheduler.release(&node.name, held.task_id);
            self.changes.changed(held.task_id);
        }
        Ok(())
    }
}
