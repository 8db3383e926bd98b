//! `arachne schedule ...`: create, change, list, enable, disable, delete and run cron schedules.

use std::process::ExitCode;

use arachne_api_types::{CronQuery, ScheduleSpec, ScheduleView};
use arachne_client::Client;
use arachne_shared::schedule::{MisfirePolicy, OverlapPolicy, local_time};
use clap::Subcommand;

use crate::Error;
use crate::output::{Output, or_dash, print_table};
use crate::run::RunOptionArgs;

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule.
    Create(ScheduleArgs),
    /// Replace a schedule's definition.
    Update(ScheduleArgs),
    List,
    /// Show a schedule and its next 5 fire times.
    Show {
        name: String,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Run the schedule's spider now.
    RunNow {
        name: String,
    },
    /// Check a cron expression and print its next 5 fire times on the zone's clock, without saving anything.
    Check {
        cron: String,
        /// IANA time zone, for example Europe/Berlin (default UTC).
        #[arg(long)]
        tz: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    name: String,
    #[arg(long)]
    spider: String,
    /// "*/5 * * * *" (minute first), six fields with seconds first, or @hourly/@daily/@weekly/@monthly.
    #[arg(long)]
    cron: String,
    /// IANA time zone, for example Europe/Berlin (default UTC).
    #[arg(long)]
    tz: Option<String>,
    #[command(flatten)]
    options: RunOptionArgs,
    /// allow, skip (no new run while the last one is active) or queue.
    #[arg(long, value_parser = |v: &str| v.parse::<OverlapPolicy>())]
    overlap: Option<OverlapPolicy>,
    /// After master downtime: once (run once for all missed times) or skip.
    #[arg(long, value_parser = |v: &str| v.parse::<MisfirePolicy>())]
    misfire: Option<MisfirePolicy>,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
}

impl ScheduleArgs {
    fn into_spec(self) -> ScheduleSpec {
        ScheduleSpec {
            mode: self.options.placement.mode(),
            nodes: self.options.placement.nodes,
            node_labels: self.options.placement.labels.into_iter().collect(),
            name: self.name,
            spider: self.spider,
            cron: self.cron,
            timezone: self.tz,
            param: self.options.param,
            priority: self.options.priority,
            settings: self.options.settings.into_settings(),
            enabled: Some(!self.disabled),
            overlap: self.overlap,
            misfire: self.misfire,
        }
    }
}

impl ScheduleCommand {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let view = match self {
            Self::Create(args) => client.create_schedule(&args.into_spec()).await?,
            Self::Update(args) => {
                let name = args.name.clone();
                client.update_schedule(&name, &args.into_spec()).await?
            }
            Self::Show { name } => client.get_schedule(&name).await?,
            Self::Check { cron, tz } => {
                let zone = tz.clone().unwrap_or_else(|| "UTC".into());
                let preview = client.check_cron(&CronQuery { cron, tz }).await?;
                return output.show(&preview, |preview| {
                    for at in &preview.next {
                        outln!("{}", local_time(*at, &zone));
                    }
                    Ok(())
                });
            }
            Self::Enable { name } => client.set_schedule_enabled(&name, true).await?,
            Self::Disable { name } => client.set_schedule_enabled(&name, false).await?,
            Self::Delete { name } => {
                client.delete_schedule(&name).await?;
                if !output.json {
                    outln!("schedule {name} deleted");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Self::RunNow { name } => {
                return output.show(&client.run_schedule(&name).await?, |task| {
                    outln!("{}", task.id);
                    Ok(())
                });
            }
            Self::List => return output.show(&client.list_schedules().await?, |s| print_list(s)),
        };
        output.show(&view, print_schedule)
    }
}

fn print_list(schedules: &[ScheduleView]) -> Result<(), Error> {
    let rows = schedules
        .iter()
        .map(|v| {
            let s = &v.schedule;
            vec![
                s.name.clone(),
                s.spider.clone(),
                s.cron.clone(),
                s.timezone.clone(),
                s.mode.as_str().into(),
                if s.enabled { "yes" } else { "no" }.into(),
                s.overlap.as_str().into(),
                or_dash(v.next.first().map(|t| local_time(*t, &s.timezone))),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "SPIDER", "CRON", "TZ", "MODE", "ENABLED", "OVERLAP", "NEXT",
        ],
        rows,
    )
}

fn print_schedule(view: &ScheduleView) -> Result<(), Error> {
    let s = &view.schedule;
    outln!("schedule {} ({})", s.name, s.id);
    outln!("  spider:   {}", s.spider);
    outln!("  cron:     {} ({})", s.cron, s.timezone);
    let nodes = if s.nodes.is_empty() {
        String::new()
    } else {
        format!(" {}", s.nodes.join(","))
    };
    outln!("  mode:     {}{nodes}", s.mode.as_str());
    outln!("  enabled:  {}", s.enabled);
    outln!(
        "  overlap:  {}, misfire: {}",
        s.overlap.as_str(),
        s.misfire.as_str()
    );
    outln!("  next fire times:");
    for at in &view.next {
        outln!("    {}", local_time(*at, &s.timezone));
    }
    Ok(())
}
