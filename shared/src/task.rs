//! Tasks: one run of a spider on one node, its life-cycle states and how a run ended.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ipc::{ErrorPayload, StatusPayload};
use crate::schedule::ScheduleId;
use crate::spider::{Dedup, RunSettings, Spider, SpiderId};

uuid_id!(
    /// A task's id. UUID v7, so ids sort by creation time.
    TaskId
);

impl TaskId {
    /// The smallest id a task created in the millisecond of `at` can have; ids of tasks created before
    /// that millisecond are smaller. Lets a store filter by creation time on its primary key.
    pub fn first_at(at: DateTime<Utc>) -> Self {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid())
    }
}

/// A notice that a task changed. Only a hint: whoever follows the task re-reads the store for what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskChanged {
    pub task_id: TaskId,
    pub kind: ChangeKind,
}

/// What kind of change a [`TaskChanged`] announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Its status, progress, errors or anything else in the task record (also its deletion).
    State,
    /// New log lines or items only.
    Output,
}

/// Where a task is in its life. The order of declaration is the order of the life-cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Recorded, not yet eligible for dispatch.
    Created,
    /// Waiting for a node with a free runner slot (possibly already handed to one that has not started it).
    Pending,
    /// The spider process is running on a node.
    Running,
    /// The process exited 0.
    Finished,
    /// The process exited non-zero, was killed by a signal it was not asked to take, or could not start.
    Error,
    /// A user (or shutdown) cancelled it.
    Cancelled,
    /// The platform lost track of it: its node disconnected or vanished while it ran.
    Abnormal,
}

impl TaskStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [TaskStatus; 7] = [
        Self::Created,
        Self::Pending,
        Self::Running,
        Self::Finished,
        Self::Error,
        Self::Cancelled,
        Self::Abnormal,
    ];

    /// Whether the task has ended and will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Finished | Self::Error | Self::Cancelled | Self::Abnormal
        )
    }
}

named_enum!(
    TaskStatus,
    "task status",
    Created => "created",
    Pending => "pending",
    Running => "running",
    Finished => "finished",
    Error => "error",
    Cancelled => "cancelled",
    Abnormal => "abnormal",
);

/// One time-stamped status change; a task keeps the whole list so its history can be audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Transition {
    pub status: TaskStatus,
    pub at: DateTime<Utc>,
}

/// How a spider run ended, as the runner saw it. A failing spider is an outcome, never a Rust error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum TaskOutcome {
    /// The process exited 0.
    Finished,
    /// The process failed, or could not be started; `message` says why in words.
    Error {
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: String,
    },
    /// The run was cancelled and its process group is gone.
    Cancelled { reason: String },
    /// The run was lost (for example its worker shut down mid-run).
    Abnormal { reason: String },
}

impl TaskOutcome {
    /// The terminal status this outcome leads to.
    pub fn status(&self) -> TaskStatus {
        match self {
            Self::Finished => TaskStatus::Finished,
            Self::Error { .. } => TaskStatus::Error,
            Self::Cancelled { .. } => TaskStatus::Cancelled,
            Self::Abnormal { .. } => TaskStatus::Abnormal,
        }
    }

    /// The length of the words that say why, if any.
    pub fn message_len(&self) -> usize {
        match self {
            Self::Finished => 0,
            Self::Error { message, .. } => message.len(),
            Self::Cancelled { reason } | Self::Abnormal { reason } => reason.len(),
        }
    }
}

/// A task as the master keeps it (the API shows its own view of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
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
    /// The fencing token of the task's hand-over to `node`: raised when the task is assigned and when the
    /// master writes an assignment off, so messages of a superseded run (which carry the old value) are
    /// refused.
    #[serde(default)]
    pub lease: u64,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the task ended as it did, when that is not plain success.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub transitions: Vec<Transition>,
    /// Log lines stored so far.
    pub log_lines: u64,
    /// Items stored so far.
    pub items: u64,
    /// The latest STATUS the spider reported; kept after the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// ERRORs the spider reported, oldest first; at most [`MAX_TASK_ERRORS`] are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ReportedError>,
    /// How many ERRORs the spider reported in all, including those not kept.
    #[serde(default)]
    pub error_count: u64,
    /// How the run picks its nodes.
    #[serde(default)]
    pub mode: RunMode,
    /// The task this one is a child of, in a run on several nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<TaskId>,
    /// How many child tasks this task has. A parent is never dispatched; its status follows its children.
    #[serde(default)]
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
    #[serde(default = "first_attempt")]
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
    /// Where its items are stored: the spider's results collection when the task was created.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub results_collection: String,
    /// The spider's item de-duplication when the task was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Dedup>,
    /// The id the client that started the run gave it (Scrapyd's `jobid`), by which that client finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_job_id: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

