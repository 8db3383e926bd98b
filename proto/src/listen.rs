//! What the master's listeners (the HTTP API and the workers' gRPC port) accept, so that connections that
//! never get anywhere cannot starve the ones that do: at most `max_connections` at once (one more is refused
//! with a message saying why), each must send its first byte, or finish its TLS handshake, within
//! `handshake_timeout`, and TLS when the master has a certificate. Handshakes run beside each other, never in
//! the accept loop, so one slow peer delays nobody.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How a listener guards itself.
#[derive(Clone)]
pub struct Guard {
    /// Connections open at once, handshaking or served; one more is refused.
    pub max_connections: usize,
    /// How long a new connection has to send its first byte (or complete TLS).
    pub handshake_timeout: Duration,
    /// Serve TLS with this certificate, when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Written to a connection refused for being over the cap (an HTTP 503 for the API); gRPC peers are
    /// just closed, as they speak HTTP/2 frames only.
    pub refusal: Option<&'static [u8]>,
    /// Names the listener in log lines.
    pub name: &'static str,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("tls", &self.tls.is_some())
            .field("name", &self.name)
            .finish()
    }
}

/// The answer to an HTTP connection over the cap.
pub const HTTP_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 117\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the master has as many connections open as it allows; try again\"}}";

/// Errors of setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS server configuration from a PEM certificate chain and a PEM private key, offering `alpn` (`h2` for
/// gRPC, `http/1.1` for the API).
pub fn server_tls(
    cert: &Path,
    key: &Path,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    fn pem(path: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError + '_ {
        move |source| TlsError::Pem {
            path: path.to_owned(),
            source,
        }
    }
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert))?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            path: cert.to_owned(),
            what: "certificate",
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(pem(key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// An accepted connection that passed its handshake; holds its place under the cap until dropped.
pub struct Conn {
    io: Io,
    remote: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(self.remote),
        }
    }
}

/// Accepts connections on `listener` under `guard` until `shutdown`; each one that passes its handshake
/// comes out of the returned channel.
pub fn accept(
    listener: TcpListener,
    guard: Guard,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Conn> {
    // A handful: the server takes them as fast as they come, and a full channel slows the handshakes down.
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(guard.max_connections));
    tokio::spawn(async move {
        let mut last_refusal_logged: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: wait for some to be freed rather than spin.
                    warn!(listener = guard.name, error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                if last_refusal_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    last_refusal_logged = Some(Instant::now());
                    warn!(listener = guard.name, max = guard.max_connections, %remote,
                        "refusing connections: as many are open as allowed");
                }
                tokio::spawn(refuse(stream, guard.refusal));
                continue;
            };
            let (guard, tx) = (guard.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let handshake = tokio::time::timeout(guard.handshake_timeout, async {
                    match &guard.tls {
                        Some(config) => tokio_rustls::TlsAcceptor::from(Arc::clone(config))
                            .accept(stream)
                            .await
                            .map(|tls| Io::Tls(Box::new(tls))),
                        None => {
                            // The peer's first byte, left in the socket for the server to read.
                            let mut byte = [0u8; 1];
                            match stream.peek(&mut byte).await {
                                Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
                                Ok(_) => Ok(Io::Plain(stream)),
                                Err(err) => Err(err),
                            }
                        }
                    }
                });
                if let Ok(Ok(io)) = handshake.await {
                    let _ = tx
                        .send(Conn {
                            io,
                            remote,
                            _permit: permit,
                        })
                        .await;
                }
            });
        }
    });
    rx
}

/// Tells a peer over the cap why it is closed, if the protocol allows, without waiting on it for long.
async fn refuse(mut stream: TcpStream, refusal: Option<&'static [u8]>) {
    if let Some(refusal) = refusal {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(refusal)).await;
    }
}
