//! The worker's sessions with the master: register, take assignments into runner slots, forward cancels,
//! heartbeat, and reconnect with backoff when the master goes away.
//!
//! Runs outlive sessions. When the connection breaks (or the master restarts) spiders keep running; their
//! messages wait in the [`Outbox`] until a new session takes them, and the worker names its running tasks when
//! it registers again, so the master can take them back instead of writing them off.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arachne_proto::client::Client;
use arachne_shared::TaskId;
use arachne_shared::TaskOutcome;
use arachne_shared::cluster::{
    Assignment, MasterToWorker, ProcessStart, Registration, WorkerEnvelope, WorkerToMaster,
};
use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Config;
use crate::deps::Deps;
use crate::metrics::Metrics;
use crate::runner::{self, RunContext, RunResult, Stop};
use crate::sync::FileCache;

/// Messages from runners waiting for the outbox. Runners wait when it is full, which slows their readers and,
/// through the pipe, the spider.
const EVENTS_CAPACITY: usize = 256;
/// Sequenced messages sent but not yet acknowledged. Past this the worker stops sending until the master
/// catches up, so a slow or absent master bounds the worker's memory instead of growing it.
const WINDOW: usize = 512;
/// How long a stopping worker waits for the master to take its last reports.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a task's start is held back before it is sent. A run that ends within it, having said nothing,
/// has its start sent with its end: one message and one stored change fewer for the master, for the many
/// short tasks a busy cluster runs. Any output or report of the task sends the start at once; a longer run
/// shows as Running this much later; a worker that dies within it has the task requeued, not written off.
const START_HOLD: Duration = Duration::from_millis(20);

/// Keeps a session with the master open until `shutdown`, reconnecting when it breaks.
/// Runs sessions until `shutdown`; an `Err` is a refusal no reconnect can cure (a wrong token).
pub(crate) async fn run(config: Config, shutdown: CancellationToken) -> Result<(), String> {
    let (events, events_rx) = mpsc::channel(EVENTS_CAPACITY);
    let (client_tx, client_rx) = watch::channel(None);
    let ctx = RunContext {
        node: config.name.clone(),
        options: config.runner.clone(),
        cache: FileCache::new(config.work_dir.join("cache")),
        deps: Deps::new(config.work_dir.join("envs")),
        client: client_rx,
        tasks_dir: config.work_dir.join("tasks"),
        events,
        spider_env: config.spider_env.clone().into(),
    };
    let mut worker = Worker {
        runners: Runners::new(config.max_runners, ctx),
        outbox: Outbox::new(events_rx),
        metrics: Metrics::new(config.work_dir.clone()),
        client: client_tx,
    };
    let mut backoff = Backoff::default();
    loop {
        match worker.session(&config, &shutdown, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(Ended::Refused(reason)) => {
                error!(node = %config.name, master = %config.master, %reason, "the master refused this worker's token; stopping");
                worker.runners.stop_all(Stop::Shutdown);
                while let Some(done) = worker.runners.tasks.join_next().await {
                    worker.runners.reap(done);
                }
                return Err(format!(
                    "the master at {} refused this worker's token ({reason}); give the worker a valid one with --token or ARACHNE_WORKER_TOKEN",
                    config.master
                ));
            }
            Err(Ended::Retry(err)) => {
                warn!(node = %config.name, error = %err, running = worker.runners.active.len(), "session with the master ended; reconnecting")
            }
        }
        worker.client.send_replace(None);
        // Spiders keep running while the worker reconnects; only their ends are collected here.
        let pause = tokio::time::sleep(backoff.next());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                () = shutdown.cancelled() => {
                    // No master to tell: it settles these tasks itself when the worker does not come back.
                    worker.runners.stop_all(Stop::Shutdown);
                    while let Some(done) = worker.runners.tasks.join_next().await {
                        worker.runners.reap(done);
                    }
                    return Ok(());
                }
                Some(done) = worker.runners.tasks.join_next() => worker.runners.reap(done),
            }
        }
    }
}

/// Why a session ended without a shutdown.
#[derive(Debug)]
enum Ended {
    /// Connection trouble or a master restart: connect again after a pause.
    Retry(String),
    /// The master refused the token.
    Refused(String),
}