/// What a run is started with, whoever starts it (a user, a schedule): its arguments, priority, setting
/// overrides and placement. Unset values take the spider's (settings) or the platform's (priority 5) defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    /// Arguments appended to the spider's command.
    pub param: Option<String>,
    /// 1 (highest) to 10.
    pub priority: Option<u8>,
    /// Overrides of the spider's settings; `env` is merged.
    pub settings: RunSettings,
    pub mode: RunMode,
    /// The nodes of mode `nodes`.
    pub nodes: Vec<String>,
    /// Labels a node must have, all of them, to take the run (or, in mode `all`, to get a child).
    pub node_labels: BTreeMap<String, String>,
}

/// Checks labels a run requires: each name and value non-empty, with no `=` or `,` in a name.
pub fn validate_node_labels(labels: &BTreeMap<String, String>) -> Result<(), crate::Invalid> {
    for (name, value) in labels {
        if name.trim().is_empty() || name.contains(['=', ',']) || value.trim().is_empty() {
            return Err(crate::Invalid(format!(
                "node label {name}={value}: write NAME=VALUE, both non-empty"
            )));
        }
    }
    Ok(())
}

/// Whether `node` has every label of `required`.
pub fn has_labels(node: &BTreeMap<String, String>, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(k, v)| node.get(k) == Some(v))
}

/// Labels as `a=1, b=2`, for messages.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a run picks the nodes it runs on.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// One task on any one eligible node, the least loaded first.
    #[default]
    Random,
    /// One task per named node, each pinned to its node.
    Nodes,
    /// One child task per online, enabled node, under one parent task.
    All,
}

named_enum!(RunMode, "mode", Random => "random", Nodes => "nodes", All => "all");

/// The latest attempt of each child, in id order: retries and restarts are attempts of the same child, and
/// only the latest one says how that child did.
pub fn latest_attempts(children: &[Task]) -> Vec<&Task> {
    let mut latest: std::collections::BTreeMap<TaskId, &Task> = std::collections::BTreeMap::new();
    for child in children {
        let entry = latest
            .entry(child.first_attempt.unwrap_or(child.id))
            .or_insert(child);
        if child.attempt > entry.attempt {
            *entry = child;
        }
    }
    let mut latest: Vec<&Task> = latest.into_values().collect();
    latest.sort_by_key(|t| t.id);
    latest
}

/// The status a parent task shows for its children: Running while any runs; once all have ended, Error if any
/// failed, else Cancelled if any was cancelled, else Finished; Pending before any started. Only the latest
/// attempt of each child counts, so a retried child that then finished does not leave its parent failed.
pub fn parent_status(children: &[Task]) -> TaskStatus {
    let latest = latest_attempts(children);
    let any = |status: TaskStatus| latest.iter().any(|c| c.status == status);
    if any(TaskStatus::Running) {
        TaskStatus::Running
    } else if !latest.iter().all(|c| c.status.is_terminal()) {
        TaskStatus::Pending
    } else if any(TaskStatus::Error) || any(TaskStatus::Abnormal) {
        TaskStatus::Error
    } else if any(TaskStatus::Cancelled) {
        TaskStatus::Cancelled
    } else {
        TaskStatus::Finished
    }
}

/// The shell command line of a spider command `cmd` with a run's arguments `param` appended.
pub fn command_line(cmd: &str, param: Option<&str>) -> String {
    match param.map(str::trim) {
        Some(param) if !param.is_empty() => format!("{cmd} {param}"),
        _ => cmd.to_owned(),
    }
}

/// How many reported errors a task keeps; the count goes on past it.
pub const MAX_TASK_ERRORS: usize = 100;

/// A STATUS report and when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Progress {
    #[serde(flatten)]
    pub status: StatusPayload,
    pub at: DateTime<Utc>,
}

/// An ERROR report and when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReportedError {
    #[serde(flatten)]
    pub error: ErrorPayload,
    pub at: DateTime<Utc>,
}

