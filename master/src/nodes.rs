//! The node service: the nodes that ever registered, with what their live sessions say, and the settings a
//! user changes on them (runner slots, enabled).

use std::sync::Arc;

use arachne_shared::{Node, NodeStatus};

use crate::scheduler::Scheduler;
use crate::store::{self, Store};

/// Why a node could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nothing to change: give max_runners or enabled")]
    NothingToChange,
    #[error("max_runners must be 1 to 10000, got {0}")]
    MaxRunners(u32),
    #[error("node {0:?} not found")]
    NoNode(String),
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a user changes on a node; `None` leaves it.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate {
    pub max_runners: Option<u32>,
    pub enabled: Option<bool>,
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

    /// Changes a node's settings; an offline node gets them when it registers again.
    pub async fn update(&self, name: &str, update: NodeUpdate) -> Result<Node> {
        if update.max_runners.is_none() && update.enabled.is_none() {
            return Err(Error::NothingToChange);
        }
        if let Some(max_runners) = update.max_runners
            && !(1..=10_000).contains(&max_runners)
        {
            return Err(Error::MaxRunners(max_runners));
        }
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
        self.store.put_node(&node).await?;
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
