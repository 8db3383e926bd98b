//! `arachne stats`: the overview of runs over the last days (totals, per spider, the slowest and most failing
//! spiders) and the nodes' load now.

use std::process::ExitCode;

use arachne_api_types::StatsQuery;
use arachne_client::Client;
use arachne_shared::stats::{RunSummary, Stats};
use clap::Args;

use crate::Error;
use crate::output::{Output, print_table};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The last this many days (1: the last 24 hours).
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Only this spider's runs.
    #[arg(long)]
    spider: Option<String>,
}

impl StatsArgs {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let query = StatsQuery {
            days: Some(self.days),
            spider: self.spider,
        };
        output.show(&client.stats(&query).await?, print_stats)
    }
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

fn rate(summary: &RunSummary) -> String {
    summary
        .success_rate
        .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn print_stats(stats: &Stats) -> Result<(), Error> {
    let t = &stats.totals;
    outln!(
        "last {} day{}{}: {} runs ({} finished, {} error, {} cancelled, {} abnormal), success {}, {} items, run time p50 {} p95 {}; {} running, {} pending now",
        stats.days,
        if stats.days == 1 { "" } else { "s" },
        stats
            .spider
            .as_ref()
            .map_or(String::new(), |s| format!(" of {s}")),
        t.runs,
        t.finished,
        t.error,
        t.cancelled,
        t.abnormal,
        rate(t),
        t.items,
        seconds(t.run_time_p50_ms),
        seconds(t.run_time_p95_ms),
        stats.running,
        stats.pending,
    );
    if !stats.spiders.is_empty() {
        outln!();
        let rows = stats
            .spiders
            .iter()
            .map(|s| {
                vec![
                    s.spider.clone(),
                    s.runs.runs.to_string(),
                    (s.runs.error + s.runs.abnormal).to_string(),
                    rate(&s.runs),
                    s.runs.items.to_string(),
                    seconds(s.runs.run_time_p50_ms),
                    seconds(s.runs.run_time_p95_ms),
                ]
            })
            .collect();
        print_table(
            &["SPIDER", "RUNS", "FAILED", "SUCCESS", "ITEMS", "P50", "P95"],
            rows,
        )?;
    }
    if !stats.nodes.is_empty() {
        outln!();
        let percent = |p: Option<f32>| p.map_or("-".into(), |p| format!("{p:.0}%"));
        let rows = stats
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    if n.online { "online" } else { "offline" }.into(),
                    format!("{}/{}", n.running, n.max_runners),
                    percent(n.cpu_percent),
                    percent(n.memory_percent),
                ]
            })
            .collect();
        print_table(&["NODE", "STATUS", "RUNNING", "CPU", "MEMORY"], rows)?;
    }
    Ok(())
}
