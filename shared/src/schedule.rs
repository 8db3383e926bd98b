//! Cron schedules: what a schedule runs and when, and the cron expressions it fires on.
//!
//! Expressions are standard 5-field cron (minute hour day-of-month month day-of-week, as Crawlab's), 6 fields
//! with seconds first, or one of `@hourly`, `@daily`, `@weekly`, `@monthly`. Day-of-week numbers follow Unix
//! cron in every form: 0 or 7 is Sunday, 1 Monday, … 6 Saturday; names (`Mon-Fri`) work too. Times are
//! evaluated in the schedule's IANA time zone (UTC by default), so daylight saving changes are honoured.

use crate::Invalid;
use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spider::RunSettings;
use crate::task::RunMode;

uuid_id!(
    /// A schedule's id.
    ScheduleId
);

/// What a schedule does when it fires while a task it started earlier is still active.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OverlapPolicy {
    /// Start another task anyway.
    #[default]
    Allow,
    /// Do not start a task for this fire time.
    Skip,
    /// Create the task; it waits in Pending until the earlier ones have ended.
    Queue,
}

/// What a schedule does about fire times it missed while the master was down.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MisfirePolicy {
    /// Run once for all the missed fire times, at once (never one run per missed time).
    #[default]
    Once,
    /// Do not run for missed fire times; wait for the next one.
    Skip,
}

named_enum!(OverlapPolicy, "overlap policy", Allow => "allow", Skip => "skip", Queue => "queue");
named_enum!(MisfirePolicy, "misfire policy", Once => "once", Skip => "skip");

/// A cron schedule as the master keeps it (the API shows it as its own type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: ScheduleId,
    /// Unique, user-chosen name.
    pub name: String,
    /// The spider it runs, by name.
    pub spider: String,
    pub cron: String,
    /// IANA time zone the expression is evaluated in.
    pub timezone: String,
    pub mode: RunMode,
    /// The nodes of mode `nodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    pub priority: u8,
    /// Overrides of the spider's settings for the runs it starts.
    #[serde(default)]
    pub settings: RunSettings,
    pub enabled: bool,
    pub overlap: OverlapPolicy,
    pub misfire: MisfirePolicy,
    /// The latest fire time handled (run, or skipped by a policy). Fire times after it are still to come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Free-form labels, kept for the user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels a node must have, all of them, to take the schedule's runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
}

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronExpr {
    schedule: cron::Schedule,
    tz: chrono_tz::Tz,
}

/// The fields of a 6-field expression (seconds first) and the values each takes.
const FIELDS: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 (0 and 7 are Sunday) or SUN-SAT"),
];

impl CronExpr {
    /// Parses `expr` in time zone `tz`. The error names the bad field (or the time zone).
    pub fn parse(expr: &str, tz: &str) -> Result<Self, Invalid> {
        let tz: chrono_tz::Tz = tz.parse().map_err(|_| {
            format!("unknown time zone {tz:?}: use an IANA name such as UTC or Europe/Berlin")
        })?;
        let expr = expr.trim();
        let normalized = if expr.starts_with('@') {
            match expr {
                "@hourly" | "@daily" | "@weekly" | "@monthly" => expr.to_owned(),
                other => {
                    return Err(Invalid(format!(
                        "unknown cron shortcut {other:?} (expected @hourly, @daily, @weekly or @monthly)"
                    )));
                }
            }
        } else {
            let mut fields: Vec<String> = expr.split_whitespace().map(str::to_owned).collect();
            match fields.len() {
                5 => fields.insert(0, "0".into()),
                6 => {}
                n => {
                    return Err(Invalid(format!(
                        "cron expression {expr:?} has {n} fields; expected 5 (minute hour day-of-month month \
                         day-of-week) or 6 (with seconds first)"
                    )));
                }
            }
            let given_dow = fields[5].clone();
            fields[5] = unix_day_of_week(&given_dow)
                .map_err(|why| format!("invalid day-of-week field {given_dow:?}: {why}"))?;
            for (index, (name, values)) in FIELDS.iter().enumerate() {
                let mut probe = ["*"; 6];
                probe[index] = &fields[index];
                if index == 3 || index == 5 {
                    // Day-of-month and day-of-week alone, so each is checked by itself.
                    probe[if index == 3 { 5 } else { 3 }] = "*";
                }
                if cron::Schedule::from_str(&probe.join(" ")).is_err() {
                    let shown = if index == 5 {
                        &given_dow
                    } else {
                        &fields[index]
                    };
                    // The parser's own words name its internal ranges ("Hours must be less than 23", while
                    // 23 is accepted): say the values the field takes instead.
                    return Err(Invalid(format!(
                        "invalid {name} field {shown:?}: {name} must be {values}, as a value, a range a-b, a \
                         list a,b, * or a step */n"
                    )));
                }
            }
            fields.join(" ")
        };
        let schedule = cron::Schedule::from_str(&normalized).map_err(|err| {
            format!(
                "invalid cron expression {expr:?}: {}",
                last_line(&err.to_string())
            )
        })?;
        Ok(Self { schedule, tz })
    }

