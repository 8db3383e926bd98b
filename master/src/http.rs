//! The HTTP adapter: the master's implementation of the web-api [`Backend`]. It only maps: requests into the
//! services' own types, their answers and errors into the API's. No rule lives here.

use std::sync::Arc;

use arachne_shared::files::VersionInfo;
use arachne_shared::notify::{Delivery, Notification};
use arachne_shared::stats::Stats;
use arachne_shared::upload::Upload;
use arachne_shared::{AuditEntry, Caller, TokenInfo, UserInfo};
use arachne_shared::{ItemRecord, LogLine, RunOptions, Schedule, TaskId};
use arachne_web_api::types::{
    AuditQuery, CreateSpider, CreateToken, CreateUser, CreatedToken, DeletedSpider, DeliveryQuery,
    FolderStatus, Health, HealthStatus, Metrics, Node, Page, RunTask, ScheduleSpec, ScheduleView,
    ScrapyVersion, SignIn, Spider, SpiderFolder, SpiderFolders, SpiderItemQuery, StatsQuery, Task,
    TaskQuery, UpdateNode, UpdateUser, UploadedSpider, VersionFiles,
};
use arachne_web_api::{Backend, Error, FoundItems, ItemSource, Result};
use tokio::sync::broadcast;

use crate::auth::Auth;
use crate::changes::Changes;
use crate::files;
use crate::folders::{FolderOutcome, FolderReport};
use crate::nodes::{self, NodeUpdate, Nodes};
use crate::results::{self, ResultsRequest};
use crate::runs::{self, RunRequest, Runs};
use crate::scheduler::Scheduler;
use crate::schedules::{self, ScheduleRequest, Schedules};
use crate::spiders::{self, SpiderRequest, Spiders};
use crate::store::{self, Store, TaskFilter};
use crate::store_health::StoreHealth;
use crate::telemetry::Telemetry;

/// The master as the HTTP API sees it: its services, and the store for what is only read.
pub(crate) struct MasterApi {
    pub(crate) spiders: Arc<Spiders>,
    pub(crate) folders: WatchedFolders,
    pub(crate) results: Arc<crate::results::Results>,
    pub(crate) runs: Arc<Runs>,
    pub(crate) schedules: Arc<Schedules>,
    pub(crate) scrapy: Arc<crate::scrapy::Scrapy>,
    pub(crate) removal: Arc<crate::removal::Removal>,
    pub(crate) nodes: Arc<Nodes>,
    pub(crate) overview: crate::stats::Overview,
    pub(crate) notifications: Arc<crate::notify::Notifications>,
    pub(crate) access: crate::access::Access,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) changes: Arc<Changes>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) health: Arc<StoreHealth>,
    pub(crate) auth: Arc<Auth>,
}

/// The watched spiders folder (`--spiders-dir`), if any, and what became of each of its folders.
pub(crate) struct WatchedFolders {
    pub(crate) dir: Option<std::path::PathBuf>,
    pub(crate) report: Arc<FolderReport>,
}

#[async_trait::async_trait]
impl Backend for MasterApi {
    async fn put_spider(&self, request: CreateSpider) -> Result<Spider> {
        let request = SpiderRequest {
            name: request.name,
            cmd: request.cmd,
            settings: request.settings,
            max_instances: request.max_instances,
            results_collection: request.results_collection,
            dedup: request.dedup,
        };
        Ok(self.spiders.put(request).await?.into())
    }

