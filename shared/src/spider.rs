//! Spiders: a named command plus the files it runs in, identified by version.

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
