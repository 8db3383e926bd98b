//! Persistence behind small capability traits ([`CatalogStore`], [`TaskStore`], [`OutputStore`],
//! [`TokenStore`] (tokens and users), [`NotifyStore`], [`AuditStore`]; [`Store`] is all of them), one folder per backend with one file per capability. The
//! embedded SQLite store is the default and needs no service; the MongoDB backend implements the same traits
//! for production. [`open`] picks the backend a configuration names.
//!
//! Architecture invariant: every state change of a task goes through [`TaskStore::update_task`], a
//! conditional update, so two writers racing on one task (the dispatcher and a cancel, say) can never both
//! win.

pub mod embedded;
pub mod mongo;

use arachne_shared::notify::{Delivery, Notification};
use arachne_shared::results::{FoundItem, ItemSearch};
use arachne_shared::stats::HourStats;
use arachne_shared::{
    AuditEntry, AuditId, ItemRecord, ItemTarget, LogLine, Node, Schedule, ScheduleId, Spider,
    SpiderId, Task, TaskId, TaskStatus, Token, User,
};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("task {0} kept changing under an update")]
    Contended(TaskId),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("{0} already exists")]
    Duplicate(String),
}

/// Result of store calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored id read back; one that does not parse is a corrupt record.
pub(crate) fn parse_stored_id<T: std::str::FromStr>(text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| Error::Corrupt(format!("stored id {text:?}: {e}")))
}

/// Filters of [`Store::list_tasks`]. Results are newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub spider_name: Option<String>,
    pub status: Option<TaskStatus>,
    pub node: Option<String>,
    pub parent_id: Option<TaskId>,
    pub schedule_id: Option<ScheduleId>,
    /// Only tasks created at or after this time (to the millisecond).
    pub created_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only tasks created before this time (to the millisecond).
    pub created_until: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: u32,
    pub offset: u32,
}

/// What a parent's children produced together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildTotals {
    pub parent: TaskId,
    pub items: u64,
    pub log_lines: u64,
}

/// Which tasks [`Store::count_active`] counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveScope {
    /// Tasks of one spider.
    Spider(String),
    /// Tasks sharing an exclusivity key ([`Task::exclusive`]).
    Exclusive(String),
    /// Tasks a schedule created.
    Schedule(ScheduleId),
}

impl TaskFilter {
    /// The creation-time bounds as bounds on task ids (which are time-ordered): `since` inclusive, `until`
    /// exclusive, both to the millisecond, the precision of an id's time.
    pub fn id_range(&self) -> (Option<TaskId>, Option<TaskId>) {
        (
            self.created_since.map(TaskId::first_at),
            self.created_until.map(TaskId::first_at),
        )
    }
}

/// A change to apply to a task if its status is one of `expected`. It returns `false` to leave the task as it
/// was, which lets a caller check more than the status (for example "not yet handed to a node") atomically.
/// A backend may run it again on a freshly read task after losing a race, so it depends only on the task.
pub type TaskChange = Box<dyn FnMut(&mut Task) -> bool + Send + 'static>;

/// Spiders, nodes and schedules: the small records users name.
#[async_trait::async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Inserts or replaces a spider, keyed by id. A different spider with the same name is a `Duplicate`.
    async fn put_spider(&self, spider: &Spider) -> Result<()>;
    async fn spider_by_name(&self, name: &str) -> Result<Option<Spider>>;
    async fn list_spiders(&self) -> Result<Vec<Spider>>;
    /// Removes a spider's record; false if there was none. Its versions, schedules and tasks are the
    /// caller's to remove first.
    async fn delete_spider(&self, id: SpiderId) -> Result<bool>;

    async fn put_node(&self, node: &Node) -> Result<()>;
    async fn list_nodes(&self) -> Result<Vec<Node>>;
    /// Removes a node's record; false if there was none.
    async fn delete_node(&self, name: &str) -> Result<bool>;

    /// Inserts or replaces a schedule, keyed by id. A different schedule with the same name is a `Duplicate`.
    async fn put_schedule(&self, schedule: &Schedule) -> Result<()>;
    async fn get_schedule(&self, id: ScheduleId) -> Result<Option<Schedule>>;
    async fn list_schedules(&self) -> Result<Vec<Schedule>>;
    /// Removes a schedule; false if there was none. Its tasks stay.
    async fn delete_schedule(&self, id: ScheduleId) -> Result<bool>;
}