    /// Fire times strictly after `after`, in order.
    pub fn after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.schedule
            .after(&after.with_timezone(&self.tz))
            .map(|at| at.with_timezone(&Utc))
    }

    /// The next `n` fire times after `after`.
    pub fn next(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.after(after).take(n).collect()
    }
}

/// A time as a clock in the IANA zone `tz` shows it, with the zone's abbreviation (`2026-12-08 02:30:00
/// CET`); in UTC when `tz` is no zone.
pub fn local_time(at: DateTime<Utc>, tz: &str) -> String {
    match tz.parse::<chrono_tz::Tz>() {
        Ok(zone) => at
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

fn last_line(message: &str) -> &str {
    message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
}

/// Rewrites a Unix day-of-week field (0 or 7 = Sunday) into the `cron` crate's numbering (1 = Sunday).
fn unix_day_of_week(field: &str) -> Result<String, Invalid> {
    let shift = |n: &str| -> Result<u32, Invalid> {
        let day: u32 = n
            .parse()
            .map_err(|_| format!("{n:?} is not a day number"))?;
        match day {
            0..=6 => Ok(day + 1),
            7 => Ok(1),
            _ => Err(Invalid(format!("day {day} is out of range 0-7"))),
        }
    };
    let mut parts = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        let numeric = |s: &str| s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty();
        let rewritten = match range.split_once('-') {
            Some((from, to)) if numeric(from) && numeric(to) => {
                let to_day: u32 = to
                    .parse()
                    .map_err(|_| format!("{to:?} is not a day number"))?;
                let from = shift(from)?;
                if to_day == 7 {
                    // "5-7" is Friday to Sunday: Sunday is 1 here, so it becomes its own entry.
                    if step.is_some() {
                        return Err(Invalid(
                            "a step over a range ending in 7 is not supported; use 0-6".into(),
                        ));
                    }
                    parts.push("1".to_owned());
                    if from <= 7 {
                        parts.push(format!("{from}-7"));
                    }
                    continue;
                }
                format!("{from}-{}", shift(to)?)
            }
            None if numeric(range) => shift(range)?.to_string(),
            _ => range.to_owned(),
        };
        parts.push(match step {
            Some(step) => format!("{rewritten}/{step}"),
            None => rewritten,
        });
    }
    Ok(parts.join(","))
}

/// Checks a schedule's fields other than the spider; the message names the bad field.
pub fn validate(schedule: &Schedule) -> Result<CronExpr, Invalid> {
    crate::spider::validate_name("schedule", &schedule.name)?;
    crate::task::validate_node_labels(&schedule.node_labels)?;
    if !(1..=10).contains(&schedule.priority) {
        return Err(Invalid(format!(
            "priority must be 1 (highest) to 10, got {}",
            schedule.priority
        )));
    }
    if schedule.mode == RunMode::Nodes && schedule.nodes.is_empty() {
        return Err(Invalid("mode nodes needs at least one node".into()));
    }
    if schedule.mode != RunMode::Nodes && !schedule.nodes.is_empty() {
        return Err(Invalid(format!(
            "nodes are only used by mode nodes, not {}",
            schedule.mode.as_str()
        )));
    }
    schedule
        .settings
        .validate()
        .map_err(|e| format!("settings.{e}"))?;
    CronExpr::parse(&schedule.cron, &schedule.timezone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn five_fields_are_minutes_with_unix_weekdays() {
        let wednesday = at(2026, 6, 17, 12, 0);
        let every_five = CronExpr::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            every_five.next(wednesday, 2),
            [at(2026, 6, 17, 12, 5), at(2026, 6, 17, 12, 10)]
        );
        for (field, day) in [
            ("0", Weekday::Sun),
            ("7", Weekday::Sun),
            ("1", Weekday::Mon),
            ("6", Weekday::Sat),
        ] {
            let expr = CronExpr::parse(&format!("0 0 * * {field}"), "UTC").unwrap();
            assert_eq!(
                expr.next(wednesday, 1)[0].weekday(),
                day,
                "day-of-week {field}"
            );
        }
        let weekend = CronExpr::parse("0 0 * * 6-7", "UTC").unwrap();
        let days: Vec<_> = weekend
            .next(wednesday, 2)
            .iter()
            .map(|t| t.weekday())
            .collect();
        assert_eq!(days, [Weekday::Sat, Weekday::Sun]);
        let weekdays = CronExpr::parse("0 9 * * Mon-Fri", "UTC").unwrap();
        assert_eq!(weekdays.next(wednesday, 1)[0], at(2026, 6, 18, 9, 0));
    }

    #[test]
    fn six_fields_have_seconds_and_shortcuts_work() {
        let every_two = CronExpr::parse("*/2 * * * * *", "UTC").unwrap();
        let next = every_two.next(at(2026, 1, 1, 0, 0), 3);
        assert_eq!(
            next.iter().map(|t| t.second()).collect::<Vec<_>>(),
            [2, 4, 6]
        );
        for (shortcut, expected) in [
            ("@hourly", at(2026, 1, 1, 1, 0)),
            ("@daily", at(2026, 1, 2, 0, 0)),
            ("@monthly", at(2026, 2, 1, 0, 0)),
        ] {
            let expr = CronExpr::parse(shortcut, "UTC").unwrap();
            assert_eq!(
                expr.next(at(2026, 1, 1, 0, 0), 1)[0],
                expected,
                "{shortcut}"
            );
        }
        assert_eq!(
            CronExpr::parse("@weekly", "UTC")
                .unwrap()
                .next(at(2026, 6, 17, 0, 0), 1)[0]
                .weekday(),
            Weekday::Sun
        );
    }

    #[test]
    fn time_zones_shift_fire_times_and_follow_daylight_saving() {
        let berlin = CronExpr::parse("0 9 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            berlin.next(at(2026, 1, 10, 0, 0), 1)[0].hour(),
            8,
            "CET is UTC+1"
        );
        assert_eq!(
            berlin.next(at(2026, 7, 10, 0, 0), 1)[0].hour(),
            7,
            "CEST is UTC+2"
        );
    }

    #[test]
    fn errors_name_the_bad_field() {
        for (expr, field) in [
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 32 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("* * * * funday", "day-of-week"),
            ("99 * * * * *", "second"),
        ] {
            let err = CronExpr::parse(expr, "UTC").unwrap_err();
            assert!(
                err.0.contains(&format!("invalid {field} field")),
                "{expr}: {err}"
            );
        }
        let err = CronExpr::parse("0 25 * * *", "UTC").unwrap_err();
        assert!(
            err.0.contains("hour must be 0-23") && !err.0.contains("less than"),
            "{err}"
        );
        assert!(CronExpr::parse("0 23 * * *", "UTC").is_ok());
    }

    #[test]
    fn fire_times_read_in_the_schedule_s_zone() {
        let at = DateTime::parse_from_rfc3339("2026-12-08T01:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(local_time(at, "Europe/Berlin"), "2026-12-08 02:30:00 CET");
        assert_eq!(local_time(at, "UTC"), "2026-12-08 01:30:00 UTC");
        assert_eq!(local_time(at, "Nowhere/Else"), "2026-12-08 01:30:00 UTC");
        let err = CronExpr::parse("* * * *", "UTC").unwrap_err();
        assert!(err.0.contains("4 fields"), "{err}");
        let err = CronExpr::parse("@often", "UTC").unwrap_err();
        assert!(err.0.contains("@often"), "{err}");
        let err = CronExpr::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(err.0.contains("time zone"), "{err}");
    }
}
