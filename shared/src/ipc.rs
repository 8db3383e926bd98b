//! The spider IPC protocol: one JSON object per line. Spiders write `INSERT_DATA`, `STATUS` and `ERROR` to
//! stdout; the runner writes `CANCEL` to the spider's stdin. Lines written by crawlab-sdk's `save_item`
//! (`{"type":"data","payload":[...],"ipc":true}`) are accepted as `INSERT_DATA` so Crawlab spiders run unchanged.
//!
//! Classification never fails: a line is a message, a log line, or a log line with a warning naming what was
//! wrong with it. Nothing a spider prints can be silently dropped.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One JSON object, as spiders write items.
pub type Object = Map<String, Value>;

/// A progress report from a spider; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Object>,
}

/// An error a spider reports about its own work. `fatal` makes the task end as Error whatever the exit code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub message: String,
    #[serde(default)]
    pub fatal: bool,
    /// Any further fields the spider sent, kept as they were.
    #[serde(flatten)]
    pub extra: Object,
}

/// A message from a spider to its runner.
#[derive(Debug, Clone, PartialEq)]
pub enum SpiderMessage {
    InsertData(Vec<Object>),
    Status(StatusPayload),
    Error(ErrorPayload),
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

/// Classifies one stdout line (without its newline).
pub fn classify(line: &str) -> Line {
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        return Line::Log;
    }
    let mut object = match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Line::Log,
        Err(err) => {
            return match claimed_type(trimmed) {
                Some(kind) => Line::Invalid {
                    warning: format!("malformed {kind} message ignored: invalid JSON ({err})"),
                },
                None => Line::Log,
            };
        }
    };
    let crawlab = object.get("ipc") == Some(&Value::Bool(true));
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // crawlab-sdk treats a missing type as data.
        None if crawlab => "",
        _ => return Line::Log,
    };
    // Moved out rather than borrowed: items are the hot path, and cloning each one doubled its cost.
    let kind = kind.to_owned();
    let payload = object.remove("payload");
    match kind.as_str() {
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

fn insert_data(kind: &str, payload: Option<Value>) -> Line {
    let items = match payload {
        Some(Value::Object(item)) => vec![item],
        Some(Value::Array(values)) => {
            let mut items = Vec::with_capacity(values.len());
            for (index, value) in values.into_iter().enumerate() {
                match value {
                    Value::Object(item) => items.push(item),
                    other => {
                        return Line::Invalid {
                            warning: format!(
                                "{kind} message ignored: payload[{index}] is {}, expected an object",
                                json_kind(&other)
                            ),
                        };
                    }
                }
            }
            items
        }
        Some(other) => {
            return Line::Invalid {
                warning: format!(
                    "{kind} message ignored: payload is {}, expected an object or an array of objects",
                    json_kind(&other)
                ),
            };
        }
        None => {
            return Line::Invalid {
                warning: format!("{kind} message ignored: it has no payload"),
            };
        }
    };
    Line::Message(SpiderMessage::InsertData(items))
}

fn parse_payload<T: for<'de> Deserialize<'de>>(
    kind: &str,
    payload: Option<Value>,
    wrap: fn(T) -> SpiderMessage,
) -> Line {
    let payload = payload.unwrap_or(Value::Object(Map::new()));
    match serde_json::from_value::<T>(payload) {
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

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn items(line: &str) -> Vec<Object> {
        match classify(line) {
            Line::Message(SpiderMessage::InsertData(items)) => items,
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
            vec![json!({"a":1}).as_object().unwrap().clone()]
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
