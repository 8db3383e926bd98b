//! Arachne's HTTP contract. This crate owns the routes ([`router`]), the request and response types
//! ([`types`]), a typed [`client::Client`], and the `arachne` CLI.
//!
//! Architecture invariant: the master is reached only through the [`Backend`] trait. Nothing here knows how
//! the master stores, schedules or runs anything, and the master knows nothing of HTTP.

mod csv;
mod error;
mod metrics;
mod openapi;
mod routes;
pub mod scrapyd;
mod ui;

use arachne_shared::files::VersionInfo;
use arachne_shared::notify::{Delivery, Notification};
use arachne_shared::{AuditEntry, Caller, TokenInfo, UserInfo};
use arachne_shared::{ItemRecord, LogLine, TaskChanged, TaskId};
use tokio::sync::broadcast;

pub use arachne_api_types as types;
pub use arachne_api_types::{CLIENT_HEADER, ItemSource};
pub use error::Error;
pub use routes::{RouterOptions, router};
use types::{
    CreateSpider, Node, Page, RunTask, ScheduleSpec, ScheduleView, Spider, Task, TaskQuery,
    UpdateNode, Upload, VersionFiles,
};

/// Result of backend calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A page of a spider's items, as [`Backend::spider_items`] finds it.
#[derive(Debug)]
pub struct FoundItems {
    pub items: Vec<arachne_shared::results::FoundItem>,
    /// How many match in all, when counted.
    pub total: Option<u64>,
    /// Where the next page starts, while there may be one.
    pub next: Option<String>,
}

