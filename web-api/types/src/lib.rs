//! Arachne's HTTP contract: the request and response types of the API, its error body, and the header its own
//! clients send. Tasks, spiders, nodes and schedules are shown as types of their own ([`Task`], [`Spider`],
//! [`Node`], [`Schedule`]), apart from the master's records of them; other responses reuse plain value types
//! from `arachne_shared` (settings, statuses, progress). The server, the client and the CLI all build on this
//! crate, so each compiles only what it uses.

use std::collections::BTreeMap;

use arachne_shared::schedule::{MisfirePolicy, OverlapPolicy};
use arachne_shared::spider::{Dedup, RunSettings};
use arachne_shared::{RunMode, ScheduleId, TaskId, TaskStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Converts a master's record into its API type field by field. The record is taken apart by name, so a
/// field the record gains fails to compile here until someone decides whether the API shows it; `computed`
/// fields are read from the whole record first, and `shown` fields pass through a function on their way out
/// (settings, whose secret values are masked).
macro_rules! shown_as_stored {
    ($record:path => $api:ident { $($field:ident),* $(,)? }
        $(computed { $($extra:ident: $read:path),* $(,)? })?
        $(shown { $($shown:ident: $show:path),* $(,)? })?) => {
        impl From<$record> for $api {
            fn from(record: $record) -> Self {
                $($(let $extra = $read(&record);)*)?
                let $record { $($field),* } = record;
                $($(let $shown = $show($shown);)*)?
                Self { $($field,)* $($($extra,)*)? }
            }
        }
    };
}

mod catalog;
mod task;
pub use catalog::{Node, Schedule, Spider};
pub use task::Task;

/// The answer to `PUT /api/v1/spiders/{name}/files`: the spider, its new version current.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UploadedSpider {
    #[serde(flatten)]
    pub spider: Spider,
    /// The one folder every uploaded file was in (an archive of the spider's folder rather than of its
    /// contents), whose contents became the version's files so the command finds them at the top. Absent
    /// when nothing was unwrapped; never unwrapped when the command names a path in that folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwrapped: Option<String>,
}

/// `GET /api/v1/spider-folders`: the watched spiders folder (`--spiders-dir`) and what became of each of its
/// spider folders.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpiderFolders {
    /// The watched folder; absent when the master watches none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    pub folders: Vec<SpiderFolder>,
}

/// One spider folder of the watched folder.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpiderFolder {
    pub folder: String,
    /// The spider it defines, once its `arachne.toml` could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
    pub status: FolderStatus,
    /// Why it could not be synced (a broken `arachne.toml`, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// When the watcher last found it so.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FolderStatus {
    /// Its files are the spider's current version.
    Synced,
    /// It could not be synced; its spider, if any, keeps its last good version.
    Broken,
    /// The folder is gone; its spider stays until someone deletes it.
    Removed,
}

/// `POST /api/v1/spiders`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSpider {
    pub name: String,
    /// Shell command run in the spider's folder, for example `python3 main.py`.
    pub cmd: String,
    /// How its runs are supervised. When absent, an existing spider keeps its settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<RunSettings>,
    /// At most this many of its tasks run at once across the cluster. When absent, an existing spider keeps
    /// its limit; 0 removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// The collection its items go to in a MongoDB store (`results_<name>` by default). When absent, an
    /// existing spider keeps its own; "" restores the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_collection: Option<String>,
    /// Items with equal values in these key fields are stored once per results collection. When absent, an
    /// existing spider keeps its own; empty `keys` turns de-duplication off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Dedup>,
}

/// Declares a request type that starts runs (a run, a schedule): its own fields, then the run options every
/// such request takes, declared once here.
macro_rules! with_run_options {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
            /// Arguments appended to the spider's command.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub param: Option<String>,
            /// 1 (highest) to 10; 5 by default.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub priority: Option<u8>,
            /// Overrides of the spider's settings for the run; `env` is merged.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub settings: Option<RunSettings>,
            /// `random` (default), `nodes` (one task per node in `nodes`) or `all` (one child task per online
            /// node).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub mode: Option<RunMode>,
            /// The nodes of mode `nodes`.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub nodes: Vec<String>,
            /// Labels a node must have, all of them, to take the run (`{"region": "eu"}`); in mode `all`,
            /// only the online nodes that have them get a child. A task no online node matches waits, and
            /// says so.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub node_labels: BTreeMap<String, String>,
        }
    };
}

with_run_options! {
    /// `POST /api/v1/tasks`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RunTask {
        /// Spider name.
        pub spider: String,
        /// A stored version of the spider to run instead of its current one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub version: Option<String>,
    }
}

/// `GET /api/v1/tasks/{id}/tree`: a task and its child tasks, oldest child first.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskTree {
    #[serde(flatten)]
    pub task: Task,
    #[serde(default)]
    pub children_tasks: Vec<Task>,
}

