//! Nodes: workers known to the master.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether a node currently holds a session with the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Online,
    Offline,
}

named_enum!(NodeStatus, "node status", Online => "online", Offline => "offline");

/// A worker node as the master keeps it (the API shows it as its own type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// What the worker registered with, for the user (`region=eu`, `gpu=1`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The latest machine metrics the worker sent with its heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<NodeMetrics>,
}

fn enabled() -> bool {
    true
}

/// Machine metrics a worker sends with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeMetrics {
    /// CPU use of the whole machine, 0-100.
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Space on the disk holding the worker's work directory.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// Spider processes running on the node.
    pub running: u32,
}
