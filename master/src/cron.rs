//! The cron loop: fires enabled schedules at their fire times, applying each schedule's overlap and misfire
//! policies.
//!
//! Fire times are derived from the schedule's `last_fire` (the latest fire time handled), never from a timer
//! alone, so a restart neither loses nor repeats one: missed fire times collapse into at most one run, and a
//! fire time's task is keyed by `(schedule, fire time)` in the store, so one fire time never creates two tasks.

use std::sync::Arc;
use std::time::Duration;

use arachne_shared::schedule::{CronExpr, MisfirePolicy, OverlapPolicy, Schedule};
use arachne_shared::{ScheduleId, TaskStatus};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{MasterApi, RunSpec};
use crate::store::{self, TaskFilter};

/// A fire time handled later than this after it passed counts as missed (the master was down or stalled).
const MISFIRE_GRACE: chrono::Duration = chrono::Duration::seconds(10);
/// At most this many missed fire times are walked to find the latest; older ones are skipped unseen.
const MAX_WALK: usize = 100_000;

/// The run a schedule starts at `fire_time` (`None` for a manual run).
pub(crate) fn run_spec(schedule: &Schedule, fire_time: Option<DateTime<Utc>>) -> RunSpec {
    RunSpec {
        spider: schedule.spider.clone(),
        param: schedule.param.clone(),
        priority: Some(schedule.priority),
        settings: schedule.settings.clone(),
        mode: schedule.mode,
        nodes: schedule.nodes.clone(),
        schedule_id: Some(schedule.id),
        fire_time,
        exclusive: (schedule.overlap == OverlapPolicy::Queue)
            .then(|| format!("schedule:{}", schedule.id)),
        // A schedule runs whatever version is current when it fires.
        version: None,
    }
}

/// Fires schedules until `shutdown`.
pub(crate) async fn run(api: Arc<MasterApi>, shutdown: CancellationToken) {
    loop {
        let next = match pass(&api).await {
            Ok(next) => next,
            Err(err) => {
                error!(error = %err, "schedule pass failed; retrying in 1 s");
                Some(Utc::now() + chrono::Duration::seconds(1))
            }
        };
        let wait = next
            .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = api.schedules_changed.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Handles every due fire time; returns when the next one is.
async fn pass(api: &MasterApi) -> store::Result<Option<DateTime<Utc>>> {
    let mut next_wake: Option<DateTime<Utc>> = None;
    for schedule in api.store.list_schedules().await? {
        if !schedule.enabled {
            continue;
        }
        let expr = match CronExpr::parse(&schedule.cron, &schedule.timezone) {
            Ok(expr) => expr,
            Err(err) => {
                warn!(schedule = %schedule.name, error = %err, "schedule has an invalid expression; skipped");
                continue;
            }
        };
        let now = Utc::now();
        let since = schedule.last_fire.unwrap_or(schedule.created_at);
        let mut due = 0usize;
        let mut latest = None;
        for at in expr.after(since).take_while(|at| *at <= now).take(MAX_WALK) {
            due += 1;
            latest = Some(at);
        }
        if let Some(fire_time) = latest {
            let missed = due > 1 || now - fire_time > MISFIRE_GRACE;
            if missed && schedule.misfire == MisfirePolicy::Skip {
                info!(schedule = %schedule.name, missed = due, "missed fire times skipped (misfire policy skip)");
            } else {
                if missed {
                    info!(schedule = %schedule.name, missed = due, %fire_time, "missed fire times run once (misfire policy once)");
                }
                fire(api, &schedule, fire_time).await?;
            }
            record_fire(api, schedule.id, fire_time).await?;
        }
        if let Some(at) = expr.after(latest.unwrap_or(since).max(now)).next() {
            next_wake = Some(next_wake.map_or(at, |n| n.min(at)));
        }
    }
    Ok(next_wake)
}

async fn fire(api: &MasterApi, schedule: &Schedule, fire_time: DateTime<Utc>) -> store::Result<()> {
    if schedule.overlap == OverlapPolicy::Skip && active(api, schedule.id).await? {
        info!(schedule = %schedule.name, %fire_time, "fire skipped: the previous run is still active (overlap policy skip)");
        return Ok(());
    }
    match api.create_run(run_spec(schedule, Some(fire_time))).await {
        Ok(task) => {
            info!(schedule = %schedule.name, task_id = %task.id, %fire_time, "schedule fired");
        }
        // Created before a restart: this fire time is done.
        Err(arachne_web_api::Error::Conflict(message)) if message.contains("already exists") => {
            info!(schedule = %schedule.name, %fire_time, "fire time already ran");
        }
        Err(err) => {
            warn!(schedule = %schedule.name, %fire_time, error = %err, "schedule could not start a run");
        }
    }
    Ok(())
}

/// Whether a task the schedule started has not ended yet.
async fn active(api: &MasterApi, id: ScheduleId) -> store::Result<bool> {
    for status in [TaskStatus::Pending, TaskStatus::Running] {
        let filter = TaskFilter {
            schedule_id: Some(id),
            status: Some(status),
            limit: 1,
            ..Default::default()
        };
        if api.store.list_tasks(&filter).await?.1 > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Moves the schedule's `last_fire` forward, keeping any change a user made meanwhile.
async fn record_fire(
    api: &MasterApi,
    id: ScheduleId,
    fire_time: DateTime<Utc>,
) -> store::Result<()> {
    let _writes = api.schedule_writes.lock().await;
    if let Some(mut schedule) = api.store.get_schedule(id).await?
        && schedule.last_fire.is_none_or(|last| last < fire_time)
    {
        schedule.last_fire = Some(fire_time);
        api.store.put_schedule(&schedule).await?;
    }
    Ok(())
}