/// Tasks: inserted all together or not, changed only by conditional updates, listed, ordered for dispatch,
/// and removed past their retention.
#[async_trait::async_trait]
pub trait TaskStore: Send + Sync + 'static {
    async fn insert_task(&self, task: &Task) -> Result<()> {
        self.insert_tasks(std::slice::from_ref(task)).await
    }
    /// Inserts tasks all together or none. A second task for the same schedule fire time (a parent, or a
    /// task without one) is a `Duplicate`, which is what makes a fire time run once, also across restarts.
    async fn insert_tasks(&self, tasks: &[Task]) -> Result<()>;
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>>;
    /// Tasks matching `filter`, newest first, and how many match in all.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<(Vec<Task>, u64)>;
    /// How many tasks there are of each status, every status listed (zero included), in life-cycle order.
    async fn count_by_status(&self) -> Result<Vec<(TaskStatus, u64)>>;
    /// Every task matching `filter` (its `limit` and `offset` are ignored), newest first, read in pages.
    async fn all_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        const PAGE: u32 = 1000;
        let mut tasks = Vec::new();
        loop {
            let page = TaskFilter {
                limit: PAGE,
                offset: tasks.len() as u32,
                ..filter.clone()
            };
            let (found, _) = self.list_tasks(&page).await?;
            let full = found.len() == PAGE as usize;
            tasks.extend(found);
            if !full {
                return Ok(tasks);
            }
        }
    }
    /// Every task matching `filter` (its `status`, `limit` and `offset` are ignored) that has not ended,
    /// newest first.
    async fn unended_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        for status in TaskStatus::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let filter = TaskFilter {
                status: Some(status),
                ..filter.clone()
            };
            tasks.extend(self.all_tasks(&filter).await?);
        }
        tasks.sort_by_key(|t| std::cmp::Reverse(t.id));
        Ok(tasks)
    }
    /// Applies `change` atomically if the task's status is in `expected`. Returns the updated task, or `None`
    /// when the task does not exist, its status did not match, or `change` declined.
    async fn update_task(
        &self,
        id: TaskId,
        expected: &[TaskStatus],
        change: TaskChange,
    ) -> Result<Option<Task>>;
    /// Removes the tasks that ended before `cutoff`, with their log lines (items stay: they are the crawl's
    /// results). Tasks that have not ended are never removed, however old. Returns how many tasks went.
    /// Tasks that ended at or after `since` (to the millisecond), in the order they ended (then by id),
    /// after the task `after` ended at `since` when given: the next page starts from the last one's end.
    async fn ended_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<Task>>;
    /// The hourly roll-ups of ended runs from the hour of `since` on, one spider's when named. Each backend
    /// adds a task to its hour's roll-up as it writes the task's end.
    async fn run_stats(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        spider: Option<&str>,
    ) -> Result<Vec<HourStats>>;
    async fn delete_ended_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64>;
    /// Removes one ended task with its log lines and its items; false if there was no such task. Tasks that
    /// have not ended are left alone (false), so a running task's records never vanish under it.
    async fn delete_task(&self, task: &Task) -> Result<bool>;
    /// The sums of the children's items and log lines of each of these parents (parents without children are
    /// left out).
    async fn child_totals(&self, parents: &[TaskId]) -> Result<Vec<ChildTotals>>;
    /// Pending tasks not yet handed to a node (parents excluded), by priority (1 first) then age.
    async fn dispatchable(&self, limit: u32, offset: u32) -> Result<Vec<Task>>;
    /// How many tasks in `scope` are handed to a node and not ended (Running, or Pending on a node).
    async fn count_active(&self, scope: &ActiveScope) -> Result<u64>;
}

