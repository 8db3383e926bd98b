//! The master's implementation of the web-api [`Backend`]: the only door from HTTP into the master.

use std::sync::Arc;

use arachne_shared::{
    ItemRecord, LogLine, Node, NodeStatus, Spider, SpiderId, Task, TaskId, TaskOutcome, TaskStatus,
};
use arachne_web_api::types::{CreateSpider, Page, RunTask, TaskQuery, UpdateNode};
use arachne_web_api::{Backend, Error, Result};
use chrono::Utc;
use tokio::sync::broadcast;

use crate::files::{self, SpiderFiles};
use crate::scheduler::Scheduler;
use crate::store::{self, Store, TaskFilter};

/// The master as the API sees it.
pub(crate) struct MasterApi {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) files: SpiderFiles,
}

fn internal(err: store::Error) -> Error {
    match err {
        store::Error::Duplicate(what) => Error::Conflict(format!("{what} already exists")),
        other => Error::Internal(other.to_string()),
    }
}

/// When the master may end a task itself instead of asking its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelHere {
    /// Only while no node has it: nothing runs anywhere yet.
    IfUnassigned,
    /// Its node is gone, so no process of it is left to stop.
    Always,
}

const NOT_ENDED: [TaskStatus; 3] = [
    TaskStatus::Created,
    TaskStatus::Pending,
    TaskStatus::Running,
];

impl MasterApi {
    async fn spider(&self, name: &str) -> Result<Spider> {
        self.store
            .spider_by_name(name)
            .await
            .map_err(internal)?
            .ok_or_else(|| Error::NotFound(format!("spider {name:?} not found")))
    }

    async fn task(&self, id: TaskId) -> Result<Task> {
        self.store
            .get_task(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))
    }

    async fn finish_here(
        &self,
        id: TaskId,
        reason: &'static str,
        only: CancelHere,
    ) -> Result<Option<Task>> {
        let done = self
            .store
            .update_task(
                id,
                &NOT_ENDED,
                Box::new(move |t| {
                    if only == CancelHere::IfUnassigned && t.node.is_some() {
                        return false;
                    }
                    t.finish(
                        &TaskOutcome::Cancelled {
                            reason: reason.into(),
                        },
                        Utc::now(),
                    );
                    true
                }),
            )
            .await
            .map_err(internal)?;
        if done.is_some() {
            self.scheduler.changed(id);
        }
        Ok(done)
    }
}

#[async_trait::async_trait]
impl Backend for MasterApi {
    async fn put_spider(&self, request: CreateSpider) -> Result<Spider> {
        arachne_shared::spider::validate_name("spider", &request.name)
            .map_err(Error::BadRequest)?;
        let cmd = request.cmd.trim();
        if cmd.is_empty() {
            return Err(Error::BadRequest("cmd must not be empty".into()));
        }
        if let Some(settings) = &request.settings {
            settings
                .validate()
                .map_err(|e| Error::BadRequest(format!("settings.{e}")))?;
        }
        let now = Utc::now();
        let spider = match self
            .store
            .spider_by_name(&request.name)
            .await
            .map_err(internal)?
        {
            Some(existing) => Spider {
                cmd: cmd.to_owned(),
                updated_at: now,
                settings: request.settings.unwrap_or(existing.settings.clone()),
                ..existing
            },
            None => Spider {
                id: SpiderId::new(),
                name: request.name,
                cmd: cmd.to_owned(),
                version: String::new(),
                file_count: 0,
                total_bytes: 0,
                created_at: now,
                updated_at: now,
                settings: request.settings.unwrap_or_default(),
            },
        };
        self.store.put_spider(&spider).await.map_err(internal)?;
        Ok(spider)
    }

    async fn upload_files(&self, name: &str, archive: Vec<u8>) -> Result<Spider> {
        let spider = self.spider(name).await?;
        let version =
            self.files
                .store_archive(spider.id, archive)
                .await
                .map_err(|err| match err {
                    files::Error::BadArchive(_) => Error::BadRequest(err.to_string()),
                    files::Error::TooLarge(_) => Error::PayloadTooLarge(err.to_string()),
                    other => Error::Internal(other.to_string()),
                })?;
        let spider = Spider {
            version: version.hash,
            file_count: version.file_count,
            total_bytes: version.total_bytes,
            updated_at: Utc::now(),
            ..spider
        };
        self.store.put_spider(&spider).await.map_err(internal)?;
        Ok(spider)
    }

    async fn list_spiders(&self) -> Result<Vec<Spider>> {
        self.store.list_spiders().await.map_err(internal)
    }

    async fn get_spider(&self, name: &str) -> Result<Spider> {
        self.spider(name).await
    }

