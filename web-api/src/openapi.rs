//! The OpenAPI 3.1 document of the HTTP API (`GET /api/v1/openapi.json`). It is built from the same table of
//! [`Endpoint`]s the router is built from, and its schemas are derived from the request and response types,
//! so a route can be neither served undocumented nor documented unserved, and a field cannot drift.

use std::collections::BTreeMap;

use axum::http::Method;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use arachne_api_types::ErrorBody;
use arachne_shared::Role;

/// Makes the schema of one type, registering what it refers to.
pub(crate) type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A reference to `T`'s schema among the document's components.
pub(crate) fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// `T`'s own schema, for query strings: each of its properties is one query parameter.
pub(crate) fn inline<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// What a request carries in its body.
#[derive(Clone, Copy)]
pub(crate) enum Body {
    Json(SchemaFn),
    /// A spider's files: an archive as the raw body, or multipart files.
    Upload,
}

/// What a successful response carries.
#[derive(Clone, Copy)]
pub(crate) enum Reply {
    Json(u16, SchemaFn),
    NoContent,
    /// Any content of this media type.
    Media(&'static str),
    /// A Server-Sent Events stream; the text says what its events are.
    Events(&'static str),
}

/// The documentation half of a route.
#[derive(Clone)]
pub(crate) struct Doc {
    pub(crate) method: Method,
    /// The full path in the router's syntax (`/api/v1/tasks/{id}`, `/{*path}` for a tail).
    pub(crate) path: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) query: Option<SchemaFn>,
    pub(crate) body: Option<Body>,
    pub(crate) reply: Reply,
    /// The least role a caller's token needs; `None` for a route open to all (`/health`, signing in).
    pub(crate) role: Option<Role>,
}

/// The whole document for these routes.
pub(crate) fn document(docs: &[Doc]) -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
    });
    let mut generator = SchemaGenerator::new(settings);
    let error = schema::<ErrorBody>(&mut generator);
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for doc in docs {
        let operation = operation(doc, &mut generator, &error);
        paths
            .entry(openapi_path(doc.path))
            .or_default()
            .insert(doc.method.as_str().to_lowercase(), operation);
    }
    let schemas: serde_json::Map<String, Value> = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Arachne",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Run, schedule and watch web crawlers. Every route but /health and /api/v1/sign-in needs `Authorization: Bearer <API token>`, of the role its `x-arachne-role` names (viewer < developer < admin); errors are {\"error\":{\"code\",\"message\"}}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
    })
}

fn operation(doc: &Doc, generator: &mut SchemaGenerator, error: &Schema) -> Value {
    let mut parameters: Vec<Value> = path_parameters(doc.path)
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if let Some(query) = doc.query {
        let schema = query(generator);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                parameters.push(json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": property,
                }));
            }
        }
    }
    let mut operation = json!({
        "summary": doc.summary,
        "operationId": operation_id(doc),
        "parameters": parameters,
        "responses": {"default": {"description": "An error", "content": {"application/json": {"schema": error}}}},
    });
    match doc.role {
        None => operation["security"] = json!([]),
        Some(role) => {
            operation["security"] = json!([{"token": []}]);
            operation["x-arachne-role"] = json!(role.as_str());
            operation["description"] = json!(format!(
                "Needs a token with the {role} role{}.",
                if role == Role::Admin { "" } else { " or above" }
            ));
        }
    }
    if let Some(body) = doc.body {
        operation["requestBody"] = match body {
            Body::Json(schema) => json!({
                "required": true,
                "content": {"application/json": {"schema": schema(generator)}},
            }),
            Body::Upload => json!({
                "required": true,
                "content": {
                    "application/gzip": {"schema": {"type": "string", "contentMediaType": "application/gzip"}},
                    "application/zip": {"schema": {"type": "string", "contentMediaType": "application/zip"}},
                    "multipart/form-data": {"schema": {"type": "object", "description": "One part per file; its file name is its path. A part named `executable` keeps the executable bit."}},
                },
            }),
        };
    }
    let (status, reply) = match doc.reply {
        Reply::Json(status, schema) => (
            status,
            json!({"description": "OK", "content": {"application/json": {"schema": schema(generator)}}}),
        ),
        Reply::NoContent => (204, json!({"description": "Done; no content"})),
        Reply::Media(media) => (
            200,
            json!({"description": "OK", "content": {media: {"schema": {"type": "string"}}}}),
        ),
        Reply::Events(what) => (
            200,
            json!({"description": what, "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
        ),
    };
    operation["responses"][status.to_string()] = reply;
    operation
}

/// `/tasks/{id}` stays; a tail `{*path}` becomes `{path}`.
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| name.trim_start_matches('*'))
}

/// `get /api/v1/tasks/{id}/logs` → `get_tasks_id_logs`.
fn operation_id(doc: &Doc) -> String {
    let words: Vec<String> = doc
        .path
        .trim_start_matches("/api/v1")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches(['{', '}', '*']).replace(['.', '-'], "_"))
        .collect();
    format!("{}_{}", doc.method.as_str().to_lowercase(), words.join("_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_parameters_in_openapi_syntax() {
        assert_eq!(
            openapi_path("/api/v1/spiders/{name}/files/{*path}"),
            "/api/v1/spiders/{name}/files/{path}"
        );
        let names: Vec<_> = path_parameters("/api/v1/spiders/{name}/files/{*path}").collect();
        assert_eq!(names, ["name", "path"]);
    }
}
