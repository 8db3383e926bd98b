//! Bad input over HTTP: every case gets a 4xx with a JSON body naming the problem, and nothing is stored.

use arachne_test_support as common;

use common::{TestMaster, create_spider};
use serde_json::Value;

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    let code = body["error"]["code"].as_str().unwrap().to_owned();
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    (status, code, message)
}

fn tar_gz_with_raw_name(name: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_cksum();
    builder.append(&header, &b"x"[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// A plain HTTP client that sends the test masters' API token.
fn authorized_http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", common::API_TOKEN).parse().unwrap(),
    );
    common::http_builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let base = format!("http://{}/api/v1", master.http);
    let http = authorized_http();
    create_spider(&master.client, "ok", "true", &[("a", "b")]).await;
    let version = master.client.get_spider("ok").await.unwrap().version;

    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (
            http.post(format!("{base}/spiders"))
                .body("{not json")
                .header("content-type", "application/json"),
            400,
            "bad_request",
            "invalid body",
        ),
        (
            http.post(format!("{base}/spiders"))
                .json(&serde_json::json!({"name": "x", "cmd": "y", "colour": 1})),
            400,
            "bad_request",
            "colour",
        ),
        (
            http.post(format!("{base}/spiders"))
                .json(&serde_json::json!({"name": "x"})),
            400,
            "bad_request",
            "cmd",
        ),
        (
            http.post(format!("{base}/spiders"))
                .json(&serde_json::json!({"name": "../x", "cmd": "y"})),
            400,
            "bad_request",
            "invalid spider name",
        ),
        (
            http.post(format!("{base}/spiders"))
                .json(&serde_json::json!({"name": "x", "cmd": "  "})),
            400,
            "bad_request",
            "cmd must not be empty",
        ),
        (
            http.post(format!("{base}/tasks"))
                .json(&serde_json::json!({"spider": "nope"})),
            404,
            "not_found",
            "spider \"nope\" not found",
        ),
        (
            http.post(format!("{base}/tasks"))
                .json(&serde_json::json!({"spider": "ok", "priority": 11})),
            400,
            "bad_request",
            "priority",
        ),
        (
            http.post(format!("{base}/tasks"))
                .json(&serde_json::json!({"spider": "ok", "priority": "high"})),
            400,
            "bad_request",
            "priority",
        ),
        (
            http.get(format!("{base}/tasks/not-an-id")),
            400,
            "bad_request",
            "invalid task id",
        ),
        (
            http.get(format!("{base}/tasks/{}", arachne_shared::TaskId::new())),
            404,
            "not_found",
            "not found",
        ),
        (
            http.get(format!("{base}/tasks?status=sleeping")),
            400,
            "bad_request",
            "sleeping",
        ),
        (
            http.get(format!("{base}/tasks?limit=0")),
            400,
            "bad_request",
            "limit",
        ),
        (
            http.get(format!(
                "{base}/tasks/{}/logs",
                arachne_shared::TaskId::new()
            )),
            404,
            "not_found",
            "not found",
        ),
        (
            http.put(format!("{base}/spiders/ok/files")),
            400,
            "bad_request",
            "empty upload",
        ),
        (
            http.put(format!("{base}/spiders/ok/files")).body("garbage"),
            400,
            "bad_request",
            "not a .tar.gz or .zip archive",
        ),
        (
            http.put(format!("{base}/spiders/ok/files"))
                .body(&b"PK\x03\x04 cut short"[..]),
            400,
            "bad_request",
            "not a valid .zip",
        ),
        (
            multipart(
                http.put(format!("{base}/spiders/ok/files")),
                &[("file", "../../evil.py", "x")],
            ),
            400,
            "bad_request",
            "unsafe path",
        ),
        (
            multipart(
                http.put(format!("{base}/spiders/ok/files")),
                &[("file", "a.py", "1"), ("file", "a.py", "2")],
            ),
            400,
            "bad_request",
            "appears twice",
        ),
        (
            multipart(http.put(format!("{base}/spiders/ok/files")), &[]),
            400,
            "bad_request",
            "holds no files",
        ),
        (
            http.get(format!("{base}/spiders/ok/files/nothing.py")),
            404,
            "not_found",
            "no file \"nothing.py\"",
        ),
        (
            http.post(format!(
                "{base}/spiders/ok/versions/{}/current",
                "0".repeat(64)
            )),
            404,
            "not_found",
            "has no version",
        ),
        (
            http.put(format!("{base}/spiders/ok/files"))
                .body(tar_gz_with_raw_name("../../etc/cron.d/x")),
            400,
            "bad_request",
            "unsafe path",
        ),
        (
            http.put(format!("{base}/spiders/nope/files"))
                .body(tar_gz_with_raw_name("a")),
            404,
            "not_found",
            "nope",
        ),
        (
            http.get(format!("{base}/no/such/route")),
            404,
            "not_found",
            "no such route",
        ),
        (
            http.patch(format!("{base}/tasks")),
            405,
            "method_not_allowed",
            "PATCH is not allowed here; use GET, POST",
        ),
    ];
    for (request, status, code, needle) in cases {
        let (got_status, got_code, message) = error_of(request.send().await.unwrap()).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{message}");
        assert!(
            message.contains(needle),
            "{message:?} does not mention {needle:?}"
        );
    }
    let refused = http.delete(format!("{base}/tasks")).send().await.unwrap();
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "GET,HEAD,POST");
    assert!(!data.path().join("../etc/cron.d/x").exists());
    assert_eq!(
        master
            .client
            .list_tasks(&Default::default())
            .await
            .unwrap()
            .total,
        0
    );
    let spiders = master.client.list_spiders().await.unwrap();
    assert_eq!(spiders.len(), 1, "no half-created spider");
    assert_eq!(
        spiders[0].version, version,
        "failed uploads leave the current version alone"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(data.path().to_owned());
    config.local_worker = None;
    config.http.max_upload_bytes = 1024;
    let master = TestMaster::start_with(config).await;
    create_spider(&master.client, "small", "true", &[("a", "b")]).await;
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7919 % 251) as u8).collect();
    let response = authorized_http()
        .put(format!("http://{}/api/v1/spiders/small/files", master.http))
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (413, "payload_too_large"),
        "{message}"
    );
    master.stop().await;
}

/// A `multipart/form-data` body of (field, file name, content) parts.
fn multipart(
    request: reqwest::RequestBuilder,
    parts: &[(&str, &str, &str)],
) -> reqwest::RequestBuilder {
    let boundary = "arachne-test-boundary";
    let mut body = String::new();
    for (field, name, content) in parts {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\r\n{content}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    request
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
}