    async fn upload_files(&self, name: &str, upload: Upload) -> Result<UploadedSpider> {
        let uploaded = self.spiders.upload(name, upload).await?;
        Ok(UploadedSpider {
            spider: uploaded.spider.into(),
            unwrapped: uploaded.unwrapped,
        })
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>> {
        Ok(self.spiders.versions(name).await?)
    }

    async fn set_current_version(&self, name: &str, version: &str) -> Result<Spider> {
        Ok(self.spiders.set_current(name, version).await?.into())
    }

    async fn delete_version(&self, name: &str, version: &str) -> Result<()> {
        Ok(self.spiders.delete_version(name, version).await?)
    }

    async fn delete_spider(&self, name: &str, tasks: bool) -> Result<DeletedSpider> {
        let removed = self.removal.delete_spider(name, tasks).await?;
        Ok(DeletedSpider {
            versions: removed.versions,
            schedules: removed.schedules,
            tasks: removed.runs,
        })
    }

    async fn list_files(&self, name: &str, version: Option<String>) -> Result<VersionFiles> {
        let (version, manifest) = self.spiders.manifest(name, version).await?;
        Ok(VersionFiles {
            version,
            files: manifest.files,
        })
    }

    async fn read_file(&self, name: &str, path: &str, version: Option<String>) -> Result<Vec<u8>> {
        Ok(self.spiders.read_file(name, path, version).await?)
    }

    async fn deploy_egg(&self, project: &str, version: &str, egg: Vec<u8>) -> Result<Vec<String>> {
        Ok(self.scrapy.deploy(project, version, egg).await?)
    }

    async fn scrapy_versions(&self, project: &str) -> Result<Vec<ScrapyVersion>> {
        let versions = self.scrapy.versions(project).await?;
        Ok(versions
            .into_iter()
            .map(|v| ScrapyVersion {
                label: v.label,
                hash: v.hash,
            })
            .collect())
    }

    async fn scrapy_version(&self, project: &str, name: &str) -> Result<String> {
        Ok(self.scrapy.version(project, name).await?)
    }

    async fn scrapy_delete_version(&self, project: &str, name: &str) -> Result<bool> {
        Ok(self.scrapy.delete_version(project, name).await?)
    }

    async fn scrapy_spiders(&self, project: &str, version: Option<&str>) -> Result<Vec<String>> {
        Ok(self.scrapy.spiders(project, version).await?)
    }

    async fn list_spiders(&self) -> Result<Vec<Spider>> {
        Ok(self
            .spiders
            .list()
            .await?
            .into_iter()
            .map(Spider::from)
            .collect())
    }

    async fn get_spider(&self, name: &str) -> Result<Spider> {
        Ok(self.spiders.get(name).await?.into())
    }

    async fn run_task(&self, run: RunTask) -> Result<Task> {
        self.run_job(run, None).await
    }

    async fn run_job(&self, run: RunTask, client_job_id: Option<String>) -> Result<Task> {
        let request = RunRequest {
            options: run_options(
                run.param,
                run.priority,
                run.settings,
                (run.mode, run.nodes, run.node_labels),
            ),
            spider: run.spider,
            version: run.version,
            client_job_id,
            ..RunRequest::default()
        };
        Ok(self.runs.create(request).await?.into())
    }

    async fn restart_task(&self, id: TaskId) -> Result<Task> {
        Ok(self.runs.restart(id).await?.into())
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
        let (items, total) = self.runs.list(&filter).await?;
        Ok(Page {
            items: items.into_iter().map(Task::from).collect(),
            total,
        })
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        Ok(self.runs.shown(id).await?.into())
    }

    async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        Ok(self.runs.cancel(id).await?.into())
    }

    async fn delete_task(&self, id: TaskId) -> Result<()> {
        Ok(self.runs.delete(id).await?)
    }

    async fn logs(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        self.store.logs(id, after, limit).await.map_err(store_error)
    }

    async fn items(&self, id: TaskId, after: u64, limit: u32) -> Result<Vec<ItemRecord>> {
        self.store
            .items(id, after, limit)
            .await
            .map_err(store_error)
    }

    async fn spider_items(
        &self,
        source: &ItemSource,
        query: SpiderItemQuery,
        count: bool,
    ) -> Result<FoundItems> {
        let request = ResultsRequest {
            task: query.task,
            since: query.since,
            until: query.until,
            conditions: query.conditions,
            after: query.after,
            limit: query.limit.unwrap_or(arachne_web_api::types::DEFAULT_LIMIT),
        };
        let page = match source {
            ItemSource::Spider(name) => self.results.page(name, request, count).await?,
            ItemSource::Collection(name) => {
                self.results.collection_page(name, request, count).await?
            }
        };
        Ok(FoundItems {
            items: page.items,
            total: page.total,
            next: page.next.map(|cursor| cursor.to_string()),
        })
    }

    async fn spider_folders(&self) -> Result<SpiderFolders> {
        let folders = self
            .folders
            .report
            .folders()
            .into_iter()
            .map(|state| {
                let (status, problem) = match state.outcome {
                    FolderOutcome::Synced => (FolderStatus::Synced, None),
                    FolderOutcome::Broken(why) => (FolderStatus::Broken, Some(why)),
                    FolderOutcome::Removed => (FolderStatus::Removed, None),
                };
                SpiderFolder {
                    folder: state.folder.display().to_string(),
                    spider: state.spider,
                    status,
                    problem,
                    at: state.at,
                }
            })
            .collect();
        Ok(SpiderFolders {
            dir: self.folders.dir.as_ref().map(|d| d.display().to_string()),
            folders,
        })
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        Ok(self
            .nodes
            .list()
            .await?
            .into_iter()
            .map(Node::from)
            .collect())
    }

