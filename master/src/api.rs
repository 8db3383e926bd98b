//! The master's implementation of the web-api [`Backend`]: the only door from HTTP into the master.

use std::sync::Arc;

use arachne_shared::files::VersionInfo;
use arachne_shared::schedule::{CronExpr, Schedule, ScheduleId};
use arachne_shared::spider::RunSettings;
use arachne_shared::{
    ItemRecord, LogLine, Node, NodeStatus, RunMode, Spider, Task, TaskId, TaskOutcome, TaskStatus,
};
use arachne_web_api::types::{
    CreateSpider, Metrics, Page, RunTask, ScheduleSpec, ScheduleView, TaskQuery, UpdateNode,
    Upload, VersionFiles,
};
use arachne_web_api::{Backend, Error, Result};
use chrono::Utc;
use tokio::sync::broadcast;
use tracing::info;

use crate::files::{self, SpiderFiles};
use crate::scheduler::Scheduler;
use crate::store::{self, Store, TaskFilter};

/// The master as the API sees it.
pub(crate) struct MasterApi {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) files: SpiderFiles,
    pub(crate) auth: Arc<crate::auth::Auth>,
    /// Woken when a schedule changes, so the cron loop re-reads them.
    pub(crate) schedules_changed: Arc<tokio::sync::Notify>,
    /// Serialises schedule writes between users and the cron loop, so neither loses the other's change.
    pub(crate) schedule_writes: tokio::sync::Mutex<()>,
}

/// One run to create, from the API or from a schedule.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunSpec {
    pub(crate) spider: String,
    pub(crate) param: Option<String>,
    pub(crate) priority: Option<u8>,
    pub(crate) settings: RunSettings,
    pub(crate) mode: RunMode,
    pub(crate) nodes: Vec<String>,
    pub(crate) schedule_id: Option<ScheduleId>,
    pub(crate) fire_time: Option<chrono::DateTime<Utc>>,
    /// Tasks with this key never run at once.
    pub(crate) exclusive: Option<String>,
    /// A stored version to run instead of the spider's current one.
    pub(crate) version: Option<String>,
}

