//! Connections that never get anywhere (slowloris) cannot starve the ones that do: each listener caps its
//! connections and refuses one more with a message, drops a connection that sends nothing, and the API drops
//! one whose request headers never finish.

use arachne_test_support as common;

use std::time::Duration;

use arachne_master::Config;
use common::{TestMaster, TestWorker, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CAP: usize = 16;

fn guarded_config(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir.to_owned());
    config.local_worker = None;
    config.listen.max_connections = CAP;
    config.listen.handshake_timeout = Duration::from_secs(1);
    config.listen.header_timeout = Duration::from_secs(1);
    config
}

/// Opens `n` connections to `addr` that send nothing.
async fn hold_open(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    held
}

/// Reads until the peer closes or `limit` passes; what was read, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, stream.read_to_end(&mut got))
        .await
        .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_cap_of_silent_connections_does_not_keep_health_or_workers_out() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(guarded_config(data.path())).await;

    let mut http_held = hold_open(master.http, 2 * CAP).await;
    let _grpc_held = hold_open(master.grpc, 2 * CAP).await;
    // The ones over the cap are refused at once, on HTTP with a reason.
    let (refusal, closed) =
        read_until_closed(http_held.last_mut().unwrap(), Duration::from_secs(5)).await;
    assert!(closed);
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("too_many_connections"), "{refusal}");
    // The silent ones inside the cap are dropped after the handshake timeout.
    let (_, closed) = read_until_closed(&mut http_held[0], Duration::from_secs(5)).await;
    assert!(closed, "a silent connection is dropped");

    // While the attackers' sockets stay open on their side, the API and the worker port serve again.
    eventually("/health answers", || async {
        master.client.health().await.is_ok()
    })
    .await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 1);
    master.wait_nodes_online(1).await;
    worker.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_that_never_finish_close_the_connection() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start_with(guarded_config(data.path())).await;
    let mut slow = TcpStream::connect(master.http).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a request whose headers never end is cut off");

    // A kept-alive connection that goes quiet after a request is closed too.
    let mut idle = TcpStream::connect(master.http).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle kept-alive connection is closed");
    master.stop().await;
}

/// A self-signed certificate for localhost and 127.0.0.1, made with openssl in `dir`.
fn self_signed(dir: &std::path::Path) -> arachne_master::TlsFiles {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // Used as its own authority, so not a CA certificate (webpki refuses a CA as the server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    arachne_master::TlsFiles { cert, key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_api_and_the_worker_port_speak_only_tls() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let files = self_signed(certs.path());
    let ca = std::fs::read(&files.cert).unwrap();
    let mut config = guarded_config(data.path());
    config.listen.tls = Some(files);
    // The client trusts the test's certificate: TestMaster's client is an https one.
    let master = TestMaster::start_with(config).await;
    master.client.list_spiders().await.unwrap();

    // Without the certificate the client does not trust the master; in cleartext the master does not talk.
    let https = format!("https://{}", master.http);
    let untrusting =
        arachne_client::Client::with_tls(&https, Some(common::API_TOKEN), None).unwrap();
    let err = untrusting.list_spiders().await.unwrap_err().to_string();
    assert!(err.contains("cannot reach"), "{err}");
    let plain =
        arachne_client::Client::with_token(&format!("http://{}", master.http), common::API_TOKEN)
            .unwrap();
    assert!(plain.list_spiders().await.is_err());

    // A worker joins over TLS with the certificate as its authority, and runs a task.
    let work = tempfile::tempdir().unwrap();
    let mut worker_config = arachne_worker::Config::new(
        format!("https://localhost:{}", master.grpc.port()),
        "tls-worker",
        work.path().to_owned(),
    );
    worker_config.token = Some(common::WORKER_TOKEN.into());
    worker_config.ca_pem = Some(ca);
    worker_config.helper_exe = Some(common::helper_exe());
    worker_config.runner = common::quick_runner();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(arachne_worker::run(worker_config, shutdown.clone()));
    master.wait_nodes_online(1).await;
    common::create_spider(&master.client, "hi", "echo hi", &[("x", "")]).await;
    let task = master
        .client
        .run_task(&arachne_api_types::RunTask {
            spider: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let task = common::wait_done(&master.client, task.id).await;
    assert_eq!(
        task.status,
        arachne_shared::TaskStatus::Finished,
        "{task:#?}"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    master.stop().await;
}
