//! The schedule service: creating, changing, enabling and deleting cron schedules, and what a schedule runs
//! when it fires. Users (through the HTTP adapter) and the cron loop both write schedules; their writes are
//! serialised here, so neither loses the other's change.

use std::sync::Arc;

use arachne_shared::schedule::{CronExpr, MisfirePolicy, OverlapPolicy, Schedule, ScheduleId};
use arachne_shared::{Invalid, RunMode, RunOptions, Task};
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, Notify};

use crate::runs::{self, RunRequest, Runs};
use crate::store::{self, Store};

/// Why a schedule could not be written or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("schedule {0:?} not found")]
    NoSchedule(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The run it names cannot be created (no such spider, unknown nodes, ...).
    #[error(transparent)]
    Run(#[from] runs::Error),
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A schedule as a user writes it; what is left out takes its default.
#[derive(Debug, Clone, Default)]
pub struct ScheduleRequest {
    pub name: String,
    pub spider: String,
    pub cron: String,
    /// UTC when absent.
    pub timezone: Option<String>,
    pub options: RunOptions,
    /// True when absent.
    pub enabled: Option<bool>,
    pub overlap: Option<OverlapPolicy>,
    pub misfire: Option<MisfirePolicy>,
}

/// Writes schedules and starts their runs.
pub struct Schedules {
    store: Arc<dyn Store>,
    runs: Arc<Runs>,
    /// Woken when a schedule changes, so the cron loop re-reads them.
    changed: Notify,
    /// Serialises schedule writes between users and the cron loop.
    writes: Mutex<()>,
}

impl Schedules {
    pub(crate) fn new(store: Arc<dyn Store>, runs: Arc<Runs>) -> Self {
        Self {
            store,
            runs,
            changed: Notify::new(),
            writes: Mutex::new(()),
        }
    }

    /// Resolves when a schedule was written since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    pub async fn list(&self) -> Result<Vec<Schedule>> {
        Ok(self.store.list_schedules().await?)
    }

    /// The schedule of that name, or of that id.
    pub async fn get(&self, name: &str) -> Result<Schedule> {
        let schedules = self.store.list_schedules().await?;
        let by_id: Option<ScheduleId> = name.parse().ok();
        schedules
            .into_iter()
            .find(|s| s.name == name || Some(s.id) == by_id)
            .ok_or_else(|| Error::NoSchedule(name.to_owned()))
    }

    pub async fn create(&self, request: ScheduleRequest) -> Result<Schedule> {
        let _writes = self.writes.lock().await;
        let schedule = self.schedule_from(request, None).await?;
        self.save(schedule).await
    }

    pub async fn update(&self, name: &str, request: ScheduleRequest) -> Result<Schedule> {
        let _writes = self.writes.lock().await;
        let existing = self.get(name).await?;
        let schedule = self.schedule_from(request, Some(existing)).await?;
        self.save(schedule).await
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        let _writes = self.writes.lock().await;
        let schedule = self.get(name).await?;
        self.store.delete_schedule(schedule.id).await?;
        self.changed.notify_one();
        Ok(())
    }

    /// Deletes every schedule of a spider; how many there were.
    pub(crate) async fn delete_of_spider(&self, spider: &str) -> Result<u64> {
        let _writes = self.writes.lock().await;
        let mut deleted = 0;
        for schedule in self.store.list_schedules().await? {
            if schedule.spider == spider && self.store.delete_schedule(schedule.id).await? {
                deleted += 1;
            }
        }
        self.changed.notify_one();
        Ok(deleted)
    }

    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<Schedule> {
        let _writes = self.writes.lock().await;
        let mut schedule = self.get(name).await?;
        if schedule.enabled != enabled {
            schedule.enabled = enabled;
            schedule.updated_at = Utc::now();
            // Fire times passed while disabled were never due.
            schedule.last_fire = Some(schedule.updated_at);
        }
        self.save(schedule).await
    }

    /// Runs the schedule now, outside its fire times.
    pub async fn run_now(&self, name: &str) -> Result<Task> {
        let schedule = self.get(name).await?;
        Ok(self.runs.create(run_request(&schedule, None)).await?)
    }

    /// Starts the schedule's run for `fire_time`.
    pub(crate) async fn fire(
        &self,
        schedule: &Schedule,
        fire_time: DateTime<Utc>,
    ) -> runs::Result<Task> {
        self.runs
            .create(run_request(schedule, Some(fire_time)))
            .await
    }

    /// Moves the schedule's `last_fire` forward, keeping any change a user made meanwhile.
    pub(crate) async fn record_fire(
        &self,
        id: ScheduleId,
        fire_time: DateTime<Utc>,
    ) -> store::Result<()> {
        let _writes = self.writes.lock().await;
        if let Some(mut schedule) = self.store.get_schedule(id).await?
            && schedule.last_fire.is_none_or(|last| last < fire_time)
        {
            schedule.last_fire = Some(fire_time);
            self.store.put_schedule(&schedule).await?;
        }
        Ok(())
    }

    /// Builds a schedule from a request, checking it; `existing` keeps id, history and creation time.
    async fn schedule_from(
        &self,
        request: ScheduleRequest,
        existing: Option<Schedule>,
    ) -> Result<Schedule> {
        self.runs.spider(&request.spider).await?;
        let now = Utc::now();
        let mut options = request.options;
        // An edit that sends the shown settings back keeps the secrets they showed masked.
        let before = existing
            .as_ref()
            .map(|s| s.settings.clone())
            .unwrap_or_default();
        options.settings.keep_secrets_of(&before)?;
        let mut schedule = Schedule {
            id: existing.as_ref().map(|s| s.id).unwrap_or_default(),
            name: request.name,
            spider: request.spider,
            cron: request.cron,
            timezone: request.timezone.unwrap_or_else(|| "UTC".into()),
            mode: options.mode,
            nodes: options.nodes,
            node_labels: options.node_labels,
            param: options.param.filter(|p| !p.trim().is_empty()),
            priority: options
                .priority
                .unwrap_or(arachne_shared::task::DEFAULT_PRIORITY),
            settings: options.settings,
            enabled: request.enabled.unwrap_or(true),
            overlap: request.overlap.unwrap_or_default(),
            misfire: request.misfire.unwrap_or_default(),
            // Fire times from before a schedule existed (or was changed) were never missed.
            last_fire: Some(now),
            created_at: existing.as_ref().map(|s| s.created_at).unwrap_or(now),
            updated_at: now,
            labels: existing.map(|s| s.labels).unwrap_or_default(),
        };
        arachne_shared::schedule::validate(&schedule)?;
        if schedule.mode == RunMode::Nodes {
            let labels = &schedule.node_labels;
            self.runs
                .placement(RunMode::Nodes, &schedule.nodes, labels)
                .await?;
        }
        schedule.nodes.dedup();
        Ok(schedule)
    }

    async fn save(&self, schedule: Schedule) -> Result<Schedule> {
        self.store.put_schedule(&schedule).await?;
        self.changed.notify_one();
        Ok(schedule)
    }
}

/// The next `n` fire times of a schedule (none while it is disabled).
pub fn next_fires(schedule: &Schedule, n: usize) -> Vec<DateTime<Utc>> {
    match CronExpr::parse(&schedule.cron, &schedule.timezone) {
        Ok(expr) if schedule.enabled => expr.next(Utc::now(), n),
        _ => Vec::new(),
    }
}

/// The run a schedule starts at `fire_time` (`None` for a manual run).
fn run_request(schedule: &Schedule, fire_time: Option<DateTime<Utc>>) -> RunRequest {
    RunRequest {
        spider: schedule.spider.clone(),
        options: RunOptions {
            param: schedule.param.clone(),
            priority: Some(schedule.priority),
            settings: schedule.settings.clone(),
            mode: schedule.mode,
            nodes: schedule.nodes.clone(),
            node_labels: schedule.node_labels.clone(),
        },
        schedule_id: Some(schedule.id),
        fire_time,
        exclusive: (schedule.overlap == OverlapPolicy::Queue)
            .then(|| format!("schedule:{}", schedule.id)),
        // A schedule runs whatever version is current when it fires.
        version: None,
        client_job_id: None,
    }
}