/// Where a task's items are stored, and how they are de-duplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemTarget {
    pub task: TaskId,
    pub spider_id: SpiderId,
    /// The results collection (MongoDB), which is also the scope of de-duplication in every store.
    pub collection: String,
    pub dedup: Option<Dedup>,
}

/// Default task priority (1 is the highest, 10 the lowest).
pub const DEFAULT_PRIORITY: u8 = 5;

impl Task {
    /// A new Pending task of `spider`'s current version and settings, priority 5, first attempt; callers
    /// set what their run asks for.
    pub fn pending(spider: &Spider, at: DateTime<Utc>) -> Self {
        let mut task = Task {
            id: TaskId::new(),
            spider_id: spider.id,
            spider_name: spider.name.clone(),
            version: spider.version.clone(),
            cmd: spider.cmd.clone(),
            param: None,
            priority: DEFAULT_PRIORITY,
            settings: spider.settings.clone(),
            wait_ms: None,
            run_ms: None,
            peak_rss_bytes: None,
            status: TaskStatus::Created,
            node: None,
            lease: 0,
            pid: None,
            exit_code: None,
            signal: None,
            error: None,
            created_at: at,
            updated_at: at,
            transitions: vec![Transition {
                status: TaskStatus::Created,
                at,
            }],
            log_lines: 0,
            items: 0,
            progress: None,
            errors: Vec::new(),
            error_count: 0,
            mode: RunMode::Random,
            parent_id: None,
            children: 0,
            pinned_node: None,
            node_labels: BTreeMap::new(),
            schedule_id: None,
            fire_time: None,
            attempt: 1,
            first_attempt: None,
            retried_by: None,
            not_before: None,
            pending_reason: None,
            exclusive: None,
            results_collection: spider.results_collection(),
            dedup: spider.dedup.clone(),
            client_job_id: None,
        };
        task.set_status(TaskStatus::Pending, at);
        task
    }

    /// The next attempt of this task: same spider version, command, settings and placement, Pending, linked
    /// to the first attempt. Not dispatched before `not_before`.
    pub fn next_attempt(&self, at: DateTime<Utc>, not_before: Option<DateTime<Utc>>) -> Self {
        let mut next = self.clone();
        next.id = TaskId::new();
        next.status = TaskStatus::Created;
        next.transitions = vec![Transition {
            status: TaskStatus::Created,
            at,
        }];
        next.created_at = at;
        next.set_status(TaskStatus::Pending, at);
        next.attempt = self.attempt + 1;
        next.first_attempt = Some(self.first_attempt.unwrap_or(self.id));
        next.retried_by = None;
        next.not_before = not_before;
        (next.node, next.pid, next.exit_code, next.signal, next.error) =
            (None, None, None, None, None);
        next.lease = 0;
        (next.wait_ms, next.run_ms, next.peak_rss_bytes) = (None, None, None);
        (next.log_lines, next.items, next.error_count) = (0, 0, 0);
        next.progress = None;
        next.errors.clear();
        next.pending_reason = None;
        next.fire_time = None;
        next
    }

    /// Where its items go.
    pub fn item_target(&self) -> ItemTarget {
        ItemTarget {
            task: self.id,
            spider_id: self.spider_id,
            collection: self.results_collection.clone(),
            dedup: self.dedup.clone(),
        }
    }

    /// Puts a task handed to a node but never started back in the queue, and revokes the hand-over: what the
    /// node still sends under the old lease is refused.
    pub fn requeue(&mut self, at: DateTime<Utc>) {
        self.node = None;
        self.lease += 1;
        self.updated_at = at;
    }

    /// Whether this task ended as a failure that another attempt will retry (it has retries left).
    pub fn will_retry(&self) -> bool {
        let failed = matches!(self.status, TaskStatus::Error | TaskStatus::Abnormal);
        failed && !self.is_parent() && self.attempt <= self.settings.retries.unwrap_or(0)
    }

    /// Whether this task stands for child tasks rather than running itself.
    pub fn is_parent(&self) -> bool {
        self.children > 0
    }

    /// The full shell command line the runner executes.
    pub fn command_line(&self) -> String {
        command_line(&self.cmd, self.param.as_deref())
    }

