//! `arachne run`: start a spider, optionally following its log or waiting for its end; and the placement and
//! supervision flags runs and schedules share.

use std::io::Write;
use std::process::ExitCode;

use arachne_api_types::{RunTask, Task};
use arachne_client::{Client, FollowEvent};
use arachne_shared::spider::RunSettings;
use arachne_shared::{RunMode, TaskId, TaskStatus};

use crate::Error;
use crate::output::Output;

/// `arachne run SPIDER`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    spider: String,
    /// Run this stored version (a hash, or a unique prefix of one) instead of the current one.
    #[arg(long)]
    version: Option<String>,
    #[command(flatten)]
    options: RunOptionArgs,
    /// For a Scrapy project (a spider whose command is `scrapy`): crawl this Scrapy spider; its arguments
    /// become `crawl NAME -a K=V -s K=V`, quoted for the shell.
    #[arg(long = "spider", value_name = "NAME", conflicts_with = "param")]
    scrapy_spider: Option<String>,
    /// A Scrapy spider argument, `-a K=V` (with --spider; repeatable).
    #[arg(short = 'a', value_name = "K=V", requires = "scrapy_spider", value_parser = arachne_shared::parse_key_value)]
    scrapy_arg: Vec<(String, String)>,
    /// A Scrapy setting, `-s K=V` (with --spider; repeatable).
    #[arg(short = 's', value_name = "K=V", requires = "scrapy_spider", value_parser = arachne_shared::parse_key_value)]
    scrapy_setting: Vec<(String, String)>,
    /// Stream the task's logs until it ends; exit 0 only if it Finished.
    #[arg(long)]
    follow: bool,
    /// Wait for the task to end; exit 0 only if it Finished.
    #[arg(long)]
    wait: bool,
}

/// What a run is started with, by `run` and by a schedule.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct RunOptionArgs {
    /// Arguments appended to the spider's command. Shell text, by design: `--param "-a page=2"` reaches the
    /// shell that runs the command, quotes, `;` and `$(…)` included, so anyone who may run spiders may run
    /// any command as the spider user (every API token today).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) param: Option<String>,
    /// 1 (highest) to 10.
    #[arg(long)]
    pub(crate) priority: Option<u8>,
    #[command(flatten)]
    pub(crate) placement: PlacementArgs,
    #[command(flatten)]
    pub(crate) settings: SettingsArgs,
}

impl RunArgs {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let version = match self.version {
            Some(v) => Some(crate::spider::resolve_version(client, &self.spider, &v).await?),
            None => None,
        };
        let param = match &self.scrapy_spider {
            Some(name) => {
                let spider = client.get_spider(&self.spider).await?;
                if !arachne_shared::scrapy::is_project_command(&spider.cmd) {
                    return Err(Error::NotScrapyProject {
                        spider: spider.name,
                        cmd: spider.cmd,
                    });
                }
                Some(arachne_shared::scrapy::crawl_args(
                    name,
                    &self.scrapy_arg,
                    &self.scrapy_setting,
                ))
            }
            None => self.options.param,
        };
        let task = client
            .run_task(&RunTask {
                mode: self.options.placement.mode(),
                nodes: self.options.placement.nodes,
                node_labels: self.options.placement.labels.into_iter().collect(),
                spider: self.spider,
                param,
                priority: self.options.priority,
                settings: self.options.settings.into_settings(),
                version,
            })
            .await?;
        if output.json && !self.follow && !self.wait {
            return output.show(&task, |_| Ok(()));
        }
        outln!("{}", task.id);
        if self.follow {
            return follow_logs(client, task.id).await;
        }
        if self.wait {
            let task = wait_for(client, task.id).await?;
            describe_end(&task);
            return Ok(task_exit(&task));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Where a run goes.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct PlacementArgs {
    /// random: one task on the least loaded node; nodes: one task per --node; all: one per online node.
    #[arg(long, value_parser = |v: &str| v.parse::<RunMode>())]
    pub(crate) mode: Option<RunMode>,
    /// A node of mode `nodes` (giving --node alone implies it); repeatable.
    #[arg(long = "node", value_name = "NAME")]
    pub(crate) nodes: Vec<String>,
    /// A label a node must have to take the run (mode all: to get a child), as NAME=VALUE; repeatable, all
    /// required.
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = arachne_shared::parse_key_value)]
    pub(crate) labels: Vec<(String, String)>,
}