with_run_options! {
    /// `POST /api/v1/schedules` and `PUT /api/v1/schedules/{name}`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ScheduleSpec {
        pub name: String,
        /// Spider name.
        pub spider: String,
        /// 5 fields (minute first), 6 fields (seconds first), or @hourly, @daily, @weekly, @monthly.
        pub cron: String,
        /// IANA time zone; UTC by default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timezone: Option<String>,
        /// True by default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub enabled: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub overlap: Option<OverlapPolicy>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub misfire: Option<MisfirePolicy>,
    }
}

/// A schedule with its next fire times.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The next 5 fire times (none while disabled).
    pub next: Vec<DateTime<Utc>>,
}

/// `GET /api/v1/tasks` filters and paging.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// Spider name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// Node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only the children of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TaskId>,
    /// Only tasks this schedule created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleId>,
    /// Only tasks created at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Only tasks created before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
}

/// Default and largest page size of listings.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size a client may ask for.
pub const MAX_LIMIT: u32 = 10_000;

/// One page of a listing, newest first, with the total that matches the filters.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// `GET /api/v1/tasks/{id}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines with a larger sequence number.
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
    /// Stream as Server-Sent Events until the task ends.
    #[serde(default)]
    pub follow: Option<bool>,
}

impl LogQuery {
    /// A page of `limit` lines after sequence number `after`, not followed.
    pub fn page(after: Option<u64>, limit: Option<u32>) -> Self {
        Self {
            after,
            limit,
            follow: None,
        }
    }
}

/// `GET /api/v1/tasks/{id}/logs/search`: lines holding `q`, scanned from `after` on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSearchQuery {
    /// The text to find, case-insensitively.
    pub q: String,
    /// Scan only lines with a larger sequence number.
    #[serde(default)]
    pub after: Option<u64>,
    /// Stop after this many matching lines (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One bounded step of a log search. A request scans at most [`LOG_SEARCH_SCAN`] lines, so searching a
/// million-line log is a series of quick requests (`after = scanned_to`) a client can show progress for and
/// stop, never one that holds the server.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogSearch {
    /// Matching lines, oldest first.
    pub lines: Vec<arachne_shared::LogLine>,
    /// The sequence number of the last line scanned; continue after it.
    pub scanned_to: u64,
    /// Every stored line was scanned.
    pub done: bool,
}

/// Lines one log search request scans at most.
pub const LOG_SEARCH_SCAN: u32 = 50_000;

/// `GET /api/v1/cron`: a cron expression to check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronQuery {
    /// 5 fields (minute first), 6 fields (seconds first) or @hourly/@daily/@weekly/@monthly.
    pub cron: String,
    /// IANA time zone; UTC by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
}

/// A valid cron expression's next fire times.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CronPreview {
    /// The next 5 fire times from now.
    pub next: Vec<DateTime<Utc>>,
}

/// Export formats of items.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ItemFormat {
    #[default]
    Json,
    Jsonl,
    /// Every item of the task as one CSV file (unless `limit` is given): a column per top-level field, in the
    /// order fields first appear; nested values as JSON text.
    Csv,
}

/// `GET /api/v1/tasks/{id}/items`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemQuery {
    /// Only items with a larger sequence number.
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub format: Option<ItemFormat>,
}

/// `GET /api/v1/spiders/{name}/items`: the spider's items across its tasks, newest first (newest task first,
/// then its last item first).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpiderItemQuery {
    /// Only this task's items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// Only items stored at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Only items stored before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Conditions that must all hold, one per `where` parameter: `FIELD=VALUE` (equals: a string field the
    /// text, a number field the number, a boolean or null field `true`, `false`, `null`), `FIELD~TEXT` (a
    /// string field contains the text, case-sensitive), `FIELD` (present). Dots name nested fields
    /// (`price.amount`); an array field equals or contains nothing.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Items per page (default 100, at most 10,000); with an export, at most this many (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Absent: one page as JSON, with the total. `json` (an array), `jsonl` or `csv`: every matching item as
    /// one file, streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ItemFormat>,
}

/// A page of a spider's items.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpiderItems {
    pub items: Vec<arachne_shared::results::FoundItem>,
    /// How many items match the query in all.
    pub total: u64,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl ItemQuery {
    /// A page of `limit` items after sequence number `after`, as JSON.
    pub fn page(after: Option<u64>, limit: Option<u32>) -> Self {
        Self {
            after,
            limit,
            format: None,
        }
    }
}

/// `GET /api/v1/tasks/{id}/wait`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait at most (default 30, at most 300).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `POST /api/v1/sign-in`: a user's name and password.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub name: String,
    pub password: String,
}

/// A token made for a caller: its secret, shown this once, and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreatedToken {
    /// Send it as `Authorization: Bearer <secret>`.
    pub secret: String,
    #[serde(flatten)]
    pub token: arachne_shared::TokenInfo,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    pub role: arachne_shared::Role,
    /// At least 10 characters; stored only as an argon2id hash.
    pub password: String,
}

