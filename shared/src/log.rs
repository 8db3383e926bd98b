//! What a task produces: log lines and items, each numbered so a write can be retried without duplicates.

use crate::Invalid;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which stream a log line came from. `System` lines are written by the platform itself (warnings about
/// malformed IPC, sync progress), so users can tell them from their spider's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    System,
}

named_enum!(LogStream, "log stream", Stdout => "stdout", Stderr => "stderr", System => "system");

impl LogStream {
    /// The stream named by [`Self::as_str`]; an unknown name reads as stdout.
    pub fn from_name(name: &str) -> Self {
        match name {
            "stderr" => Self::Stderr,
            "system" => Self::System,
            _ => Self::Stdout,
        }
    }
}

/// One log line of a task. `seq` starts at 1 and has no gaps within a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogLine {
    pub seq: u64,
    pub stream: LogStream,
    pub text: String,
    pub at: DateTime<Utc>,
}

/// One item a spider produced. `seq` starts at 1 and has no gaps within a task.
///
/// The item stays the JSON text the spider wrote (checked to be one object) from the runner to the store and
/// back out of the API: items are the hot path, and decoding each into a map and encoding it again at every hop
/// cost more than everything else together.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ItemRecord {
    pub seq: u64,
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub data: Box<serde_json::value::RawValue>,
}

impl ItemRecord {
    /// A record of `data`, which must be the JSON text of one object.
    pub fn new(seq: u64, data: Box<serde_json::value::RawValue>) -> Result<Self, Invalid> {
        if !data.get().trim_start().starts_with('{') {
            return Err(Invalid(format!("item {seq} is not a JSON object")));
        }
        Ok(Self { seq, data })
    }

    /// A record of an object value.
    pub fn from_object(seq: u64, data: &serde_json::Map<String, serde_json::Value>) -> Self {
        let raw = serde_json::value::to_raw_value(data).expect("a JSON map always serialises");
        Self { seq, data: raw }
    }

    /// The item decoded, for callers that need to look inside it.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.data.get()).expect("an item is valid JSON")
    }
}

impl PartialEq for ItemRecord {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq && self.data.get() == other.data.get()
    }
}