    async fn update_node(&self, name: &str, update: UpdateNode) -> Result<Node> {
        let update = NodeUpdate {
            max_runners: update.max_runners,
            enabled: update.enabled,
            max_cpu_percent: update.max_cpu_percent,
            max_memory_percent: update.max_memory_percent,
        };
        Ok(self.nodes.update(name, update).await?.into())
    }

    async fn remove_node(&self, name: &str) -> Result<()> {
        Ok(self.nodes.remove(name).await?)
    }

    async fn stats(&self, query: StatsQuery) -> Result<Stats> {
        Ok(self
            .overview
            .stats(query.days.unwrap_or(7), query.spider)
            .await?)
    }

    async fn list_notifications(&self) -> Result<Vec<Notification>> {
        let rules = self.notifications.list();
        Ok(rules.into_iter().map(Notification::masked).collect())
    }

    async fn get_notification(&self, name: &str) -> Result<Notification> {
        Ok(self.notifications.get(name)?.masked())
    }

    async fn put_notification(&self, rule: Notification, replace: bool) -> Result<Notification> {
        Ok(self.notifications.put(rule, replace).await?.masked())
    }

    async fn delete_notification(&self, name: &str) -> Result<()> {
        Ok(self.notifications.delete(name).await?)
    }

    async fn test_notification(&self, name: &str) -> Result<Delivery> {
        Ok(self.notifications.test(name).await?)
    }

    async fn list_deliveries(&self, query: DeliveryQuery) -> Result<Vec<Delivery>> {
        let limit = query.limit.unwrap_or(50).clamp(1, 1000);
        let found = self
            .notifications
            .deliveries(query.notification.as_deref(), limit)
            .await?;
        Ok(found)
    }

    async fn create_schedule(&self, spec: ScheduleSpec) -> Result<ScheduleView> {
        Ok(view(self.schedules.create(schedule_request(spec)).await?))
    }

