//! Spiders: a named command plus the files it runs in, identified by version.

use crate::Invalid;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

uuid_id!(
    /// A spider's id.
    SpiderId
);

/// A spider as the master keeps it (the API shows it as its own type).
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
    /// How items with the same key fields are stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Dedup>,
}

impl Spider {
    /// A new spider with no files yet, default settings, no instance limit, the default results collection
    /// and no de-duplication.
    pub fn new(name: impl Into<String>, cmd: impl Into<String>, at: DateTime<Utc>) -> Self {
        Self {
            id: SpiderId::new(),
            name: name.into(),
            cmd: cmd.into(),
            version: String::new(),
            file_count: 0,
            total_bytes: 0,
            created_at: at,
            updated_at: at,
            settings: RunSettings::default(),
            max_instances: None,
            results_collection: None,
            dedup: None,
        }
    }

    /// The collection its items are stored in.
    pub fn results_collection(&self) -> String {
        (self.results_collection.clone()).unwrap_or_else(|| format!("results_{}", self.name))
    }
}

/// Items de-duplication: items whose key fields hold the same values are stored once per results collection,
/// across tasks (and across spiders sharing the collection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dedup {
    /// Top-level item fields that together identify an item.
    pub keys: Vec<String>,
    #[serde(default)]
    pub mode: DedupMode,
}

/// What happens to an item whose key is already stored.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    /// The new item replaces the stored one, and now belongs to the task that produced it.
    #[default]
    Overwrite,
    /// The stored item stays; the new one is dropped.
    Ignore,
}

named_enum!(DedupMode, "dedup mode", Overwrite => "overwrite", Ignore => "ignore");

/// Keys longer than this are stored as their sha256, so an index entry stays small whatever the item holds.
const MAX_PLAIN_KEY: usize = 256;

impl Dedup {
    /// At most this many key fields.
    pub const MAX_KEYS: usize = 8;

    /// Checks the key fields; the message names the bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.keys.is_empty() {
            return Err(Invalid("dedup.keys: name at least one item field".into()));
        }
        if self.keys.len() > Self::MAX_KEYS {
            return Err(Invalid(format!(
                "dedup.keys: at most {} fields",
                Self::MAX_KEYS
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for key in &self.keys {
            // Top-level names only: a dotted path or a `$` name means something else to MongoDB, and `_`
            // fields are the platform's own tags.
            if key.is_empty()
                || key.len() > 128
                || key.starts_with(['$', '_'])
                || key.contains(['.', '\0'])
            {
                return Err(Invalid(format!(
                    "dedup.keys: invalid field {key:?} (a top-level field name, not starting with '$' or '_', without '.')"
                )));
            }
            if !seen.insert(key) {
                return Err(Invalid(format!("dedup.keys: {key:?} appears twice")));
            }
        }
        Ok(())
    }

    /// The item's key: the JSON text of its key fields' values, in the order of `keys` (a missing field counts
    /// as null). `Ok(None)` when the item has none of the key fields, so such items are all kept rather than
    /// collapsed into one. A key field whose value cannot be read back (nested deeper than the JSON reader
    /// goes) is an error rather than a null, which would merge distinct items: the caller keeps such an item
    /// without de-duplication.
    pub fn key_of(
        &self,
        item: &serde_json::value::RawValue,
    ) -> Result<Option<String>, UnreadableKey> {
        let fields: std::collections::HashMap<String, &serde_json::value::RawValue> =
            serde_json::from_str(item.get()).map_err(|_| UnreadableKey {
                field: String::new(),
            })?;
        if self.keys.iter().all(|k| !fields.contains_key(k)) {
            return Ok(None);
        }
        // Re-encoded, so spacing and the order inside an object value do not make two equal values differ.
        let mut values = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let value = match fields.get(key) {
                Some(raw) => serde_json::from_str::<serde_json::Value>(raw.get())
                    .map_err(|_| UnreadableKey { field: key.clone() })?,
                None => serde_json::Value::Null,
            };
            values.push(value.to_string());
        }
        let key = format!("[{}]", values.join(","));
        if key.len() <= MAX_PLAIN_KEY {
            return Ok(Some(key));
        }
        use sha2::Digest;
        Ok(Some(format!(
            "sha256:{}",
            crate::files::hex(&sha2::Sha256::digest(key.as_bytes()))
        )))
    }
}

/// An item whose de-duplication key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the de-duplication key field {field:?} cannot be read (nested too deeply); the item is kept without de-duplication"
)]
pub struct UnreadableKey {
    /// The key field; empty when the item itself could not be read as an object.
    pub field: String,
}

