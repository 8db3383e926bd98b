//! The master's side of the protocol: a [`Handler`] speaks shared types, and [`serve`] runs the gRPC server
//! that feeds it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arachne_shared::SpiderId;
use arachne_shared::cluster::{BlobChunk, MasterToWorker, WorkerEnvelope};
use arachne_shared::files::Manifest;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::cluster_server::{Cluster, ClusterServer};
use crate::{Error, MAX_MESSAGE_BYTES, Result, pb};

/// How many master messages may wait for a slow worker before the sender waits.
const OUTBOUND_CAPACITY: usize = 64;

/// Why the master refuses a call; shown to the worker as the gRPC status message.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
}

impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Unauthenticated(m) => Status::unauthenticated(m),
            Rejection::NotFound(m) => Status::not_found(m),
            Rejection::Refused(m) => Status::failed_precondition(m),
            Rejection::Internal(m) => Status::internal(m),
        }
    }
}

/// The worker's messages in one session, from the wire or from a worker in this process.
pub struct Inbound {
    stream: Pin<Box<dyn Stream<Item = Result<WorkerEnvelope>> + Send>>,
}

impl Inbound {
    fn grpc(stream: Streaming<pb::WorkerMessage>) -> Self {
        Self {
            stream: Box::pin(stream.map(crate::from_wire)),
        }
    }

    pub(crate) fn local(rx: mpsc::Receiver<WorkerEnvelope>) -> Self {
        Self {
            stream: Box::pin(ReceiverStream::new(rx).map(Ok)),
        }
    }

    /// The next message; `None` when the worker closed the session. A transport error or an invalid message
    /// is an `Err`, after which the session should end.
    pub async fn next(&mut self) -> Option<Result<WorkerEnvelope>> {
        self.stream.next().await
    }
}

/// Sends messages to the worker of one session. Messages are converted to the wire form (when there is
/// one) by the stream that sends them, so a local session never encodes anything.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Result<MasterToWorker, Rejection>>,
}

/// The worker's session is gone.
#[derive(Debug, thiserror::Error)]
#[error("worker session closed")]
pub struct Closed;

impl Outbound {
    /// Sends one message, waiting while the worker is slow to read.
    pub async fn send(&self, message: MasterToWorker) -> Result<(), Closed> {
        self.tx.send(Ok(message)).await.map_err(|_| Closed)
    }

    /// Sends a message only if there is room now. For messages a later one supersedes (acknowledgements):
    /// the master must never wait on a worker that is itself waiting for the master to read.
    pub fn offer(&self, message: MasterToWorker) -> bool {
        self.tx.try_send(Ok(message)).is_ok()
    }

    /// Ends the session with an error the worker will see.
    pub async fn reject(&self, rejection: Rejection) {
        let _ = self.tx.send(Err(rejection)).await;
    }

    /// A session's sending half, and the receiving half its transport reads from.
    pub(crate) fn channel() -> (Self, mpsc::Receiver<Result<MasterToWorker, Rejection>>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        (Self { tx }, rx)
    }
}

/// A stream of blob chunks, ending with `None`; an `Err` item aborts the transfer.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Rejection>> + Send>>;

/// What the master does with sessions and file requests.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Whether a caller holding `token` (the bearer token of its `authorization` metadata, if any) may use
    /// the service. Asked before every call.
    async fn authorize(&self, token: Option<&str>) -> Result<(), Rejection>;

    /// Runs one worker session until it ends. The first inbound message should be `Register`.
    async fn session(&self, inbound: Inbound, outbound: Outbound);

    /// The manifest of one spider version.
    async fn manifest(&self, spider_id: SpiderId, version: String) -> Result<Manifest, Rejection>;

    /// Streams the named contents of one spider version; each must belong to it.
    async fn fetch_blobs(
        &self,
        spider_id: SpiderId,
        version: String,
        sha256: Vec<String>,
    ) -> Result<BlobStream, Rejection>;
}

struct Adapter {
    handler: Arc<dyn Handler>,
}

impl Adapter {
    async fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let token = match request.metadata().get("authorization") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "malformed authorization metadata: expected `Bearer <worker token>`",
                        )
                    })?,
            ),
        };
        self.handler.authorize(token).await.map_err(Status::from)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[async_trait::async_trait]
impl Cluster for Adapter {
    type SessionStream = BoxStream<pb::MasterMessage>;
    type FetchBlobsStream = BoxStream<pb::BlobChunk>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.authorize(&request).await?;
        let (outbound, rx) = Outbound::channel();
        let handler = Arc::clone(&self.handler);
        let inbound = Inbound::grpc(request.into_inner());
        tokio::spawn(async move { handler.session(inbound, outbound).await });
        let stream = ReceiverStream::new(rx)
            .map(|message| message.map(pb::MasterMessage::from).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::ManifestRequest>,
    ) -> Result<Response<pb::ManifestReply>, Status> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let spider_id = spider_id(&request.spider_id)?;
        let manifest = self.handler.manifest(spider_id, request.version).await?;
        Ok(Response::new(pb::ManifestReply::from(&manifest)))
    }

    async fn fetch_blobs(
        &self,
        request: Request<pb::FetchBlobsRequest>,
    ) -> Result<Response<Self::FetchBlobsStream>, Status> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let spider_id = spider_id(&request.spider_id)?;
        let blobs = self
            .handler
            .fetch_blobs(spider_id, request.version, request.sha256)
            .await?;
        let stream = blobs.map(|chunk| chunk.map(pb::BlobChunk::from).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

fn spider_id(value: &str) -> Result<SpiderId, Status> {
    value
        .parse()
        .map_err(|err| Status::invalid_argument(format!("`spider_id` is not a spider id: {err}")))
}

/// Serves the protocol on the connections `incoming` yields (see [`crate::listen`]) until `shutdown` is
/// cancelled and every session has ended.
pub async fn serve(
    incoming: mpsc::Receiver<crate::listen::Conn>,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> Result<()> {
    let incoming = ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
    let service = ClusterServer::new(Adapter { handler })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        // Detects a worker whose machine vanished without closing its connection.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        // The default 64 KiB window would cap a worker's log and item stream at one window per round trip.
        .initial_stream_window_size(Some(crate::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(crate::CONNECTION_WINDOW_BYTES))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(Error::Serve)
}
