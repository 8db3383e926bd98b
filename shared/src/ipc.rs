//! The spider IPC protocol: one JSON object per line. Spiders write `INSERT_DATA`, `STATUS` and `ERROR` to
//! stdout; the runner writes `CANCEL` to the spider's stdin. Lines written by crawlab-sdk's `save_item`
//! (`{"type":"data","payload":[...],"ipc":true}`) are accepted as `INSERT_DATA` so Crawlab spiders run unchanged.
//!
//! Classification never fails: a line is a message, a log line, or a log line with a warning naming what was
//! wrong with it. Nothing a spider prints can be silently dropped.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One JSON object, as spiders write items.
pub type Object = Map<String, Value>;

/// A progress report from a spider; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatusPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Object>,
}

/// An error a spider reports about its own work. `fatal` makes the task end as Error whatever the exit code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorPayload {
    pub message: String,
    #[serde(default)]
    pub fatal: bool,
    /// Any further fields the spider sent, kept as they were.
    #[serde(flatten)]
    pub extra: Object,
}

/// A message from a spider to its runner.
#[derive(Debug, Clone)]
pub enum SpiderMessage {
    /// Each item is the JSON text of one object, as the spider wrote it.
    InsertData(Vec<Box<RawValue>>),
    Status(StatusPayload),
    Error(ErrorPayload),
}

/// Items compare by their JSON text; `RawValue` has no equality of its own.
impl PartialEq for SpiderMessage {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::InsertData(a), Self::InsertData(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.get() == y.get())
            }
            (Self::Status(a), Self::Status(b)) => a == b,
            (Self::Error(a), Self::Error(b)) => a == b,
            _ => false,
        }
    }
}

/// Why the runner asks a spider to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelReason {
    User,
    Timeout,
    Memory,
    Shutdown,
}

/// A message from the runner to a spider, written as one line on the spider's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunnerMessage {
    Cancel {
        reason: CancelReason,
        grace_seconds: u64,
    },
}

impl RunnerMessage {
    /// The message as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("runner messages always serialise");
        line.push('\n');
        line
    }
}

/// What one stdout line of a spider is.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An IPC message.
    Message(SpiderMessage),
    /// Ordinary output, to be stored as a log line.
    Log,
    /// It was meant as a message but is not a valid one. The line is kept as a log line and the warning, which
    /// names the problem, is logged beside it.
    Invalid { warning: String },
}

/// The message types spiders may send, as written on the wire.
pub const SPIDER_MESSAGE_TYPES: [&str; 3] = ["INSERT_DATA", "STATUS", "ERROR"];

/// The outer shape of a message. The payload is kept as borrowed JSON text, so an INSERT_DATA line is
/// checked without building a map for every item.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    ipc: Option<bool>,
}

/// Classifies one stdout line (without its newline).
pub fn classify(line: &str) -> Line {
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        return Line::Log;
    }
    let envelope = match serde_json::from_str::<Envelope<'_>>(trimmed) {
        Ok(envelope) => envelope,
        // Valid JSON of another shape (`"type": 5`, say) is ordinary output.
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok() => {
            return Line::Log;
        }
        Err(err) => {
            return match claimed_type(trimmed) {
                Some(kind) => Line::Invalid {
                    warning: format!("malformed {kind} message ignored: invalid JSON ({err})"),
                },
                None => Line::Log,
            };
        }
    };
    let crawlab = envelope.ipc == Some(true);
    let kind = match envelope.kind.as_deref() {
        Some(kind) => kind,
        // crawlab-sdk treats a missing type as data.
        None if crawlab => "",
        None => return Line::Log,
    };
    let payload = envelope.payload;
    match kind {
        "INSERT_DATA" => insert_data("INSERT_DATA", payload),
        "data" | "" if crawlab => insert_data("data", payload),
        "STATUS" => parse_payload("STATUS", payload, SpiderMessage::Status),
        "ERROR" => parse_payload("ERROR", payload, SpiderMessage::Error),
        other if crawlab || looks_like_message_type(other) => Line::Invalid {
            warning: format!(
                "unknown IPC message type {other:?} ignored (expected one of: {})",
                SPIDER_MESSAGE_TYPES.join(", ")
            ),
        },
        _ => Line::Log,
    }
}

fn insert_data(kind: &str, payload: Option<&RawValue>) -> Line {
    let Some(payload) = payload else {
        return Line::Invalid {
            warning: format!("{kind} message ignored: it has no payload"),
        };
    };
    let text = payload.get();
    let items = match text.as_bytes().first() {
        Some(b'{') => vec![payload.to_owned()],
        Some(b'[') => {
            let values: Vec<&RawValue> =
                serde_json::from_str(text).expect("a validated JSON array splits");
            let mut items = Vec::with_capacity(values.len());
            for (index, value) in values.into_iter().enumerate() {
                match raw_kind(value) {
                    "an object" => items.push(value.to_owned()),
                    other => {
                        return Line::Invalid {
                            warning: format!(
                                "{kind} message ignored: payload[{index}] is {other}, expected an object"
                            ),
                        };
                    }
                }
            }
            items
        }
        _ => {
            return Line::Invalid {
                warning: format!(
                    "{kind} message ignored: payload is {}, expected an object or an array of objects",
                    raw_kind(payload)
                ),
            };
        }
    };
    Line::Message(SpiderMessage::InsertData(items))
}

