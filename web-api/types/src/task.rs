//! A task as the API shows it. Its own type, not the master's record: the record can change shape (a field
//! renamed, one added for the scheduler's own use) without changing the HTTP contract or its OpenAPI schema,
//! and the contract changes only here.

use std::collections::BTreeMap;

use arachne_shared::schedule::ScheduleId;
use arachne_shared::spider::{Dedup, RunSettings, SpiderId};
use arachne_shared::task::{Progress, ReportedError, Transition};
use arachne_shared::{RunMode, TaskId, TaskStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One run of a spider on one node (or, with child tasks, the parent of a run on several nodes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Task {
    pub id: TaskId,
    pub spider_id: SpiderId,
    pub spider_name: String,
    /// The spider version (content hash) this task runs.
    pub version: String,
    /// The spider's command at the time the task was created.
    pub cmd: String,
    /// Extra arguments appended to `cmd`.
    pub param: Option<String>,
    /// 1 (highest) to 10; 5 by default, as in Crawlab.
    pub priority: u8,
    /// The spider's settings with this run's overrides applied.
    pub settings: RunSettings,
    /// From creation to the process start (or to the end, for a task that never started), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// From the process start to the end, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<u64>,
    /// Peak RSS of the task's process tree, in bytes, as sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    pub status: TaskStatus,
    /// The node the task was handed to, once it was.
    pub node: Option<String>,
    /// Which hand-over of the task to `node` is current; a worker's reports of an older one are refused.
    pub lease: u64,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the task ended as it did, when that is not plain success.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every status change, oldest first.
    pub transitions: Vec<Transition>,
    /// Log lines stored so far.
    pub log_lines: u64,
    /// Items stored so far.
    pub items: u64,
    /// The latest STATUS the spider reported; kept after the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// ERRORs the spider reported, oldest first; the first 100 are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ReportedError>,
    /// How many ERRORs the spider reported in all, including those not kept.
    pub error_count: u64,
    /// How the run picks its nodes.
    pub mode: RunMode,
    /// The task this one is a child of, in a run on several nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<TaskId>,
    /// How many child tasks this task has. A parent is never dispatched; its status follows its children.
    pub children: u32,
    /// Only this node may run the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_node: Option<String>,
    /// Labels a node must have, all of them, to take the task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// The schedule that created the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<ScheduleId>,
    /// The schedule's fire time that created the task; none for a schedule's manual run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_time: Option<DateTime<Utc>>,
    /// 1 for a first run; each retry or restart adds one.
    pub attempt: u32,
    /// The first attempt of this run, on a retry or restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt: Option<TaskId>,
    /// The attempt that retries this one, once it is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_by: Option<TaskId>,
    /// Not dispatched before this time (the backoff of a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Why a Pending task is not running yet, when the scheduler found a reason beyond a busy cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// Tasks with the same key never run at once (a schedule's `queue` overlap policy uses the schedule id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<String>,
    /// Where its items are stored (the results collection, in a MongoDB store).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub results_collection: String,
    /// The spider's item de-duplication when the task was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Dedup>,
    /// The id the client that started the run gave it (Scrapyd's `jobid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_job_id: Option<String>,
    /// It ended as a failure that another attempt will retry (`retried_by` names it once it exists): not
    /// the run's end.
    #[serde(default)]
    pub will_retry: bool,
    /// When its process started (it entered Running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached its final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

impl Task {
    /// The full shell command line the runner executes.
    pub fn command_line(&self) -> String {
        arachne_shared::task::command_line(&self.cmd, self.param.as_deref())
    }
}

shown_as_stored!(arachne_shared::Task => Task {
    id, spider_id, spider_name, version, cmd, param, priority, settings, wait_ms, run_ms, peak_rss_bytes,
    status, node, lease, pid, exit_code, signal, error, created_at, updated_at, transitions, log_lines, items,
    progress, errors, error_count, mode, parent_id, children, pinned_node, node_labels, schedule_id, fire_time, attempt,
    first_attempt, retried_by, not_before, pending_reason, exclusive, results_collection, dedup,
    client_job_id,
} computed {
    will_retry: arachne_shared::Task::will_retry,
    started_at: arachne_shared::Task::started_at,
    ended_at: arachne_shared::Task::ended_at,
} shown {
    settings: arachne_shared::spider::RunSettings::masked,
});