/// Everything the HTTP layer needs from the master.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Creates a spider, or updates the command of an existing one with the same name.
    async fn put_spider(&self, spider: CreateSpider) -> Result<Spider>;
    /// Stores a new version of the spider's files and makes it current.
    async fn upload_files(&self, name: &str, upload: Upload) -> Result<types::UploadedSpider>;
    /// Every stored version of the spider, newest first.
    async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>>;
    /// Makes a stored version the one runs use.
    async fn set_current_version(&self, name: &str, version: &str) -> Result<Spider>;
    /// Deletes a version that is not current and that no unended task runs; contents no other version names
    /// go with it. A refusal is a `Conflict` that says why.
    async fn delete_version(&self, name: &str, version: &str) -> Result<()>;
    /// Deletes a spider with its versions and schedules, and with `tasks` its tasks, logs and items; a
    /// `Conflict` while any of its tasks has not ended.
    async fn delete_spider(&self, name: &str, tasks: bool) -> Result<types::DeletedSpider>;
    /// The files of a version (the current one when `None`).
    async fn list_files(&self, name: &str, version: Option<String>) -> Result<VersionFiles>;
    /// The content of one file of a version (the current one when `None`).
    async fn read_file(&self, name: &str, path: &str, version: Option<String>) -> Result<Vec<u8>>;
    /// Stores a Scrapy egg as the new current version of `project` (a spider, made if missing) that its
    /// client calls `version`; the Scrapy spiders it holds.
    async fn deploy_egg(&self, project: &str, version: &str, egg: Vec<u8>) -> Result<Vec<String>>;
    /// A Scrapy project's versions, oldest first, with the names their clients gave them.
    async fn scrapy_versions(&self, project: &str) -> Result<Vec<types::ScrapyVersion>>;
    /// The stored version a client's version name (or a unique prefix of a hash) means.
    async fn scrapy_version(&self, project: &str, name: &str) -> Result<String>;
    /// Deletes a version of a Scrapy project as Scrapyd does (the newest other one becomes current; the
    /// project goes with its last version); whether the project went.
    async fn scrapy_delete_version(&self, project: &str, name: &str) -> Result<bool>;
    /// The Scrapy spiders of a version (a client's name or a hash; the current one when `None`), found once per
    /// version by running `scrapy list`.
    async fn scrapy_spiders(&self, project: &str, version: Option<&str>) -> Result<Vec<String>>;
    async fn list_spiders(&self) -> Result<Vec<Spider>>;
    async fn get_spider(&self, name: &str) -> Result<Spider>;
    /// Creates a task (or a parent task with its children, by mode); Pending when this returns.
    async fn run_task(&self, run: RunTask) -> Result<Task>;
    /// A run as Scrapyd's `schedule.json` starts one: `run_task`, with the job id its client chose, if any.
    async fn run_job(&self, run: RunTask, client_job_id: Option<String>) -> Result<Task>;
    /// Runs an ended task again as its next attempt; for a parent, re-runs only the children that did not
    /// finish. Returns the new task (or the parent).
    async fn restart_task(&self, id: TaskId) -> Result<Task>;
    async fn list_tasks(&self, query: TaskQuery) -> Result<Page<Task>>;
    async fn get_task(&self, id: TaskId) -> Result<Task>;
    /// Cancels a task that has not ended; its process group is killed. Cancelling a parent cancels its children.
    async fn cancel_task(&self, id: TaskId) -> Result<Task>;
    /// Deletes an ended task with its log lines and items; a parent goes with its children. A task that has
    /// not ended, or a child (its parent's status depends on it), is a `Conflict`.
    async fn delete_task(&self, id: TaskId) -> Result<()>;
    /// Log lines with `seq > after`, oldest first.
    async fn logs(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<LogLine>>;
    /// Items with `seq > after`, oldest first.
    async fn items(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<ItemRecord>>;
    /// A page of the items of a spider (or of a results collection) across its tasks that match `query` (its
    /// `format` aside), newest first; with `count`, how many match in all.
    async fn spider_items(
        &self,
        source: &ItemSource,
        query: types::SpiderItemQuery,
        count: bool,
    ) -> Result<FoundItems>;
    /// The watched spiders folder and what became of each of its folders.
    async fn spider_folders(&self) -> Result<types::SpiderFolders>;
    async fn list_nodes(&self) -> Result<Vec<Node>>;
    /// Changes a node's settings at run time; they persist across its reconnects.
    async fn update_node(&self, name: &str, update: UpdateNode) -> Result<Node>;
    /// Forgets an offline node; a `Conflict` that says why while it is online, holds or awaits a task, or a
    /// schedule names it.
    async fn remove_node(&self, name: &str) -> Result<()>;
    async fn create_schedule(&self, spec: ScheduleSpec) -> Result<ScheduleView>;
    /// Replaces a schedule's definition (found by name or id); its fire history is kept.
    async fn update_schedule(&self, name: &str, spec: ScheduleSpec) -> Result<ScheduleView>;
    async fn list_schedules(&self) -> Result<Vec<ScheduleView>>;
    async fn get_schedule(&self, name: &str) -> Result<ScheduleView>;
    async fn delete_schedule(&self, name: &str) -> Result<()>;
    async fn set_schedule_enabled(&self, name: &str, enabled: bool) -> Result<ScheduleView>;
    /// Runs a schedule's spider now, as the schedule would, without waiting for its next fire time.
    async fn run_schedule(&self, name: &str) -> Result<Task>;
    /// The overview: runs that ended over the last days, overall, per day and per spider, and the nodes' load.
    async fn stats(&self, query: types::StatsQuery) -> Result<arachne_shared::stats::Stats>;
    /// Every notification rule, by name, its secrets masked.
    async fn list_notifications(&self) -> Result<Vec<Notification>>;
    async fn get_notification(&self, name: &str) -> Result<Notification>;
    /// Stores a rule: a new one (`Conflict` if the name is taken), or with `replace` in place of the one of
    /// that name, whose secrets a masked value keeps.
    async fn put_notification(&self, rule: Notification, replace: bool) -> Result<Notification>;
    /// Deletes a rule; its deliveries stay as history.
    async fn delete_notification(&self, name: &str) -> Result<()>;
    /// Sends a test message on the rule's channel; the delivery, pending.
    async fn test_notification(&self, name: &str) -> Result<Delivery>;
    /// Deliveries, newest first.
    async fn list_deliveries(&self, query: types::DeliveryQuery) -> Result<Vec<Delivery>>;
    /// The figures `/metrics` reports.
    async fn metrics(&self) -> Result<types::Metrics>;
    /// What `/health` reports: whether the master's store takes writes.
    async fn health(&self) -> types::Health;
    /// Who an API token's secret speaks for, with which role; `None` for one that is unknown, revoked or
    /// expired. Asked on every request under `/api/v1` unless the router was built without authentication.
    async fn caller(&self, secret: &str) -> Result<Option<Caller>>;
    /// Records a change a caller made (or a sign-in tried); a failure is logged, never the request's.
    async fn record_audit(&self, entry: AuditEntry);
    /// The audit log, newest first.
    async fn audit(&self, query: types::AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Checks a user's name and password and makes a session token for the web UI; `Unauthorized` when
    /// either is wrong.
    async fn sign_in(&self, sign_in: types::SignIn) -> Result<types::CreatedToken>;
    /// Revokes the caller's session token.
    async fn sign_out(&self, caller: &Caller) -> Result<()>;
    async fn list_users(&self) -> Result<Vec<UserInfo>>;
    async fn create_user(&self, user: types::CreateUser) -> Result<UserInfo>;
    async fn update_user(&self, name: &str, update: types::UpdateUser) -> Result<UserInfo>;
    /// Deletes a user with every token of theirs.
    async fn delete_user(&self, name: &str) -> Result<()>;
    /// Every token (never a secret).
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>>;
    async fn create_token(
        &self,
        caller: &Caller,
        token: types::CreateToken,
    ) -> Result<types::CreatedToken>;
    async fn revoke_token(&self, name: &str) -> Result<()>;
    /// Wakes up on every change of any task (its record, or new logs and items). Only a hint: readers re-read
    /// the store, so a lagging receiver loses nothing.
    fn subscribe(&self) -> broadcast::Receiver<TaskChanged>;
}
