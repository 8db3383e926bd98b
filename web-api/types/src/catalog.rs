//! Spiders, nodes and schedules as the API shows them: their own types, apart from the master's records, so a
//! record can change shape without changing the HTTP contract or its OpenAPI schema.

use std::collections::BTreeMap;

use arachne_shared::RunMode;
use arachne_shared::node::{NodeMetrics, NodeStatus};
use arachne_shared::schedule::{MisfirePolicy, OverlapPolicy, ScheduleId};
use arachne_shared::spider::{Dedup, RunSettings, SpiderId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A spider: a named command and the files it runs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Spider {
    pub id: SpiderId,
    /// Unique, user-chosen name; what the CLI refers to.
    pub name: String,
    /// The shell command run in the spider's folder.
    pub cmd: String,
    /// The current version: the sha256 of the file manifest. Empty until files are uploaded.
    pub version: String,
    /// Files in the current version.
    pub file_count: u64,
    /// Their total size.
    pub total_bytes: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How its runs are supervised; a run can override each field.
    #[serde(default)]
    pub settings: RunSettings,
    /// At most this many tasks of the spider run at once across the cluster; the rest wait in Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// The collection its items are stored in, in a MongoDB store (`results_<name>` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_collection: Option<String>,
    /// How items with the same key fields are stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Dedup>,
}

shown_as_stored!(arachne_shared::Spider => Spider {
    id, name, cmd, version, file_count, total_bytes, created_at, updated_at, settings, max_instances,
    results_collection, dedup,
} shown {
    settings: RunSettings::masked,
});

/// A worker node known to the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Node {
    /// Unique name the worker registered with.
    pub name: String,
    pub status: NodeStatus,
    /// The runner slots in force: the user's setting if there is one, else what the worker registered with.
    pub max_runners: u32,
    /// Set by a user at run time; wins over what the worker registers with, also after it reconnects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runners_override: Option<u32>,
    /// Tasks handed to the node that have not ended yet.
    pub running: u32,
    /// The worker's software version.
    pub version: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// A disabled node gets no new tasks; its running ones carry on.
    pub enabled: bool,
    /// What the worker registered with (`region=eu`, `gpu=1`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The latest machine metrics the worker sent with its heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<NodeMetrics>,
    /// The node's own CPU threshold (percent): over it, it takes no new task. Absent: the cluster-wide one,
    /// if the master has one (`--max-node-cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<f32>,
    /// The node's own memory threshold (percent of memory in use), as for CPU (`--max-node-memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_percent: Option<f32>,
}

shown_as_stored!(arachne_shared::Node => Node {
    name, status, max_runners, max_runners_override, running, version, registered_at, last_seen, enabled,
    labels, metrics, max_cpu_percent, max_memory_percent,
});

/// A cron schedule: which spider it runs, when, and with which run options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Schedule {
    pub id: ScheduleId,
    /// Unique, user-chosen name.
    pub name: String,
    /// The spider it runs, by name.
    pub spider: String,
    pub cron: String,
    /// IANA time zone the expression is evaluated in.
    pub timezone: String,
    pub mode: RunMode,
    /// The nodes of mode `nodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    pub priority: u8,
    /// Overrides of the spider's settings for the runs it starts.
    #[serde(default)]
    pub settings: RunSettings,
    pub enabled: bool,
    pub overlap: OverlapPolicy,
    pub misfire: MisfirePolicy,
    /// The latest fire time handled (run, or skipped by a policy). Fire times after it are still to come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Free-form labels, kept for the user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels a node must have, all of them, to take the schedule's runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
}

shown_as_stored!(arachne_shared::Schedule => Schedule {
    id, name, spider, cron, timezone, mode, nodes, param, priority, settings, enabled, overlap, misfire,
    last_fire, created_at, updated_at, labels, node_labels,
} shown {
    settings: RunSettings::masked,
});
