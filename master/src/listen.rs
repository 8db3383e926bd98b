//! How the master's two listeners take connections: the limits every connection lives under (see
//! [`arachne_proto::listen`]), TLS, and the HTTP/1 server the API runs on.

use std::path::PathBuf;
use std::time::Duration;

use arachne_proto::listen::{self, Conn, Guard, TlsError};
use axum::Router;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits and TLS of the master's listeners.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Connections open at once on each listener; one more is refused (the API answers 503).
    pub max_connections: usize,
    /// How long a new connection has to send its first byte, or to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long an HTTP client has to send a request's headers, the first one and each one after on a
    /// kept-alive connection: an idle connection is closed after it.
    pub header_timeout: Duration,
    /// A PEM certificate chain and private key: both listeners serve TLS.
    pub tls: Option<TlsFiles>,
}

/// Where the master's certificate and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            max_connections: 512,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

impl ListenConfig {
    /// The guards of the HTTP and the gRPC listener.
    pub(crate) fn guards(&self) -> Result<(Guard, Guard), TlsError> {
        let tls = |alpn: &[u8]| {
            self.tls
                .as_ref()
                .map(|files| listen::server_tls(&files.cert, &files.key, alpn))
                .transpose()
        };
        let guard = |name, tls, refusal| Guard {
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            tls,
            refusal,
            name,
        };
        Ok((
            guard("http", tls(b"http/1.1")?, Some(listen::HTTP_REFUSAL)),
            guard("grpc", tls(b"h2")?, None),
        ))
    }
}

/// Serves `router` over HTTP/1 on the connections `incoming` yields, until `shutdown`; then lets each
/// connection finish the request it is serving.
pub(crate) async fn serve_http(
    mut incoming: mpsc::Receiver<Conn>,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => break,
            conn = incoming.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let (service, shutdown) = (service.clone(), shutdown.clone());
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let served = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            let mut served = std::pin::pin!(served.with_upgrades());
            tokio::select! {
                _ = served.as_mut() => {}
                () = shutdown.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Takes connections on every listener under `config`'s limits; Scrapyd's API is HTTP, guarded as the API is.
pub(crate) fn accept(
    listeners: crate::Listeners,
    (http, grpc): (Guard, Guard),
    shutdown: &CancellationToken,
) -> (
    mpsc::Receiver<Conn>,
    mpsc::Receiver<Conn>,
    Option<mpsc::Receiver<Conn>>,
) {
    let scrapyd = listeners.scrapyd.map(|listener| {
        let guard = Guard {
            name: "scrapyd",
            ..http.clone()
        };
        listen::accept(listener, guard, shutdown.clone())
    });
    (
        listen::accept(listeners.http, http, shutdown.clone()),
        listen::accept(listeners.grpc, grpc, shutdown.clone()),
        scrapyd,
    )
}
