//! How Arachne's records live in MongoDB documents (JSON values as BSON and back) and how MongoDB says a
//! unique index refused a write: shared by the MongoDB store and the GridFS spider files.

use bson::{Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};

/// MongoDB's code for a unique index violation.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// Whether `err` is a unique-index violation.
pub(crate) fn is_duplicate(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|e| e.code == DUPLICATE_KEY)),
        _ => false,
    }
}

/// A JSON value as BSON: integers as 64-bit integers, other numbers as doubles.
fn json_to_bson(value: serde_json::Value) -> Bson {
    use serde_json::Value;
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s),
        Value::Array(items) => Bson::Array(items.into_iter().map(json_to_bson).collect()),
        Value::Object(map) => {
            Bson::Document(map.into_iter().map(|(k, v)| (k, json_to_bson(v))).collect())
        }
    }
}

/// BSON as JSON; types JSON lacks (ids, dates, binary) become their relaxed extended-JSON form.
pub(crate) fn bson_to_json(value: Bson) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Double(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s),
        Bson::Array(items) => Value::Array(items.into_iter().map(bson_to_json).collect()),
        Bson::Document(doc) => doc_to_json(doc),
        other => other.into_relaxed_extjson(),
    }
}

fn doc_to_json(doc: Document) -> serde_json::Value {
    serde_json::Value::Object(doc.into_iter().map(|(k, v)| (k, bson_to_json(v))).collect())
}

/// A domain record as a BSON document.
pub(crate) fn record<T: serde::Serialize>(value: &T) -> Document {
    match json_to_bson(serde_json::to_value(value).expect("domain types serialise")) {
        Bson::Document(doc) => doc,
        _ => unreachable!("domain records serialise to objects"),
    }
}