impl From<String> for Ended {
    fn from(reason: String) -> Self {
        Self::Retry(reason)
    }
}

impl From<arachne_proto::Error> for Ended {
    fn from(err: arachne_proto::Error) -> Self {
        match err {
            arachne_proto::Error::Unauthenticated(reason) => Self::Refused(reason),
            other => Self::Retry(other.to_string()),
        }
    }
}

/// What lives across sessions.
struct Worker {
    runners: Runners,
    outbox: Outbox,
    metrics: Metrics,
    client: watch::Sender<Option<Client>>,
}

impl Worker {
    /// Runs one session. `Ok` means the worker was shut down; `Err` means reconnect.
    async fn session(
        &mut self,
        config: &Config,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), Ended> {
        let client = tokio::select! {
            client = Client::open(&config.master, config.token.as_deref()) => client?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let (session_tx, session_rx) = mpsc::channel(EVENTS_CAPACITY);
        let mut running: Vec<TaskId> = self.runners.active.keys().copied().collect();
        running.extend(self.outbox.unacknowledged_ends());
        let registration = Registration {
            name: config.name.clone(),
            max_runners: config.max_runners,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: config.labels.clone(),
            running,
        };
        let register = WorkerEnvelope {
            seq: 0,
            message: WorkerToMaster::Register(registration),
        };
        session_tx
            .send(register)
            .await
            .map_err(|_| "session closed".to_owned())?;
        let mut inbound = client.clone().session(session_rx).await?;
        match inbound.next().await {
            Some(Ok(MasterToWorker::Registered { start_in_end })) => {
                self.outbox.hold_starts(start_in_end)
            }
            Some(Ok(other)) => {
                return Err(format!("expected Registered, the master sent {other:?}").into());
            }
            Some(Err(err @ arachne_proto::Error::Unauthenticated(_))) => return Err(err.into()),
            Some(Err(err)) => return Err(format!("registration refused: {err}").into()),
            None => {
                return Err("the master closed the session during registration"
                    .to_owned()
                    .into());
            }
        }
        info!(node = %config.name, master = %config.master, max_runners = config.max_runners,
            running = self.runners.active.len(), "registered with the master");
        backoff.reset();
        self.client.send_replace(Some(client));
        // What the last session sent but the master never confirmed goes again, first and in order.
        for envelope in self.outbox.unacknowledged() {
            session_tx
                .send(envelope)
                .await
                .map_err(|_| "session closed".to_owned())?;
        }

        let mut heartbeat = tokio::time::interval(config.heartbeat);
        let mut stopping = false;
        let mut drain_deadline = None;
        let ended = loop {
            if stopping && self.runners.active.is_empty() && self.outbox.is_settled() {
                break Ok(());
            }
            tokio::select! {
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                    self.runners.stop_all(Stop::Shutdown);
                }
                () = sleep_until(drain_deadline) => {
                    warn!(node = %config.name, unacknowledged = self.outbox.unacked.len(), "the master did not take the last reports in time");
                    break Ok(());
                }
                message = inbound.next() => match message {
                    Some(Ok(MasterToWorker::Assign(task))) if !stopping => self.runners.start(task),
                    Some(Ok(MasterToWorker::Assign(task))) => {
                        let outcome = TaskOutcome::Abnormal { reason: format!("worker {} is shutting down", config.name) };
                        self.runners.refuse(task.task_id, outcome);
                    }
                    Some(Ok(MasterToWorker::Cancel { task_id, reason })) => self.runners.stop(task_id, Stop::User(reason)),
                    Some(Ok(MasterToWorker::SetMaxRunners { max_runners })) => self.runners.resize(max_runners),
                    Some(Ok(MasterToWorker::Ack { seq })) => self.outbox.ack(seq),
                    Some(Ok(MasterToWorker::Registered { .. })) => {}
                    Some(Err(err)) => break Err(err.to_string()),
                    None => break Err("the master closed the session".to_owned()),
                },
                Some(done) = self.runners.tasks.join_next() => self.runners.reap(done),
                Some(envelope) = self.outbox.next(), if self.outbox.window_open() => {
                    if session_tx.send(envelope).await.is_err() {
                        break Err("session closed".to_owned());
                    }
                }
                _ = heartbeat.tick() => {
                    let metrics = self.metrics.sample(self.runners.active.len() as u32);
                    let beat = WorkerEnvelope { seq: 0, message: WorkerToMaster::Heartbeat(metrics) };
                    if session_tx.send(beat).await.is_err() {
                        break Err("session closed".to_owned());
                    }
                }
            }
        };
        if ended.is_ok() {
            // Half-close: with our sender dropped, the master sees our stream end after the last report and
            // knows the worker left on purpose. Dropping its stream instead would reset both directions.
            drop(session_tx);
            let drained = async { while let Some(Ok(_)) = inbound.next().await {} };
            if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
                warn!(node = %config.name, "the master did not close the session in time");
            }
        }
        ended.map_err(Ended::Retry)
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Numbers the runners' messages and keeps each until the master acknowledges it. Holds each task's start
/// back for [`START_HOLD`] when the master takes starts inside ends, keeping every task's messages in their
/// order.
struct Outbox {
    rx: mpsc::Receiver<WorkerToMaster>,
    next_seq: u64,
    unacked: VecDeque<WorkerEnvelope>,
    /// Whether the master of the current session records a start sent inside `TaskEnded`.
    hold: bool,
    /// Starts held back, oldest first, each with when it must go.
    held: VecDeque<(tokio::time::Instant, TaskId, ProcessStart)>,
    /// Messages taken from `rx`, to be numbered in this order.
    ready: VecDeque<WorkerToMaster>,
}

impl Outbox {
    fn new(rx: mpsc::Receiver<WorkerToMaster>) -> Self {
        Self {
            rx,
            next_seq: 1,
            unacked: VecDeque::new(),
            hold: false,
            held: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    fn window_open(&self) -> bool {
        self.unacked.len() < WINDOW
    }

    /// The next runner message, numbered and kept for resending. Cancel-safe: a message taken from `rx` is
    /// kept in `self` before anything else is awaited.
    async fn next(&mut self) -> Option<WorkerEnvelope> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                let envelope = WorkerEnvelope {
                    seq: self.next_seq,
                    message,
                };
                self.next_seq += 1;
                self.unacked.push_back(envelope.clone());
                return Some(envelope);
            }
            let due = self.held.front().map(|(due, ..)| *due);
            tokio::select! {
                message = self.rx.recv() => match message {
                    Some(message) => self.take(message),
                    // No runner is left to end a held task: send what is held.
                    None if self.held.is_empty() => return None,
                    None => self.release_oldest(),
                },
                () = sleep_until(due) => self.release_oldest(),
            }
        }
    }

