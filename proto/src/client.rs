//! The worker's side of the protocol: connect to the master, open a session, fetch files.

use std::time::Duration;

use arachne_shared::SpiderId;
use arachne_shared::cluster::{BlobChunk, MasterToWorker, WorkerEnvelope};
use arachne_shared::files::Manifest;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::pb::cluster_client::ClusterClient;
use crate::{Error, MAX_MESSAGE_BYTES, Result, pb};

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
    inner: ClusterClient<InterceptedService<Channel, Bearer>>,
}

impl Client {
    /// Connects to the master at `endpoint` (for example `http://127.0.0.1:9666`), presenting `token` on
    /// every call.
    pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<Self> {
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
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(connect_error)?
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
        Ok(Self { inner })
    }

    /// Opens a session: every message put on `outbound` goes to the master, in order.
    pub async fn session(&mut self, outbound: mpsc::Receiver<WorkerEnvelope>) -> Result<Session> {
        let stream = ReceiverStream::new(outbound).map(pb::WorkerMessage::from);
        let inbound = self.inner.session(stream).await?.into_inner();
        Ok(Session { inbound })
    }

    /// The manifest of one spider version.
    pub async fn manifest(&mut self, spider_id: SpiderId, version: &str) -> Result<Manifest> {
        let request = pb::ManifestRequest {
            spider_id: spider_id.to_string(),
            version: version.to_owned(),
        };
        self.inner
            .get_manifest(request)
            .await?
            .into_inner()
            .try_into()
    }

    /// Streams the named contents of one spider version.
    pub async fn fetch_blobs(
        &mut self,
        spider_id: SpiderId,
        version: &str,
        sha256: Vec<String>,
    ) -> Result<Blobs> {
        let request = pb::FetchBlobsRequest {
            spider_id: spider_id.to_string(),
            version: version.to_owned(),
            sha256,
        };
        let inner = self.inner.fetch_blobs(request).await?.into_inner();
        Ok(Blobs { inner })
    }
}

/// The master's messages in one session.
pub struct Session {
    inbound: Streaming<pb::MasterMessage>,
}

impl Session {
    /// The next message; `None` when the master closed the session, `Err` when it broke or was refused.
    pub async fn next(&mut self) -> Option<Result<MasterToWorker>> {
        match self.inbound.next().await? {
            Ok(message) => Some(MasterToWorker::try_from(message)),
            Err(status) => Some(Err(status.into())),
        }
    }
}

/// The chunks of one blob transfer.
pub struct Blobs {
    inner: Streaming<pb::BlobChunk>,
}

impl Blobs {
    /// The next chunk; `None` at the end of the transfer.
    pub async fn next(&mut self) -> Option<Result<BlobChunk>> {
        match self.inner.next().await? {
            Ok(chunk) => Some(Ok(chunk.into())),
            Err(status) => Some(Err(status.into())),
        }
    }
}
