//! Run statistics: the hourly roll-up each store keeps of the runs that ended ([`HourStats`], one per hour and
//! spider, written with the task's end), and the overview made from it ([`Stats`]).

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, Utc};
use serde::{Deserialize, Serialize};

use crate::{Task, TaskStatus};

/// Upper bounds (ms) of the run-time buckets; one unbounded bucket follows. Quantiles are read from them, so
/// each is within its bucket's width of the truth.
pub const RUN_TIME_BOUNDS_MS: [u64; 22] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000, 180_000, 300_000,
    600_000, 900_000, 1_800_000, 2_700_000, 3_600_000, 7_200_000, 14_400_000, 28_800_000,
    43_200_000, 86_400_000,
];

/// The bucket of a run time.
pub fn run_time_bucket(ms: u64) -> usize {
    RUN_TIME_BOUNDS_MS.partition_point(|&bound| bound < ms)
}

/// What ended in one hour, for one spider: runs by status, their items, and their run times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HourStats {
    /// The start of the hour (UTC).
    pub hour: DateTime<Utc>,
    pub spider: String,
    pub finished: u64,
    pub error: u64,
    pub cancelled: u64,
    pub abnormal: u64,
    pub items: u64,
    /// Runs per run-time bucket ([`RUN_TIME_BOUNDS_MS`]), for those that ran.
    pub run_times: Vec<u64>,
}

impl HourStats {
    /// The roll-up of one task that has just ended; `None` for a task that has not, or for a parent, which
    /// only sums up its children (they are counted themselves).
    pub fn of_ended(task: &Task) -> Option<Self> {
        let ended = task.ended_at()?;
        if task.children > 0 {
            return None;
        }
        let mut stats = Self {
            hour: ended
                .duration_trunc(chrono::Duration::hours(1))
                .unwrap_or(ended),
            spider: task.spider_name.clone(),
            items: task.items,
            run_times: vec![0; RUN_TIME_BOUNDS_MS.len() + 1],
            ..Self::default()
        };
        *stats.count_of(task.status)? += 1;
        if let Some(ms) = task.run_ms {
            stats.run_times[run_time_bucket(ms)] += 1;
        }
        Some(stats)
    }

    fn count_of(&mut self, status: TaskStatus) -> Option<&mut u64> {
        match status {
            TaskStatus::Finished => Some(&mut self.finished),
            TaskStatus::Error => Some(&mut self.error),
            TaskStatus::Cancelled => Some(&mut self.cancelled),
            TaskStatus::Abnormal => Some(&mut self.abnormal),
            _ => None,
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &HourStats) {
        self.finished += other.finished;
        self.error += other.error;
        self.cancelled += other.cancelled;
        self.abnormal += other.abnormal;
        self.items += other.items;
        if self.run_times.len() < other.run_times.len() {
            self.run_times.resize(other.run_times.len(), 0);
        }
        for (mine, theirs) in self.run_times.iter_mut().zip(&other.run_times) {
            *mine += theirs;
        }
    }

    pub fn runs(&self) -> u64 {
        self.finished + self.error + self.cancelled + self.abnormal
    }

    /// Error and abnormal runs: those that failed rather than being stopped.
    pub fn failed(&self) -> u64 {
        self.error + self.abnormal
    }

    /// The `q` quantile (0..1) of the run times, interpolated in its bucket; `None` without runs.
    pub fn run_time_quantile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.run_times.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).max(1.0);
        let mut seen = 0u64;
        for (bucket, &count) in self.run_times.iter().enumerate() {
            if count == 0 || ((seen + count) as f64) < rank {
                seen += count;
                continue;
            }
            let low = if bucket == 0 {
                0
            } else {
                RUN_TIME_BOUNDS_MS[bucket - 1]
            };
            let Some(&high) = RUN_TIME_BOUNDS_MS.get(bucket) else {
                // Beyond the last bound: at least that long.
                return Some(low);
            };
            let within = (rank - seen as f64) / count as f64;
            return Some(low + ((high - low) as f64 * within).round() as u64);
        }
        None
    }
}

/// `GET /api/v1/stats`: the runs that ended over the last `days` days, overall, per day and per spider, with
/// the nodes' load now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Stats {
    pub days: u32,
    /// The start of the first hour counted (UTC).
    pub since: DateTime<Utc>,
    /// Only this spider's runs, when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
    pub totals: RunSummary,
    /// One entry per day of the window (UTC), oldest first, days without runs included; per hour over one day.
    pub series: Vec<Period>,
    /// Every spider with runs in the window, the most runs first.
    pub spiders: Vec<SpiderSummary>,
    /// The spiders with the longest p95 run time, longest first (at most 5).
    pub slowest: Vec<SpiderSummary>,
    /// The spiders with the most failed runs (error or abnormal), most first (at most 5; none without failures).
    pub most_failing: Vec<SpiderSummary>,
    /// Tasks running and waiting now.
    pub running: u64,
    pub pending: u64,
    /// Every node's load now.
    pub nodes: Vec<NodeLoad>,
}

/// Runs that ended in a stretch of time, by status, with their items and run times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunSummary {
    pub runs: u64,
    pub finished: u64,
    pub error: u64,
    pub cancelled: u64,
    pub abnormal: u64,
    /// Finished runs over all runs that were not cancelled; absent without such runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    pub items: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_time_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_time_p95_ms: Option<u64>,
}

impl From<&HourStats> for RunSummary {
    fn from(stats: &HourStats) -> Self {
        let decided = stats.runs() - stats.cancelled;
        Self {
            runs: stats.runs(),
            finished: stats.finished,
            error: stats.error,
            cancelled: stats.cancelled,
            abnormal: stats.abnormal,
            success_rate: (decided > 0).then(|| stats.finished as f64 / decided as f64),
            items: stats.items,
            run_time_p50_ms: stats.run_time_quantile(0.5),
            run_time_p95_ms: stats.run_time_quantile(0.95),
        }
    }
}