    async fn update_schedule(&self, name: &str, spec: ScheduleSpec) -> Result<ScheduleView> {
        let request = schedule_request(spec);
        Ok(view(self.schedules.update(name, request).await?))
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleView>> {
        Ok(self.schedules.list().await?.into_iter().map(view).collect())
    }

    async fn get_schedule(&self, name: &str) -> Result<ScheduleView> {
        Ok(view(self.schedules.get(name).await?))
    }

    async fn delete_schedule(&self, name: &str) -> Result<()> {
        Ok(self.schedules.delete(name).await?)
    }

    async fn set_schedule_enabled(&self, name: &str, enabled: bool) -> Result<ScheduleView> {
        Ok(view(self.schedules.set_enabled(name, enabled).await?))
    }

    async fn run_schedule(&self, name: &str) -> Result<Task> {
        Ok(self.schedules.run_now(name).await?.into())
    }

    async fn health(&self) -> Health {
        let store_error = self.health.failing();
        Health {
            status: match store_error {
                Some(_) => HealthStatus::Failing,
                None => HealthStatus::Ok,
            },
            store_error,
        }
    }

    async fn metrics(&self) -> Result<Metrics> {
        let tasks = self.store.count_by_status().await.map_err(store_error)?;
        let (nodes_online, runner_slots, runner_slots_in_use) = self.scheduler.registry.slots();
        let (items_ingested, log_lines_ingested, dispatch_latency) = self.telemetry.snapshot();
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

    async fn caller(&self, secret: &str) -> Result<Option<Caller>> {
        self.auth.caller(secret).await.map_err(store_error)
    }

    async fn record_audit(&self, entry: AuditEntry) {
        if let Err(err) = self.access.record(&entry).await {
            tracing::warn!(error = %err, action = %entry.action, actor = %entry.actor, "cannot write the audit log");
        }
    }

    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>> {
        let limit = query.limit.unwrap_or(100).clamp(1, 1000);
        Ok(self
            .access
            .audit(query.actor.as_deref(), query.before, limit)
            .await?)
    }

    async fn sign_in(&self, sign_in: SignIn) -> Result<CreatedToken> {
        let (token, secret) = self
            .access
            .sign_in(&sign_in.name, &sign_in.password)
            .await?;
        Ok(created(&token, secret))
    }

    async fn sign_out(&self, caller: &Caller) -> Result<()> {
        Ok(self.access.sign_out(caller).await?)
    }

    async fn list_users(&self) -> Result<Vec<UserInfo>> {
        let users = self.access.users().await?;
        Ok(users.iter().map(UserInfo::from).collect())
    }

    async fn create_user(&self, user: CreateUser) -> Result<UserInfo> {
        let made = self
            .access
            .create_user(&user.name, user.role, &user.password)
            .await?;
        Ok(UserInfo::from(&made))
    }

    async fn update_user(&self, name: &str, update: UpdateUser) -> Result<UserInfo> {
        let user = self
            .access
            .update_user(name, update.role, update.password.as_deref())
            .await?;
        Ok(UserInfo::from(&user))
    }

    async fn delete_user(&self, name: &str) -> Result<()> {
        Ok(self.access.delete_user(name).await?)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let tokens = self.access.tokens().await?;
        Ok(tokens.iter().map(TokenInfo::from).collect())
    }

    async fn create_token(&self, caller: &Caller, token: CreateToken) -> Result<CreatedToken> {
        let request = crate::access::TokenRequest {
            name: token.name,
            kind: token.kind,
            role: token.role,
            user: token.user,
            expires_in_days: token.expires_in_days,
        };
        let (token, secret) = self.access.create_token(caller, request).await?;
        Ok(created(&token, secret))
    }

    async fn revoke_token(&self, name: &str) -> Result<()> {
        Ok(self.access.revoke_token(name).await?)
    }

    fn subscribe(&self) -> broadcast::Receiver<arachne_shared::TaskChanged> {
        self.changes.subscribe()
    }
}

fn schedule_request(spec: ScheduleSpec) -> ScheduleRequest {
    ScheduleRequest {
        name: spec.name,
        spider: spec.spider,
        cron: spec.cron,
        timezone: spec.timezone,
        options: run_options(
            spec.param,
            spec.priority,
            spec.settings,
            (spec.mode, spec.nodes, spec.node_labels),
        ),
        enabled: spec.enabled,
        overlap: spec.overlap,
        misfire: spec.misfire,
    }
}

/// The run options of a request that starts runs (`RunTask`, `ScheduleSpec`), unset ones at their defaults.
fn run_options(
    param: Option<String>,
    priority: Option<u8>,
    settings: Option<arachne_shared::spider::RunSettings>,
    (mode, nodes, node_labels): (
        Option<arachne_shared::RunMode>,
        Vec<String>,
        std::collections::BTreeMap<String, String>,
    ),
) -> RunOptions {
    RunOptions {
        param,
        priority,
        settings: settings.unwrap_or_default(),
        mode: mode.unwrap_or_default(),
        nodes,
        node_labels,
    }
}

/// A schedule with its next 5 fire times.
fn view(schedule: Schedule) -> ScheduleView {
    ScheduleView {
        next: schedules::next_fires(&schedule, 5),
        schedule: schedule.into(),
    }
}

fn store_error(err: store::Error) -> Error {
    match err {
        store::Error::Duplicate(_) => Error::Conflict(err.to_string()),
        other => Error::Internal(other.to_string()),
    }
}

fn files_error(err: files::Error) -> Error {
    let message = err.to_string();
    match err {
        files::Error::BadArchive(_) => Error::BadRequest(message),
        files::Error::TooLarge(_) => Error::PayloadTooLarge(message),
        files::Error::NotFound(_) | files::Error::NoSuchFile { .. } => Error::NotFound(message),
        _ => Error::Internal(message),
    }
}

impl From<spiders::Error> for Error {
    fn from(err: spiders::Error) -> Self {
        use spiders::Error as E;
        let message = err.to_string();
        match err {
            E::NoSpider(_) | E::NoFiles(_) | E::NoVersion { .. } => Error::NotFound(message),
            E::EmptyCmd | E::Settings(_) | E::Invalid(_) => Error::BadRequest(message),
            E::CurrentVersion { .. } | E::VersionInUse { .. } => Error::Conflict(message),
            E::Files(err) => files_error(err),
            E::Store(err) => store_error(err),
        }
    }
}

impl From<runs::Error> for Error {
    fn from(err: runs::Error) -> Self {
        use runs::Error as E;
        let message = err.to_string();
        match err {
            E::Spider(err) => err.into(),
            E::NoTask(_) => Error::NotFound(message),
            E::Priority(_)
            | E::Settings(_)
            | E::NodesOutsideNodesMode(_)
            | E::NoNodesNamed
            | E::UnknownNode(_)
            | E::Labels(_) => Error::BadRequest(message),
            E::NoNodeOnline
            | E::NoNodeLabelled(_)
            | E::NotEnded { .. }
            | E::AlreadyEnded { .. }
            | E::NothingToRestart(_)
            | E::ChildOfParent { .. }
            | E::DeleteUnended { .. }
            | E::FireTimeTaken(_) => Error::Conflict(message),
            E::Store(err) => store_error(err),
        }
    }
}

impl From<crate::scrapy::Error> for Error {
    fn from(err: crate::scrapy::Error) -> Self {
        use crate::scrapy::Error as E;
        let message = err.to_string();
        match err {
            E::NotZip(_) | E::NoSettings | E::Label(_) => Error::BadRequest(message),
            E::NoVersion { .. } => Error::NotFound(message),
            E::List { .. } => Error::Conflict(message),
            E::Read(_) => Error::Internal(message),
            E::Spider(err) => err.into(),
            E::Run(err) => err.into(),
            E::Removal(err) => err.into(),
            E::Store(err) => store_error(err),
        }
    }
}

impl From<results::Error> for Error {
    fn from(err: results::Error) -> Self {
        use results::Error as E;
        let message = err.to_string();
        match err {
            E::Spider(err) => err.into(),
            E::Invalid(_) | E::TooManyConditions(_) | E::EmptyRange { .. } => {
                Error::BadRequest(message)
            }
            E::NoCollection(_) => Error::NotFound(message),
            E::Store(err) => store_error(err),
        }
    }
}

impl From<crate::removal::Error> for Error {
    fn from(err: crate::removal::Error) -> Self {
        use crate::removal::Error as E;
        match err {
            E::Busy { .. } => Error::Conflict(err.to_string()),
            E::Spider(err) => err.into(),
            E::Schedule(err) => err.into(),
            E::Run(err) => err.into(),
        }
    }
}

impl From<schedules::Error> for Error {
    fn from(err: schedules::Error) -> Self {
        use schedules::Error as E;
        let message = err.to_string();
        match err {
            E::NoSchedule(_) => Error::NotFound(message),
            E::Invalid(_) => Error::BadRequest(message),
            E::Run(err) => err.into(),
            E::Store(err) => store_error(err),
        }
    }
}

fn created(token: &arachne_shared::Token, secret: String) -> CreatedToken {
    CreatedToken {
        secret,
        token: TokenInfo::from(token),
    }
}

impl From<crate::access::Error> for Error {
    fn from(err: crate::access::Error) -> Self {
        use crate::access::Error as E;
        use crate::auth::Error as A;
        let message = err.to_string();
        match err {
            E::Invalid(_) | E::ShortPassword | E::AboveUser { .. } | E::Expiry => {
                Error::BadRequest(message)
            }
            E::NotASession => Error::Conflict(message),
            E::NoUser(_) | E::Token(A::NotFound(_)) => Error::NotFound(message),
            E::UserExists(_) | E::Token(A::Exists(_)) => Error::Conflict(message),
            E::SignIn => Error::Unauthorized(message),
            E::Token(A::Name(_)) => Error::BadRequest(message),
            E::Token(A::Store(err)) | E::Store(err) => store_error(err),
            E::Token(_) | E::Hash(_) => Error::Internal(message),
        }
    }
}

impl From<crate::stats::Error> for Error {
    fn from(err: crate::stats::Error) -> Self {
        use crate::stats::Error as E;
        let message = err.to_string();
        match err {
            E::Days(_) => Error::BadRequest(message),
            E::NoSpider(_) => Error::NotFound(message),
            E::Store(err) => store_error(err),
            E::Nodes(err) => err.into(),
        }
    }
}

impl From<crate::notify::Error> for Error {
    fn from(err: crate::notify::Error) -> Self {
        use crate::notify::Error as E;
        let message = err.to_string();
        match err {
            E::Invalid(_) | E::NoSpider(_) | E::NoSchedule(_) => Error::BadRequest(message),
            E::NotFound(_) => Error::NotFound(message),
            E::Exists(_) => Error::Conflict(message),
            E::Channels(_) => Error::Internal(message),
            E::Store(err) => store_error(err),
        }
    }
}

impl From<nodes::Error> for Error {
    fn from(err: nodes::Error) -> Self {
        use nodes::Error as E;
        let message = err.to_string();
        match err {
            E::NothingToChange | E::MaxRunners(_) | E::Invalid(_) => Error::BadRequest(message),
            E::NoNode(_) => Error::NotFound(message),
            E::Online(_) | E::Holds { .. } | E::Awaited { .. } | E::Scheduled { .. } => {
                Error::Conflict(message)
            }
            E::Store(err) => store_error(err),
        }
    }
}