/// The collections the platform itself keeps in MongoDB (the store's and the spider files' GridFS bucket):
/// a spider's items written into one would overwrite tokens, tasks or spider code.
pub const PLATFORM_COLLECTIONS: &[&str] = &[
    "spiders",
    "tasks",
    "task_logs",
    "nodes",
    "schedules",
    "tokens",
    "spider_versions",
    "spider_files.files",
    "spider_files.chunks",
];

/// Checks a results collection name: one MongoDB accepts everywhere, and neither one of its reserved ones
/// nor one of the platform's own.
pub fn validate_collection(name: &str) -> Result<(), Invalid> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty()
        || name.len() > 120
        || !ok_chars
        || name.starts_with('.')
        || name.ends_with('.')
    {
        return Err(Invalid(format!(
            "invalid results collection {name:?}: use 1-120 ASCII letters, digits, '-', '_' or '.', not starting or ending with '.'"
        )));
    }
    if name.starts_with("system.") {
        return Err(Invalid(format!(
            "invalid results collection {name:?}: system.* is reserved by MongoDB"
        )));
    }
    if PLATFORM_COLLECTIONS.contains(&name) || name.starts_with("spider_files.") {
        return Err(Invalid(format!(
            "invalid results collection {name:?}: the platform keeps its own records there"
        )));
    }
    Ok(())
}

/// Supervision settings of a run. Unset fields fall back to the worker's defaults (no timeout, no memory
/// limit, the worker's cancel grace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// What the API shows in place of a secret environment value.
pub const SECRET_MASK: &str = "********";

/// Whether an environment variable holds a secret, by the words of its name (`API_KEY`, `DB_PASSWORD`,
/// `GITHUB_TOKEN`, `AWS_SECRET_ACCESS_KEY`...): its value is masked wherever the API shows it.
pub fn is_secret_name(name: &str) -> bool {
    const WORDS: [&str; 12] = [
        "KEY",
        "APIKEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "PRIVATE",
    ];
    name.split(['_', '-', '.'])
        .any(|word| WORDS.contains(&word.to_ascii_uppercase().as_str()))
}

impl RunSettings {
    /// These settings as users see them: every secret value masked.
    pub fn masked(mut self) -> Self {
        for (name, value) in &mut self.env {
            if is_secret_name(name) {
                *value = SECRET_MASK.to_owned();
            }
        }
        self
    }

