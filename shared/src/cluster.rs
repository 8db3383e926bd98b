//! The messages a worker and the master exchange over their session, in plain domain terms. The `proto`
//! crate maps them to and from the gRPC wire types; nothing else sees the wire types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ipc::{ErrorPayload, StatusPayload};
use crate::log::{ItemRecord, LogLine};
use crate::node::NodeMetrics;
use crate::spider::{RunSettings, SpiderId};
use crate::task::{TaskId, TaskOutcome};

/// The most sequenced messages a worker keeps sent but unacknowledged. Past this it sends nothing more until the
/// master catches up, and the master, which takes every message in off the wire at once (to answer heartbeats
/// while its store is slow), holds at most this many per session.
pub const WINDOW: usize = 512;

/// The most bytes (as [`WorkerToMaster::approx_bytes`] counts them) a master holds of one session's messages
/// not yet stored. A worker keeps its unacknowledged output to half of this, so only a worker that breaks the
/// rule reaches it, and its session is ended.
pub const WINDOW_BYTES: usize = 64 << 20;

/// What a worker announces when its session opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub max_runners: u32,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// Every task the worker still holds an outcome for: running, or ended with the end not yet acknowledged
    /// by a master (after the master restarted or the connection broke). The master settles none of these
    /// itself: a running one carries on if the master still expects it, an ended one's end is on its way.
    pub running: Vec<HeldTask>,
    /// Processes of runs from this worker's previous life that were still alive when it started again, and
    /// that it killed before registering.
    pub leftovers: Vec<Leftover>,
    /// The spider versions (by hash) the worker has cached, so the master can name those deleted meanwhile.
    pub cached_versions: Vec<String>,
}

/// A task a worker holds, under the lease of the assignment that gave it to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeldTask {
    pub task_id: TaskId,
    pub lease: u64,
}

/// What a restarted worker found still running of one of its earlier runs, and killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leftover {
    pub task_id: TaskId,
    /// The processes it killed.
    pub pids: Vec<u32>,
}

/// One message of a worker's session. The messages a worker must not lose (task starts, logs, items,
/// reports, ends) carry a sequence number, counted over the worker's life and not per session, and stay
/// buffered on the worker until the master acknowledges them; after a reconnect the worker sends the
/// unacknowledged ones again. `seq` is 0 for the rest (registration, heartbeats).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEnvelope {
    pub seq: u64,
    pub message: WorkerToMaster,
}

/// What the spider of a task reported since the worker's last report: its latest STATUS and its ERRORs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    pub task_id: TaskId,
    pub lease: u64,
    pub status: Option<StatusPayload>,
    pub errors: Vec<ErrorPayload>,
    /// How many errors of this task were reported before these, so a resent report counts each once.
    pub errors_before: u64,
    pub at: DateTime<Utc>,
}

/// How a task ended, as the worker that ran it saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnd {
    pub task_id: TaskId,
    pub lease: u64,
    pub outcome: TaskOutcome,
    pub at: DateTime<Utc>,
    /// Peak RSS of the process tree, when it was sampled.
    pub peak_rss_bytes: Option<u64>,
    /// The process's start, when it was not sent as `TaskStarted`: a worker holds a start back for a moment,
    /// and a run that ends silently within it reports both at once.
    pub started: Option<ProcessStart>,
}

/// Worker → master.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerToMaster {
    /// First message of every session.
    Register(Registration),
    /// Sent every few seconds so the master knows the worker is alive. The master answers each with
    /// [`MasterToWorker::Heard`] carrying the same `beat`, which renews the worker's lease on its runs.
    Heartbeat { beat: u64, metrics: NodeMetrics },
    /// The spider process of a task is running.
    TaskStarted {
        task_id: TaskId,
        lease: u64,
        pid: u32,
        at: DateTime<Utc>,
    },
    /// Log lines of a task, in order.
    Logs {
        task_id: TaskId,
        lease: u64,
        lines: Vec<LogLine>,
    },
    /// Items of a task, in order.
    Items {
        task_id: TaskId,
        lease: u64,
        items: Vec<ItemRecord>,
    },
    /// What the spider reported since the last report: its latest STATUS and its ERRORs.
    Report(TaskReport),
    /// A task ended. Sent after every log line and item of the task.
    TaskEnded(TaskEnd),
    /// The worker will not run a task it was assigned (it had no free slot, or it is shutting down); the task
    /// never started, so it goes back to the queue.
    TaskRefused {
        task_id: TaskId,
        lease: u64,
        reason: String,
    },
}

