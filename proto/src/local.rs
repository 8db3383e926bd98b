//! The in-process link: a worker running inside the master's process (the local worker) reaches the master's
//! [`Handler`] through channels of shared types instead of gRPC over loopback.
//!
//! Same sessions, same messages, same order and bounded buffers like the wire, minus what only the
//! wire needs: protobuf encoding, HTTP/2 framing and flow control, and a socket crossing with its wake-ups,
//! none of which a message that never leaves the process needs. The link skips
//! [`Handler::authorize`]: only code holding the handler itself can make one, so there is no peer to check.

use std::fmt;
use std::sync::Arc;

use arachne_shared::SpiderId;
use arachne_shared::cluster::{BlobChunk, MasterToWorker, WorkerEnvelope};
use arachne_shared::files::Manifest;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;

use crate::server::{Handler, Inbound, Outbound, Rejection};
use crate::{Error, Result};

/// A handle on a master in this process, for a worker to open sessions and fetch files through.
#[derive(Clone)]
pub struct LocalLink {
    handler: Arc<dyn Handler>,
    /// The sessions opened over the link, so their owner can wait for them to end as the server does.
    sessions: TaskTracker,
}

impl fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalLink")
    }
}

/// A refusal as the worker sees it, worded as it would be over gRPC.
fn refused(rejection: Rejection) -> Error {
    tonic::Status::from(rejection).into()
}

impl LocalLink {
    /// A link to `handler`.
    pub fn new(handler: Arc<dyn Handler>) -> Self {
        Self {
            handler,
            sessions: TaskTracker::new(),
        }
    }

    /// Waits until every session opened over this link has ended.
    pub async fn sessions_ended(&self) {
        self.sessions.close();
        self.sessions.wait().await;
    }

    /// Runs a session on the handler, fed by `outbound`; returns the master's messages, as the gRPC
    /// response stream would carry them.
    pub(crate) fn session(
        &self,
        outbound: mpsc::Receiver<WorkerEnvelope>,
    ) -> impl futures_util::Stream<Item = Result<MasterToWorker>> + Send + 'static {
        let (to_worker, rx) = Outbound::channel();
        let handler = Arc::clone(&self.handler);
        self.sessions
            .spawn(async move { handler.session(Inbound::local(outbound), to_worker).await });
        until_failed(ReceiverStream::new(rx).map(|message| message.map_err(refused)))
    }

    pub(crate) async fn manifest(&self, spider_id: SpiderId, version: String) -> Result<Manifest> {
        self.handler
            .manifest(spider_id, version)
            .await
            .map_err(refused)
    }

    pub(crate) async fn fetch_blobs(
        &self,
        spider_id: SpiderId,
        version: String,
        sha256: Vec<String>,
    ) -> Result<impl futures_util::Stream<Item = Result<BlobChunk>> + Send + 'static> {
        let chunks = self
            .handler
            .fetch_blobs(spider_id, version, sha256)
            .await
            .map_err(refused)?;
        Ok(until_failed(chunks.map(|chunk| chunk.map_err(refused))))
    }
}

