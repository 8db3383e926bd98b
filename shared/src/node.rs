//! Nodes: workers known to the master.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether a node currently holds a session with the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Online,
    Offline,
}

impl NodeStatus {
    /// The lowercase name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// A worker node as stored and as shown by the API.
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
}