/// What runs produce: log lines and items, stored idempotently by sequence number.
#[async_trait::async_trait]
pub trait OutputStore: Send + Sync + 'static {
    /// Stores log lines; a line whose sequence number is already stored is skipped, so retries are safe.
    async fn append_logs(&self, task: TaskId, lines: &[LogLine]) -> Result<()>;
    async fn logs(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<LogLine>>;
    /// Stores items of `target.task`; an item whose sequence number is already stored is skipped, so retries
    /// are safe. With `target.dedup`, an item whose key is already stored in `target.collection` (by any task)
    /// is dropped (`ignore`) or replaces the stored one and moves to this task (`overwrite`). The task's `items`
    /// counter becomes the highest sequence number stored: the items it produced.
    async fn insert_items(&self, target: &ItemTarget, items: &[ItemRecord]) -> Result<()>;
    async fn items(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<ItemRecord>>;
    /// A spider's items across its tasks that match `search`, newest first (newest task first, then last
    /// item first), at most `search.limit` of them.
    async fn find_items(&self, search: &ItemSearch) -> Result<Vec<FoundItem>>;
    /// How many items match `search`, whatever its cursor and limit.
    async fn count_items(&self, search: &ItemSearch) -> Result<u64>;
}

/// Access tokens, by the hash of their secret.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Adds a token; one with the same name (or, however unlikely, the same hash) is a `Duplicate`.
    async fn insert_token(&self, token: &Token) -> Result<()>;
    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>>;
    /// Every token, by name.
    async fn list_tokens(&self) -> Result<Vec<Token>>;
    /// Removes a token; false if there was none.
    async fn delete_token(&self, name: &str) -> Result<bool>;

    /// Adds a user; one with the same name is a `Duplicate`.
    async fn insert_user(&self, user: &User) -> Result<()>;
    /// Replaces a user's record, by name; false if there was none.
    async fn replace_user(&self, user: &User) -> Result<bool>;
    async fn user_by_name(&self, name: &str) -> Result<Option<User>>;
    /// Every user, by name.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Removes a user; false if there was none. Their tokens are the caller's to revoke.
    async fn delete_user(&self, name: &str) -> Result<bool>;
}

/// The audit log: who changed what through the API, and when.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync + 'static {
    async fn insert_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Entries newest first, older than `before` when given, one actor's when named.
    async fn list_audit(
        &self,
        actor: Option<&str>,
        before: Option<AuditId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>>;
}

/// Notification rules, by name, and their deliveries.
#[async_trait::async_trait]
pub trait NotifyStore: Send + Sync + 'static {
    /// Inserts or replaces a rule, by name.
    async fn put_notification(&self, notification: &Notification) -> Result<()>;
    /// Every rule, by name.
    async fn list_notifications(&self) -> Result<Vec<Notification>>;
    /// Removes a rule; false if there was none. Its deliveries stay, as history.
    async fn delete_notification(&self, name: &str) -> Result<bool>;
    /// Records a delivery to make; false, with nothing stored, when the rule already has one for that
    /// trigger and subject (a task's end seen twice is announced once).
    async fn insert_delivery(&self, delivery: &Delivery) -> Result<bool>;
    /// Replaces a delivery's record, by id.
    async fn put_delivery(&self, delivery: &Delivery) -> Result<()>;
    /// Pending deliveries, the earliest next attempt first.
    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<Delivery>>;
    /// Deliveries, newest first; only one rule's when named.
    async fn list_deliveries(
        &self,
        notification: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>>;
}

/// The whole storage interface of the master: every capability. A part of the master that needs only one
/// holds that one (`Arc<dyn TokenStore>`, ...); a backend implements each, and is then a `Store`.
pub trait Store:
    CatalogStore + TaskStore + OutputStore + TokenStore + NotifyStore + AuditStore
{
}

impl<T: CatalogStore + TaskStore + OutputStore + TokenStore + NotifyStore + AuditStore> Store
    for T
{
}
