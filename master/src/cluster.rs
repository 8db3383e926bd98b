//! The master's side of worker sessions: registration, task progress, logs and items into the store, and the
//! settling of a node's tasks when its session ends.

use std::sync::Arc;
use std::time::Duration;

use arachne_proto::server::{FileStream, Handler, Inbound, Outbound, Rejection};
use arachne_shared::cluster::{MasterToWorker, Registration, WorkerToMaster};
use arachne_shared::{Node, NodeStatus, SpiderId, TaskId, TaskOutcome, TaskStatus};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::files::{self, SpiderFiles};
use crate::scheduler::Scheduler;
use crate::store::Store;

/// How long a new session may take to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves worker sessions.
pub(crate) struct Cluster {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) files: SpiderFiles,
    pub(crate) shutdown: CancellationToken,
}

#[async_trait::async_trait]
impl Handler for Cluster {
    async fn session(&self, mut inbound: Inbound, outbound: Outbound) {
        let registration = match tokio::time::timeout(REGISTER_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(WorkerToMaster::Register(registration)))) => registration,
            Ok(Some(Ok(other))) => {
                let message = format!("the first message must be Register, got {other:?}");
                return outbound.reject(Rejection::Refused(message)).await;
            }
            Ok(Some(Err(err))) => {
                return warn!(error = %err, "worker session failed before registering");
            }
            Ok(None) => return,
            Err(_) => {
                return outbound
                    .reject(Rejection::Refused("no Register within 10 s".into()))
                    .await;
            }
        };
        let name = registration.name.clone();
        if let Err(message) = arachne_shared::spider::validate_name("node", &name) {
            return outbound.reject(Rejection::Refused(message)).await;
        }
        let stored = self.stored_node(&name).await;
        let max_runners_override = stored.as_ref().and_then(|n| n.max_runners_override);
        let registered = registration.max_runners;
        let effective = Registration {
            max_runners: max_runners_override.unwrap_or(registered),
            ..registration.clone()
        };
        let session = match self.scheduler.register(&effective, outbound.clone()) {
            Ok(session) => session,
            Err(message) => return outbound.reject(Rejection::Refused(message)).await,
        };
        let now = Utc::now();
        let registered_at = stored.map(|n| n.registered_at).unwrap_or(now);
        let node = Node {
            name: name.clone(),
            status: NodeStatus::Online,
            max_runners: effective.max_runners,
            max_runners_override,
            running: 0,
            version: registration.version,
            registered_at,
            last_seen: now,
        };
        if let Err(err) = self.store.put_node(&node).await {
            error!(node = %name, error = %err, "cannot record the node");
        }
        let mut accepted = outbound.send(MasterToWorker::Registered).await.is_ok();
        if accepted && effective.max_runners != registered {
            let resize = MasterToWorker::SetMaxRunners {
                max_runners: effective.max_runners,
            };
            accepted = outbound.send(resize).await.is_ok();
        }
        if accepted {
            info!(node = %name, max_runners = node.max_runners, "worker connected");
            self.scheduler.kick();
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = self.shutdown.cancelled() => break,
                };
                match message {
                    Some(Ok(message)) => self.handle(&node, message, &outbound).await,
                    Some(Err(err)) => {
                        warn!(node = %name, error = %err, "worker session broke");
                        break;
                    }
                    None => break,
                }
            }
        }
        let reason = if self.shutdown.is_cancelled() {
            format!("the master shut down while the task ran on {name}")
        } else {
            format!("node {name} disconnected while the task ran")
        };
        self.scheduler.close(&name, session);
        if let Err(err) = self.scheduler.settle_node(&name, &reason).await {
            error!(node = %name, error = %err, "cannot settle the tasks of a disconnected node");
        }
        self.scheduler.unregister(&name, session);
        // Re-read: a user may have changed the node while the session ran.
        let mut node = self.stored_node(&name).await.unwrap_or(node);
        node.status = NodeStatus::Offline;
        node.running = 0;
        node.last_seen = Utc::now();
        if let Err(err) = self.store.put_node(&node).await {
            error!(node = %name, error = %err, "cannot record the node offline");
        }
        info!(node = %name, "worker disconnected");
    }

    async fn fetch_files(
        &self,
        spider_id: SpiderId,
        version: String,
    ) -> Result<FileStream, Rejection> {
        self.files
            .stream(spider_id, &version)
            .await
            .map_err(|err| match err {
                files::Error::NotFound(_) => {
                    Rejection::NotFound(format!("spider {spider_id} has no version {version:?}"))
                }
                other => Rejection::Internal(other.to_string()),
            })
    }
}