/// Ends a stream after its first error, as a gRPC response ends with its error status.
fn until_failed<T: Send + 'static>(
    stream: impl futures_util::Stream<Item = Result<T>> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<T>> + Send + 'static {
    let mut failed = false;
    stream.take_while(move |item| {
        let more = !failed;
        failed = item.is_err();
        std::future::ready(more)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arachne_shared::NodeMetrics;
    use arachne_shared::cluster::WorkerToMaster;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::client::{Client, Target};

    /// Acknowledges each message of a session, answers file calls with one chunk then a failure, and refuses
    /// manifests; notes when a session's inbound side ends.
    #[derive(Default)]
    struct Echo {
        ended: Notify,
    }

    #[async_trait::async_trait]
    impl Handler for Echo {
        async fn authorize(&self, _token: Option<&str>) -> Result<(), Rejection> {
            Ok(())
        }

        async fn session(&self, mut inbound: Inbound, outbound: Outbound) {
            while let Some(Ok(envelope)) = inbound.next().await {
                if envelope.seq == 99 {
                    // Anything after a refusal must not reach the worker, as on the wire.
                    outbound
                        .reject(Rejection::Refused("seq 99 is not allowed".into()))
                        .await;
                }
                let _ = outbound
                    .send(MasterToWorker::Ack { seq: envelope.seq })
                    .await;
            }
            self.ended.notify_one();
        }

        async fn manifest(
            &self,
            spider_id: SpiderId,
            version: String,
        ) -> Result<Manifest, Rejection> {
            Err(Rejection::NotFound(format!(
                "spider {spider_id} has no version {version}"
            )))
        }

        async fn fetch_blobs(
            &self,
            _spider_id: SpiderId,
            _version: String,
            sha256: Vec<String>,
        ) -> Result<crate::server::BlobStream, Rejection> {
            let (tx, rx) = mpsc::channel(4);
            let chunk = BlobChunk {
                sha256: sha256[0].clone(),
                data: bytes::Bytes::from_static(b"abc"),
                last: true,
            };
            tx.send(Ok(chunk.clone())).await.expect("room for one");
            tx.send(Err(Rejection::Internal("the disk went away".into())))
                .await
                .expect("room for two");
            tx.send(Ok(chunk)).await.expect("room for three");
            Ok(Box::pin(ReceiverStream::new(rx)))
        }
    }

    fn heartbeat(seq: u64) -> WorkerEnvelope {
        WorkerEnvelope {
            seq,
            message: WorkerToMaster::Heartbeat {
                beat: seq,
                metrics: NodeMetrics::default(),
            },
        }
    }

    /// What a worker sees of `target`: acks in order, a refusal's wording, a blob stream's failure, and the
    /// master noticing the session end.
    async fn observed(target: Target, echo: &Echo) -> Vec<String> {
        let wait = Duration::from_secs(10);
        let mut client = Client::open(&target, None, None).await.expect("connects");
        let (tx, rx) = mpsc::channel(8);
        let mut session = client.session(rx).await.expect("session opens");
        let mut seen = Vec::new();
        for seq in [1, 2, 3, 99] {
            tx.send(heartbeat(seq)).await.expect("session open");
            let next = tokio::time::timeout(wait, session.next()).await;
            seen.push(format!("{:?}", next.expect("an answer in time")));
        }
        drop(tx);
        while let Some(message) = tokio::time::timeout(wait, session.next())
            .await
            .expect("the session ends in time")
        {
            seen.push(format!("{message:?}"));
        }
        tokio::time::timeout(wait, echo.ended.notified())
            .await
            .expect("the master sees the session end");
        let spider = SpiderId::new();
        let refusal = client.manifest(spider, "v9").await.expect_err("refused");
        seen.push(refusal.to_string().replace(&spider.to_string(), "ID"));
        let mut blobs = client
            .fetch_blobs(spider, "v1", vec!["aa".into()])
            .await
            .expect("transfer starts");
        while let Some(chunk) = tokio::time::timeout(wait, blobs.next())
            .await
            .expect("a chunk in time")
        {
            seen.push(format!("{chunk:?}"));
        }
        seen
    }

    #[tokio::test]
    async fn the_link_behaves_as_the_wire_does() {
        let echo = Arc::new(Echo::default());
        let link = LocalLink::new(Arc::clone(&echo) as Arc<dyn Handler>);
        let local = observed(Target::Local(link.clone()), &echo).await;
        tokio::time::timeout(Duration::from_secs(10), link.sessions_ended())
            .await
            .expect("the link's sessions end");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let endpoint = format!("http://{}", listener.local_addr().expect("bound"));
        let shutdown = CancellationToken::new();
        let guard = crate::listen::Guard {
            max_connections: 16,
            handshake_timeout: Duration::from_secs(10),
            tls: None,
            refusal: None,
            name: "test",
        };
        let server = tokio::spawn(crate::server::serve(
            crate::listen::accept(listener, guard, shutdown.clone()),
            Arc::clone(&echo) as Arc<dyn Handler>,
            shutdown.clone(),
        ));
        let wire = observed(Target::Endpoint(endpoint), &echo).await;
        shutdown.cancel();
        server.await.expect("joins").expect("serves");

        assert_eq!(local, wire);
        assert_eq!(local[0], "Some(Ok(Ack { seq: 1 }))");
        assert_eq!(local[2], "Some(Ok(Ack { seq: 3 }))");
        assert!(local[3].contains("seq 99 is not allowed"), "{local:?}");
        assert!(
            local[4].contains("NotFound: spider ID has no version v9"),
            "{local:?}"
        );
        assert!(local[5].starts_with("Ok(BlobChunk"), "{local:?}");
        assert!(local[6].contains("the disk went away"), "{local:?}");
        assert_eq!(local.len(), 7, "a failed stream ends: {local:?}");
    }
}