fn files_error(spider: &str, err: files::Error) -> Error {
    match err {
        files::Error::BadArchive(_) => Error::BadRequest(err.to_string()),
        files::Error::TooLarge(_) => Error::PayloadTooLarge(err.to_string()),
        files::Error::NotFound(version) => {
            Error::NotFound(format!("spider {spider:?} has no version {version:?}"))
        }
        files::Error::NoSuchFile { .. } => Error::NotFound(err.to_string()),
        other => Error::Internal(other.to_string()),
    }
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

    /// The spider and the version a file request means: the named one, or the current one.
    async fn version_of(&self, name: &str, version: Option<String>) -> Result<(Spider, String)> {
        let spider = self.spider(name).await?;
        let version = match version {
            Some(v) => v,
            None if spider.version.is_empty() => {
                return Err(Error::NotFound(format!("spider {name:?} has no files yet")));
            }
            None => spider.version.clone(),
        };
        Ok((spider, version))
    }

    async fn make_current(&self, spider: Spider, version: VersionInfo) -> Result<Spider> {
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
                    // Written off here: whatever a worker still sends under the old lease is refused.
                    t.lease += 1;
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
        if let Some(task) = &done {
            self.scheduler.ended(task).await;
        }
        Ok(done)
    }

    /// Cancels one task that runs by itself (not a parent).
    async fn cancel_one(&self, id: TaskId) -> Result<Task> {
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

    /// A parent's children, oldest first.
    async fn children(&self, parent: TaskId) -> Result<Vec<Task>> {
        let filter = TaskFilter {
            parent_id: Some(parent),
            ..Default::default()
        };
        let mut children = self.store.all_tasks(&filter).await.map_err(internal)?;
        children.reverse();
        Ok(children)
    }

    /// Creates the tasks of one run: a single task, or a parent with one pinned child per node.
    pub(crate) async fn create_run(&self, run: RunSpec) -> Result<Task> {
        let priority = run
            .priority
            .unwrap_or(arachne_shared::task::DEFAULT_PRIORITY);
        if !(1..=10).contains(&priority) {
            return Err(Error::BadRequest(format!(
                "priority must be 1 (highest) to 10, got {priority}"
            )));
        }
        run.settings
            .validate()
            .map_err(|e| Error::BadRequest(format!("settings.{e}")))?;
        let mut spider = self.spider(&run.spider).await?;
        if let Some(version) = run.version {
            self.files
                .manifest(spider.id, &version)
                .await
                .map_err(|err| files_error(&spider.name, err))?;
            spider.version = version;
        }
        let nodes = self.placement(run.mode, &run.nodes).await?;
        let now = Utc::now();
        let mut task = Task::pending(&spider, now);
        task.param = run.param.filter(|p| !p.trim().is_empty());
        task.priority = priority;
        task.settings = spider.settings.overridden_by(&run.settings);
        task.mode = run.mode;
        task.schedule_id = run.schedule_id;
        task.fire_time = run.fire_time;
        task.exclusive = run.exclusive;
        let mut tasks = Vec::new();
        match nodes.as_slice() {
            [] => tasks.push(task),
            [only] if run.mode == RunMode::Nodes => {
                task.pinned_node = Some(only.clone());
                tasks.push(task);
            }
            many => {
                for node in many {
                    let mut child = Task::pending(&spider, now);
                    child.param = task.param.clone();
                    child.priority = priority;
                    child.settings = task.settings.clone();
                    child.mode = run.mode;
                    child.schedule_id = task.schedule_id;
                    child.exclusive = task.exclusive.clone();
                    child.parent_id = Some(task.id);
                    child.pinned_node = Some(node.clone());
                    tasks.push(child);
                }
                task.children = many.len() as u32;
                tasks.insert(0, task);
            }
        }
        self.store.insert_tasks(&tasks).await.map_err(internal)?;
        let head = tasks.swap_remove(0);
        tracing::info!(task_id = %head.id, spider = %head.spider_name, mode = head.mode.as_str(),
            children = head.children, "task created");
        self.scheduler.changed(head.id);
        self.scheduler.kick();
        Ok(head)
    }

    /// The nodes a run names (mode `nodes`) or covers (mode `all`); empty for mode `random`.
    async fn placement(&self, mode: RunMode, nodes: &[String]) -> Result<Vec<String>> {
        match mode {
            RunMode::Random if nodes.is_empty() => Ok(Vec::new()),
            RunMode::Random | RunMode::All if !nodes.is_empty() => Err(Error::BadRequest(format!(
                "nodes are only used by mode nodes, not {}",
                mode.as_str()
            ))),
            RunMode::All => {
                let online = self.scheduler.online_enabled();
                if online.is_empty() {
                    return Err(Error::Conflict(
                        "mode all: no online, enabled node to run on".into(),
                    ));
                }
                Ok(online)
            }
            _ => {
                if nodes.is_empty() {
                    return Err(Error::BadRequest(
                        "mode nodes needs at least one node".into(),
                    ));
                }
                let known = self.store.list_nodes().await.map_err(internal)?;
                let mut named = Vec::new();
                for node in nodes {
                    if !known.iter().any(|k| &k.name == node) {
                        return Err(Error::BadRequest(format!(
                            "unknown node {node:?}: no worker of that name ever registered"
                        )));
                    }
                    if !named.contains(node) {
                        named.push(node.clone());
                    }
                }
                Ok(named)
            }
        }
    }

    async fn schedule_by_name(&self, name: &str) -> Result<Schedule> {
        let schedules = self.store.list_schedules().await.map_err(internal)?;
        let by_id: Option<ScheduleId> = name.parse().ok();
        schedules
            .into_iter()
            .find(|s| s.name == name || Some(s.id) == by_id)
            .ok_or_else(|| Error::NotFound(format!("schedule {name:?} not found")))
    }

    /// Builds a schedule from a request, checking it; `existing` keeps id, history and creation time.
    async fn schedule_from(
        &self,
        spec: ScheduleSpec,
        existing: Option<Schedule>,
    ) -> Result<Schedule> {
        self.spider(&spec.spider).await?;
        let now = Utc::now();
        let enabled = spec.enabled.unwrap_or(true);
        let mut schedule = Schedule {
            id: existing.as_ref().map(|s| s.id).unwrap_or_default(),
            name: spec.name,
            spider: spec.spider,
            cron: spec.cron,
            timezone: spec.timezone.unwrap_or_else(|| "UTC".into()),
            mode: spec.mode.unwrap_or_default(),
            nodes: spec.nodes,
            param: spec.param.filter(|p| !p.trim().is_empty()),
            priority: spec
                .priority
                .unwrap_or(arachne_shared::task::DEFAULT_PRIORITY),
            settings: spec.settings.unwrap_or_default(),
            enabled,
            overlap: spec.overlap.unwrap_or_default(),
            misfire: spec.misfire.unwrap_or_default(),
            // Fire times from before a schedule existed (or was changed) were never missed.
            last_fire: Some(now),
            created_at: existing.as_ref().map(|s| s.created_at).unwrap_or(now),
            updated_at: now,
            labels: existing.map(|s| s.labels).unwrap_or_default(),
        };
        arachne_shared::schedule::validate(&schedule).map_err(Error::BadRequest)?;
        if schedule.mode == RunMode::Nodes {
            self.placement(RunMode::Nodes, &schedule.nodes).await?;
        }
        schedule.nodes.dedup();
        Ok(schedule)
    }

    async fn save_schedule(&self, schedule: Schedule) -> Result<ScheduleView> {
        self.store.put_schedule(&schedule).await.map_err(internal)?;
        self.schedules_changed.notify_one();
        Ok(view(schedule))
    }
}

/// A schedule with its next 5 fire times.
pub(crate) fn view(schedule: Schedule) -> ScheduleView {
    let next = match CronExpr::parse(&schedule.cron, &schedule.timezone) {
        Ok(expr) if schedule.enabled => expr.next(Utc::now(), 5),
        _ => Vec::new(),
    };
    ScheduleView { schedule, next }
}

/// The latest attempt of each child (retries and restarts are attempts of the same child).
fn latest_attempts(children: &[Task]) -> Vec<&Task> {
    let mut latest: std::collections::HashMap<TaskId, &Task> = std::collections::HashMap::new();
    for child in children {
        let chain = child.first_attempt.unwrap_or(child.id);
        let entry = latest.entry(chain).or_insert(child);
        if child.attempt > entry.attempt {
            *entry = child;
        }
    }
    let mut latest: Vec<&Task> = latest.into_values().collect();
    latest.sort_by_key(|t| t.id);
    latest
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
        let keep_collection = request.results_collection.is_none();
        let results_collection = request.results_collection.filter(|c| !c.is_empty());
        if let Some(collection) = &results_collection {
            arachne_shared::spider::validate_collection(collection).map_err(Error::BadRequest)?;
        }
        let keep_dedup = request.dedup.is_none();
        let dedup = request.dedup.filter(|d| !d.keys.is_empty());
        if let Some(dedup) = &dedup {
            dedup.validate().map_err(Error::BadRequest)?;
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
                max_instances: match request.max_instances {
                    Some(0) => None,
                    Some(max) => Some(max),
                    None => existing.max_instances,
                },
                results_collection: if keep_collection {
                    existing.results_collection.clone()
                } else {
                    results_collection
                },
                dedup: if keep_dedup {
                    existing.dedup.clone()
                } else {
                    dedup
                },
                ..existing
            },
            None => Spider {
                settings: request.settings.unwrap_or_default(),
                max_instances: request.max_instances.filter(|max| *max > 0),
                results_collection,
                dedup,
                ..Spider::new(request.name, cmd, now)
            },
        };
        self.store.put_spider(&spider).await.map_err(internal)?;
        Ok(spider)
    }

    async fn upload_files(&self, name: &str, upload: Upload) -> Result<Spider> {
        let spider = self.spider(name).await?;
        let version = self
            .files
            .store_upload(spider.id, upload)
            .await
            .map_err(|err| files_error(name, err))?;
        info!(spider = %name, version = %version.hash, files = version.file_count, bytes = version.total_bytes,
            "spider files uploaded");
        self.make_current(spider, version).await
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>> {
        let spider = self.spider(name).await?;
        let mut versions = self
            .files
            .versions(spider.id)
            .await
            .map_err(|err| files_error(name, err))?;
        for v in &mut versions {
            v.current = v.hash == spider.version;
        }
        Ok(versions)
    }

    async fn set_current_version(&self, name: &str, version: &str) -> Result<Spider> {
        let spider = self.spider(name).await?;
        let info = self
            .files
            .version(spider.id, version)
            .await
            .map_err(|err| files_error(name, err))?;
        self.make_current(spider, info).await
    }

    async fn list_files(&self, name: &str, version: Option<String>) -> Result<VersionFiles> {
        let (spider, version) = self.version_of(name, version).await?;
        let manifest = self
            .files
            .manifest(spider.id, &version)
            .await
            .map_err(|err| files_error(name, err))?;
        Ok(VersionFiles {
            version,
            files: manifest.files,
        })
    }

    async fn read_file(&self, name: &str, path: &str, version: Option<String>) -> Result<Vec<u8>> {
        let (spider, version) = self.version_of(name, version).await?;
        self.files
            .read_file(spider.id, &version, path)
            .await
            .map_err(|err| files_error(name, err))
    }

    async fn list_spiders(&self) -> Result<Vec<Spider>> {
        self.store.list_spiders().await.map_err(internal)
    }

    async fn get_spider(&self, name: &str) -> Result<Spider> {
        self.spider(name).await
    }

    async fn run_task(&self, run: RunTask) -> Result<Task> {
        self.create_run(RunSpec {
            spider: run.spider,
            param: run.param,
            priority: run.priority,
            settings: run.settings.unwrap_or_default(),
            mode: run.mode.unwrap_or_default(),
            nodes: run.nodes,
            version: run.version,
            ..RunSpec::default()
        })
        .await
    }

    async fn restart_task(&self, id: TaskId) -> Result<Task> {
        let task = self.task(id).await?;
        if !task.status.is_terminal() {
            return Err(Error::Conflict(format!(
                "task {id} has not ended ({}); cancel it first",
                task.status
            )));
        }
        let now = Utc::now();
        if !task.is_parent() {
            let next = task.next_attempt(now, None);
            self.store.insert_task(&next).await.map_err(internal)?;
            tracing::info!(task_id = %next.id, restart_of = %id, attempt = next.attempt, "task restarted");
            self.scheduler.changed(next.id);
            self.scheduler.kick();
            if let Some(parent) = next.parent_id {
                self.scheduler
                    .refresh_parent(parent)
                    .await
                    .map_err(internal)?;
            }
            return Ok(next);
        }
        let children = self.children(id).await?;
        let unfinished: Vec<Task> = latest_attempts(&children)
            .into_iter()
            .filter(|c| c.status != TaskStatus::Finished)
            .map(|c| c.next_attempt(now, None))
            .collect();
        if unfinished.is_empty() {
            return Err(Error::Conflict(format!(
                "every child of task {id} finished; nothing to restart"
            )));
        }
        self.store
            .insert_tasks(&unfinished)
            .await
            .map_err(internal)?;
        tracing::info!(task_id = %id, children = unfinished.len(), "parent task restarted: re-running its unfinished children");
        for child in &unfinished {
            self.scheduler.changed(child.id);
        }
        self.scheduler.refresh_parent(id).await.map_err(internal)?;
        self.scheduler.kick();
        self.task(id).await
    }

    async fn list_tasks(&self, query: TaskQuery) -> Result<Page<Task>> {
        let filter = TaskFilter {
            spider_name: query.spider,
            status: query.status,
            node: query.node,
            parent_id: query.parent,
            schedule_id: query.schedule,
            created_since: query.since,
            created_until: query.until,
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
        if task.is_parent() {
            for child in self.children(id).await? {
                if !child.status.is_terminal() {
                    self.cancel_one(child.id).await?;
                }
            }
            self.scheduler.refresh_parent(id).await.map_err(internal)?;
            return self.task(id).await;
        }
        self.cancel_one(id).await
    }

    async fn delete_task(&self, id: TaskId) -> Result<()> {
        let task = self.task(id).await?;
        if let Some(parent) = task.parent_id {
            // A parent's status is derived from all its children; it must not lose one.
            return Err(Error::Conflict(format!(
                "task {id} is a child of task {parent}: delete the parent, which takes its children with it"
            )));
        }
        let children = if task.is_parent() {
            self.children(id).await?
        } else {
            Vec::new()
        };
        let running: Vec<_> = std::iter::once(&task)
            .chain(&children)
            .filter(|t| !t.status.is_terminal())
            .collect();
        if !running.is_empty() {
            return Err(Error::Conflict(format!(
                "task {} has not ended ({}): cancel it first, then delete it",
                running[0].id, running[0].status
            )));
        }
        // Children first, so a parent never outlives a child half-deleted by a failure.
        for child in children.iter().chain(std::iter::once(&task)) {
            self.store.delete_task(child).await.map_err(internal)?;
            self.scheduler.changed(child.id);
        }
        info!(task_id = %id, children = children.len(), "task deleted");
        Ok(())
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

    async fn update_node(&self, name: &str, update: UpdateNode) -> Result<Node> {
        if update.max_runners.is_none() && update.enabled.is_none() {
            return Err(Error::BadRequest(
                "nothing to change: give max_runners or enabled".into(),
            ));
        }
        if let Some(max_runners) = update.max_runners
            && !(1..=10_000).contains(&max_runners)
        {
            return Err(Error::BadRequest(format!(
                "max_runners must be 1 to 10000, got {max_runners}"
            )));
        }
        let nodes = self.store.list_nodes().await.map_err(internal)?;
        let Some(mut node) = nodes.into_iter().find(|n| n.name == name) else {
            return Err(Error::NotFound(format!("node {name:?} not found")));
        };
        if let Some(max_runners) = update.max_runners {
            node.max_runners = max_runners;
            node.max_runners_override = Some(max_runners);
        }
        if let Some(enabled) = update.enabled {
            node.enabled = enabled;
        }
        self.store.put_node(&node).await.map_err(internal)?;
        // An offline node gets the settings when it registers again.
        if let Some(enabled) = update.enabled {
            self.scheduler.set_enabled(name, enabled);
        }
        if let Some(max_runners) = update.max_runners {
            self.scheduler.set_max_runners(name, max_runners).await;
        }
        let live = self.list_nodes().await?;
        Ok(live.into_iter().find(|n| n.name == name).unwrap_or(node))
    }

    async fn create_schedule(&self, spec: ScheduleSpec) -> Result<ScheduleView> {
        let _writes = self.schedule_writes.lock().await;
        let schedule = self.schedule_from(spec, None).await?;
        self.save_schedule(schedule).await
    }

    async fn update_schedule(&self, name: &str, spec: ScheduleSpec) -> Result<ScheduleView> {
        let _writes = self.schedule_writes.lock().await;
        let existing = self.schedule_by_name(name).await?;
        let schedule = self.schedule_from(spec, Some(existing)).await?;
        self.save_schedule(schedule).await
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleView>> {
        let schedules = self.store.list_schedules().await.map_err(internal)?;
        Ok(schedules.into_iter().map(view).collect())
    }

    async fn get_schedule(&self, name: &str) -> Result<ScheduleView> {
        Ok(view(self.schedule_by_name(name).await?))
    }

    async fn delete_schedule(&self, name: &str) -> Result<()> {
        let _writes = self.schedule_writes.lock().await;
        let schedule = self.schedule_by_name(name).await?;
        self.store
            .delete_schedule(schedule.id)
            .await
            .map_err(internal)?;
        self.schedules_changed.notify_one();
        Ok(())
    }

    async fn set_schedule_enabled(&self, name: &str, enabled: bool) -> Result<ScheduleView> {
        let _writes = self.schedule_writes.lock().await;
        let mut schedule = self.schedule_by_name(name).await?;
        if schedule.enabled != enabled {
            schedule.enabled = enabled;
            schedule.updated_at = Utc::now();
            // Fire times passed while disabled were never due.
            schedule.last_fire = Some(schedule.updated_at);
        }
        self.save_schedule(schedule).await
    }

    async fn run_schedule(&self, name: &str) -> Result<Task> {
        let schedule = self.schedule_by_name(name).await?;
        self.create_run(crate::cron::run_spec(&schedule, None))
            .await
    }

    async fn health(&self) -> arachne_web_api::types::Health {
        use arachne_web_api::types::{Health, HealthStatus};
        let store_error = self.scheduler.store_health.failing();
        Health {
            status: match store_error {
                Some(_) => HealthStatus::Failing,
                None => HealthStatus::Ok,
            },
            store_error,
        }
    }

    async fn metrics(&self) -> Result<Metrics> {
        let tasks = self.store.count_by_status().await.map_err(internal)?;
        let (nodes_online, runner_slots, runner_slots_in_use) = self.scheduler.slots();
        let (items_ingested, log_lines_ingested, dispatch_latency) =
            self.scheduler.telemetry.snapshot();
        Ok(Metrics {
            tasks,
            nodes_online,
            runner_slots,
            runner_slots_in_use,
            items_ingested,
            log_lines_ingested,
            dispatch_latency,
        })
    }

    async fn check_api_token(&self, secret: &str) -> Result<bool> {
        self.auth
            .check(secret, arachne_shared::TokenKind::Api)
            .await
            .map_err(internal)
    }

    fn subscribe(&self) -> broadcast::Receiver<arachne_shared::TaskChanged> {
        self.scheduler.subscribe()
    }
}