/// A worker's report that a task ended.
struct Ended {
    task_id: TaskId,
    outcome: TaskOutcome,
    at: chrono::DateTime<Utc>,
    peak_rss_bytes: Option<u64>,
}

impl Cluster {
    async fn stored_node(&self, name: &str) -> Option<Node> {
        let nodes = self.store.list_nodes().await.ok()?;
        nodes.into_iter().find(|n| n.name == name)
    }

    async fn handle(&self, node: &Node, message: WorkerToMaster, outbound: &Outbound) {
        let result = match message {
            WorkerToMaster::Register(_) => {
                warn!(node = %node.name, "ignoring a second Register in one session");
                Ok(())
            }
            // Kept in memory: an idle cluster causes no database writes.
            WorkerToMaster::Heartbeat { .. } => {
                self.scheduler.heartbeat(&node.name);
                Ok(())
            }
            WorkerToMaster::TaskStarted { task_id, pid, at } => {
                self.started(node, task_id, pid, at, outbound).await
            }
            WorkerToMaster::Logs { task_id, lines } => {
                let result = self.store.append_logs(task_id, &lines).await;
                self.scheduler.changed(task_id);
                result
            }
            WorkerToMaster::Items { task_id, items } => {
                let result = self.store.insert_items(task_id, &items).await;
                self.scheduler.changed(task_id);
                result
            }
            WorkerToMaster::Report {
                task_id,
                status,
                errors,
                at,
            } => {
                // Reports may arrive for a task that just ended (the end was sent right after): keep them too.
                let update = Box::new(move |t: &mut arachne_shared::Task| {
                    t.record_report(status, errors, at);
                    true
                });
                let result = self
                    .store
                    .update_task(task_id, &TaskStatus::ALL, update)
                    .await
                    .map(drop);
                self.scheduler.changed(task_id);
                result
            }
            WorkerToMaster::TaskEnded {
                task_id,
                outcome,
                at,
                peak_rss_bytes,
            } => {
                self.ended(
                    node,
                    Ended {
                        task_id,
                        outcome,
                        at,
                        peak_rss_bytes,
                    },
                )
                .await
            }
        };
        if let Err(err) = result {
            error!(node = %node.name, error = %err, "cannot store what a worker reported");
        }
    }

    async fn started(
        &self,
        node: &Node,
        task_id: TaskId,
        pid: u32,
        at: chrono::DateTime<Utc>,
        outbound: &Outbound,
    ) -> crate::store::Result<()> {
        let name = node.name.clone();
        let updated = self
            .store
            .update_task(
                task_id,
                &[TaskStatus::Pending],
                Box::new(move |t| {
                    if t.node.as_deref() != Some(name.as_str()) {
                        return false;
                    }
                    t.pid = Some(pid);
                    t.set_status(TaskStatus::Running, at);
                    true
                }),
            )
            .await?;
        if updated.is_none() {
            // Cancelled (or handed elsewhere) while the worker was preparing it: stop it there too.
            warn!(task_id = %task_id, node = %node.name, "a task started that is no longer this node's; cancelling it");
            let _ = outbound
                .send(MasterToWorker::Cancel {
                    task_id,
                    reason: "the task was cancelled before it started".into(),
                })
                .await;
        }
        self.scheduler.changed(task_id);
        Ok(())
    }

    async fn ended(&self, node: &Node, ended: Ended) -> crate::store::Result<()> {
        let Ended {
            task_id,
            outcome,
            at,
            peak_rss_bytes,
        } = ended;
        let name = node.name.clone();
        let status = outcome.status();
        let updated = self
            .store
            .update_task(
                task_id,
                &[TaskStatus::Pending, TaskStatus::Running],
                Box::new(move |t| {
                    if t.node.as_deref() != Some(name.as_str()) {
                        return false;
                    }
                    t.finish(&outcome, at);
                    t.peak_rss_bytes = peak_rss_bytes.or(t.peak_rss_bytes);
                    true
                }),
            )
            .await?;
        self.scheduler.release(&node.name, task_id);
        self.scheduler.changed(task_id);
        match updated {
            Some(_) => info!(task_id = %task_id, node = %node.name, %status, "task ended"),
            None => {
                warn!(task_id = %task_id, node = %node.name, %status, "end of a task that had already ended")
            }
        }
        Ok(())
    }
}