    async fn run_task(&self, run: RunTask) -> Result<Task> {
        let priority = run
            .priority
            .unwrap_or(arachne_shared::task::DEFAULT_PRIORITY);
        if !(1..=10).contains(&priority) {
            return Err(Error::BadRequest(format!(
                "priority must be 1 (highest) to 10, got {priority}"
            )));
        }
        let spider = self.spider(&run.spider).await?;
        let now = Utc::now();
        let overrides = run.settings.unwrap_or_default();
        overrides
            .validate()
            .map_err(|e| Error::BadRequest(format!("settings.{e}")))?;
        let settings = spider.settings.overridden_by(&overrides);
        let mut task = Task {
            id: TaskId::new(),
            spider_id: spider.id,
            spider_name: spider.name,
            version: spider.version,
            cmd: spider.cmd,
            param: run.param.filter(|p| !p.trim().is_empty()),
            priority,
            settings,
            peak_rss_bytes: None,
            wait_ms: None,
            run_ms: None,
            status: TaskStatus::Created,
            node: None,
            pid: None,
            exit_code: None,
            signal: None,
            error: None,
            created_at: now,
            updated_at: now,
            transitions: vec![arachne_shared::Transition {
                status: TaskStatus::Created,
                at: now,
            }],
            log_lines: 0,
            items: 0,
            progress: None,
            errors: Vec::new(),
            error_count: 0,
        };
        task.set_status(TaskStatus::Pending, now);
        self.store.insert_task(&task).await.map_err(internal)?;
        tracing::info!(task_id = %task.id, spider = %task.spider_name, "task created");
        self.scheduler.changed(task.id);
        self.scheduler.kick();
        Ok(task)
    }

    async fn list_tasks(&self, query: TaskQuery) -> Result<Page<Task>> {
        let filter = TaskFilter {
            spider_name: query.spider,
            status: query.status,
            node: None,
            limit: query.limit.unwrap_or(arachne_web_api::types::DEFAULT_LIMIT),
            offset: query.offset.unwrap_or(0),
        };
        let (items, total) = self.store.list_tasks(&filter).await.map_err(internal)?;
        Ok(Page { items, total })
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        self.task(id).await
    }

    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        let task = self.task(id).await?;
        if task.status.is_terminal() {
            return Err(Error::Conflict(format!(
                "task {id} already ended ({})",
                task.status
            )));
        }
        // Not yet handed to a node: nothing runs anywhere, so it ends here.
        if let Some(task) = self
            .finish_here(id, "cancelled by user", CancelHere::IfUnassigned)
            .await?
        {
            return Ok(task);
        }
        let task = self.task(id).await?;
        let Some(node) = task.node.clone().filter(|_| !task.status.is_terminal()) else {
            return Ok(task);
        };
        if self
            .scheduler
            .send_cancel(&node, id, "cancelled by user")
            .await
        {
            // The worker kills the process group and reports Cancelled.
            return Ok(task);
        }
        // Its node is gone, so no process of it is left to stop.
        Ok(self
            .finish_here(
                id,
                "cancelled by user (its node was offline)",
                CancelHere::Always,
            )
            .await?
            .unwrap_or(task))
    }

    async fn logs(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        self.store.logs(id, after, limit).await.map_err(internal)
    }

    async fn items(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<ItemRecord>> {
        self.store.items(id, after, limit).await.map_err(internal)
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        let mut nodes = self.store.list_nodes().await.map_err(internal)?;
        for node in &mut nodes {
            // The store keeps what outlives a session; running tasks and liveness come from the session.
            match self.scheduler.live(&node.name) {
                Some((running, last_seen)) => {
                    node.status = NodeStatus::Online;
                    node.running = running;
                    node.last_seen = last_seen;
                }
                None => {
                    node.status = NodeStatus::Offline;
                    node.running = 0;
                }
            }
        }
        Ok(nodes)
    }

    async fn update_node(&self, name: &str, update: UpdateNode) -> Result<Node> {
        let Some(max_runners) = update.max_runners else {
            return Err(Error::BadRequest(
                "nothing to change: give max_runners".into(),
            ));
        };
        if !(1..=10_000).contains(&max_runners) {
            return Err(Error::BadRequest(format!(
                "max_runners must be 1 to 10000, got {max_runners}"
            )));
        }
        let nodes = self.store.list_nodes().await.map_err(internal)?;
        let Some(mut node) = nodes.into_iter().find(|n| n.name == name) else {
            return Err(Error::NotFound(format!("node {name:?} not found")));
        };
        node.max_runners = max_runners;
        node.max_runners_override = Some(max_runners);
        self.store.put_node(&node).await.map_err(internal)?;
        // An offline node gets the setting when it registers again.
        self.scheduler.set_max_runners(name, max_runners).await;
        let live = self.list_nodes().await?;
        Ok(live.into_iter().find(|n| n.name == name).unwrap_or(node))
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskId> {
        self.scheduler.subscribe()
    }
}
