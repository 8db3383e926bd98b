//! The worker's sessions with the master: register, take assignments into runner slots, forward cancels,
//! heartbeat, and reconnect with backoff when the master goes away.
//!
//! Runs outlive sessions. When the connection breaks (or the master restarts) spiders keep running; their
//! messages wait in the [`Outbox`] until a new session takes them, and the worker names every task it still
//! holds an outcome for (running, or ended with the end not yet acknowledged) when it registers again, so the
//! master takes them back instead of writing them off or running them again.
//!
//! But not for ever: runs go on under a **lease**. The master answers each heartbeat, and the lease runs
//! `lease_ms` (the master's figure, shorter than its heartbeat timeout) from the sending of the latest
//! heartbeat it answered. When the lease runs out (the master is gone for longer than a restart, the network
//! is cut, or this worker was frozen) the runs are killed, by the runner or, if this process cannot act, by
//! the watchdog process, before the master may settle the tasks and start their retries elsewhere.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arachne_proto::client::Client;
use arachne_shared::TaskId;
use arachne_shared::cluster::{
    Assignment, HeldTask, Leftover, MasterToWorker, ProcessStart, Registration, WINDOW,
    WorkerEnvelope, WorkerToMaster,
};
use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Config;
use crate::deps::Deps;
use crate::metrics::Metrics;
use crate::output::{Event, sleep_until};
use crate::runner::{self, RunContext, RunResult, Stop};
use crate::sync::FileCache;
use crate::watchdog::{Records, Watchdog};

/// Messages from runners waiting for the outbox. Runners wait when it is full, which slows their readers and,
/// through the pipe, the spider.
const EVENTS_CAPACITY: usize = 256;
/// How long a stopping worker waits for the master to take its last reports.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a task's start is held back before it is sent. A run that ends within it, having said nothing,
/// has its start sent with its end: one message and one stored change fewer for the master, for the many
/// short tasks a busy cluster runs. Any output or report of the task sends the start at once; a longer run
/// shows as Running this much later.
const START_HOLD: Duration = Duration::from_millis(20);

/// What a worker starts with besides its configuration.
pub(crate) struct Start {
    pub(crate) watchdog: Watchdog,
    pub(crate) records: Records,
    /// What the previous life of this worker left running, killed; told to the master at registration.
    pub(crate) leftovers: Vec<Leftover>,
    pub(crate) sandbox: crate::sandbox::Sandbox,
    /// Where runs' folders (`tasks/`) and environments (`envs/`) live: the work folder, or a folder the spider
    /// user can reach.
    pub(crate) runs_root: std::path::PathBuf,
}

/// Keeps a session with the master open until `shutdown`, reconnecting when it breaks.
/// Runs sessions until `shutdown`; an `Err` is a refusal no reconnect can cure (a wrong token).
pub(crate) async fn run(
    config: Config,
    start: Start,
    shutdown: CancellationToken,
) -> Result<(), crate::Error> {
    let (events, events_rx) = mpsc::channel(EVENTS_CAPACITY);
    let (client_tx, client_rx) = watch::channel(None);
    let (lease_tx, lease_rx) = watch::channel(None);
    let ctx = RunContext {
        node: config.name.clone(),
        options: config.runner.clone(),
        cache: FileCache::new(config.work_dir.join("cache"), start.sandbox.owner()),
        deps: Deps::new(start.runs_root.join("envs")),
        client: client_rx,
        tasks_dir: start.runs_root.join("tasks"),
        events,
        in_flight: crate::output::budget(crate::output::IN_FLIGHT_BUDGET),
        spider_env: crate::sandbox::allowed_env(&config.runner.pass_env).into(),
        sandbox: start.sandbox,
        watchdog: start.watchdog.clone(),
        records: start.records,
        lease: lease_rx,
    };
    let mut worker = Worker {
        runners: Runners::new(config.max_runners, ctx),
        outbox: Outbox::new(events_rx),
        metrics: Metrics::new(config.work_dir.clone()),
        client: client_tx,
        lease: Lease {
            until: lease_tx,
            length: None,
            epoch: tokio::time::Instant::now(),
            watchdog: start.watchdog.clone(),
        },
        leftovers: start.leftovers,
    };
    let ended = sessions(&mut worker, &config, &shutdown).await;
    // Every run has ended: nothing is left for the watchdog to kill.
    start.watchdog.exit().await;
    ended
}

