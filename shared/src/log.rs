//! What a task produces: log lines and items, each numbered so a write can be retried without duplicates.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which stream a log line came from. `System` lines are written by the platform itself (warnings about
/// malformed IPC, sync progress), so users can tell them from their spider's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    System,
}

impl LogStream {
    /// The lowercase name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::System => "system",
        }
    }
}

/// One log line of a task. `seq` starts at 1 and has no gaps within a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub stream: LogStream,
    pub text: String,
    pub at: DateTime<Utc>,
}

/// One item a spider produced. `seq` starts at 1 and has no gaps within a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub seq: u64,
    pub data: serde_json::Map<String, serde_json::Value>,
}
