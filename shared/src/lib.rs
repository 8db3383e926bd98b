//! Plain domain types that more than one Arachne crate needs: tasks, spiders, nodes, log lines, items, the
//! messages a worker and the master exchange, and the JSON-lines IPC protocol between a runner and its spider.
//!
//! Architecture invariant: nothing here depends on tokio, tonic or a database driver, so every crate can use
//! these types and none of them drags a runtime along.

/// Declares a UUIDv7 id newtype: fresh ids sort by creation time, and it reads and prints as the plain UUID
/// (in JSON too), so every id type behaves the same in the store, the API and the CLI.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            serde::Serialize,
            serde::Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

#[cfg(feature = "archive")]
pub mod archive;
/// Gives a fieldless enum its lowercase names, one declaration for all three uses: `as_str`, `Display`, and
/// `FromStr` (any case; an unknown name is an [`Invalid`] that lists the known ones). `$what` names the
/// kind of value in that message.
macro_rules! named_enum {
    ($ty:ty, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $ty {
            /// The lowercase name used in the API, the CLI and the store.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $ty {
            type Err = $crate::Invalid;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    _ => Err($crate::Invalid(format!(
                        "unknown {} {s:?} (expected one of: {})",
                        $what,
                        [$($name),+].join(", ")
                    ))),
                }
            }
        }
    };
}

pub mod cluster;
pub mod files;
pub mod histogram;
pub mod ipc;
pub mod log;
pub mod node;
pub mod notify;
pub mod results;
pub mod schedule;
pub mod scrapy;
pub mod spider;
pub mod stats;
pub mod task;
pub mod token;
pub mod upload;

pub use log::{ItemRecord, LogLine, LogStream};
pub use node::{Node, NodeMetrics, NodeStatus};
pub use schedule::{Schedule, ScheduleId};
pub use spider::{Spider, SpiderId};
pub use task::{
    ChangeKind, ItemTarget, RunMode, RunOptions, Task, TaskChanged, TaskId, TaskOutcome,
    TaskStatus, Transition,
};
pub use token::{AuditEntry, AuditId, Caller, Role, Token, TokenInfo, TokenKind, User, UserInfo};

/// A value that failed its check. The message names the field and what is wrong with it, in words a user can
/// act on; callers map it to their own error (a bad request, a refused file) by its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// An I/O failure on a path: the path the call was about, and the system's reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathIo {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// For `map_err`: an I/O error of a call on `path`, with the path.
pub fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PathIo + '_ {
    move |source| PathIo {
        path: path.to_owned(),
        source,
    }
}

/// Reads a `KEY=VALUE` argument (an environment variable, a label); the value may be empty or hold `=`.
pub fn parse_key_value(argument: &str) -> Result<(String, String), Invalid> {
    match argument.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(Invalid(format!("expected KEY=VALUE, got {argument:?}"))),
    }
}

/// Milliseconds since the Unix epoch, the one timestamp encoding used on the wire and in the embedded store.
pub fn to_millis(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_millis()
}

/// The inverse of [`to_millis`]; out-of-range values clamp to the epoch instead of failing, because a bad
/// timestamp from a peer must not lose the record it is attached to.
pub fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Like [`from_millis`], from microseconds since the epoch.
pub fn from_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}
