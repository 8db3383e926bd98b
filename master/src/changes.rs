//! The change bus: every change to a task's record (`State`) or output (`Output`) is announced here, and the
//! HTTP side's waits, log follows and event streams subscribe. Announcing never blocks and never fails: a
//! subscriber that falls behind is told it lagged and re-reads the store.

use arachne_shared::{ChangeKind, TaskChanged, TaskId};
use tokio::sync::broadcast;

/// Capacity of the change-notice channel; a receiver that lags just re-reads the store.
const CHANGES_CAPACITY: usize = 1024;

/// Where task changes are announced and followed.
pub(crate) struct Changes {
    sender: broadcast::Sender<TaskChanged>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CHANGES_CAPACITY).0,
        }
    }
}

impl Changes {
    /// Tells followers that a task's record changed.
    pub(crate) fn changed(&self, id: TaskId) {
        self.announce(id, ChangeKind::State);
    }

    /// Tells followers that a task has new log lines or items.
    pub(crate) fn output(&self, id: TaskId) {
        self.announce(id, ChangeKind::Output);
    }

    fn announce(&self, task_id: TaskId, kind: ChangeKind) {
        let _ = self.sender.send(TaskChanged { task_id, kind });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TaskChanged> {
        self.sender.subscribe()
    }
}
