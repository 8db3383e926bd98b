//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use arachne_api_types::{Histogram, Metrics};

/// The content type Prometheus expects for this format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) fn render(metrics: &Metrics) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "arachne_tasks",
        "gauge",
        "Tasks in the store by status.",
    );
    for (status, count) in &metrics.tasks {
        let _ = writeln!(out, "arachne_tasks{{status=\"{status}\"}} {count}");
    }
    for (name, kind, help, value) in [
        (
            "arachne_nodes_online",
            "gauge",
            "Workers connected now.",
            metrics.nodes_online,
        ),
        (
            "arachne_runner_slots",
            "gauge",
            "Runner slots of the connected workers.",
            metrics.runner_slots,
        ),
        (
            "arachne_runner_slots_in_use",
            "gauge",
            "Runner slots holding a task.",
            metrics.runner_slots_in_use,
        ),
        (
            "arachne_items_ingested_total",
            "counter",
            "Items stored since the master started.",
            metrics.items_ingested,
        ),
        (
            "arachne_log_lines_ingested_total",
            "counter",
            "Log lines stored since the master started.",
            metrics.log_lines_ingested,
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    histogram(
        &mut out,
        "arachne_dispatch_latency_seconds",
        "Seconds from a task being ready to run to its hand-over to a worker.",
        &metrics.dispatch_latency,
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, histogram: &Histogram) {
    family(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let total = histogram.count();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum {}", histogram.sum);
    let _ = writeln!(out, "{name}_count {total}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use arachne_shared::TaskStatus;

    #[test]
    fn histograms_are_cumulative_and_every_family_is_typed() {
        let mut latency = Histogram::new(vec![0.01, 0.1]);
        for seconds in [0.002, 0.05, 0.07, 3.0] {
            latency.observe(seconds);
        }
        let text = render(&Metrics {
            tasks: vec![(TaskStatus::Pending, 2), (TaskStatus::Finished, 7)],
            nodes_online: 1,
            runner_slots: 4,
            runner_slots_in_use: 1,
            items_ingested: 10,
            log_lines_ingested: 20,
            dispatch_latency: latency,
        });
        for expected in [
            "arachne_tasks{status=\"pending\"} 2\n",
            "arachne_tasks{status=\"finished\"} 7\n",
            "# TYPE arachne_items_ingested_total counter\narachne_items_ingested_total 10\n",
            "arachne_dispatch_latency_seconds_bucket{le=\"0.01\"} 1\n",
            "arachne_dispatch_latency_seconds_bucket{le=\"0.1\"} 3\n",
            "arachne_dispatch_latency_seconds_bucket{le=\"+Inf\"} 4\n",
            "arachne_dispatch_latency_seconds_count 4\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} has no TYPE"
            );
        }
    }
}