/// `PATCH /api/v1/users/{name}`: what to change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<arachne_shared::Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// `api` (default) or `worker`.
    #[serde(default = "api_kind")]
    pub kind: arachne_shared::TokenKind,
    /// What an API token may do (default viewer); at most its user's role.
    #[serde(default = "viewer")]
    pub role: arachne_shared::Role,
    /// The user it acts for; the caller's own user by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// It stops working after this many days (1 to 3650); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

fn api_kind() -> arachne_shared::TokenKind {
    arachne_shared::TokenKind::Api
}

fn viewer() -> arachne_shared::Role {
    arachne_shared::Role::Viewer
}

/// `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only what this user (or `token:NAME`) did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Entries older than this one (the last `id` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<arachne_shared::AuditId>,
    /// At most this many (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Whose items a results search reads: one spider's, or those of every spider that stores its items in one
/// results collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemSource {
    Spider(String),
    Collection(String),
}

impl ItemSource {
    /// The spider's or the collection's name.
    pub fn name(&self) -> &str {
        let (Self::Spider(name) | Self::Collection(name)) = self;
        name
    }

    /// Its items' route under `/api/v1`.
    pub fn path(&self) -> String {
        match self {
            Self::Spider(name) => format!("/spiders/{name}/items"),
            Self::Collection(name) => format!("/results/{name}/items"),
        }
    }
}

/// `GET /api/v1/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// The window: the last this many days (default 7; 1 is the last 24 hours, per hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    /// Only this spider's runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
}

/// `GET /api/v1/notification-deliveries`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only this notification's deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<String>,
    /// At most this many (default 50, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `PATCH /api/v1/nodes/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNode {
    /// Runner slots: how many tasks the node runs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runners: Option<u32>,
    /// A disabled node gets no new tasks; the ones it runs carry on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Over this CPU use (percent) the node takes no new task until it is back under it; wins over the
    /// cluster-wide threshold. 0 removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<f32>,
    /// The same for memory in use (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_percent: Option<f32>,
}

/// The SSE event name of a log line; its `id` is the line's sequence number and its data the line as JSON.
pub const EVENT_LOG: &str = "log";
/// The SSE event sent last, when the task has ended; its data is the task as JSON.
pub const EVENT_END: &str = "end";

/// The SSE event of `GET /api/v1/events` sent when a task's status or record changes (a STATUS report moves
/// its `progress`); its data is the task as JSON.
pub const EVENT_TASK: &str = "task";
/// The SSE event of `GET /api/v1/events` sent when a task was deleted; its data is `{"id": "<task id>"}`.
pub const EVENT_DELETED: &str = "deleted";
/// The SSE event of `GET /api/v1/events` sent when the subscriber fell behind and changes were skipped; its
/// data is `{"missed": N}`. Re-read what you show.
pub const EVENT_LAGGED: &str = "lagged";

/// `GET /api/v1/events` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only tasks of this spider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
    /// Only this task and its children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
}

pub use arachne_shared::upload::{Spool, Upload, UploadedFile};

/// `GET /api/v1/spiders/{name}/files`: the files of one version.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VersionFiles {
    pub version: String,
    pub files: Vec<arachne_shared::files::FileEntry>,
}

/// `?version=` of the file routes: the spider's current version when absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `?tasks=` of `DELETE /api/v1/spiders/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteSpiderQuery {
    /// Also delete its tasks with their logs and items; without it they stay, under the spider's name.
    #[serde(default)]
    pub tasks: bool,
}

/// `DELETE /api/v1/spiders/{name}`: what went with the spider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeletedSpider {
    pub versions: u64,
    pub schedules: u64,
    /// Runs deleted with their logs and items (a parent with its children counts once).
    pub tasks: u64,
}

/// `GET /health`: `ok` (status 200), or `failing` (status 503) while the store refuses writes, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// The latest store failure, while writes fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Failing,
}

/// `GET /metrics`, before it is written out in the Prometheus text format.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Metrics {
    /// Tasks in the store by status (every status, zero included).
    pub tasks: Vec<(TaskStatus, u64)>,
    /// Workers connected now.
    pub nodes_online: u64,
    /// Runner slots of the connected workers, and how many of them hold a task.
    pub runner_slots: u64,
    pub runner_slots_in_use: u64,
    /// Items and log lines this master stored since it started.
    pub items_ingested: u64,
    pub log_lines_ingested: u64,
    /// Seconds from a task being ready to run to its hand-over to a worker.
    pub dispatch_latency: Histogram,
}

pub use arachne_shared::histogram::Histogram;

/// The JSON body of an error response: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// The header Arachne's own clients (the CLI, the web UI) send. Without tokens, a state-changing request needs
/// it or a JSON body, which a page of another site cannot make a browser send.
pub const CLIENT_HEADER: &str = "x-arachne-client";

/// A version of a Scrapy project as Scrapyd's clients know it: the name its client deployed it as, and the
/// stored version it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScrapyVersion {
    pub label: String,
    pub hash: String,
}

/// `GET /api/v1/spiders/{name}/scrapy-spiders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScrapySpiders {
    pub spiders: Vec<String>,
}
