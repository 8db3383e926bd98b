//! Spiders: a named command plus the files it runs in, identified by version.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A spider's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpiderId(pub Uuid);

impl SpiderId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for SpiderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SpiderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SpiderId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A spider as stored and as shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spider {
    pub id: SpiderId,
    /// Unique, user-chosen name; what the CLI refers to.
    pub name: String,
    /// The shell command run in the spider's folder.
    pub cmd: String,
    /// The current version: the sha256 of the file manifest. Empty until files are uploaded.
    pub version: String,
    pub file_count: u64,
    pub total_bytes: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How its runs are supervised; a run can override each field.
    #[serde(default)]
    pub settings: RunSettings,
    /// At most this many tasks of the spider run at once across the cluster; the rest wait in Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// The collection its items are stored in, in a MongoDB store (`results_<name>` when unset, as Crawlab
    /// names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_collection: Option<String>,
}

impl Spider {
    /// The collection its items are stored in.
    pub fn results_collection(&self) -> String {
        (self.results_collection.clone()).unwrap_or_else(|| format!("results_{}", self.name))
    }
}

/// Checks a results collection name: one MongoDB accepts everywhere, and not one of its reserved ones.
pub fn validate_collection(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty()
        || name.len() > 120
        || !ok_chars
        || name.starts_with('.')
        || name.ends_with('.')
    {
        return Err(format!(
            "invalid results collection {name:?}: use 1-120 ASCII letters, digits, '-', '_' or '.', not starting or ending with '.'"
        ));
    }
    if name.starts_with("system.") {
        return Err(format!(
            "invalid results collection {name:?}: system.* is reserved by MongoDB"
        ));
    }
    Ok(())
}

/// Supervision settings of a run. Unset fields fall back to the worker's defaults (no timeout, no memory
/// limit, the worker's cancel grace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// Extra environment variables of the spider process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The run is stopped, and ends as Error, after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// The run is stopped, and ends as Error, when its process tree's RSS goes over this many MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    /// Seconds a spider has to exit after CANCEL before SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_grace_secs: Option<u64>,
    /// How many times a run that ends as Error or Abnormal is tried again (0 by default). Each attempt is its
    /// own task, linked to the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds before the first retry; each further retry waits twice as long (capped at an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_secs: Option<u64>,
}

impl RunSettings {
    /// These settings with every field `run` sets taken from `run` (environment variables are merged).
    pub fn overridden_by(&self, run: &RunSettings) -> RunSettings {
        let mut env = self.env.clone();
        env.extend(run.env.clone());
        RunSettings {
            env,
            timeout_secs: run.timeout_secs.or(self.timeout_secs),
            memory_limit_mib: run.memory_limit_mib.or(self.memory_limit_mib),
            cancel_grace_secs: run.cancel_grace_secs.or(self.cancel_grace_secs),
            retries: run.retries.or(self.retries),
            retry_backoff_secs: run.retry_backoff_secs.or(self.retry_backoff_secs),
        }
    }

    /// How long to wait before attempt number `next_attempt` (2 for the first retry).
    pub fn retry_delay(&self, next_attempt: u32) -> std::time::Duration {
        let base = self.retry_backoff_secs.unwrap_or(0);
        let doublings = next_attempt.saturating_sub(2).min(20);
        std::time::Duration::from_secs(base.saturating_mul(1 << doublings).min(3600))
    }

    /// Checks the settings; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(format!("env: invalid variable name {key:?}"));
            }
            if key.starts_with("ARACHNE_") {
                return Err(format!(
                    "env: {key} is reserved (ARACHNE_* variables are set by the platform)"
                ));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err("env: values must not contain NUL".into());
        }
        if self.retries.is_some_and(|r| r > 100) {
            return Err("retries must be at most 100".into());
        }
        for (field, value) in [
            ("timeout_secs", self.timeout_secs),
            ("memory_limit_mib", self.memory_limit_mib),
        ] {
            if value == Some(0) {
                return Err(format!("{field} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Checks a spider or node name (`what` says which, for the message): 1-64 characters of ASCII letters, digits,
/// `-`, `_` and `.`, not starting with `.`. Names appear in paths and URLs, so anything else is refused rather
/// than escaped.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') {
        return Err(format!(
            "invalid {what} name {name:?}: use 1-64 ASCII letters, digits, '-', '_' or '.', not starting with '.'"
        ));
    }
    Ok(())
}

/// Checks a file path inside a spider: relative, `/`-separated, with no empty, `.` or `..` component and no NUL.
/// Both the upload path on the master and the sync path on a worker go through this one check, so a path
/// that could escape a spider's folder is refused wherever it comes from.
pub fn validate_relative_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("unsafe path {path:?}: {why}"));
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return bad("absolute paths, backslashes and NUL are not allowed");
    }
    for component in path.split('/') {
        match component {
            "" => return bad("empty component"),
            "." | ".." => return bad("`.` and `..` are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(validate_relative_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["main.py", "pkg/spiders/q.py", ".arachneignore", "a/..b"] {
            validate_relative_path(good).unwrap();
        }
    }

    #[test]
    fn names_that_could_escape_a_path_are_refused() {
        for bad in ["", "..", "a/b", ".hidden", "x y", &"n".repeat(65)] {
            assert!(validate_name("spider", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["hello", "quotes_v2", "a.b-c"] {
            validate_name("spider", good).unwrap();
        }
    }
}
