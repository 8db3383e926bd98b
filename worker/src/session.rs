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

use std::time::Duration;

use arachne_proto::client::Client;
use arachne_shared::cluster::{
    Leftover, MasterToWorker, Registration, WorkerEnvelope, WorkerToMaster,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Config;
use crate::deps::Deps;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::output::sleep_until;
use crate::runner::{RunContext, Stop};
use crate::runners::Runners;
use crate::sync::FileCache;
use crate::watchdog::{Records, Watchdog};

/// Messages from runners waiting for the outbox. Runners wait when it is full, which slows their readers and,
/// through the pipe, the spider.
const EVENTS_CAPACITY: usize = 256;
/// How long a stopping worker waits for the master to take its last reports.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
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
    let cache = FileCache::new(config.work_dir.join("cache"), start.sandbox.owner());
    let ctx = RunContext {
        node: config.name.clone(),
        options: config.runner.clone(),
        cache: cache.clone(),
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
        cache,
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
    /// The spider files cached here, which the master may tell it to forget.
    cache: FileCache,
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
            cached_versions: self.cache.cached_versions(),
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
                    Some(Ok(MasterToWorker::Forget { versions })) => {
                        // Off the session's loop: the sweep waits for syncs in progress to finish.
                        let cache = self.cache.clone();
                        tokio::spawn(async move {
                            match cache.forget(versions).await {
                                Ok(removed) => info!(removed, "deleted spider versions forgotten; their contents removed"),
                                Err(err) => warn!(error = %err, "cannot remove the contents of deleted spider versions"),
                            }
                        });
                    }
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
