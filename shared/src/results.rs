//! A spider's items across its runs: the conditions a search of them takes, where a page of them ends, and
//! what one found item is.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Invalid;
use crate::spider::SpiderId;
use crate::task::TaskId;

/// Field names the stores keep beside an item's own fields; a condition may not name them.
pub const RESERVED_FIELDS: [&str; 7] = ["_id", "_tid", "_sid", "_seq", "_at", "_dk", "_raw"];

/// A test of one field of an item, written `path=value` (equals), `path~text` (contains) or `path` (exists).
/// A path names nested object fields with dots (`price.amount`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    pub path: Vec<String>,
    pub test: FieldTest,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldTest {
    /// The field equals the value: a string field the text itself, a number field the number it spells, a
    /// boolean or null field the word `true`, `false` or `null`.
    Equals(String),
    /// The field is a string that contains the text (case-sensitive).
    Contains(String),
    /// The field is present, whatever its value (null included).
    Exists,
}

impl FieldCondition {
    /// The value an equality test also matches as a number, when its text spells one.
    pub fn number(value: &str) -> Option<serde_json::Number> {
        match value.parse::<i64>() {
            Ok(n) => Some(n.into()),
            Err(_) => value
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64),
        }
    }
}

impl FromStr for FieldCondition {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        let (path, test) = match s.find(['=', '~']) {
            Some(at) if s.as_bytes()[at] == b'=' => {
                (&s[..at], FieldTest::Equals(s[at + 1..].to_owned()))
            }
            Some(at) => (&s[..at], FieldTest::Contains(s[at + 1..].to_owned())),
            None => (s, FieldTest::Exists),
        };
        let invalid = |why: &str| {
            Invalid(format!(
                "condition {s:?}: {why} (write FIELD=VALUE, FIELD~TEXT or FIELD)"
            ))
        };
        if path.is_empty() {
            return Err(invalid("no field named"));
        }
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(invalid("a field name in the path is empty"));
        }
        if let Some(bad) = path.iter().find(|p| {
            p.starts_with('$') || p.contains(['"', '\\']) || p.chars().any(char::is_control)
        }) {
            return Err(invalid(&format!(
                "field name {bad:?} may not start with $ or hold quotes, backslashes or control characters"
            )));
        }
        if RESERVED_FIELDS.contains(&path[0].as_str()) {
            return Err(invalid(&format!(
                "{} is the store's own field, not the item's",
                path[0]
            )));
        }
        if let FieldTest::Contains(text) = &test
            && text.is_empty()
        {
            return Err(invalid("contains what? the text after ~ is empty"));
        }
        Ok(Self { path, test })
    }
}

impl fmt::Display for FieldCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path.join("."))?;
        match &self.test {
            FieldTest::Equals(value) => write!(f, "={value}"),
            FieldTest::Contains(text) => write!(f, "~{text}"),
            FieldTest::Exists => Ok(()),
        }
    }
}

/// Where a page of items, newest first, ended: the next page starts after (older than) this item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemCursor {
    pub task: TaskId,
    pub seq: u64,
}

impl fmt::Display for ItemCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.task, self.seq)
    }
}

impl FromStr for ItemCursor {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        let invalid = || {
            Invalid(format!(
                "cursor {s:?} is not one this API gave (TASK_ID.SEQ)"
            ))
        };
        let (task, seq) = s.split_once('.').ok_or_else(invalid)?;
        Ok(Self {
            task: task.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// Which items of a spider a search wants, newest first: by task (newest task first), then by sequence
/// number (last first).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemSearch {
    pub spider: SpiderId,
    pub spider_name: String,
    /// The spider's results collection (MongoDB keeps its items there).
    pub collection: String,
    pub task: Option<TaskId>,
    /// Stored at or after.
    pub since: Option<DateTime<Utc>>,
    /// Stored before.
    pub until: Option<DateTime<Utc>>,
    /// All must hold.
    pub conditions: Vec<FieldCondition>,
    /// Only items older than this one.
    pub after: Option<ItemCursor>,
    pub limit: u32,
}

/// One item a search found, with the task that produced it and when the master stored it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FoundItem {
    pub task_id: TaskId,
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub data: Box<RawValue>,
}

impl FoundItem {
    pub fn cursor(&self) -> ItemCursor {
        ItemCursor {
            task: self.task_id,
            seq: self.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> FieldCondition {
        s.parse().unwrap()
    }

    #[test]
    fn conditions_read_as_written() {
        assert_eq!(
            parsed("price.amount=10"),
            FieldCondition {
                path: vec!["price".into(), "amount".into()],
                test: FieldTest::Equals("10".into())
            }
        );
        assert_eq!(parsed("title~a=b").test, FieldTest::Contains("a=b".into()));
        assert_eq!(parsed("tag=").test, FieldTest::Equals(String::new()));
        assert_eq!(parsed("author").test, FieldTest::Exists);
        for text in ["price.amount=10", "title~a=b", "author"] {
            assert_eq!(parsed(text).to_string(), text);
        }
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        for (text, says) in [
            ("=x", "no field named"),
            ("a..b=1", "empty"),
            ("$where=1", "may not start with $"),
            ("_tid=1", "the store's own field"),
            ("title~", "empty"),
        ] {
            let err = text.parse::<FieldCondition>().unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn cursors_read_back() {
        let cursor = ItemCursor {
            task: TaskId::new(),
            seq: 42,
        };
        assert_eq!(cursor.to_string().parse::<ItemCursor>().unwrap(), cursor);
        assert!("nope".parse::<ItemCursor>().is_err());
    }
}