    /// Holds starts back from now on, or (for a master that would drop a start sent with an end) sends the
    /// held ones and holds no more.
    fn hold_starts(&mut self, hold: bool) {
        self.hold = hold;
        while !hold && !self.held.is_empty() {
            self.release_oldest();
        }
    }

    fn take(&mut self, mut message: WorkerToMaster) {
        if self.hold
            && let WorkerToMaster::TaskStarted { task_id, pid, at } = message
        {
            let due = tokio::time::Instant::now() + START_HOLD;
            self.held
                .push_back((due, task_id, ProcessStart { pid, at }));
            return;
        }
        if let WorkerToMaster::TaskEnded {
            task_id, started, ..
        } = &mut message
        {
            // The end carries its held start.
            let held = self.unhold(*task_id);
            *started = started.or(held);
        } else if let Some(task_id) = task_of(&message)
            && let Some(start) = self.unhold(task_id)
        {
            // Any other message of the task goes after its start.
            self.ready.push_back(started(task_id, start));
        }
        self.ready.push_back(message);
    }

    fn unhold(&mut self, task_id: TaskId) -> Option<ProcessStart> {
        let at = self.held.iter().position(|(_, id, _)| *id == task_id)?;
        self.held.remove(at).map(|(_, _, start)| start)
    }

    fn release_oldest(&mut self) {
        if let Some((_, task_id, start)) = self.held.pop_front() {
            self.ready.push_back(started(task_id, start));
        }
    }

