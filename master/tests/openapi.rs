//! The OpenAPI document against the routes a real master serves: every documented operation is served, every
//! schema it refers to is in it, and it describes the request types as they are.

use arachne_test_support as common;

use common::{API_TOKEN, TestMaster};
use serde_json::Value;

/// Every `$ref` anywhere under `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => refs(inner, found),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_served_routes() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let http = common::http();
    let base = format!("http://{}", master.http);

    let anonymous = http
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let document: Value = common::openapi_document(&master).await;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();

    let mut operations = 0;
    for (path, methods) in paths {
        let concrete = path
            .replace("{id}", &arachne_shared::TaskId::new().to_string())
            .replace("{name}", "no-such-thing")
            .replace("{version}", &"0".repeat(64))
            .replace("{path}", "main.py");
        for (method, operation) in methods.as_object().unwrap() {
            operations += 1;
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}"
            );
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let response = http
                .request(method.clone(), format!("{base}{concrete}"))
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            assert_ne!(status, 405, "{method} {path} is documented but not served");
            // Streams stay open; their headers say enough.
            if response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"))
            {
                continue;
            }
            let body = response.text().await.unwrap();
            assert!(
                !body.contains("no such route"),
                "{method} {path} is documented but not served: {status} {body}"
            );
            if status >= 400 {
                let error: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|_| panic!("{method} {path}: {body}"));
                assert!(
                    error["error"]["code"].is_string(),
                    "{method} {path}: {body}"
                );
            }
        }
    }
    assert!(operations >= 32, "{operations} operations documented");

    // Every schema referred to is in the document.
    let mut targets = Vec::new();
    refs(&document, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{target}"));
        assert!(
            document["components"]["schemas"][name].is_object(),
            "{target} is missing"
        );
    }

    // It says what the code accepts.
    let list = &paths["/api/v1/tasks"]["get"]["parameters"];
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "spider", "status", "node", "parent", "schedule", "since", "until", "limit", "offset",
    ] {
        assert!(names.contains(&expected), "{expected} not among {names:?}");
    }
    let create = &document["components"]["schemas"]["CreateSpider"];
    let required: Vec<&str> = create["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["name", "cmd"]);
    assert_eq!(
        create["additionalProperties"], false,
        "unknown fields are refused, and the schema says so"
    );
    assert_eq!(
        paths["/api/v1/tasks/{id}"]["delete"]["responses"]["204"]["description"],
        "Done; no content"
    );
    assert_eq!(paths["/health"]["get"]["security"], serde_json::json!([]));
    master.stop().await;
}