    /// Moves the task to `status` now and records the transition.
    pub fn set_status(&mut self, status: TaskStatus, at: DateTime<Utc>) {
        self.status = status;
        self.updated_at = at;
        self.transitions.push(Transition { status, at });
        let millis = |from: Option<DateTime<Utc>>| {
            from.map(|from| (at - from).num_milliseconds().max(0) as u64)
        };
        if status == TaskStatus::Running {
            self.wait_ms = millis(Some(self.created_at));
        }
        if status.is_terminal() {
            self.run_ms = millis(self.started_at());
            self.wait_ms = self.wait_ms.or_else(|| millis(Some(self.created_at)));
        }
    }

    /// When the task last entered `status`, if it ever did.
    pub fn entered(&self, status: TaskStatus) -> Option<DateTime<Utc>> {
        self.transitions
            .iter()
            .rev()
            .find(|t| t.status == status)
            .map(|t| t.at)
    }

    /// When the process started.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.entered(TaskStatus::Running)
    }

    /// When the task reached its terminal status; `None` while it has not.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        if !self.status.is_terminal() {
            return None;
        }
        self.transitions
            .iter()
            .rev()
            .find(|t| t.status.is_terminal())
            .map(|t| t.at)
    }

    /// Records what the spider reported: the latest status replaces the previous one, errors are appended.
    ///
    /// `errors_before` is how many errors of this task the spider reported before these, so a report that
    /// arrives twice (resent after a reconnect) records each error once.
    pub fn record_report(
        &mut self,
        status: Option<StatusPayload>,
        errors: Vec<ErrorPayload>,
        errors_before: u64,
        at: DateTime<Utc>,
    ) {
        if let Some(status) = status {
            self.progress = Some(Progress { status, at });
        }
        let already = self.error_count.saturating_sub(errors_before) as usize;
        for error in errors.into_iter().skip(already) {
            self.error_count += 1;
            if self.errors.len() < MAX_TASK_ERRORS {
                self.errors.push(ReportedError { error, at });
            }
        }
        self.updated_at = at;
    }

    /// Records how the run ended: terminal status, exit code or signal, and the reason.
    pub fn finish(&mut self, outcome: &TaskOutcome, at: DateTime<Utc>) {
        match outcome {
            TaskOutcome::Finished => self.exit_code = Some(0),
            TaskOutcome::Error {
                exit_code,
                signal,
                message,
            } => {
                self.exit_code = *exit_code;
                self.signal = *signal;
                self.error = Some(message.clone());
            }
            TaskOutcome::Cancelled { reason } | TaskOutcome::Abnormal { reason } => {
                self.error = Some(reason.clone());
            }
        }
        self.set_status(outcome.status(), at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_name() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
        }
        let err = "bogus".parse::<TaskStatus>().unwrap_err();
        assert!(
            err.0.contains("bogus") && err.0.contains("finished"),
            "{err}"
        );
    }

    #[test]
    fn wait_and_run_times_follow_the_transitions() {
        let t0 = chrono::DateTime::from_timestamp_millis(1_000_000).unwrap();
        let mut task: Task = serde_json::from_value(serde_json::json!({
            "id": TaskId::new(), "spider_id": SpiderId::new(), "spider_name": "s", "version": "", "cmd": "true",
            "param": null, "priority": 5, "status": "pending", "node": null, "pid": null, "exit_code": null,
            "signal": null, "error": null, "created_at": t0, "updated_at": t0, "transitions": [],
            "log_lines": 0, "items": 0
        }))
        .unwrap();
        task.set_status(TaskStatus::Running, t0 + chrono::Duration::milliseconds(40));
        task.finish(
            &TaskOutcome::Finished,
            t0 + chrono::Duration::milliseconds(1040),
        );
        assert_eq!((task.wait_ms, task.run_ms), (Some(40), Some(1000)));

        let mut never_started = task.clone();
        never_started.transitions.clear();
        never_started.wait_ms = None;
        never_started.run_ms = None;
        never_started.finish(
            &TaskOutcome::Cancelled { reason: "x".into() },
            t0 + chrono::Duration::milliseconds(7),
        );
        assert_eq!(
            (never_started.wait_ms, never_started.run_ms),
            (Some(7), None)
        );
    }

    #[test]
    fn only_ended_states_are_terminal() {
        let terminal: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                TaskStatus::Finished,
                TaskStatus::Error,
                TaskStatus::Cancelled,
                TaskStatus::Abnormal
            ]
        );
    }
}