impl PlacementArgs {
    pub(crate) fn mode(&self) -> Option<RunMode> {
        self.mode
            .or_else(|| (!self.nodes.is_empty()).then_some(RunMode::Nodes))
    }
}

/// Supervision settings, for a spider or one run.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Stop the run after this many seconds (it ends as Error).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Stop the run when its process tree uses more than this many MiB (it ends as Error).
    #[arg(long, value_name = "MIB")]
    pub memory_limit: Option<u64>,
    /// Seconds the spider has to exit after a cancel before SIGTERM.
    #[arg(long, value_name = "SECS")]
    pub cancel_grace: Option<u64>,
    /// An environment variable of the spider process, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = arachne_shared::parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Run again this many times when a run ends as Error or Abnormal.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Seconds before the first retry; each later one waits twice as long.
    #[arg(long, value_name = "SECS")]
    pub retry_backoff: Option<u64>,
}

impl SettingsArgs {
    /// The settings, or `None` when no flag was given.
    pub(crate) fn into_settings(self) -> Option<RunSettings> {
        let given = self.timeout.is_some()
            || self.memory_limit.is_some()
            || self.cancel_grace.is_some()
            || self.retries.is_some()
            || self.retry_backoff.is_some()
            || !self.env.is_empty();
        given.then(|| RunSettings {
            env: self.env.into_iter().collect(),
            timeout_secs: self.timeout,
            memory_limit_mib: self.memory_limit,
            cancel_grace_secs: self.cancel_grace,
            retries: self.retries,
            retry_backoff_secs: self.retry_backoff,
        })
    }
}

/// 0 if the task Finished, 1 otherwise.
fn task_exit(task: &Task) -> ExitCode {
    if task.status == TaskStatus::Finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn describe_end(task: &Task) {
    let detail = task
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    eprintln!("task {} {}{detail}", task.id, task.status);
}

async fn wait_for(client: &Client, id: TaskId) -> Result<Task, Error> {
    loop {
        let task = client.wait_task(id, 60).await?;
        if task.status.is_terminal() {
            return Ok(task);
        }
    }
}

/// Streams the task's log until it ends, then says how it ended; exits 0 only if it Finished. A parent (a run
/// in mode `all` or `nodes`) has no log of its own: its children's logs are followed together, each line
/// prefixed by its node.
pub(crate) async fn follow_logs(client: &Client, id: TaskId) -> Result<ExitCode, Error> {
    let tree = client.task_tree(id).await?;
    if !tree.children_tasks.is_empty() {
        return follow_children(client, id, tree.children_tasks).await;
    }
    let mut ended = None;
    let mut write_error = None;
    client
        .follow_logs(id, 0, |event| match event {
            FollowEvent::Line(line) => {
                if let Err(err) = writeln!(std::io::stdout().lock(), "{}", line.text) {
                    write_error.get_or_insert(err);
                }
            }
            FollowEvent::End(task) => ended = Some(task),
        })
        .await?;
    if let Some(err) = write_error {
        return Err(err.into());
    }
    let task = match ended {
        Some(task) => *task,
        None => wait_for(client, id).await?,
    };
    describe_end(&task);
    Ok(task_exit(&task))
}

/// Follows every child's log at once, `[node] line`, then waits for the parent and says how it ended.
async fn follow_children(
    client: &Client,
    parent: TaskId,
    children: Vec<Task>,
) -> Result<ExitCode, Error> {
    let mut followers = tokio::task::JoinSet::new();
    for child in children {
        let client = client.clone();
        let node = child.pinned_node.or(child.node).unwrap_or_default();
        followers.spawn(async move {
            let mut write_error = None;
            client
                .follow_logs(child.id, 0, |event| {
                    if let FollowEvent::Line(line) = event
                        && let Err(err) =
                            writeln!(std::io::stdout().lock(), "[{node}] {}", line.text)
                    {
                        write_error.get_or_insert(err);
                    }
                })
                .await?;
            match write_error {
                Some(err) => Err(Error::from(err)),
                None => Ok(()),
            }
        });
    }
    while let Some(followed) = followers.join_next().await {
        followed.expect("a log follower does not panic")?;
    }
    let task = wait_for(client, parent).await?;
    describe_end(&task);
    Ok(task_exit(&task))
}