fn parse_payload<T: for<'de> Deserialize<'de>>(
    kind: &str,
    payload: Option<&RawValue>,
    wrap: fn(T) -> SpiderMessage,
) -> Line {
    let parsed = match payload {
        Some(payload) => serde_json::from_str::<T>(payload.get()),
        None => serde_json::from_value::<T>(Value::Object(Map::new())),
    };
    match parsed {
        Ok(payload) => Line::Message(wrap(payload)),
        Err(err) => Line::Invalid {
            warning: format!("{kind} message ignored: bad payload ({err})"),
        },
    }
}

/// Upper-case identifiers are reserved for messages, so `{"type":"PROGRESS"}` earns a warning while
/// `{"type":"product"}` (ordinary JSON output) stays a plain log line.
fn looks_like_message_type(kind: &str) -> bool {
    !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        && kind.starts_with(|c: char| c.is_ascii_uppercase())
}

/// For a line that is not valid JSON: does it claim to be a message?
fn claimed_type(line: &str) -> Option<&'static str> {
    if line.contains("\"ipc\"") {
        return Some("crawlab IPC");
    }
    SPIDER_MESSAGE_TYPES
        .into_iter()
        .find(|kind| line.contains(&format!("\"{kind}\"")) && line.contains("\"type\""))
}

/// What kind of JSON value a (valid) raw value is, in words, from its first character.
fn raw_kind(value: &RawValue) -> &'static str {
    match value.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn items(line: &str) -> Vec<Value> {
        match classify(line) {
            Line::Message(SpiderMessage::InsertData(items)) => items
                .iter()
                .map(|i| serde_json::from_str(i.get()).unwrap())
                .collect(),
            other => panic!("{line} classified as {other:?}"),
        }
    }

    fn warning(line: &str) -> String {
        match classify(line) {
            Line::Invalid { warning } => warning,
            other => panic!("{line} classified as {other:?}"),
        }
    }

    #[test]
    fn insert_data_takes_an_object_or_an_array_of_objects() {
        assert_eq!(
            items(r#"{"type":"INSERT_DATA","payload":{"a":1}}"#),
            vec![json!({"a":1})]
        );
        assert_eq!(
            items(r#" {"type":"INSERT_DATA","payload":[{"a":1},{"b":2}]} "#).len(),
            2
        );
    }

    #[test]
    fn crawlab_sdk_lines_are_items() {
        assert_eq!(
            items(r#"{"type":"data","payload":[{"x":"é"}],"ipc":true}"#).len(),
            1
        );
        assert_eq!(
            items(r#"{"type":"","payload":{"x":1},"ipc":true}"#).len(),
            1
        );
        assert_eq!(items(r#"{"payload":{"x":1},"ipc":true}"#).len(), 1);
    }

    #[test]
    fn ordinary_output_is_a_log_line() {
        for line in [
            "hello",
            "",
            "[1,2]",
            r#"{"type":"product","name":"x"}"#,
            r#"{"no":"type"}"#,
            "{not json",
        ] {
            assert_eq!(classify(line), Line::Log, "{line}");
        }
        // crawlab lines without ipc:true are not messages in Crawlab either.
        assert_eq!(classify(r#"{"type":"data","payload":[]}"#), Line::Log);
    }

    #[test]
    fn broken_messages_get_a_warning_naming_the_problem() {
        assert!(
            warning(r#"{"type":"INSERT_DATA","payload":[{"a":1},2]}"#)
                .contains("payload[1] is a number")
        );
        assert!(warning(r#"{"type":"INSERT_DATA","payload":"x"}"#).contains("payload is a string"));
        assert!(warning(r#"{"type":"INSERT_DATA"}"#).contains("no payload"));
        assert!(warning(r#"{"type":"INSERT_DATA","payload":[{"a":1}"#).contains("invalid JSON"));
        assert!(
            warning(r#"{"type":"PROGRESS","payload":{}}"#)
                .contains("unknown IPC message type \"PROGRESS\"")
        );
        assert!(
            warning(r#"{"type":"STATUS","payload":{"progress":"half"}}"#)
                .contains("STATUS message ignored")
        );
    }

    #[test]
    fn status_and_error_fields_are_optional_but_typed() {
        assert_eq!(
            classify(r#"{"type":"STATUS","payload":{"progress":0.5}}"#),
            Line::Message(SpiderMessage::Status(StatusPayload {
                progress: Some(0.5),
                ..Default::default()
            }))
        );
        match classify(r#"{"type":"ERROR","payload":{"message":"boom","fatal":true,"url":"u"}}"#) {
            Line::Message(SpiderMessage::Error(e)) => {
                assert!(e.fatal);
                assert_eq!(e.extra["url"], "u");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_is_one_line_of_json() {
        let line = RunnerMessage::Cancel {
            reason: CancelReason::User,
            grace_seconds: 5,
        }
        .to_line();
        assert_eq!(
            line,
            "{\"type\":\"CANCEL\",\"payload\":{\"reason\":\"user\",\"grace_seconds\":5}}\n"
        );
    }
}