impl WorkerToMaster {
    /// About how many bytes the message holds: its lines' and items' text, and a little for the rest. What
    /// the byte budgets of worker and master count.
    pub fn approx_bytes(&self) -> usize {
        const OVERHEAD: usize = 64;
        match self {
            WorkerToMaster::Logs { lines, .. } => {
                lines.iter().map(|l| l.text.len() + OVERHEAD).sum::<usize>()
            }
            WorkerToMaster::Items { items, .. } => items
                .iter()
                .map(|i| i.data.get().len() + OVERHEAD)
                .sum::<usize>(),
            WorkerToMaster::Report(TaskReport { errors, .. }) => {
                OVERHEAD * 4
                    + errors
                        .iter()
                        .map(|e| e.message.len() + OVERHEAD)
                        .sum::<usize>()
            }
            WorkerToMaster::TaskEnded(TaskEnd { outcome, .. }) => {
                OVERHEAD * 2 + outcome.message_len()
            }
            WorkerToMaster::TaskRefused { reason, .. } => OVERHEAD + reason.len(),
            WorkerToMaster::Register(r) => OVERHEAD * (4 + r.running.len() + r.leftovers.len()),
            WorkerToMaster::Heartbeat { .. } | WorkerToMaster::TaskStarted { .. } => OVERHEAD,
        }
    }

    /// The task a message is about, under the lease it claims.
    pub fn task(&self) -> Option<HeldTask> {
        match *self {
            WorkerToMaster::TaskStarted { task_id, lease, .. }
            | WorkerToMaster::Logs { task_id, lease, .. }
            | WorkerToMaster::Items { task_id, lease, .. }
            | WorkerToMaster::Report(TaskReport { task_id, lease, .. })
            | WorkerToMaster::TaskEnded(TaskEnd { task_id, lease, .. })
            | WorkerToMaster::TaskRefused { task_id, lease, .. } => {
                Some(HeldTask { task_id, lease })
            }
            WorkerToMaster::Register(_) | WorkerToMaster::Heartbeat { .. } => None,
        }
    }
}

/// When a task's spider process started, and its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStart {
    pub pid: u32,
    pub at: DateTime<Utc>,
}

/// A task handed to a worker: everything it needs to fetch the files and start the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: TaskId,
    /// The fencing token of this assignment: every message the worker sends about the task carries it, and
    /// the master refuses one whose lease is not the task's current one (a superseded run writes nothing).
    pub lease: u64,
    pub spider_id: SpiderId,
    pub spider_name: String,
    pub version: String,
    /// The full shell command line (command plus parameters).
    pub command_line: String,
    pub settings: RunSettings,
}

/// Master → worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterToWorker {
    /// The session is accepted.
    Registered {
        /// How long the worker's runs may go on without the master hearing from it: the worker stops them
        /// itself once this passes since the last heartbeat the master answered, and the master settles a
        /// silent worker's tasks only after its (longer) heartbeat timeout, so a retry never overlaps a run.
        lease_ms: u64,
    },
    /// The master heard the worker's heartbeat `beat`.
    Heard { beat: u64 },
    /// Run this task in a free runner slot.
    Assign(Assignment),
    /// Stop this task; the worker answers with `TaskEnded`.
    Cancel { task_id: TaskId, reason: String },
    /// Run at most this many tasks at once from now on; running tasks are not stopped.
    SetMaxRunners { max_runners: u32 },
    /// Every sequenced message up to and including `seq` is stored; the worker may forget them.
    Ack { seq: u64 },
    /// These spider versions (by hash) are deleted: drop them from the file cache, with every content no
    /// other cached version names.
    Forget { versions: Vec<String> },
}

/// A piece of one blob (a file's content, named by its sha256) streamed from the master to a worker. Chunks of
/// a blob arrive in order; the last has `last` set (an empty blob is a single empty last chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobChunk {
    pub sha256: String,
    /// Shared, not copied, on its way from the socket to the file.
    pub data: bytes::Bytes,
    pub last: bool,
}
