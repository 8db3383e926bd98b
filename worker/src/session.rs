//! The worker's session with the master: register, take assignments into runner slots, forward cancels,
//! heartbeat, and reconnect with backoff when the master goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arachne_proto::client::Client;
use arachne_shared::TaskId;
use arachne_shared::TaskOutcome;
use arachne_shared::cluster::{Assignment, MasterToWorker, Registration, WorkerToMaster};
use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Config;
use crate::runner::{self, RunContext, RunResult, Stop};
use crate::sync::FileCache;

/// Messages to the master waiting to be sent. Runners wait when it is full, which slows their readers and,
/// through the pipe, the spider.
const EVENTS_CAPACITY: usize = 256;
/// How long a stopping worker waits for the master to take its last reports.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps a session with the master open until `shutdown`.
pub(crate) async fn run(config: Config, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        match session(&config, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(err) => {
                warn!(node = %config.name, error = %err, "session with the master ended; reconnecting")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Runs one session. `Ok` means the worker was shut down; `Err` means reconnect.
async fn session(
    config: &Config,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let client = tokio::select! {
        client = Client::connect(&config.master) => client.map_err(|e| e.to_string())?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let (events, outbound) = mpsc::channel(EVENTS_CAPACITY);
    let registration = Registration {
        name: config.name.clone(),
        max_runners: config.max_runners,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    events
        .send(WorkerToMaster::Register(registration))
        .await
        .map_err(|_| "session closed".to_owned())?;
    let mut inbound = client
        .clone()
        .session(outbound)
        .await
        .map_err(|e| e.to_string())?;
    match inbound.next().await {
        Some(Ok(MasterToWorker::Registered)) => {}
        Some(Ok(other)) => return Err(format!("expected Registered, the master sent {other:?}")),
        Some(Err(err)) => return Err(format!("registration refused: {err}")),
        None => return Err("the master closed the session during registration".to_owned()),
    }
    info!(node = %config.name, master = %config.master, max_runners = config.max_runners, "registered with the master");
    backoff.reset();

    let ctx = RunContext {
        node: config.name.clone(),
        options: config.runner.clone(),
        cache: FileCache::new(config.work_dir.join("cache")),
        client,
        tasks_dir: config.work_dir.join("tasks"),
        events: events.clone(),
        spider_env: config.spider_env.clone().into(),
    };
    let mut runners = Runners::new(config.max_runners, ctx);
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    let ended = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            message = inbound.next() => match message {
                Some(Ok(MasterToWorker::Assign(task))) => runners.start(task).await,
                Some(Ok(MasterToWorker::Cancel { task_id, reason })) => runners.stop(task_id, Stop::User(reason)),
                Some(Ok(MasterToWorker::SetMaxRunners { max_runners })) => runners.resize(max_runners),
                Some(Ok(MasterToWorker::Registered)) => {}
                Some(Err(err)) => break Err(err.to_string()),
                None => break Err("the master closed the session".to_owned()),
            },
            Some(done) = runners.tasks.join_next() => runners.reap(done),
            _ = heartbeat.tick() => {
                let running = runners.active.len() as u32;
                if events.send(WorkerToMaster::Heartbeat { running }).await.is_err() {
                    break Err("session closed".to_owned());
                }
            }
        }
    };
    // Whatever ended the session, no spider outlives it: on shutdown the master hears each task's outcome,
    // and when the master is lost it has already written the tasks off.
    let stop = if ended.is_ok() {
        Stop::Shutdown
    } else {
        Stop::MasterLost
    };
    runners.stop_all(stop).await;
    if ended.is_ok() {
        // Half-close: with every sender dropped, our stream ends after the last report. Dropping the master's
        // stream instead would reset both directions and lose reports still in flight, so wait until the
        // master has read everything and closed its side.
        drop(events);
        let drained = async { while let Some(Ok(_)) = inbound.next().await {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
            warn!(node = %config.name, "the master did not close the session in time");
        }
    }
    ended
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

    async fn start(&mut self, task: Assignment) {
        let task_id = task.task_id;
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            // The master counts slots too, so this only happens if the two disagree; say so rather than queue.
            error!(task_id = %task_id, node = %self.ctx.node, "assigned a task with no free runner slot");
            let outcome = TaskOutcome::Abnormal {
                reason: format!("node {} had no free runner slot", self.ctx.node),
            };
            report_end(&self.ctx.events, task_id, outcome.into()).await;
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

    async fn stop_all(mut self, reason: Stop) {
        for stop in self.active.values() {
            stop.send_replace(Some(reason.clone()));
        }
        while let Some(done) = self.tasks.join_next().await {
            self.reap(done);
        }
    }
}

/// Tells the master a task ended. If the session is gone the master settles the task itself, so a failed send
/// needs no handling here.
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
