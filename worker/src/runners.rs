//! The runner slots: a semaphore of `max_runners` permits, the runs holding them with a way to stop each,
//! refusals when no slot is free, and the report of a run's end.

use std::collections::HashMap;
use std::sync::Arc;

use arachne_shared::TaskId;
use arachne_shared::cluster::{Assignment, TaskEnd, WorkerToMaster};
use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::output::Event;
use crate::runner::{self, RunContext, RunResult, Stop};

pub(crate) struct Runners {
    pub(crate) slots: Arc<Semaphore>,
    /// The number of slots in force.
    pub(crate) max: u32,
    /// Slots still to remove after a shrink; each is taken back as a running task ends.
    pub(crate) shrink_debt: u32,
    pub(crate) active: HashMap<TaskId, watch::Sender<Option<Stop>>>,
    pub(crate) tasks: JoinSet<TaskId>,
    pub(crate) ctx: RunContext,
}

impl Runners {
    pub(crate) fn new(max_runners: u32, ctx: RunContext) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_runners as usize)),
            max: max_runners,
            shrink_debt: 0,
            active: HashMap::new(),
            tasks: JoinSet::new(),
            ctx,
        }
    }

    pub(crate) fn start(&mut self, task: Assignment) {
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
    pub(crate) fn refuse(&self, task: &Assignment, reason: String) {
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

    pub(crate) fn stop(&self, task_id: TaskId, reason: Stop) {
        match self.active.get(&task_id) {
            Some(stop) => {
                stop.send_replace(Some(reason));
            }
            None => warn!(task_id = %task_id, "cancel for a task this worker is not running"),
        }
    }

    /// Changes the number of slots. Running tasks are never stopped: a shrink takes back free slots now and the
    /// rest as tasks end.
    pub(crate) fn resize(&mut self, max_runners: u32) {
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

    pub(crate) fn reap(&mut self, done: Result<TaskId, tokio::task::JoinError>) {
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
    pub(crate) fn stop_all(&self, reason: Stop) {
        for stop in self.active.values() {
            stop.send_replace(Some(reason.clone()));
        }
    }
}

/// Queues a task's end for the master.
pub(crate) async fn report_end(
    events: &mpsc::Sender<Event>,
    task_id: TaskId,
    lease: u64,
    result: RunResult,
) {
    let RunResult {
        outcome,
        peak_rss_bytes,
    } = result;
    let ended = WorkerToMaster::TaskEnded(TaskEnd {
        task_id,
        lease,
        outcome,
        at: Utc::now(),
        peak_rss_bytes,
        started: None,
    });
    let _ = events.send(ended.into()).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::deps::Deps;
    use crate::outbox::tests::{assignment, ended};
    use crate::sync::FileCache;
    use crate::watchdog::Records;

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
            matches!(first.message, WorkerToMaster::TaskEnded(TaskEnd { task_id, .. }) if task_id == earlier)
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