async fn sessions(
    worker: &mut Worker,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), crate::Error> {
    let mut backoff = Backoff::default();
    loop {
        match worker.session(config, shutdown, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(SessionEnd::Refused(reason)) => {
                error!(node = %config.name, master = %config.master, %reason, "the master refused this worker's token; stopping");
                worker.runners.stop_all(Stop::Shutdown);
                while let Some(done) = worker.runners.tasks.join_next().await {
                    worker.runners.reap(done);
                }
                return Err(crate::Error::Refused {
                    master: config.master.to_string(),
                    reason,
                });
            }
            Err(SessionEnd::Retry(err)) => {
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
enum SessionEnd {
    /// Connection trouble or a master restart: connect again after a pause.
    Retry(String),
    /// The master refused the token.
    Refused(String),
}

impl From<String> for SessionEnd {
    fn from(reason: String) -> Self {
        Self::Retry(reason)
    }
}

impl From<arachne_proto::Error> for SessionEnd {
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
    lease: Lease,
    /// Told to the first master that accepts this worker.
    leftovers: Vec<Leftover>,
}

/// The lease the runs go on under; see the module's documentation.
struct Lease {
    /// Until when; the runners watch it.
    until: watch::Sender<Option<tokio::time::Instant>>,
    /// As the master of the current session set it.
    length: Option<Duration>,
    /// What heartbeat numbers count from: a heartbeat's number is its sending time, in milliseconds since.
    epoch: tokio::time::Instant,
    watchdog: Watchdog,
}

impl Lease {
    /// A heartbeat number for now.
    fn beat(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The master heard what this worker sent at `sent`: the runs may go on until `sent` plus the lease.
    async fn renew(&mut self, sent: tokio::time::Instant) {
        let Some(length) = self.length else { return };
        let until = sent + length;
        if self.until.borrow().is_some_and(|current| current >= until) {
            return;
        }
        self.until.send_replace(Some(until));
        self.watchdog.lease(until).await;
    }

    async fn heard(&mut self, beat: u64) {
        let sent = self.epoch + Duration::from_millis(beat);
        // A number from the future is not this worker's: ignore it rather than extend the lease with it.
        if sent <= tokio::time::Instant::now() {
            self.renew(sent).await;
        }
    }
}

impl Worker {
    /// Runs one session. `Ok` means the worker was shut down; `Err` means reconnect.
    async fn session(
        &mut self,
        config: &Config,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionEnd> {
        let client = tokio::select! {
            client = Client::open(&config.master, config.token.as_deref(), config.ca_pem.as_deref()) => client?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let (session_tx, session_rx) = mpsc::channel(EVENTS_CAPACITY);
        let registration = Registration {
            name: config.name.clone(),
            max_runners: config.max_runners,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: config.labels.clone(),
            running: self.outbox.owed(),
            leftovers: self.leftovers.clone(),
        };
        let register_sent = tokio::time::Instant::now();
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
            Some(Ok(MasterToWorker::Registered { lease_ms })) => {
                self.lease.length = Some(Duration::from_millis(lease_ms));
                self.lease.renew(register_sent).await;
                self.leftovers.clear();
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

        // Several heartbeats fit in a lease, so one lost or late answer does not end the runs.
        let every = self
            .lease
            .length
            .map_or(config.heartbeat, |lease| config.heartbeat.min(lease / 4));
        let mut heartbeat = tokio::time::interval(every);
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
                    Some(Ok(MasterToWorker::Assign(task))) => {
                        self.outbox.owe(&task);
                        if stopping {
                            self.runners.refuse(&task, format!("worker {} is shutting down", config.name));
                        } else {
                            self.runners.start(task);
                        }
                    }
                    Some(Ok(MasterToWorker::Cancel { task_id, reason })) => self.runners.stop(task_id, Stop::User(reason)),
                    Some(Ok(MasterToWorker::SetMaxRunners { max_runners })) => self.runners.resize(max_runners),
                    Some(Ok(MasterToWorker::Ack { seq })) => self.outbox.ack(seq),
                    Some(Ok(MasterToWorker::Heard { beat })) => self.lease.heard(beat).await,
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
                    let message = WorkerToMaster::Heartbeat { beat: self.lease.beat(), metrics };
                    let beat = WorkerEnvelope { seq: 0, message };
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
        ended.map_err(SessionEnd::Retry)
    }
}

/// Numbers the runners' messages and keeps each until the master acknowledges it. Holds each task's start
/// back for [`START_HOLD`], keeping every task's messages in their order. Knows which tasks the worker still
/// owes the master an outcome for.
struct Outbox {
    rx: mpsc::Receiver<Event>,
    next_seq: u64,
    /// Each with its share of the in-flight budget, given back when the master acknowledges it.
    unacked: VecDeque<(WorkerEnvelope, Option<tokio::sync::OwnedSemaphorePermit>)>,
    /// Tasks assigned to this worker whose end (or refusal) the master has not acknowledged, with the lease
    /// of their assignment: wherever their messages are (in a runner, queued, sent), the outcome is on its
    /// way, so the master must not settle them itself.
    owed: HashMap<TaskId, u64>,
    /// Starts held back, oldest first, each with when it must go and its task's lease.
    held: VecDeque<(tokio::time::Instant, TaskId, u64, ProcessStart)>,
    /// Messages taken from `rx`, to be numbered in this order.
    ready: VecDeque<Event>,
}

impl Outbox {
    fn new(rx: mpsc::Receiver<Event>) -> Self {
        Self {
            rx,
            next_seq: 1,
            unacked: VecDeque::new(),
            owed: HashMap::new(),
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
            if let Some(Event { message, budget }) = self.ready.pop_front() {
                let envelope = WorkerEnvelope {
                    seq: self.next_seq,
                    message,
                };
                self.next_seq += 1;
                self.unacked.push_back((envelope.clone(), budget));
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

    /// Notes a task assigned to this worker: it owes the master its outcome from now on.
    fn owe(&mut self, task: &Assignment) {
        self.owed.insert(task.task_id, task.lease);
    }

    /// Every task this worker owes an outcome for, as it names them when it registers.
    fn owed(&self) -> Vec<HeldTask> {
        self.owed
            .iter()
            .map(|(&task_id, &lease)| HeldTask { task_id, lease })
            .collect()
    }

    fn take(&mut self, mut event: Event) {
        if let WorkerToMaster::TaskStarted {
            task_id,
            lease,
            pid,
            at,
        } = event.message
        {
            let due = tokio::time::Instant::now() + START_HOLD;
            self.held
                .push_back((due, task_id, lease, ProcessStart { pid, at }));
            return;
        }
        if let WorkerToMaster::TaskEnded {
            task_id, started, ..
        } = &mut event.message
        {
            // The end carries its held start.
            let held = self.unhold(*task_id);
            *started = started.or(held);
        } else if let Some(task) = event.message.task()
            && let Some(start) = self.unhold(task.task_id)
        {
            let (task_id, lease) = (task.task_id, task.lease);
            // Any other message of the task goes after its start.
            self.ready.push_back(started(task_id, lease, start).into());
        }
        self.ready.push_back(event);
    }

    fn unhold(&mut self, task_id: TaskId) -> Option<ProcessStart> {
        let at = self.held.iter().position(|(_, id, ..)| *id == task_id)?;
        self.held.remove(at).map(|(.., start)| start)
    }

    fn release_oldest(&mut self) {
        if let Some((_, task_id, lease, start)) = self.held.pop_front() {
            self.ready.push_back(started(task_id, lease, start).into());
        }
    }

    fn ack(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|(e, _)| e.seq <= seq) {
            let Some((envelope, _budget)) = self.unacked.pop_front() else {
                break;
            };
            if let WorkerToMaster::TaskEnded { task_id, .. }
            | WorkerToMaster::TaskRefused { task_id, .. } = envelope.message
            {
                self.owed.remove(&task_id);
            }
        }
    }

    fn unacknowledged(&self) -> Vec<WorkerEnvelope> {
        self.unacked.iter().map(|(e, _)| e.clone()).collect()
    }

    /// Nothing waits to be sent or confirmed.
    fn is_settled(&self) -> bool {
        self.unacked.is_empty()
            && self.rx.is_empty()
            && self.held.is_empty()
            && self.ready.is_empty()
    }
}

fn started(task_id: TaskId, lease: u64, start: ProcessStart) -> WorkerToMaster {
    WorkerToMaster::TaskStarted {
        task_id,
        lease,
        pid: start.pid,
        at: start.at,
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
        let (task_id, lease) = (task.task_id, task.lease);
        if self.active.contains_key(&task_id) {
            warn!(task_id = %task_id, "assigned a task this worker already runs; ignored");
            return;
        }
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            // The master counts slots too, so this only happens if the two disagree: the task never started
            // here, so it goes back to the queue.
            error!(task_id = %task_id, node = %self.ctx.node, "assigned a task with no free runner slot");
            self.refuse(
                &task,
                format!("node {} had no free runner slot", self.ctx.node),
            );
            return;
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        self.active.insert(task_id, stop_tx);
        let ctx = self.ctx.clone();
        self.tasks.spawn(async move {
            let result = runner::execute(&ctx, task, stop_rx).await;
            info!(task_id = %task_id, node = %ctx.node, status = %result.outcome.status(), "task ended");
            report_end(&ctx.events, task_id, lease, result).await;
            drop(permit);
            task_id
        });
    }

    /// Reports a task that will not run here; it never started, so the master queues it again. Sent from its
    /// own task: the session loop that calls this is also the one that drains `events`, so waiting there for
    /// room in a full channel would wait forever.
    fn refuse(&self, task: &Assignment, reason: String) {
        let events = self.ctx.events.clone();
        let refused = WorkerToMaster::TaskRefused {
            task_id: task.task_id,
            lease: task.lease,
            reason,
        };
        tokio::spawn(async move {
            let _ = events.send(refused.into()).await;
        });
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
async fn report_end(events: &mpsc::Sender<Event>, task_id: TaskId, lease: u64, result: RunResult) {
    let RunResult {
        outcome,
        peak_rss_bytes,
    } = result;
    let ended = WorkerToMaster::TaskEnded {
        task_id,
        lease,
        outcome,
        at: Utc::now(),
        peak_rss_bytes,
        started: None,
    };
    let _ = events.send(ended.into()).await;
}

/// Exponential backoff between reconnects: 200 ms doubling up to 2 s, so a restarted master is found again well
/// within the runs' lease.
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
        self.next = (self.next * 2).min(Duration::from_secs(2));
        now
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use arachne_shared::TaskOutcome;

    use super::*;

    fn ended(task_id: TaskId) -> WorkerToMaster {
        WorkerToMaster::TaskEnded {
            task_id,
            lease: 1,
            outcome: TaskOutcome::Finished,
            at: Utc::now(),
            peak_rss_bytes: None,
            started: None,
        }
    }

    fn assignment(task_id: TaskId) -> Assignment {
        Assignment {
            task_id,
            lease: 1,
            spider_id: arachne_shared::SpiderId::new(),
            spider_name: "s".into(),
            version: String::new(),
            command_line: "true".into(),
            settings: Default::default(),
        }
    }

    fn owed(outbox: &Outbox) -> HashSet<TaskId> {
        outbox.owed().into_iter().map(|held| held.task_id).collect()
    }

    #[tokio::test]
    async fn the_outbox_keeps_messages_until_acknowledged_and_resends_them_in_order() {
        let (tx, rx) = mpsc::channel(8);
        let mut outbox = Outbox::new(rx);
        let (a, b) = (TaskId::new(), TaskId::new());
        outbox.owe(&assignment(a));
        outbox.owe(&assignment(b));
        tx.send(ended(a).into()).await.unwrap();
        tx.send(ended(b).into()).await.unwrap();
        let first = outbox.next().await.unwrap();
        let second = outbox.next().await.unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(owed(&outbox), HashSet::from([a, b]));
        outbox.ack(1);
        assert_eq!(owed(&outbox), HashSet::from([b]), "a's end is stored");
        let resent = outbox.unacknowledged();
        assert_eq!(resent.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
        assert!(!outbox.is_settled());
        outbox.ack(2);
        assert!(outbox.is_settled());
        // Numbering goes on across sessions, so the master can tell a resent message from a new one.
        tx.send(ended(a).into()).await.unwrap();
        assert_eq!(outbox.next().await.unwrap().seq, 3);
    }

    fn start(task_id: TaskId) -> WorkerToMaster {
        WorkerToMaster::TaskStarted {
            task_id,
            lease: 1,
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
        let (quick, chatty, silent) = (TaskId::new(), TaskId::new(), TaskId::new());

        // Ends within the hold, having said nothing: one message.
        tx.send(start(quick).into()).await.unwrap();
        tx.send(ended(quick).into()).await.unwrap();
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
        tx.send(start(chatty).into()).await.unwrap();
        let logs = WorkerToMaster::Logs {
            task_id: chatty,
            lease: 1,
            lines: Vec::new(),
        };
        tx.send(logs.into()).await.unwrap();
        let (second, third) = (outbox.next().await.unwrap(), outbox.next().await.unwrap());

        // A silent run: held until the hold passes, then sent on its own.
        tx.send(start(silent).into()).await.unwrap();
        let early = tokio::time::timeout(START_HOLD / 2, outbox.next()).await;
        assert!(early.is_err(), "sent before the hold passed: {early:?}");
        assert!(!outbox.is_settled(), "a held start is not settled");
        let fourth = outbox.next().await.unwrap();
        tx.send(ended(silent).into()).await.unwrap();
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
            cache: FileCache::new(dir.path().join("cache"), None),
            deps: Deps::new(dir.path().join("envs")),
            client,
            tasks_dir: dir.path().join("tasks"),
            events: events.clone(),
            in_flight: crate::output::budget(crate::output::IN_FLIGHT_BUDGET),
            spider_env: Vec::new().into(),
            sandbox: crate::sandbox::Sandbox::for_test(),
            watchdog: crate::watchdog::Watchdog::for_test().0,
            records: Records::new(dir.path().join("runs")),
            lease: watch::channel(None).1,
        };
        let mut runners = Runners::new(1, ctx);
        let _busy = Arc::clone(&runners.slots).try_acquire_owned().unwrap();
        let earlier = TaskId::new();
        events.send(ended(earlier).into()).await.unwrap();

        let refused = TaskId::new();
        runners.start(assignment(refused));
        runners.refuse(&assignment(TaskId::new()), "shutting down".into());

        let first = events_rx.recv().await.unwrap();
        assert!(
            matches!(first.message, WorkerToMaster::TaskEnded { task_id, .. } if task_id == earlier)
        );
        let mut reasons = HashMap::new();
        for _ in 0..2 {
            match events_rx.recv().await.unwrap().message {
                WorkerToMaster::TaskRefused {
                    task_id, reason, ..
                } => reasons.insert(task_id, reason),
                other => panic!("expected a refusal, got {other:?}"),
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
