//! The run service: creating, cancelling, restarting and deleting tasks. The HTTP adapter, the cron loop and
//! anything else that starts or stops runs call it, so the rules (placement, priorities, versions, what a
//! cancel of a task on a lost node means, which attempt of a child counts) live in one place.

use std::collections::BTreeMap;
use std::sync::Arc;

use arachne_shared::{RunMode, ScheduleId, Spider, Task, TaskId, TaskOutcome, TaskStatus};
use chrono::{DateTime, Utc};
use tracing::info;

use crate::changes::Changes;
use crate::scheduler::Scheduler;
use crate::spiders::{self, Spiders};
use crate::store::{self, Store, TaskFilter};

/// Why a run could not be created, cancelled, restarted or deleted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spider or the version it names is not there.
    #[error(transparent)]
    Spider(#[from] spiders::Error),
    #[error("task {0} not found")]
    NoTask(TaskId),
    #[error("priority must be 1 (highest) to 10, got {0}")]
    Priority(u8),
    #[error("settings.{0}")]
    Settings(#[source] arachne_shared::Invalid),
    #[error("nodes are only used by mode nodes, not {}", .0.as_str())]
    NodesOutsideNodesMode(RunMode),
    #[error("mode nodes needs at least one node")]
    NoNodesNamed,
    #[error("unknown node {0:?}: no worker of that name ever registered")]
    UnknownNode(String),
    #[error("mode all: no online, enabled node to run on")]
    NoNodeOnline,
    #[error("mode all: no online, enabled node has the labels {}", arachne_shared::task::labels_text(.0))]
    NoNodeLabelled(BTreeMap<String, String>),
    #[error(transparent)]
    Labels(arachne_shared::Invalid),
    #[error("task {id} has not ended ({status}); cancel it first")]
    NotEnded { id: TaskId, status: TaskStatus },
    #[error("task {id} already ended ({status})")]
    AlreadyEnded { id: TaskId, status: TaskStatus },
    #[error("every child of task {0} finished; nothing to restart")]
    NothingToRestart(TaskId),
    #[error(
        "task {id} is a child of task {parent}: delete the parent, which takes its children with it"
    )]
    ChildOfParent { id: TaskId, parent: TaskId },
    #[error("task {id} has not ended ({status}): cancel it first, then delete it")]
    DeleteUnended { id: TaskId, status: TaskStatus },
    /// A schedule's fire time that already has its task (created before a restart).
    #[error("the fire time {0} already has its task")]
    FireTimeTaken(DateTime<Utc>),
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One run to create, from the API or from a schedule.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub spider: String,
    pub options: arachne_shared::RunOptions,
    pub schedule_id: Option<ScheduleId>,
    pub fire_time: Option<DateTime<Utc>>,
    /// Tasks with this key never run at once.
    pub exclusive: Option<String>,
    /// A stored version to run instead of the spider's current one.
    pub version: Option<String>,
    /// The id the client gives the run (Scrapyd's `jobid`); on the task, or the parent of a run on several
    /// nodes.
    pub client_job_id: Option<String>,
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

/// Creates, cancels, restarts and deletes runs.
pub struct Runs {
    store: Arc<dyn Store>,
    scheduler: Arc<Scheduler>,
    changes: Arc<Changes>,
    spiders: Arc<Spiders>,
}