    /// Takes back from `stored` each secret value these settings hold as the mask: a form that showed a
    /// masked value and sent it back unchanged keeps the secret. The mask for a secret `stored` lacks is an
    /// error, since the value it stands for is unknown.
    pub fn keep_secrets_of(&mut self, stored: &RunSettings) -> Result<(), Invalid> {
        for (name, value) in &mut self.env {
            if value != SECRET_MASK || !is_secret_name(name) {
                continue;
            }
            match stored.env.get(name) {
                Some(secret) => value.clone_from(secret),
                None => {
                    return Err(Invalid(format!(
                        "env: {name} holds the mask {SECRET_MASK}, and there is no stored value it stands for; send the value"
                    )));
                }
            }
        }
        Ok(())
    }

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
    pub fn validate(&self) -> Result<(), Invalid> {
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(Invalid(format!("env: invalid variable name {key:?}")));
            }
            if key.starts_with("ARACHNE_") {
                return Err(Invalid(format!(
                    "env: {key} is reserved (ARACHNE_* variables are set by the platform)"
                )));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err(Invalid("env: values must not contain NUL".into()));
        }
        if self.retries.is_some_and(|r| r > 100) {
            return Err(Invalid("retries must be at most 100".into()));
        }
        for (field, value) in [
            ("timeout_secs", self.timeout_secs),
            ("memory_limit_mib", self.memory_limit_mib),
        ] {
            if value == Some(0) {
                return Err(Invalid(format!("{field} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// Checks a spider or node name (`what` says which, for the message): 1-64 characters of ASCII letters, digits,
/// `-`, `_` and `.`, not starting with `.`. Names appear in paths and URLs, so anything else is refused rather
/// than escaped.
pub fn validate_name(what: &str, name: &str) -> Result<(), Invalid> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') {
        return Err(Invalid(format!(
            "invalid {what} name {name:?}: use 1-64 ASCII letters, digits, '-', '_' or '.', not starting with '.'"
        )));
    }
    Ok(())
}

/// Checks a file path inside a spider: relative, `/`-separated, with no empty, `.` or `..` component and no NUL.
/// Both the upload path on the master and the sync path on a worker go through this one check, so a path
/// that could escape a spider's folder is refused wherever it comes from.
pub fn validate_relative_path(path: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Err(Invalid(format!("unsafe path {path:?}: {why}")));
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return bad("absolute paths, backslashes and NUL are not allowed");
    }
    // A newline or an escape sequence in a name would be printed raw by `arachne spider files` and the UI.
    if path.chars().any(char::is_control) {
        return bad("a control character (newline, tab, escape, …) is not allowed in a file name");
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
    fn results_cannot_go_into_the_platform_s_own_collections() {
        for name in [
            "tokens",
            "spider_files.chunks",
            "spider_files.x",
            "tasks",
            "system.users",
        ] {
            assert!(validate_collection(name).is_err(), "{name}");
        }
        for name in ["results_hello", "tokens_of_sites", "my.items"] {
            assert!(validate_collection(name).is_ok(), "{name}");
        }
    }

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

    fn raw(text: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(text.into()).unwrap()
    }

    #[test]
    fn dedup_keys_compare_values_not_their_spelling() {
        let dedup = Dedup {
            keys: vec!["url".into(), "page".into()],
            mode: DedupMode::Ignore,
        };
        let key = |text: &str| dedup.key_of(&raw(text)).unwrap();
        assert_eq!(
            key(r#"{"url": "a", "page": 1, "x": 2}"#).unwrap(),
            r#"["a",1]"#
        );
        assert_eq!(
            key(r#"{"page":1,"url":"a"}"#),
            key(r#"{"url": "a", "page": 1}"#)
        );
        assert_eq!(
            key(r#"{"url": {"b": 1, "a": [1, 2]}}"#),
            key(r#"{"url":{"a":[1,2],"b":1}}"#)
        );
        assert_eq!(key(r#"{"url": "a"}"#).unwrap(), r#"["a",null]"#);
        assert_ne!(
            key(r#"{"url": "a", "page": 1}"#),
            key(r#"{"url": "a", "page": 2}"#)
        );
        assert_eq!(
            key(r#"{"other": 1}"#),
            None,
            "an item without any key field is kept"
        );
        let long = format!(r#"{{"url": "{}"}}"#, "x".repeat(1000));
        assert!(key(&long).unwrap().starts_with("sha256:"));
    }

    /// Two distinct values nested deeper than the reader goes must not both read as null and merge.
    #[test]
    fn a_key_nested_too_deeply_is_unreadable_not_null() {
        let dedup = Dedup {
            keys: vec!["url".into()],
            mode: DedupMode::Ignore,
        };
        let deep =
            |leaf: u32| format!(r#"{{"url": {}{leaf}{}}}"#, "[".repeat(200), "]".repeat(200));
        for leaf in [1, 2] {
            let err = dedup.key_of(&raw(&deep(leaf))).unwrap_err();
            assert_eq!(err.field, "url");
        }
    }

    #[test]
    fn dedup_keys_are_checked() {
        let check = |keys: &[&str]| {
            Dedup {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                mode: DedupMode::Overwrite,
            }
            .validate()
        };
        check(&["url"]).unwrap();
        for bad in [&[][..], &["a.b"], &["$x"], &["_tid"], &["a", "a"], &[""]] {
            let err = check(bad).unwrap_err();
            assert!(err.0.starts_with("dedup.keys"), "{err}");
        }
        assert_eq!("ignore".parse::<DedupMode>(), Ok(DedupMode::Ignore));
        assert!("skip".parse::<DedupMode>().unwrap_err().0.contains("skip"));
    }

    #[test]
    fn secrets_are_masked_by_name_and_kept_when_sent_back_masked() {
        let stored = RunSettings {
            env: [
                ("API_KEY".to_owned(), "k-123".to_owned()),
                ("db_password".to_owned(), "hunter2".to_owned()),
                ("MONKEY".to_owned(), "see".to_owned()),
                ("GREETING".to_owned(), "hi".to_owned()),
            ]
            .into(),
            ..RunSettings::default()
        };
        let shown = stored.clone().masked();
        assert_eq!(shown.env["API_KEY"], SECRET_MASK);
        assert_eq!(shown.env["db_password"], SECRET_MASK);
        assert_eq!(
            (shown.env["MONKEY"].as_str(), shown.env["GREETING"].as_str()),
            ("see", "hi")
        );
        // Sent back as shown, with one secret changed: the unchanged one is kept, the new one taken.
        let mut edited = shown;
        edited.env.insert("API_KEY".into(), "k-456".into());
        edited.keep_secrets_of(&stored).unwrap();
        assert_eq!(edited.env["API_KEY"], "k-456");
        assert_eq!(edited.env["db_password"], "hunter2");
        // The mask for a secret nobody stored stands for nothing.
        let mut unknown = RunSettings {
            env: [("NEW_TOKEN".to_owned(), SECRET_MASK.to_owned())].into(),
            ..RunSettings::default()
        };
        let err = unknown.keep_secrets_of(&stored).unwrap_err();
        assert!(err.0.contains("NEW_TOKEN"), "{err}");
    }
}