    fn ack(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|e| e.seq <= seq) {
            self.unacked.pop_front();
        }
    }

    fn unacknowledged(&self) -> Vec<WorkerEnvelope> {
        self.unacked.iter().cloned().collect()
    }

    /// Tasks whose end the master has not confirmed: they are still this worker's to report.
    fn unacknowledged_ends(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.unacked.iter().filter_map(|e| match e.message {
            WorkerToMaster::TaskEnded { task_id, .. } => Some(task_id),
            _ => None,
        })
    }

    /// Nothing waits to be sent or confirmed.
    fn is_settled(&self) -> bool {
        self.unacked.is_empty()
            && self.rx.is_empty()
            && self.held.is_empty()
            && self.ready.is_empty()
    }
}

fn started(task_id: TaskId, start: ProcessStart) -> WorkerToMaster {
    WorkerToMaster::TaskStarted {
        task_id,
        pid: start.pid,
        at: start.at,
    }
}

/// The task a runner's message is about.
fn task_of(message: &WorkerToMaster) -> Option<TaskId> {
    match message {
        WorkerToMaster::TaskStarted { task_id, .. }
        | WorkerToMaster::Logs { task_id, .. }
        | WorkerToMaster::Items { task_id, .. }
        | WorkerToMaster::Report { task_id, .. }
        | WorkerToMaster::TaskEnded { task_id, .. } => Some(*task_id),
        WorkerToMaster::Register(_) | WorkerToMaster::Heartbeat(_) => None,
    }
}

struct Runners {
    slots: Arc<Semaphore>,
    /// The number of slots in force.
    max: u32,
    /// Slots still to remove after a shrink; each is taken back as a running task ends.
    shrink_debt: u32,
    active: HashMap<TaskId, watch::Sender<Option<Stop>>>,
    tasks: JoinSet<TaskId>,
    ctx: RunContext,
}

impl Runners {
    fn new(max_runners: u32, ctx: RunContext) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_runners as usize)),
            max: max_runners,
            shrink_debt: 0,
            active: HashMap::new(),
            tasks: JoinSet::new(),
            ctx,
        }
    }

    fn start(&mut self, task: Assignment) {
        let task_id = task.task_id;
        if self.active.contains_key(&task_id) {
            warn!(task_id = %task_id, "assigned a task this worker already runs; ignored");
            return;
        }
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            // The master counts slots too, so this only happens if the two disagree; say so rather than queue.
            error!(task_id = %task_id, node = %self.ctx.node, "assigned a task with no free runner slot");
            let outcome = TaskOutcome::Abnormal {
                reason: format!("node {} had no free runner slot", self.ctx.node),
            };
            self.refuse(task_id, outcome);
            return;
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        self.active.insert(task_id, stop_tx);
        let ctx = self.ctx.clone();
        self.tasks.spawn(async move {
            let result = runner::execute(&ctx, task, stop_rx).await;
            info!(task_id = %task_id, node = %ctx.node, status = %result.outcome.status(), "task ended");
            report_end(&ctx.events, task_id, result).await;
            drop(permit);
            task_id
        });
    }

    /// Reports a task that will not run here. Sent from its own task: the session loop that calls this is
    /// also the one that drains `events`, so waiting there for room in a full channel would wait forever.
    fn refuse(&self, task_id: TaskId, outcome: TaskOutcome) {
        let events = self.ctx.events.clone();
        tokio::spawn(async move { report_end(&events, task_id, outcome.into()).await });
    }

    fn stop(&self, task_id: TaskId, reason: Stop) {
        match self.active.get(&task_id) {
            Some(stop) => {
                stop.send_replace(Some(reason));
            }
            None => warn!(task_id = %task_id, "cancel for a task this worker is not running"),
        }
    }

    /// Changes the number of slots. Running tasks are never stopped: a shrink takes back free slots now and the
    /// rest as tasks end.
    fn resize(&mut self, max_runners: u32) {
        let max_runners = max_runners.max(1);
        info!(node = %self.ctx.node, from = self.max, to = max_runners, "runner slots changed");
        if max_runners > self.max {
            let mut grow = max_runners - self.max;
            let repaid = grow.min(self.shrink_debt);
            self.shrink_debt -= repaid;
            grow -= repaid;
            self.slots.add_permits(grow as usize);
        } else {
            let shrink = (self.max - max_runners) as usize;
            let forgotten = self.slots.forget_permits(shrink);
            self.shrink_debt += (shrink - forgotten) as u32;
        }
        self.max = max_runners;
    }

    fn reap(&mut self, done: Result<TaskId, tokio::task::JoinError>) {
        // The ended task's slot is free again; it pays off a shrink first.
        while self.shrink_debt > 0 && self.slots.forget_permits(1) == 1 {
            self.shrink_debt -= 1;
        }
        match done {
            Ok(task_id) => {
                self.active.remove(&task_id);
            }
            Err(err) => error!(error = %err, "a runner task failed"),
        }
    }

    /// Asks every run to stop; each reports its end as it finishes.
    fn stop_all(&self, reason: Stop) {
        for stop in self.active.values() {
            stop.send_replace(Some(reason.clone()));
        }
    }
}