impl Runs {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        scheduler: Arc<Scheduler>,
        changes: Arc<Changes>,
        spiders: Arc<Spiders>,
    ) -> Self {
        Self {
            store,
            scheduler,
            changes,
            spiders,
        }
    }

    pub(crate) async fn spider(&self, name: &str) -> Result<Spider> {
        Ok(self.spiders.get(name).await?)
    }

    pub async fn task(&self, id: TaskId) -> Result<Task> {
        self.store.get_task(id).await?.ok_or(Error::NoTask(id))
    }

    /// A task as users see it: a parent shows the sums of its children's items and log lines.
    pub async fn shown(&self, id: TaskId) -> Result<Task> {
        let mut task = self.task(id).await?;
        self.add_child_totals(std::slice::from_mut(&mut task))
            .await?;
        Ok(task)
    }

    /// The tasks `filter` selects as users see them (see [`Runs::shown`]), and how many it selects in all.
    pub async fn list(&self, filter: &TaskFilter) -> Result<(Vec<Task>, u64)> {
        let (mut tasks, total) = self.store.list_tasks(filter).await?;
        self.add_child_totals(&mut tasks).await?;
        Ok((tasks, total))
    }

    async fn add_child_totals(&self, tasks: &mut [Task]) -> Result<()> {
        let parents: Vec<TaskId> = tasks
            .iter()
            .filter(|t| t.children > 0)
            .map(|t| t.id)
            .collect();
        if parents.is_empty() {
            return Ok(());
        }
        for totals in self.store.child_totals(&parents).await? {
            if let Some(parent) = tasks.iter_mut().find(|t| t.id == totals.parent) {
                parent.items = totals.items;
                parent.log_lines = totals.log_lines;
            }
        }
        Ok(())
    }

    /// Every task of a spider, newest first.
    pub(crate) async fn tasks_of(&self, spider: &str) -> Result<Vec<Task>> {
        let filter = TaskFilter {
            spider_name: Some(spider.to_owned()),
            ..TaskFilter::default()
        };
        Ok(self.store.all_tasks(&filter).await?)
    }

    /// Creates the tasks of one run: a single task, or a parent with one pinned child per node.
    pub async fn create(&self, run: RunRequest) -> Result<Task> {
        let mut options = run.options;
        let priority = options
            .priority
            .unwrap_or(arachne_shared::task::DEFAULT_PRIORITY);
        if !(1..=10).contains(&priority) {
            return Err(Error::Priority(priority));
        }
        options.settings.validate().map_err(Error::Settings)?;
        arachne_shared::task::validate_node_labels(&options.node_labels).map_err(Error::Labels)?;
        let mut spider = self.spider(&run.spider).await?;
        // A secret sent back masked (a form that showed the spider's settings) means the spider's own value.
        options
            .settings
            .keep_secrets_of(&spider.settings)
            .map_err(Error::Settings)?;
        if let Some(version) = run.version {
            self.spiders.manifest_of(&spider, &version).await?;
            spider.version = version;
        }
        let nodes = self
            .placement(options.mode, &options.nodes, &options.node_labels)
            .await?;
        let now = Utc::now();
        let mut task = Task::pending(&spider, now);
        task.param = options.param.filter(|p| !p.trim().is_empty());
        task.priority = priority;
        task.settings = spider.settings.overridden_by(&options.settings);
        task.mode = options.mode;
        task.node_labels = options.node_labels.clone();
        task.schedule_id = run.schedule_id;
        task.fire_time = run.fire_time;
        task.exclusive = run.exclusive;
        task.client_job_id = run.client_job_id;
        let mut tasks = Vec::new();
        match nodes.as_slice() {
            [] => tasks.push(task),
            [only] if options.mode == RunMode::Nodes => {
                task.pinned_node = Some(only.clone());
                tasks.push(task);
            }
            many => {
                for node in many {
                    let mut child = Task::pending(&spider, now);
                    child.param = task.param.clone();
                    child.priority = priority;
                    child.settings = task.settings.clone();
                    child.mode = options.mode;
                    child.node_labels = task.node_labels.clone();
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
        self.store
            .insert_tasks(&tasks)
            .await
            .map_err(|err| match (err, run.fire_time) {
                (store::Error::Duplicate(_), Some(fire_time)) => Error::FireTimeTaken(fire_time),
                (err, _) => err.into(),
            })?;
        let head = tasks.swap_remove(0);
        info!(task_id = %head.id, spider = %head.spider_name, mode = head.mode.as_str(),
            children = head.children, "task created");
        self.changes.changed(head.id);
        self.scheduler.kick();
        Ok(head)
    }

    /// The nodes a run names (mode `nodes`) or covers (mode `all`: the online ones with every label it
    /// requires); empty for mode `random`.
    pub(crate) async fn placement(
        &self,
        mode: RunMode,
        nodes: &[String],
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        match mode {
            RunMode::Random if nodes.is_empty() => Ok(Vec::new()),
            RunMode::Random | RunMode::All if !nodes.is_empty() => {
                Err(Error::NodesOutsideNodesMode(mode))
            }
            RunMode::All => {
                let online = self.scheduler.registry.online_with(labels);
                match online.is_empty() {
                    true if labels.is_empty() => Err(Error::NoNodeOnline),
                    true => Err(Error::NoNodeLabelled(labels.clone())),
                    false => Ok(online),
                }
            }
            _ => {
                if nodes.is_empty() {
                    return Err(Error::NoNodesNamed);
                }
                let known = self.store.list_nodes().await?;
                let mut named = Vec::new();
                for node in nodes {
                    if !known.iter().any(|k| &k.name == node) {
                        return Err(Error::UnknownNode(node.clone()));
                    }
                    if !named.contains(node) {
                        named.push(node.clone());
                    }
                }
                Ok(named)
            }
        }
    }

    /// Runs a task again as its next attempt; a parent re-runs its children that did not finish.
    pub async fn restart(&self, id: TaskId) -> Result<Task> {
        let task = self.task(id).await?;
        if !task.status.is_terminal() {
            return Err(Error::NotEnded {
                id,
                status: task.status,
            });
        }
        let now = Utc::now();
        if !task.is_parent() {
            let next = task.next_attempt(now, None);
            self.store.insert_task(&next).await?;
            info!(task_id = %next.id, restart_of = %id, attempt = next.attempt, "task restarted");
            self.changes.changed(next.id);
            self.scheduler.kick();
            if let Some(parent) = next.parent_id {
                self.scheduler.refresh_parent(parent).await?;
            }
            return Ok(next);
        }
        let children = self.children(id).await?;
        let unfinished: Vec<Task> = arachne_shared::task::latest_attempts(&children)
            .into_iter()
            .filter(|c| c.status != TaskStatus::Finished)
            .map(|c| c.next_attempt(now, None))
            .collect();
        if unfinished.is_empty() {
            return Err(Error::NothingToRestart(id));
        }
        self.store.insert_tasks(&unfinished).await?;
        info!(task_id = %id, children = unfinished.len(), "parent task restarted: re-running its unfinished children");
        for child in &unfinished {
            self.changes.changed(child.id);
        }
        self.scheduler.refresh_parent(id).await?;
        self.scheduler.kick();
        self.task(id).await
    }

    /// Cancels a task that has not ended; a parent cancels its children.
    pub async fn cancel(&self, id: TaskId) -> Result<Task> {
        let task = self.task(id).await?;
        if task.status.is_terminal() {
            return Err(Error::AlreadyEnded {
                id,
                status: task.status,
            });
        }
        if task.is_parent() {
            for child in self.children(id).await? {
                if !child.status.is_terminal() {
                    self.cancel_one(child.id).await?;
                }
            }
            self.scheduler.refresh_parent(id).await?;
            return self.task(id).await;
        }
        self.cancel_one(id).await
    }

    /// Deletes an ended task with its logs and items; a parent takes its children with it.
    pub async fn delete(&self, id: TaskId) -> Result<()> {
        let task = self.task(id).await?;
        if let Some(parent) = task.parent_id {
            // A parent's status is derived from all its children; it must not lose one.
            return Err(Error::ChildOfParent { id, parent });
        }
        let children = if task.is_parent() {
            self.children(id).await?
        } else {
            Vec::new()
        };
        if let Some(running) = std::iter::once(&task)
            .chain(&children)
            .find(|t| !t.status.is_terminal())
        {
            return Err(Error::DeleteUnended {
                id: running.id,
                status: running.status,
            });
        }
        // Children first, so a parent never outlives a child half-deleted by a failure.
        for child in children.iter().chain(std::iter::once(&task)) {
            self.store.delete_task(child).await?;
            self.changes.changed(child.id);
        }
        info!(task_id = %id, children = children.len(), "task deleted");
        Ok(())
    }

    /// Ends a task here when `only` allows it; `None` when it did not apply.
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
            .await?;
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
        let mut children = self.store.all_tasks(&filter).await?;
        children.reverse();
        Ok(children)
    }
}
