//! The node service: the nodes that ever registered, with what their live sessions say, and the settings a
//! user changes on them (runner slots, enabled).

use std::sync::Arc;

use arachne_shared::{Node, NodeStatus, TaskId, TaskStatus};

use crate::scheduler::Scheduler;
use crate::store::{self, Store, TaskFilter};

/// Why a node could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nothing to change: give max_runners, enabled, max_cpu_percent or max_memory_percent")]
    NothingToChange,
    #[error(transparent)]
    Invalid(#[from] arachne_shared::Invalid),
    #[error("max_runners must be 1 to 10000, got {0}")]
    MaxRunners(u32),
    #[error("node {0:?} not found")]
    NoNode(String),
    #[error(
        "node {0:?} is online: stop its worker first (a removed node that registers again comes back)"
    )]
    Online(String),
    #[error(
        "node {node:?} still holds task {task}, which is {status}: it is settled once the node's heartbeat timeout passes"
    )]
    Holds {
        node: String,
        task: TaskId,
        status: TaskStatus,
    },
    #[error("task {task} waits to run on node {node:?} alone: cancel it first")]
    Awaited { node: String, task: TaskId },
    #[error("schedule {schedule:?} runs on node {node:?}: change or delete the schedule first")]
    Scheduled { node: String, schedule: String },
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a user changes on a node; `None` leaves it.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate {
    pub max_runners: Option<u32>,
    pub enabled: Option<bool>,
    /// The node's own load thresholds; 0 removes one (the cluster-wide one applies again).
    pub max_cpu_percent: Option<f32>,
    pub max_memory_percent: Option<f32>,
}

/// Lists nodes and changes their settings.
pub struct Nodes {
    store: Arc<dyn Store>,
    scheduler: Arc<Scheduler>,
}

impl Nodes {
    pub(crate) fn new(store: Arc<dyn Store>, scheduler: Arc<Scheduler>) -> Self {
        Self { store, scheduler }
    }

    /// Every node that ever registered; running tasks and liveness come from its session, if it has one.
    pub async fn list(&self) -> Result<Vec<Node>> {
        let mut nodes = self.store.list_nodes().await?;
        for node in &mut nodes {
            match self.scheduler.registry.live(&node.name) {
                Some(live) => {
                    node.status = NodeStatus::Online;
                    node.running = live.running;
                    node.last_seen = live.last_seen;
                    node.metrics = live.metrics;
                }
                None => {
                    node.status = NodeStatus::Offline;
                    node.running = 0;
                }
            }
        }
        Ok(nodes)
    }

    /// Forgets an offline node: refused while it is online, holds a task that has not ended, is the node a
    /// waiting task is pinned to, or a schedule names it.
    pub async fn remove(&self, name: &str) -> Result<()> {
        // A worker registering meanwhile waits, rather than being forgotten as it comes online.
        let _record = self.scheduler.lock_node_records().await;
        if !self
            .store
            .list_nodes()
            .await?
            .iter()
            .any(|n| n.name == name)
        {
            return Err(Error::NoNode(name.to_owned()));
        }
        if self.scheduler.registry.live(name).is_some() {
            return Err(Error::Online(name.to_owned()));
        }
        for task in self.store.unended_tasks(&TaskFilter::default()).await? {
            if task.node.as_deref() == Some(name) {
                return Err(Error::Holds {
                    node: name.to_owned(),
                    task: task.id,
                    status: task.status,
                });
            }
            if task.pinned_node.as_deref() == Some(name) {
                return Err(Error::Awaited {
                    node: name.to_owned(),
                    task: task.id,
                });
            }
        }
        if let Some(schedule) = self
            .store
            .list_schedules()
            .await?
            .into_iter()
            .find(|s| s.nodes.iter().any(|n| n == name))
        {
            return Err(Error::Scheduled {
                node: name.to_owned(),
                schedule: schedule.name,
            });
        }
        self.store.delete_node(name).await?;
        tracing::info!(node = name, "node removed");
        Ok(())
    }

    /// Changes a node's settings; an offline node gets them when it registers again.
    pub async fn update(&self, name: &str, update: NodeUpdate) -> Result<Node> {
        if update.max_runners.is_none()
            && update.enabled.is_none()
            && update.max_cpu_percent.is_none()
            && update.max_memory_percent.is_none()
        {
            return Err(Error::NothingToChange);
        }
        for (what, value) in [
            ("max_cpu_percent", update.max_cpu_percent),
            ("max_memory_percent", update.max_memory_percent),
        ] {
            if let Some(value) = value.filter(|v| *v != 0.0) {
                arachne_shared::node::validate_percent(what, value)?;
            }
        }
        if let Some(max_runners) = update.max_runners
            && !(1..=10_000).contains(&max_runners)
        {
            return Err(Error::MaxRunners(max_runners));
        }
        let _record = self.scheduler.lock_node_records().await;
        let nodes = self.store.list_nodes().await?;
        let Some(mut node) = nodes.into_iter().find(|n| n.name == name) else {
            return Err(Error::NoNode(name.to_owned()));
        };
        if let Some(max_runners) = update.max_runners {
            node.max_runners = max_runners;
            node.max_runners_override = Some(max_runners);
        }
        if let Some(enabled) = update.enabled {
            node.enabled = enabled;
        }
        let limits_changed =
            update.max_cpu_percent.is_some() || update.max_memory_percent.is_some();
        if let Some(cpu) = update.max_cpu_percent {
            node.max_cpu_percent = (cpu != 0.0).then_some(cpu);
        }
        if let Some(memory) = update.max_memory_percent {
            node.max_memory_percent = (memory != 0.0).then_some(memory);
        }
        self.store.put_node(&node).await?;
        if limits_changed {
            self.scheduler.set_load_limits(&node);
        }
        if let Some(enabled) = update.enabled {
            self.scheduler.set_enabled(name, enabled);
        }
        if let Some(max_runners) = update.max_runners {
            self.scheduler.set_max_runners(name, max_runners).await;
        }
        let live = self.list().await?;
        Ok(live.into_iter().find(|n| n.name == name).unwrap_or(node))
    }
}
