//! Plain domain types that more than one Arachne crate needs: tasks, spiders, nodes, log lines, items, the
//! messages a worker and the master exchange, and the JSON-lines IPC protocol between a runner and its spider.
//!
//! Architecture invariant: nothing here depends on tokio, tonic or a database driver, so every crate can use
//! these types and none of them drags a runtime along.

pub mod cluster;
pub mod files;
pub mod ipc;
pub mod log;
pub mod node;
pub mod schedule;
pub mod spider;
pub mod task;
pub mod token;

pub use log::{ItemRecord, LogLine, LogStream};
pub use node::{Node, NodeMetrics, NodeStatus};
pub use schedule::{Schedule, ScheduleId};
pub use spider::{Spider, SpiderId};
pub use task::{
    ChangeKind, ItemTarget, RunMode, Task, TaskChanged, TaskId, TaskOutcome, TaskStatus, Transition,
};
pub use token::{Token, TokenKind};

/// Milliseconds since the Unix epoch, the one timestamp encoding used on the wire and in the embedded store.
pub fn to_millis(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_millis()
}

/// The inverse of [`to_millis`]; out-of-range values clamp to the epoch instead of failing, because a bad
/// timestamp from a peer must not lose the record it is attached to.
pub fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
