//! The overview service: the runs that ended over the last days, overall, per day and per spider, read from
//! the stores' hourly roll-ups (never from the tasks themselves), with the nodes' load now.

use std::sync::Arc;

use arachne_shared::TaskStatus;
use arachne_shared::stats::{self, NodeLoad, Stats};
use chrono::Utc;

use crate::nodes::{self, Nodes};
use crate::store::{self, Store};

/// Why the overview could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("days must be 1 to 366, got {0}")]
    Days(u32),
    #[error("spider {0:?} not found")]
    NoSpider(String),
    #[error("store: {0}")]
    Store(#[from] store::Error),
    #[error(transparent)]
    Nodes(#[from] nodes::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many spiders the slowest and most failing lists name.
const TOP: usize = 5;

/// Makes the overview.
pub struct Overview {
    store: Arc<dyn Store>,
    nodes: Arc<Nodes>,
}

impl Overview {
    pub(crate) fn new(store: Arc<dyn Store>, nodes: Arc<Nodes>) -> Self {
        Self { store, nodes }
    }

    /// The last `days` days (per hour for one day), of one spider when named.
    pub async fn stats(&self, days: u32, spider: Option<String>) -> Result<Stats> {
        if !(1..=366).contains(&days) {
            return Err(Error::Days(days));
        }
        if let Some(name) = &spider
            && self.store.spider_by_name(name).await?.is_none()
        {
            return Err(Error::NoSpider(name.clone()));
        }
        let now = Utc::now();
        let (since, _, _) = stats::window(days, now);
        let rows = self.store.run_stats(since, spider.as_deref()).await?;
        let (totals, series, spiders) = stats::summarise(&rows, days, now);
        let mut slowest: Vec<_> = spiders
            .iter()
            .filter(|s| s.runs.run_time_p95_ms.is_some())
            .cloned()
            .collect();
        slowest.sort_by_key(|s| std::cmp::Reverse(s.runs.run_time_p95_ms));
        slowest.truncate(TOP);
        let mut most_failing: Vec<_> = spiders
            .iter()
            .filter(|s| s.runs.error + s.runs.abnormal > 0)
            .cloned()
            .collect();
        most_failing.sort_by_key(|s| std::cmp::Reverse(s.runs.error + s.runs.abnormal));
        most_failing.truncate(TOP);
        let counts = self.store.count_by_status().await?;
        let count = |status| {
            counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n)
        };
        let nodes = self
            .nodes
            .list()
            .await?
            .into_iter()
            .map(|node| NodeLoad {
                online: node.status == arachne_shared::NodeStatus::Online,
                running: node.running,
                max_runners: node.max_runners,
                cpu_percent: node.metrics.as_ref().map(|m| m.cpu_percent),
                memory_percent: node.metrics.as_ref().and_then(|m| {
                    (m.memory_total_bytes > 0).then(|| {
                        (m.memory_used_bytes as f64 * 100.0 / m.memory_total_bytes as f64) as f32
                    })
                }),
                name: node.name,
            })
            .collect();
        Ok(Stats {
            days,
            since,
            spider,
            totals,
            series,
            spiders,
            slowest,
            most_failing,
            running: count(TaskStatus::Running),
            pending: count(TaskStatus::Pending),
            nodes,
        })
    }
}
