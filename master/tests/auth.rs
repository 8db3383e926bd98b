//! Tokens: the API and the worker port refuse callers without a valid token, with errors that say what to do;
//! tokens are made, listed and revoked with `arachne-master token`; a first start makes a token for the CLI;
//! running without tokens is refused off loopback.

use arachne_test_support as common;

use std::process::Output;

use arachne_client::{Client, Error as ClientError};
use arachne_master::Config;
use common::{TIMEOUT, TestMaster, TestWorker, eventually, workspace_bin};

/// Runs `arachne-master token ...` against the store `master` uses.
fn token_command(master: &TestMaster, data_dir: &std::path::Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(workspace_bin("arachne-master"));
    command.arg("--data-dir").arg(data_dir);
    if let Some(mongo) = &master.mongodb {
        command.args(["--mongodb-uri", &mongo.uri]);
        command.args(["--mongodb-db", mongo.database.as_deref().unwrap()]);
    }
    command.env("RUST_LOG", "warn").arg("token").args(args);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "token {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn unauthorized(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Api {
            status: 401,
            code,
            message,
        }) if code == "unauthorized" => message,
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_valid_token_and_revoked_ones_stop_working() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let base = format!("http://{}", master.http);

    // Load balancers probe without a token.
    Client::new(&base).health().await.unwrap();
    let missing = unauthorized(Client::new(&base).list_spiders().await);
    assert!(missing.contains("Authorization"), "{missing}");
    let wrong = unauthorized(
        Client::with_token(&base, "arachne_api_guess")
            .unwrap()
            .list_spiders()
            .await,
    );
    assert!(wrong.contains("unknown, revoked or expired"), "{wrong}");
    let raw = common::http()
        .get(format!("{base}/api/v1/tasks"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );

    // A token made while the master runs works at once; the secret is printed once and never listed.
    let made = token_command(&master, data.path(), &["create", "ci"]);
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("arachne_api_"), "{secret}");
    let ci = Client::with_token(&base, &secret).unwrap();
    ci.list_spiders().await.unwrap();
    let listed = String::from_utf8(token_command(&master, data.path(), &["list"]).stdout).unwrap();
    assert!(listed.contains("ci") && listed.contains("api"), "{listed}");
    assert!(!listed.contains(&secret), "{listed}");
    // A worker token does not open the API.
    let made = token_command(
        &master,
        data.path(),
        &["create", "rack", "--kind", "worker"],
    );
    let worker_secret = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    unauthorized(
        Client::with_token(&base, &worker_secret)
            .unwrap()
            .list_spiders()
            .await,
    );

    token_command(&master, data.path(), &["revoke", "ci"]);
    eventually("a revoked token is refused", || async {
        matches!(
            ci.list_spiders().await,
            Err(ClientError::Api { status: 401, .. })
        )
    })
    .await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_need_a_worker_token_and_a_refused_worker_stops_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let good = TestWorker::start(&master.grpc_url(), "good", 1);
    master.wait_nodes_online(1).await;

    for (token, expected) in [
        (None, "no worker token"),
        (Some("arachne_worker_guess"), "unknown or revoked"),
        // An API token is not a worker token.
        (Some(common::API_TOKEN), "unknown or revoked"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            arachne_worker::Config::new(master.grpc_url(), "intruder", dir.path().into());
        config.token = token.map(str::to_owned);
        config.helper_exe = Some(common::helper_exe());
        let run = arachne_worker::run(config, tokio_util::sync::CancellationToken::new());
        let err = tokio::time::timeout(TIMEOUT, run)
            .await
            .expect("a refused worker stops on its own")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refused this worker's token") && err.contains(expected),
            "{err}"
        );
    }
    let nodes = master.client.list_nodes().await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    good.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_makes_a_token_the_cli_reads_from_the_data_folder() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path().to_owned());
    config.local_worker = None;
    let master = TestMaster::launch(config, "127.0.0.1:0".parse().unwrap()).await;
    let file = data.path().join("api-token");
    let secret = std::fs::read_to_string(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let cli = |token_file: &std::path::Path| {
        std::process::Command::new(workspace_bin("arachne"))
            .args(["--server", &format!("http://{}", master.http)])
            .arg("--token-file")
            .arg(token_file)
            .env_remove("ARACHNE_TOKEN")
            .args(["spider", "list"])
            .output()
            .unwrap()
    };
    let ok = cli(&file);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = cli(&data.path().join("no-such-file"));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Authorization"), "{stderr}");
    Client::with_token(&format!("http://{}", master.http), secret.trim())
        .unwrap()
        .list_spiders()
        .await
        .unwrap();
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_without_tokens_is_allowed_only_on_loopback() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path().to_owned());
    config.local_worker = None;
    config.auth.required = false;
    let listeners = arachne_master::Listeners {
        http: tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap(),
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        scrapyd: None,
    };
    let err = arachne_master::run(
        config.clone(),
        listeners,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, arachne_master::Error::Insecure(_)), "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");

    let master = TestMaster::launch(config, "127.0.0.1:0".parse().unwrap()).await;
    Client::new(&format!("http://{}", master.http))
        .list_spiders()
        .await
        .unwrap();
    assert!(!data.path().join("api-token").exists());
    master.stop().await;
}

