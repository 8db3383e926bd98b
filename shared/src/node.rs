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
    /// Over this much CPU (percent of the machine) the node takes no new task; set by a user, it wins over
    /// the cluster-wide threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<f32>,
    /// The same for memory in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_percent: Option<f32>,
}

/// Load thresholds over which a node takes no new task (percent of the machine; `None`: no threshold).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadLimits {
    pub cpu_percent: Option<f32>,
    pub memory_percent: Option<f32>,
}

impl LoadLimits {
    /// These limits with each one `node` sets taken from it.
    pub fn for_node(self, node: Option<&Node>) -> Self {
        Self {
            cpu_percent: node.and_then(|n| n.max_cpu_percent).or(self.cpu_percent),
            memory_percent: node
                .and_then(|n| n.max_memory_percent)
                .or(self.memory_percent),
        }
    }

    /// What `metrics` goes over, in words (`CPU 97% > 90%`); `None` while under every limit, or with no
    /// metrics yet.
    pub fn exceeded(&self, metrics: Option<&NodeMetrics>) -> Option<String> {
        let metrics = metrics?;
        let mut over = Vec::new();
        if let Some(max) = self.cpu_percent
            && metrics.cpu_percent > max
        {
            over.push(format!("CPU {:.0}% > {max}%", metrics.cpu_percent));
        }
        if let Some(max) = self.memory_percent
            && metrics.memory_total_bytes > 0
        {
            let used = metrics.memory_used_bytes as f64 * 100.0 / metrics.memory_total_bytes as f64;
            if used > f64::from(max) {
                over.push(format!("memory {used:.0}% > {max}%"));
            }
        }
        (!over.is_empty()).then(|| over.join(", "))
    }
}

/// Checks a load threshold: a percentage above 0 and at most 100.
pub fn validate_percent(what: &str, value: f32) -> Result<(), crate::Invalid> {
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(crate::Invalid(format!(
            "{what} must be above 0 and at most 100, got {value}"
        )))
    }
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