/// One day (or hour) of the series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Period {
    pub start: DateTime<Utc>,
    #[serde(flatten)]
    pub runs: RunSummary,
}

/// One spider's runs in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpiderSummary {
    pub spider: String,
    #[serde(flatten)]
    pub runs: RunSummary,
}

/// A node's load as its last heartbeat said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeLoad {
    pub name: String,
    pub online: bool,
    pub running: u32,
    pub max_runners: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f32>,
}

/// The window of `days` days up to `now`: its first hour, its step and how many steps. Whole days (today and
/// the days before it, UTC) per day; over one day, the last 24 hours per hour.
pub fn window(days: u32, now: DateTime<Utc>) -> (DateTime<Utc>, chrono::Duration, usize) {
    let (step, periods) = if days <= 1 {
        (chrono::Duration::hours(1), 24)
    } else {
        (chrono::Duration::days(1), days as usize)
    };
    let current = now.duration_trunc(step).unwrap_or(now);
    (current - step * (periods as i32 - 1), step, periods)
}

/// Sums hourly roll-ups into the overview's totals, series and spiders over the window of `days` up to `now`.
pub fn summarise(
    rows: &[HourStats],
    days: u32,
    now: DateTime<Utc>,
) -> (RunSummary, Vec<Period>, Vec<SpiderSummary>) {
    let (start, step, periods) = window(days, now);
    let mut series: Vec<HourStats> = (0..periods)
        .map(|i| HourStats {
            hour: start + step * i as i32,
            ..HourStats::default()
        })
        .collect();
    let mut total = HourStats::default();
    let mut spiders: BTreeMap<&str, HourStats> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.hour >= start) {
        total.add(row);
        spiders.entry(&row.spider).or_default().add(row);
        let slot = ((row.hour - start).num_seconds() / step.num_seconds()) as usize;
        if let Some(period) = series.get_mut(slot) {
            period.add(row);
        }
    }
    let series = series
        .iter()
        .map(|p| Period {
            start: p.hour,
            runs: p.into(),
        })
        .collect();
    let mut spiders: Vec<SpiderSummary> = spiders
        .into_iter()
        .map(|(spider, stats)| SpiderSummary {
            spider: spider.to_owned(),
            runs: (&stats).into(),
        })
        .collect();
    spiders.sort_by(|a, b| b.runs.runs.cmp(&a.runs.runs).then(a.spider.cmp(&b.spider)));
    ((&total).into(), series, spiders)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(status_counts: [u64; 4], run_times: &[(u64, u64)]) -> HourStats {
        let mut stats = HourStats {
            finished: status_counts[0],
            error: status_counts[1],
            cancelled: status_counts[2],
            abnormal: status_counts[3],
            run_times: vec![0; RUN_TIME_BOUNDS_MS.len() + 1],
            ..HourStats::default()
        };
        for &(ms, n) in run_times {
            stats.run_times[run_time_bucket(ms)] += n;
        }
        stats
    }

    #[test]
    fn quantiles_are_read_within_their_bucket() {
        // 90 runs of ~1.5 s and 10 of ~50 s.
        let stats = hour([100, 0, 0, 0], &[(1_500, 90), (50_000, 10)]);
        let p50 = stats.run_time_quantile(0.5).unwrap();
        assert!((1_000..=2_000).contains(&p50), "{p50}");
        let p95 = stats.run_time_quantile(0.95).unwrap();
        assert!((30_000..=60_000).contains(&p95), "{p95}");
        assert_eq!(HourStats::default().run_time_quantile(0.5), None);
        let forever = hour([1, 0, 0, 0], &[(200_000_000, 1)]);
        assert_eq!(forever.run_time_quantile(0.5), Some(86_400_000));
    }

    #[test]
    fn success_is_finished_over_runs_that_were_not_cancelled() {
        let summary = RunSummary::from(&hour([3, 1, 5, 0], &[]));
        assert_eq!((summary.runs, summary.success_rate), (9, Some(0.75)));
        assert_eq!(
            RunSummary::from(&hour([0, 0, 2, 0], &[])).success_rate,
            None
        );
    }

    #[test]
    fn a_window_is_summed_per_day_and_per_spider_with_empty_days_kept() {
        let now = Utc::now();
        let row = |ago_days: i64, spider: &str, finished: u64| HourStats {
            hour: (now - chrono::Duration::days(ago_days))
                .duration_trunc(chrono::Duration::hours(1))
                .unwrap(),
            spider: spider.into(),
            finished,
            items: finished * 10,
            ..HourStats::default()
        };
        let rows = [
            row(0, "a", 1),
            row(1, "a", 1),
            row(1, "b", 1),
            row(3, "a", 4),
            row(30, "old", 9),
        ];
        let (total, series, spiders) = summarise(&rows, 7, now);
        assert_eq!((total.runs, total.items), (7, 70));
        assert_eq!(series.len(), 7);
        assert_eq!(series.iter().map(|p| p.runs.runs).sum::<u64>(), 7);
        assert_eq!(series.iter().filter(|p| p.runs.runs == 0).count(), 4);
        assert_eq!(series[6].runs.runs, 1, "today is the last day");
        let (_, hours, _) = summarise(&rows, 1, now);
        assert_eq!(
            (hours.len(), hours[23].runs.runs),
            (24, 1),
            "the last 24 hours, this one last"
        );
        assert_eq!(
            spiders
                .iter()
                .map(|s| (s.spider.as_str(), s.runs.runs))
                .collect::<Vec<_>>(),
            [("a", 6), ("b", 1)]
        );
    }
}