/// Queues a task's end for the master.
async fn report_end(events: &mpsc::Sender<WorkerToMaster>, task_id: TaskId, result: RunResult) {
    let RunResult {
        outcome,
        peak_rss_bytes,
    } = result;
    let _ = events
        .send(WorkerToMaster::TaskEnded {
            task_id,
            outcome,
            at: Utc::now(),
            peak_rss_bytes,
            started: None,
        })
        .await;
}

/// Exponential backoff between reconnects: 200 ms doubling up to 5 s.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        now
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(task_id: TaskId) -> WorkerToMaster {
        WorkerToMaster::TaskEnded {
            task_id,
            outcome: TaskOutcome::Finished,
            at: Utc::now(),
            peak_rss_bytes: None,
            started: None,
        }
    }

    #[tokio::test]
    async fn the_outbox_keeps_messages_until_acknowledged_and_resends_them_in_order() {
        let (tx, rx) = mpsc::channel(8);
        let mut outbox = Outbox::new(rx);
        let (a, b) = (TaskId::new(), TaskId::new());
        tx.send(ended(a)).await.unwrap();
        tx.send(ended(b)).await.unwrap();
        let first = outbox.next().await.unwrap();
        let second = outbox.next().await.unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(outbox.unacknowledged_ends().collect::<Vec<_>>(), [a, b]);
        outbox.ack(1);
        let resent = outbox.unacknowledged();
        assert_eq!(resent.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(!outbox.is_settled());
        outbox.ack(2);
        assert!(outbox.is_settled());
        // Numbering goes on across sessions, so the master can tell a resent message from a new one.
        tx.send(ended(a)).await.unwrap();
        assert_eq!(outbox.next().await.unwrap().seq, 3);
    }

    fn start(task_id: TaskId) -> WorkerToMaster {
        WorkerToMaster::TaskStarted {
            task_id,
            pid: 7,
            at: Utc::now(),
        }
    }

    fn kinds(envelopes: &[WorkerEnvelope]) -> Vec<(u64, &'static str)> {
        envelopes
            .iter()
            .map(|e| {
                let kind = match &e.message {
                    WorkerToMaster::TaskStarted { .. } => "started",
                    WorkerToMaster::Logs { .. } => "logs",
                    WorkerToMaster::TaskEnded { started: None, .. } => "ended",
                    WorkerToMaster::TaskEnded {
                        started: Some(_), ..
                    } => "started+ended",
                    _ => "other",
                };
                (e.seq, kind)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_is_held_back_and_goes_with_a_quick_silent_end() {
        let (tx, rx) = mpsc::channel(8);
        let mut outbox = Outbox::new(rx);
        outbox.hold_starts(true);
        let (quick, chatty, silent) = (TaskId::new(), TaskId::new(), TaskId::new());

        // Ends within the hold, having said nothing: one message.
        tx.send(start(quick)).await.unwrap();
        tx.send(ended(quick)).await.unwrap();
        let first = outbox.next().await.unwrap();
        match &first.message {
            WorkerToMaster::TaskEnded {
                task_id,
                started: Some(start),
                ..
            } => assert_eq!((*task_id, start.pid), (quick, 7)),
            other => panic!("expected the end carrying the start, got {other:?}"),
        }

        // Output sends the start first, in order.
        tx.send(start(chatty)).await.unwrap();
        let logs = WorkerToMaster::Logs {
            task_id: chatty,
            lines: Vec::new(),
        };
        tx.send(logs).await.unwrap();
        let (second, third) = (outbox.next().await.unwrap(), outbox.next().await.unwrap());

        // A silent run: held until the hold passes, then sent on its own.
        tx.send(start(silent)).await.unwrap();
        let early = tokio::time::timeout(START_HOLD / 2, outbox.next()).await;
        assert!(early.is_err(), "sent before the hold passed: {early:?}");
        assert!(!outbox.is_settled(), "a held start is not settled");
        let fourth = outbox.next().await.unwrap();
        tx.send(ended(silent)).await.unwrap();
        let fifth = outbox.next().await.unwrap();

        assert_eq!(
            kinds(&[first, second, third, fourth, fifth]),
            [
                (1, "started+ended"),
                (2, "started"),
                (3, "logs"),
                (4, "started"),
                (5, "ended")
            ]
        );
        outbox.ack(5);
        assert!(outbox.is_settled());
    }

    /// A master that predates starts inside ends would drop them: for it (and until a master has said it takes
    /// them) every start goes as it comes, and starts held for an earlier master go at once.
    #[tokio::test(start_paused = true)]
    async fn no_start_is_held_for_a_master_that_would_drop_it() {
        let (tx, rx) = mpsc::channel(8);
        let mut outbox = Outbox::new(rx);
        let (a, b) = (TaskId::new(), TaskId::new());
        tx.send(start(a)).await.unwrap();
        tx.send(ended(a)).await.unwrap();
        let (first, second) = (outbox.next().await.unwrap(), outbox.next().await.unwrap());

        outbox.hold_starts(true);
        tx.send(start(b)).await.unwrap();
        let held = tokio::time::timeout(START_HOLD / 2, outbox.next()).await;
        assert!(held.is_err(), "sent while held: {held:?}");
        // Reconnected to an older master.
        outbox.hold_starts(false);
        let third = tokio::time::timeout(Duration::from_millis(1), outbox.next())
            .await
            .expect("sent at once")
            .unwrap();
        assert_eq!(
            kinds(&[first, second, third]),
            [(1, "started"), (2, "ended"), (3, "started")]
        );
    }

    /// The session loop both assigns tasks and drains `events`: refusing a task while `events` is full must not
    /// wait for room, or the loop would never drain it.
    #[tokio::test]
    async fn a_task_refused_while_the_outbox_is_full_does_not_block_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let (events, mut events_rx) = mpsc::channel(1);
        let (_client, client) = watch::channel(None);
        let ctx = RunContext {
            node: "w1".into(),
            options: crate::RunnerOptions::default(),
            cache: FileCache::new(dir.path().join("cache")),
            deps: Deps::new(dir.path().join("envs")),
            client,
            tasks_dir: dir.path().join("tasks"),
            events: events.clone(),
            spider_env: Vec::new().into(),
        };
        let mut runners = Runners::new(1, ctx);
        let _busy = Arc::clone(&runners.slots).try_acquire_owned().unwrap();
        let earlier = TaskId::new();
        events.send(ended(earlier)).await.unwrap();

        let refused = TaskId::new();
        runners.start(Assignment {
            task_id: refused,
            spider_id: arachne_shared::SpiderId::new(),
            spider_name: "s".into(),
            version: String::new(),
            command_line: "true".into(),
            settings: Default::default(),
        });
        runners.refuse(
            TaskId::new(),
            TaskOutcome::Abnormal {
                reason: "shutting down".into(),
            },
        );

        let first = events_rx.recv().await.unwrap();
        assert!(matches!(first, WorkerToMaster::TaskEnded { task_id, .. } if task_id == earlier));
        let mut reasons = HashMap::new();
        for _ in 0..2 {
            match events_rx.recv().await.unwrap() {
                WorkerToMaster::TaskEnded {
                    task_id,
                    outcome: TaskOutcome::Abnormal { reason },
                    ..
                } => reasons.insert(task_id, reason),
                other => panic!("expected a refused task's end, got {other:?}"),
            };
        }
        assert!(
            reasons[&refused].contains("no free runner slot"),
            "{reasons:?}"
        );
        assert_eq!(reasons.len(), 2);
        assert!(runners.active.is_empty());
    }
}
