//! The CLI's human-readable descriptions of one task or one spider (`task show`, `spider show`); `--json`
//! prints the API's JSON instead, for scripts.

use std::fmt::Write as _;

use arachne_api_types::{Spider, Task};
use arachne_shared::spider::{DedupMode, RunSettings};
use arachne_shared::{RunMode, TaskStatus};
use chrono::{DateTime, Utc};

/// Labelled lines, the labels padded to one width; a field with no value is left out.
#[derive(Default)]
struct Fields(Vec<(&'static str, String)>);

impl Fields {
    fn add(&mut self, label: &'static str, value: impl Into<Option<String>>) {
        if let Some(value) = value.into().filter(|v| !v.is_empty()) {
            self.0.push((label, value));
        }
    }

    fn render(self, title: String) -> String {
        let width = self.0.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
        let mut out = title;
        out.push('\n');
        for (label, value) in self.0 {
            let _ = writeln!(out, "  {:<width$} {value}", format!("{label}:"));
        }
        out
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

fn millis(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1e3),
        _ => format!("{}m {:02}s", ms / 60_000, ms / 1_000 % 60),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn settings(fields: &mut Fields, s: &RunSettings) {
    fields.add("timeout", s.timeout_secs.map(|t| format!("{t} s")));
    fields.add(
        "memory limit",
        s.memory_limit_mib.map(|m| format!("{m} MiB")),
    );
    fields.add(
        "cancel grace",
        s.cancel_grace_secs.map(|g| format!("{g} s")),
    );
    fields.add(
        "retries",
        s.retries.map(|r| match s.retry_backoff_secs {
            Some(b) => format!("{r} (backoff {b} s)"),
            None => r.to_string(),
        }),
    );
    // Names only: values are often credentials, and a terminal is shared and scrolled back through.
    let env: Vec<&str> = s.env.keys().map(String::as_str).collect();
    fields.add("env", env.join(", "));
}

/// A task's status, with the reason a Pending task waits when there is one.
pub(crate) fn status(t: &Task) -> String {
    match (&t.pending_reason, t.status) {
        (Some(reason), TaskStatus::Pending) => format!("pending ({reason})"),
        _ => t.status.to_string(),
    }
}

/// `arachne task show ID`.
pub(crate) fn task(t: &Task) -> String {
    let mut f = Fields::default();
    f.add("status", status(t));
    f.add("spider", format!("{} ({})", t.spider_name, t.spider_id));
    f.add("command", t.command_line());
    f.add("version", t.version.clone());
    f.add("priority", t.priority.to_string());
    if t.mode != RunMode::Random || t.children > 0 {
        f.add("mode", t.mode.as_str().to_owned());
    }
    f.add("node", t.node.clone().or_else(|| t.pinned_node.clone()));
    f.add("pid", t.pid.map(|p| p.to_string()));
    f.add("created", time(t.created_at));
    f.add("started", t.started_at.map(time));
    f.add("ended", t.ended_at.map(time));
    f.add("waited", t.wait_ms.map(millis));
    f.add("ran", t.run_ms.map(millis));
    f.add("peak memory", t.peak_rss_bytes.map(mib));
    f.add("exit code", t.exit_code.map(|c| c.to_string()));
    f.add("signal", t.signal.map(|s| s.to_string()));
    f.add("error", t.error.clone());
    f.add("log lines", t.log_lines.to_string());
    f.add("items", t.items.to_string());
    if let Some(p) = &t.progress {
        let mut line = p
            .status
            .progress
            .map(|v| format!("{:.0}%", v * 100.0))
            .unwrap_or_default();
        if let Some(message) = &p.status.message {
            line = format!("{line} {message}").trim().to_owned();
        }
        f.add("progress", line);
        f.add(
            "stats",
            p.status
                .stats
                .as_ref()
                .map(|s| serde_json::Value::Object(s.clone()).to_string()),
        );
    }
    f.add(
        "errors reported",
        (t.error_count > 0).then(|| t.error_count.to_string()),
    );
    f.add("attempt", (t.attempt > 1).then(|| t.attempt.to_string()));
    f.add("first attempt", t.first_attempt.map(|id| id.to_string()));
    f.add("parent", t.parent_id.map(|id| id.to_string()));
    f.add("children", (t.children > 0).then(|| t.children.to_string()));
    f.add("schedule", t.schedule_id.map(|id| id.to_string()));
    f.add("fire time", t.fire_time.map(time));
    f.add("not before", t.not_before.map(time));
    settings(&mut f, &t.settings);
    let mut out = f.render(format!("task {}", t.id));
    let shown = t.errors.len().min(5);
    if shown > 0 {
        let _ = writeln!(out, "  last reported errors:");
        for e in &t.errors[t.errors.len() - shown..] {
            let fatal = if e.error.fatal { " (fatal)" } else { "" };
            let _ = writeln!(out, "    {} {}{fatal}", time(e.at), e.error.message);
        }
    }
    out
}

/// `arachne spider show NAME`.
pub(crate) fn spider(s: &Spider) -> String {
    let mut f = Fields::default();
    f.add("id", s.id.to_string());
    f.add("command", s.cmd.clone());
    f.add(
        "version",
        if s.version.is_empty() {
            "none uploaded".to_owned()
        } else {
            s.version.clone()
        },
    );
    f.add(
        "files",
        format!("{} ({} bytes)", s.file_count, s.total_bytes),
    );
    f.add("created", time(s.created_at));
    f.add("updated", time(s.updated_at));
    f.add("max instances", s.max_instances.map(|m| m.to_string()));
    f.add("results", s.results_collection.clone());
    f.add(
        "dedup",
        s.dedup.as_ref().map(|d| {
            let mode = match d.mode {
                DedupMode::Overwrite => "overwrite",
                DedupMode::Ignore => "ignore",
            };
            format!("{mode} on {}", d.keys.join(", "))
        }),
    );
    settings(&mut f, &s.settings);
    f.render(format!("spider {}", s.name))
}

#[cfg(test)]
mod tests {
    use arachne_shared::{Spider, Task, TaskOutcome};

    #[test]
    fn a_task_reads_as_labelled_lines_without_empty_fields() {
        let at = chrono::Utc::now();
        let mut spider = Spider::new("quotes", "python3 main.py", at);
        spider.version = String::new();
        let mut task = Task::pending(&spider, at);
        task.finish(&TaskOutcome::Finished, at);
        task.run_ms = Some(1_500);
        task.items = 15;
        let task = arachne_api_types::Task::from(task);
        let text = super::task(&task);
        assert!(text.starts_with(&format!("task {}\n", task.id)), "{text}");
        for line in [
            "  status:    finished\n",
            "  command:   python3 main.py\n",
            "  ran:       1.5 s\n",
            "  exit code: 0\n",
            "  items:     15\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        for absent in [
            "  pid:",
            "  version:",
            "  node:",
            "  progress:",
            "  attempt:",
        ] {
            assert!(!text.contains(absent), "{absent:?} shown in\n{text}");
        }
    }
}
