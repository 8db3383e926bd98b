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

use crate::runs;
use crate::schedules::Schedules;
use crate::store::{self, Store, TaskFilter};

/// A fire time handled later than this after it passed counts as missed (the master was down or stalled).
const MISFIRE_GRACE: chrono::Duration = chrono::Duration::seconds(10);
/// At most this many missed fire times are walked to find the latest; older ones are skipped unseen.
const MAX_WALK: usize = 100_000;

/// Fires schedules until `shutdown`.
pub(crate) async fn run(
    schedules: Arc<Schedules>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    loop {
        let next = match pass(&schedules, store.as_ref()).await {
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
            () = schedules.changed() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Handles every due fire time; returns when the next one is.
async fn pass(schedules: &Schedules, store: &dyn Store) -> store::Result<Option<DateTime<Utc>>> {
    let mut next_wake: Option<DateTime<Utc>> = None;
    for schedule in store.list_schedules().await? {
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
                fire(schedules, store, &schedule, fire_time).await?;
            }
            schedules.record_fire(schedule.id, fire_time).await?;
        }
        if let Some(at) = expr.after(latest.unwrap_or(since).max(now)).next() {
            next_wake = Some(next_wake.map_or(at, |n| n.min(at)));
        }
    }
    Ok(next_wake)
}

async fn fire(
    schedules: &Schedules,
    store: &dyn Store,
    schedule: &Schedule,
    fire_time: DateTime<Utc>,
) -> store::Result<()> {
    if schedule.overlap == OverlapPolicy::Skip && active(store, schedule.id).await? {
        info!(schedule = %schedule.name, %fire_time, "fire skipped: the previous run is still active (overlap policy skip)");
        return Ok(());
    }
    match schedules.fire(schedule, fire_time).await {
        Ok(task) => {
            info!(schedule = %schedule.name, task_id = %task.id, %fire_time, "schedule fired");
        }
        // Created before a restart: this fire time is done.
        Err(runs::Error::FireTimeTaken(_)) => {
            info!(schedule = %schedule.name, %fire_time, "fire time already ran");
        }
        Err(err) => {
            warn!(schedule = %schedule.name, %fire_time, error = %err, "schedule could not start a run");
        }
    }
    Ok(())
}

/// Whether a task the schedule started has not ended yet.
async fn active(store: &dyn Store, id: ScheduleId) -> store::Result<bool> {
    for status in [TaskStatus::Pending, TaskStatus::Running] {
        let filter = TaskFilter {
            schedule_id: Some(id),
            status: Some(status),
            limit: 1,
            ..Default::default()
        };
        if store.list_tasks(&filter).await?.1 > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}
