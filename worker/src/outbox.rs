//! The worker's outbox: numbers every message a run sends the master, keeps each until the master
//! acknowledges it and resends the rest after a reconnect, holds a task's start back for [`START_HOLD`], and
//! knows which tasks the worker still owes the master an outcome for.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use arachne_shared::TaskId;
use arachne_shared::cluster::{
    Assignment, HeldTask, ProcessStart, TaskEnd, WINDOW, WorkerEnvelope, WorkerToMaster,
};
use tokio::sync::mpsc;

use crate::output::{Event, sleep_until};

/// How long a task's start is held back before it is sent. A run that ends within it, having said nothing,
/// has its start sent with its end: one message and one stored change fewer for the master, for the many
/// short tasks a busy cluster runs. Any output or report of the task sends the start at once; a longer run
/// shows as Running this much later.
pub(crate) const START_HOLD: Duration = Duration::from_millis(20);

/// Numbers the runners' messages and keeps each until the master acknowledges it. Holds each task's start
/// back for [`START_HOLD`], keeping every task's messages in their order. Knows which tasks the worker still
/// owes the master an outcome for.
pub(crate) struct Outbox {
    pub(crate) rx: mpsc::Receiver<Event>,
    pub(crate) next_seq: u64,
    /// Each with its share of the in-flight budget, given back when the master acknowledges it.
    pub(crate) unacked: VecDeque<(WorkerEnvelope, Option<tokio::sync::OwnedSemaphorePermit>)>,
    /// Tasks assigned to this worker whose end (or refusal) the master has not acknowledged, with the lease
    /// of their assignment: wherever their messages are (in a runner, queued, sent), the outcome is on its
    /// way, so the master must not settle them itself.
    pub(crate) owed: HashMap<TaskId, u64>,
    /// Starts held back, oldest first, each with when it must go and its task's lease.
    pub(crate) held: VecDeque<(tokio::time::Instant, TaskId, u64, ProcessStart)>,
    /// Messages taken from `rx`, to be numbered in this order.
    pub(crate) ready: VecDeque<Event>,
}

impl Outbox {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Self {
        Self {
            rx,
            next_seq: 1,
            unacked: VecDeque::new(),
            owed: HashMap::new(),
            held: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    pub(crate) fn window_open(&self) -> bool {
        self.unacked.len() < WINDOW
    }

    /// The next runner message, numbered and kept for resending. Cancel-safe: a message taken from `rx` is
    /// kept in `self` before anything else is awaited.
    pub(crate) async fn next(&mut self) -> Option<WorkerEnvelope> {
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
    pub(crate) fn owe(&mut self, task: &Assignment) {
        self.owed.insert(task.task_id, task.lease);
    }

    /// Every task this worker owes an outcome for, as it names them when it registers.
    pub(crate) fn owed(&self) -> Vec<HeldTask> {
        self.owed
            .iter()
            .map(|(&task_id, &lease)| HeldTask { task_id, lease })
            .collect()
    }

    pub(crate) fn take(&mut self, mut event: Event) {
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
        if let WorkerToMaster::TaskEnded(TaskEnd {
            task_id, started, ..
        }) = &mut event.message
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

    pub(crate) fn unhold(&mut self, task_id: TaskId) -> Option<ProcessStart> {
        let at = self.held.iter().position(|(_, id, ..)| *id == task_id)?;
        self.held.remove(at).map(|(.., start)| start)
    }

    pub(crate) fn release_oldest(&mut self) {
        if let Some((_, task_id, lease, start)) = self.held.pop_front() {
            self.ready.push_back(started(task_id, lease, start).into());
        }
    }

    pub(crate) fn ack(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|(e, _)| e.seq <= seq) {
            let Some((envelope, _budget)) = self.unacked.pop_front() else {
                break;
            };
            if let WorkerToMaster::TaskEnded(TaskEnd { task_id, .. })
            | WorkerToMaster::TaskRefused { task_id, .. } = envelope.message
            {
                self.owed.remove(&task_id);
            }
        }
    }

    pub(crate) fn unacknowledged(&self) -> Vec<WorkerEnvelope> {
        self.unacked.iter().map(|(e, _)| e.clone()).collect()
    }

    /// Nothing waits to be sent or confirmed.
    pub(crate) fn is_settled(&self) -> bool {
        self.unacked.is_empty()
            && self.rx.is_empty()
            && self.held.is_empty()
            && self.ready.is_empty()
    }
}

pub(crate) fn started(task_id: TaskId, lease: u64, start: ProcessStart) -> WorkerToMaster {
    WorkerToMaster::TaskStarted {
        task_id,
        lease,
        pid: start.pid,
        at: start.at,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use arachne_shared::TaskOutcome;

    use chrono::Utc;

    use super::*;

    /// A task's plain end, as a runner reports it.
    pub(crate) fn ended(task_id: TaskId) -> WorkerToMaster {
        WorkerToMaster::TaskEnded(TaskEnd {
            task_id,
            lease: 1,
            outcome: TaskOutcome::Finished,
            at: Utc::now(),
            peak_rss_bytes: None,
            started: None,
        })
    }

    /// An assignment of a `true` spider under lease 1.
    pub(crate) fn assignment(task_id: TaskId) -> Assignment {
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
                    WorkerToMaster::TaskEnded(TaskEnd { started: None, .. }) => "ended",
                    WorkerToMaster::TaskEnded(TaskEnd {
                        started: Some(_), ..
                    }) => "started+ended",
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
            WorkerToMaster::TaskEnded(TaskEnd {
                task_id,
                started: Some(start),
                ..
            }) => assert_eq!((*task_id, start.pid), (quick, 7)),
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
}
