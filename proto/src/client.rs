//! The worker's side of the protocol: connect to the master (over gRPC, or over a [`LocalLink`] when both
//! run in one process), open a session, fetch files.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use arachne_shared::SpiderId;
use arachne_shared::cluster::{BlobChunk, MasterToWorker, WorkerEnvelope};
use arachne_shared::files::Manifest;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use crate::local::LocalLink;
use crate::pb::cluster_client::ClusterClient;
use crate::{Error, MAX_MESSAGE_BYTES, Result, pb};

/// Where a worker finds its master.
#[derive(Clone, Debug)]
pub enum Target {
    /// A gRPC endpoint, for example `http://127.0.0.1:9666`.
    Endpoint(String),
    /// The master of this process.
    Local(LocalLink),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Endpoint(endpoint) => f.write_str(endpoint),
            Self::Local(_) => f.write_str("this process"),
        }
    }
}

impl From<String> for Target {
    fn from(endpoint: String) -> Self {
        Self::Endpoint(endpoint)
    }
}

impl From<&str> for Target {
    fn from(endpoint: &str) -> Self {
        Self::Endpoint(endpoint.to_owned())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

/// Adds the worker's token to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A connection to the master.
#[derive(Clone)]
pub struct Client {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Grpc(ClusterClient<InterceptedService<Channel, Bearer>>),
    Local(LocalLink),
}

impl Client {
    /// Connects to the master at `target`; `token` is presented on every gRPC call (a local link has no
    /// peer to present it to).
    /// `ca_pem` is a certificate (PEM) trusted besides the public authorities, for an `https://` master.
    pub async fn open(target: &Target, token: Option<&str>, ca_pem: Option<&[u8]>) -> Result<Self> {
        match target {
            Target::Endpoint(endpoint) => Self::connect_tls(endpoint, token, ca_pem).await,
            Target::Local(link) => Ok(Self {
                inner: Inner::Local(link.clone()),
            }),
        }
    }

    /// Connects to the master at `endpoint` (for example `http://127.0.0.1:9666`), presenting `token` on
    /// every call.
    pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<Self> {
        Self::connect_tls(endpoint, token, None).await
    }

    /// [`Client::connect`], trusting `ca_pem` besides the public authorities when `endpoint` is `https://`.
    pub async fn connect_tls(
        endpoint: &str,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        let bearer = token
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    Error::Unauthenticated(
                        "the worker token holds characters gRPC metadata cannot carry".into(),
                    )
                })
            })
            .transpose()?;
        let connect_error = |source| Error::Connect {
            endpoint: endpoint.to_owned(),
            source,
        };
        let mut channel = Endpoint::from_shared(endpoint.to_owned()).map_err(connect_error)?;
        if endpoint.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = ca_pem {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            channel = channel.tls_config(tls).map_err(connect_error)?;
        }
        let channel = channel
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            // HTTP/2's default 64 KiB window stalls a file transfer on a flow-control round trip every 64 KiB.
            .initial_stream_window_size(Some(crate::STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(crate::CONNECTION_WINDOW_BYTES))
            .connect()
            .await
            .map_err(connect_error)?;
        let inner = ClusterClient::with_interceptor(channel, Bearer(bearer))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            inner: Inner::Grpc(inner),
        })
    }

    /// Opens a session: every message put on `outbound` goes to the master, in order.
    pub async fn session(&mut self, outbound: mpsc::Receiver<WorkerEnvelope>) -> Result<Session> {
        let inbound: BoxStream<MasterToWorker> = match &mut self.inner {
            Inner::Grpc(client) => {
                let stream = ReceiverStream::new(outbound).map(pb::WorkerMessage::from);
                let inbound = client.session(stream).await?.into_inner();
                Box::pin(inbound.map(crate::from_wire))
            }
            Inner::Local(link) => Box::pin(link.session(outbound)),
        };
        Ok(Session { inbound })
    }

    /// The manifest of one spider version.
    pub async fn manifest(&mut self, spider_id: SpiderId, version: &str) -> Result<Manifest> {
        let client = match &mut self.inner {
            Inner::Grpc(client) => client,
            Inner::Local(link) => return link.manifest(spider_id, version.to_owned()).await,
        };
        let request = pb::ManifestRequest {
            spider_id: spider_id.to_string(),
            version: version.to_owned(),
        };
        client.get_manifest(request).await?.into_inner().try_into()
    }

    /// Streams the named contents of one spider version.
    pub async fn fetch_blobs(
        &mut self,
        spider_id: SpiderId,
        version: &str,
        sha256: Vec<String>,
    ) -> Result<Blobs> {
        let client = match &mut self.inner {
            Inner::Grpc(client) => client,
            Inner::Local(link) => {
                let inner = link
                    .fetch_blobs(spider_id, version.to_owned(), sha256)
                    .await?;
                return Ok(Blobs {
                    inner: Box::pin(inner),
                });
            }
        };
        let request = pb::FetchBlobsRequest {
            spider_id: spider_id.to_string(),
            version: version.to_owned(),
            sha256,
        };
        let inner = client.fetch_blobs(request).await?.into_inner();
        Ok(Blobs {
            inner: Box::pin(inner.map(|chunk| chunk.map(BlobChunk::from).map_err(Error::from))),
        })
    }
}

/// The master's messages in one session.
pub struct Session {
    inbound: BoxStream<MasterToWorker>,
}

impl Session {
    /// The next message; `None` when the master closed the session, `Err` when it broke or was refused.
    pub async fn next(&mut self) -> Option<Result<MasterToWorker>> {
        self.inbound.next().await
    }
}

/// The chunks of one blob transfer.
pub struct Blobs {
    inner: BoxStream<BlobChunk>,
}

impl Blobs {
    /// The next chunk; `None` at the end of the transfer.
    pub async fn next(&mut self) -> Option<Result<BlobChunk>> {
        self.inner.next().await
    }
}
