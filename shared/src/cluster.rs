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

/// What a worker announces when its session opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub max_runners: u32,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// Tasks the worker is still running from an earlier session (after the master restarted or the
    /// connection broke); they carry on if the master still expects them.
    pub running: Vec<TaskId>,
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

/// Worker → master.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerToMaster {
    /// First message of every session.
    Register(Registration),
    /// Sent every few seconds so the master knows the worker is alive.
    Heartbeat(NodeMetrics),
    /// The spider process of a task is running.
    TaskStarted {
        task_id: TaskId,
        pid: u32,
        at: DateTime<Utc>,
    },
    /// Log lines of a task, in order.
    Logs {
        task_id: TaskId,
        lines: Vec<LogLine>,
    },
    /// Items of a task, in order.
    Items {
        task_id: TaskId,
        items: Vec<ItemRecord>,
    },
    /// What the spider reported since the last report: its latest STATUS and its ERRORs.
    Report {
        task_id: TaskId,
        status: Option<StatusPayload>,
        errors: Vec<ErrorPayload>,
        /// How many errors of this task were reported before these, so a resent report counts each once.
        errors_before: u64,
        at: DateTime<Utc>,
    },
    /// A task ended. Sent after every log line and item of the task.
    TaskEnded {
        task_id: TaskId,
        outcome: TaskOutcome,
        at: DateTime<Utc>,
        /// Peak RSS of the process tree, when it was sampled.
        peak_rss_bytes: Option<u64>,
        /// The process's start, when it was not sent as `TaskStarted`: a worker holds a start back for a
        /// moment, and a run that ends silently within it reports both at once.
        started: Option<ProcessStart>,
    },
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
        /// The master records a start sent inside `TaskEnded`; only then may the worker hold starts back.
        start_in_end: bool,
    },
    /// Run this task in a free runner slot.
    Assign(Assignment),
    /// Stop this task; the worker answers with `TaskEnded`.
    Cancel { task_id: TaskId, reason: String },
    /// Run at most this many tasks at once from now on; running tasks are not stopped.
    SetMaxRunners { max_runners: u32 },
    /// Every sequenced message up to and including `seq` is stored; the worker may forget them.
    Ack { seq: u64 },
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