#[tokio::test]
async fn a_configured_token_shorter_than_32_characters_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path().to_owned());
    config.local_worker = None;
    config.auth.worker_token = Some("W1".into());
    let listeners = arachne_master::Listeners {
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        scrapyd: None,
    };
    let err = arachne_master::run(config, listeners, Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tokens: the configured worker token is 2 characters long; a configured token needs at least 32 (`openssl rand -hex 32` makes one)"
    );
}

/// Tokens come from the environment or a file, never a flag: a command line is readable by every local user.
#[test]
fn the_master_takes_no_token_on_its_command_line() {
    for flag in ["--api-token", "--worker-token"] {
        let out = std::process::Command::new(workspace_bin("arachne-master"))
            .args([flag, "arachne_api_0123456789abcdef0123456789abcdef"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unexpected argument"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let help = std::process::Command::new(workspace_bin("arachne-master"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--api-token-file") && help.contains("ARACHNE_API_TOKEN"),
        "{help}"
    );
}

/// Without tokens, a page of another site in a browser on this machine must not drive the master: it can send
/// a form POST or a body-less POST (no preflight), and a rebound DNS name reaches 127.0.0.1 with its own Host.
#[tokio::test]
async fn without_tokens_only_loopback_hosts_and_requests_a_page_cannot_forge_are_served() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path().to_owned());
    config.local_worker = None;
    config.auth.required = false;
    let master = TestMaster::launch(config, "127.0.0.1:0".parse().unwrap()).await;
    let http = common::http();
    let base = format!("http://{}", master.http);
    let status = |r: reqwest::Response| r.status().as_u16();

    // A body-less POST, as a page's form or fetch with no-cors sends it: refused.
    let forged = http
        .post(format!("{base}/api/v1/schedules/nightly/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(status(forged), 403);
    // A text/plain body holding JSON (the classic CSRF form): refused too.
    let forged = http
        .post(format!("{base}/api/v1/tasks"))
        .header("content-type", "text/plain")
        .body(r#"{"spider":"x"}"#)
        .send()
        .await
        .unwrap();
    let body = forged.text().await.unwrap();
    assert!(body.contains("x-arachne-client"), "{body}");
    // DNS rebinding: the right address under another name.
    let rebound = http
        .get(format!("{base}/api/v1/spiders"))
        .header("host", "attacker.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(status(rebound), 403);

    // What a page cannot send gets through: a JSON body, the client header, a loopback Host.
    let json = http
        .post(format!("{base}/api/v1/tasks"))
        .json(&serde_json::json!({"spider": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status(json),
        404,
        "the spider is unknown, but the request was served"
    );
    let with_header = http
        .post(format!("{base}/api/v1/schedules/nightly/run"))
        .header(arachne_api_types::CLIENT_HEADER, "test")
        .send()
        .await
        .unwrap();
    assert_eq!(status(with_header), 404);
    for host in ["localhost", "127.0.0.1:1", "[::1]:8080"] {
        let ok = http
            .get(format!("{base}/api/v1/spiders"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(status(ok), 200, "{host}");
    }
    // The CLI's client sends the header, so it works unchanged.
    Client::new(&base).list_spiders().await.unwrap();
    master.stop().await;
}
