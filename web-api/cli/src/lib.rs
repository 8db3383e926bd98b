//! The `arachne` command line: every command is one or a few client calls, printed as a table or as JSON.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod describe;

use arachne_shared::schedule::{MisfirePolicy, OverlapPolicy};
use arachne_shared::spider::{Dedup, DedupMode, RunSettings};
use arachne_shared::{RunMode, Spider, Task, TaskId, TaskStatus};
use clap::{Parser, Subcommand, ValueEnum};

use arachne_api_types::{
    CreateSpider, EventQuery, ItemQuery, MAX_LIMIT, RunTask, ScheduleSpec, ScheduleView, TaskQuery,
    UpdateNode,
};
use arachne_client::{Client, FollowEvent, TaskEvent};

/// `print!` that returns a write failure instead of panicking: `arachne ... | head` closes the pipe early,
/// and [`run`] takes that as the reader's choice.
macro_rules! out {
    ($($arg:tt)*) => {
        write!(std::io::stdout().lock(), $($arg)*)?
    };
}

/// `println!` that returns a write failure instead of panicking; see [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

/// Errors of CLI commands; printed as `error: ...` with a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] arachne_client::Error),
    #[error("packing the spider folder failed: {0}")]
    Archive(#[from] arachne_shared::archive::Error),
    #[error("invalid task id {0:?}")]
    TaskId(String),
    #[error("writing output failed: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Input(String),
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Arachne: run web crawlers at scale.
#[derive(Debug, Parser)]
#[command(name = "arachne", version)]
pub struct Cli {
    /// The master's HTTP address.
    #[arg(
        long,
        global = true,
        env = "ARACHNE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// The API token (`arachne-master token create NAME` makes one).
    #[arg(long, global = true, env = "ARACHNE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token, read when no --token is given. The default is where a master started in
    /// this folder writes the token it makes on its first start.
    #[arg(
        long,
        global = true,
        env = "ARACHNE_TOKEN_FILE",
        default_value = "arachne-data/api-token"
    )]
    pub token_file: std::path::PathBuf,
    /// A PEM certificate to trust for an https:// --server besides the public authorities (a master's
    /// self-signed certificate, or the authority that signed it).
    #[arg(long, global = true, env = "ARACHNE_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage spiders.
    #[command(subcommand)]
    Spider(SpiderCommand),
    /// Run a spider: creates a task and prints its id.
    Run {
        spider: String,
        /// Arguments appended to the spider's command. Shell text, by design: `--param "-a page=2"` reaches the
        /// shell that runs the command, quotes, `;` and `$(…)` included, so anyone who may run spiders may run
        /// any command as the spider user (every API token today).
        #[arg(long, allow_hyphen_values = true)]
        param: Option<String>,
        /// 1 (highest) to 10.
        #[arg(long)]
        priority: Option<u8>,
        /// Run this stored version (a hash, or a unique prefix of one) instead of the current one.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        placement: PlacementArgs,
        /// Stream the task's logs until it ends; exit 0 only if it Finished.
        #[arg(long)]
        follow: bool,
        /// Wait for the task to end; exit 0 only if it Finished.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Inspect tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Print a task's log.
    Logs {
        id: String,
        /// Keep streaming until the task ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print the items a task produced.
    Items {
        id: String,
        #[arg(long, value_enum, default_value_t = ItemsFormat::Jsonl)]
        format: ItemsFormat,
    },
    /// Cancel a task; its processes are killed.
    Cancel { id: String },
    /// Stream task status changes and STATUS progress as they happen (one line each, or JSON lines with
    /// --json) until interrupted.
    Events {
        /// Only tasks of this spider.
        #[arg(long)]
        spider: Option<String>,
        /// Only this task and its children.
        #[arg(long)]
        task: Option<String>,
    },
    /// Print the master's metrics (Prometheus text format).
    Metrics,
    /// Inspect worker nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage cron schedules.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

/// Where a run goes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PlacementArgs {
    /// random: one task on the least loaded node; nodes: one task per --node; all: one per online node.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<RunMode>,
    /// A node of mode `nodes` (giving --node alone implies it); repeatable.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
}

impl PlacementArgs {
    fn mode(&self) -> Option<RunMode> {
        self.mode
            .or_else(|| (!self.nodes.is_empty()).then_some(RunMode::Nodes))
    }
}

fn parse_mode(value: &str) -> Result<RunMode, arachne_shared::Invalid> {
    value.parse().map_err(arachne_shared::Invalid)
}

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
    placement: PlacementArgs,
    /// Arguments appended to the spider's command; shell text, as for `arachne run --param`.
    #[arg(long, allow_hyphen_values = true)]
    param: Option<String>,
    #[arg(long)]
    priority: Option<u8>,
    /// allow, skip (no new run while the last one is active) or queue.
    #[arg(long, value_parser = |v: &str| v.parse::<OverlapPolicy>())]
    overlap: Option<OverlapPolicy>,
    /// After master downtime: once (run once for all missed times) or skip.
    #[arg(long, value_parser = |v: &str| v.parse::<MisfirePolicy>())]
    misfire: Option<MisfirePolicy>,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
    #[command(flatten)]
    settings: SettingsArgs,
}

impl ScheduleArgs {
    fn into_spec(self) -> ScheduleSpec {
        ScheduleSpec {
            mode: self.placement.mode(),
            nodes: self.placement.nodes,
            name: self.name,
            spider: self.spider,
            cron: self.cron,
            timezone: self.tz,
            param: self.param,
            priority: self.priority,
            settings: self.settings.into_settings(),
            enabled: Some(!self.disabled),
            overlap: self.overlap,
            misfire: self.misfire,
        }
    }
}

/// Item de-duplication flags of `spider create`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DedupArgs {
    /// Store items with equal values in these fields once (repeat for a compound key).
    #[arg(long = "dedup-key", value_name = "FIELD")]
    keys: Vec<String>,
    /// What a duplicate does: overwrite (replace the stored item) or ignore (keep the stored item).
    #[arg(long, value_name = "MODE", requires = "keys")]
    dedup_mode: Option<DedupMode>,
    /// Turn de-duplication off.
    #[arg(long, conflicts_with_all = ["keys", "dedup_mode"])]
    no_dedup: bool,
}

impl DedupArgs {
    fn into_dedup(self) -> Option<Dedup> {
        if self.no_dedup {
            return Some(Dedup {
                keys: Vec::new(),
                mode: DedupMode::default(),
            });
        }
        (!self.keys.is_empty()).then(|| Dedup {
            keys: self.keys,
            mode: self.dedup_mode.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum SpiderCommand {
    /// Create a spider (or update it) and upload its folder.
    Create {
        name: String,
        /// Shell command run in the spider's folder.
        #[arg(long)]
        cmd: String,
        /// The spider's files: a folder, or a .zip or .tar.gz archive.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Given any of these, they replace the spider's settings; given none, an existing spider keeps its own.
        #[command(flatten)]
        settings: SettingsArgs,
        /// At most this many of its tasks run at once across the cluster (0 removes the limit).
        #[arg(long)]
        max_instances: Option<u32>,
        /// The collection its items go to in a MongoDB store (default results_<name>; "" restores it).
        #[arg(long)]
        results_collection: Option<String>,
        #[command(flatten)]
        dedup: DedupArgs,
    },
    List,
    Show {
        name: String,
    },
    /// Upload a new version from a folder, or a .zip or .tar.gz archive, and make it current.
    Upload {
        name: String,
        path: PathBuf,
    },
    /// List the stored versions, newest first.
    Versions {
        name: String,
    },
    /// Make a stored version (a hash, or a unique prefix of one) the one runs use.
    Use {
        name: String,
        version: String,
    },
    /// List the files of a version, or print one of them.
    Files {
        name: String,
        /// A file to print.
        path: Option<String>,
        /// A stored version (a hash or a unique prefix); the current one by default.
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    List {
        #[arg(long)]
        spider: Option<String>,
        #[arg(long)]
        status: Option<TaskStatus>,
        /// Only tasks handed to this node.
        #[arg(long)]
        node: Option<String>,
        /// Only tasks this schedule (name or id) created.
        #[arg(long)]
        schedule: Option<String>,
        /// Only tasks created at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only tasks created before this time (RFC 3339).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Skip this many of the newest matching tasks.
        #[arg(long, default_value_t = 0)]
        offset: u32,
    },
    Show {
        id: String,
        /// Also list the task's children.
        #[arg(long)]
        recursive: bool,
    },
    /// Run an ended task again; for a parent, only its children that did not finish.
    Restart { id: String },
    /// Delete an ended task with its logs and items; a parent goes with its children.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    List,
    /// Change a node at run time; the setting survives its reconnects.
    Set {
        name: String,
        /// How many tasks the node runs at once. Running tasks are never stopped by a lower limit.
        #[arg(long)]
        max_runners: u32,
    },
    /// Let the node take new tasks again.
    Enable {
        name: String,
    },
    /// Give the node no new tasks; the ones it runs carry on.
    Disable {
        name: String,
    },
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
    fn into_settings(self) -> Option<RunSettings> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ItemsFormat {
    Jsonl,
    Json,
    /// One column per field, as the server exports it.
    Csv,
}

/// Runs one CLI invocation and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match execute(cli).await {
        Ok(code) => code,
        // `arachne logs ID | head` closes the pipe early; that is the reader's choice, not a failure.
        Err(Error::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_id(id: &str) -> Result<TaskId, Error> {
    id.parse().map_err(|_| Error::TaskId(id.to_owned()))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Error> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> Result<(), Error> {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
        Ok(())
    };
    line(header.iter().map(|h| h.to_string()).collect())?;
    for row in rows {
        line(row)?;
    }
    Ok(())
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

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

/// The token from `--token`, else from `--token-file` if that file exists; none otherwise (a master started
/// with `--no-auth` needs none).
fn token(cli: &Cli) -> Result<Option<String>, Error> {
    if let Some(token) = &cli.token {
        return Ok(Some(token.trim().to_owned()));
    }
    match std::fs::read_to_string(&cli.token_file) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::Input(format!(
            "cannot read the token file {}: {err}",
            cli.token_file.display()
        ))),
    }
}

async fn execute(cli: Cli) -> Result<ExitCode, Error> {
    let ca = match &cli.ca {
        Some(path) => Some(std::fs::read(path).map_err(|source| Error::CaFile {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let client = Client::with_tls(&cli.server, token(&cli)?.as_deref(), ca.as_deref())?;
    match cli.command {
        Command::Spider(SpiderCommand::Create {
            name,
            cmd,
            dir,
            settings,
            max_instances,
            results_collection,
            dedup,
        }) => {
            let mut spider = client
                .put_spider(&CreateSpider {
                    name: name.clone(),
                    cmd,
                    settings: settings.into_settings(),
                    max_instances,
                    results_collection,
                    dedup: dedup.into_dedup(),
                })
                .await?;
            if let Some(dir) = dir {
                spider = upload(&client, &name, &dir).await?;
            }
            if cli.json {
                print_json(&spider)?;
            } else {
                outln!(
                    "spider {} version {} ({} files)",
                    spider.name,
                    short(&spider.version),
                    spider.file_count
                );
            }
        }
        Command::Spider(SpiderCommand::List) => {
            let spiders = client.list_spiders().await?;
            if cli.json {
                return print_json(&spiders).map(|()| ExitCode::SUCCESS);
            }
            let rows = spiders
                .into_iter()
                .map(|s| {
                    vec![
                        s.name,
                        s.cmd,
                        short(&s.version).into(),
                        s.file_count.to_string(),
                    ]
                })
                .collect();
            print_table(&["NAME", "COMMAND", "VERSION", "FILES"], rows)?;
        }
        Command::Spider(SpiderCommand::Show { name }) => {
            let spider = client.get_spider(&name).await?;
            if cli.json {
                print_json(&spider)?;
            } else {
                out!("{}", crate::describe::spider(&spider));
            }
        }
        Command::Spider(SpiderCommand::Upload { name, path }) => {
            let spider = upload(&client, &name, &path).await?;
            if cli.json {
                print_json(&spider)?;
            } else {
                outln!(
                    "spider {} version {} ({} files, {} bytes)",
                    spider.name,
                    short(&spider.version),
                    spider.file_count,
                    spider.total_bytes
                );
            }
        }
        Command::Spider(SpiderCommand::Versions { name }) => {
            let versions = client.list_versions(&name).await?;
            if cli.json {
                return print_json(&versions).map(|()| ExitCode::SUCCESS);
            }
            let rows = versions
                .into_iter()
                .map(|v| {
                    vec![
                        if v.current { "*".into() } else { String::new() },
                        short(&v.hash).into(),
                        v.file_count.to_string(),
                        v.total_bytes.to_string(),
                        v.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                })
                .collect();
            print_table(&["", "VERSION", "FILES", "BYTES", "UPLOADED"], rows)?;
        }
        Command::Spider(SpiderCommand::Use { name, version }) => {
            let version = resolve_version(&client, &name, &version).await?;
            let spider = client.set_current_version(&name, &version).await?;
            if cli.json {
                print_json(&spider)?;
            } else {
                outln!(
                    "spider {} now runs version {}",
                    spider.name,
                    short(&spider.version)
                );
            }
        }
        Command::Spider(SpiderCommand::Files {
            name,
            path,
            version,
        }) => {
            let version = match version {
                Some(v) => Some(resolve_version(&client, &name, &v).await?),
                None => None,
            };
            match path {
                Some(path) => {
                    let content = client.read_file(&name, &path, version.as_deref()).await?;
                    std::io::stdout().write_all(&content)?;
                }
                None => {
                    let files = client.list_files(&name, version.as_deref()).await?;
                    if cli.json {
                        return print_json(&files).map(|()| ExitCode::SUCCESS);
                    }
                    let rows = files
                        .files
                        .into_iter()
                        .map(|f| vec![format!("{:o}", f.mode), f.size.to_string(), f.path])
                        .collect();
                    print_table(&["MODE", "BYTES", "PATH"], rows)?;
                }
            }
        }
        Command::Run {
            spider,
            param,
            priority,
            version,
            placement,
            follow,
            wait,
            settings,
        } => {
            let version = match version {
                Some(v) => Some(resolve_version(&client, &spider, &v).await?),
                None => None,
            };
            let task = client
                .run_task(&RunTask {
                    spider,
                    param,
                    priority,
                    settings: settings.into_settings(),
                    mode: placement.mode(),
                    nodes: placement.nodes,
                    version,
                })
                .await?;
            if cli.json && !follow && !wait {
                print_json(&task)?;
            } else {
                outln!("{}", task.id);
            }
            if follow {
                return follow_logs(&client, task.id).await;
            }
            if wait {
                let task = wait_for(&client, task.id).await?;
                describe_end(&task);
                return Ok(task_exit(&task));
            }
        }
        Command::Task(TaskCommand::List {
            spider,
            status,
            node,
            schedule,
            since,
            until,
            limit,
            offset,
        }) => {
            let schedule = match schedule {
                Some(name) => Some(client.get_schedule(&name).await?.schedule.id),
                None => None,
            };
            let query = TaskQuery {
                spider,
                status,
                node,
                schedule,
                since,
                until,
                limit: Some(limit),
                offset: Some(offset),
                ..TaskQuery::default()
            };
            let page = client.list_tasks(&query).await?;
            if cli.json {
                return print_json(&page).map(|()| ExitCode::SUCCESS);
            }
            let shown = page.items.len();
            print_tasks(page.items)?;
            outln!("({shown} of {} tasks)", page.total);
        }
        Command::Task(TaskCommand::Show { id, recursive }) => {
            let id = parse_id(&id)?;
            if recursive {
                let tree = client.task_tree(id).await?;
                if cli.json {
                    return print_json(&tree).map(|()| ExitCode::SUCCESS);
                }
                print_tasks(vec![tree.task])?;
                outln!("children:");
                print_tasks(tree.children_tasks)?;
            } else if cli.json {
                print_json(&client.get_task(id).await?)?;
            } else {
                out!("{}", crate::describe::task(&client.get_task(id).await?));
            }
        }
        Command::Task(TaskCommand::Delete { id }) => {
            let id = parse_id(&id)?;
            client.delete_task(id).await?;
            if cli.json {
                print_json(&serde_json::json!({"deleted": id}))?;
            } else {
                outln!("deleted task {id}");
            }
        }
        Command::Task(TaskCommand::Restart { id }) => {
            let task = client.restart_task(parse_id(&id)?).await?;
            if cli.json {
                print_json(&task)?;
            } else {
                outln!("{}", task.id);
            }
        }
        Command::Logs { id, follow } => {
            let id = parse_id(&id)?;
            if follow {
                return follow_logs(&client, id).await;
            }
            let mut after = 0;
            loop {
                let query = arachne_api_types::LogQuery {
                    after: Some(after),
                    limit: Some(MAX_LIMIT),
                    follow: None,
                };
                let lines = client.logs(id, &query).await?;
                let mut out = std::io::stdout().lock();
                for line in &lines {
                    writeln!(out, "{}", line.text)?;
                }
                match lines.last() {
                    Some(last) if lines.len() == MAX_LIMIT as usize => after = last.seq,
                    _ => break,
                }
            }
        }
        Command::Items { id, format } => {
            let id = parse_id(&id)?;
            if format == ItemsFormat::Csv {
                let mut out = std::io::stdout().lock();
                let mut failed = None;
                client
                    .export_items_csv(id, |chunk| match out.write_all(chunk) {
                        Ok(()) => true,
                        Err(err) => {
                            failed = Some(err);
                            false
                        }
                    })
                    .await?;
                if let Some(err) = failed {
                    return Err(err.into());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut after = 0;
            let mut all = Vec::new();
            loop {
                let items = client
                    .items(
                        id,
                        &ItemQuery {
                            after: Some(after),
                            limit: Some(MAX_LIMIT),
                            format: None,
                        },
                    )
                    .await?;
                let full = items.len() == MAX_LIMIT as usize;
                if let Some(last) = items.last() {
                    after = last.seq;
                }
                match format {
                    ItemsFormat::Jsonl => {
                        let mut out = std::io::stdout().lock();
                        for item in items {
                            writeln!(out, "{}", item.data.get())?;
                        }
                    }
                    // As the spider wrote them: nothing is decoded, so no nesting is too deep to print and
                    // every object keeps its key order.
                    ItemsFormat::Json => all.extend(items.into_iter().map(|item| item.data)),
                    ItemsFormat::Csv => {}
                }
                if !full {
                    break;
                }
            }
            if let ItemsFormat::Json = format {
                print_json(&all)?;
            }
        }
        Command::Events { spider, task } => {
            let query = EventQuery {
                spider,
                task: task.as_deref().map(parse_id).transpose()?,
            };
            let mut failed = None;
            client
                .events(&query, |event| {
                    let written = if cli.json {
                        print_event_json(&event)
                    } else {
                        print_event(&event)
                    };
                    written.map_err(|err| failed = Some(err)).is_ok()
                })
                .await?;
            if let Some(err) = failed {
                return Err(err.into());
            }
        }
        Command::Metrics => out!("{}", client.metrics().await?),
        Command::Cancel { id } => {
            let task = client.cancel_task(parse_id(&id)?).await?;
            if cli.json {
                print_json(&task)?;
            } else if task.status.is_terminal() {
                outln!("task {} {}", task.id, task.status);
            } else {
                outln!(
                    "task {} cancelling: its process group is being stopped",
                    task.id
                );
            }
        }
        Command::Node(
            command @ (NodeCommand::Set { .. }
            | NodeCommand::Enable { .. }
            | NodeCommand::Disable { .. }),
        ) => {
            let (name, update) = match command {
                NodeCommand::Set { name, max_runners } => (
                    name,
                    UpdateNode {
                        max_runners: Some(max_runners),
                        enabled: None,
                    },
                ),
                NodeCommand::Enable { name } => (
                    name,
                    UpdateNode {
                        max_runners: None,
                        enabled: Some(true),
                    },
                ),
                NodeCommand::Disable { name } => (
                    name,
                    UpdateNode {
                        max_runners: None,
                        enabled: Some(false),
                    },
                ),
                NodeCommand::List => unreachable!("matched above"),
            };
            let node = client.update_node(&name, &update).await?;
            if cli.json {
                print_json(&node)?;
            } else {
                outln!(
                    "node {} max runners {} ({}, {})",
                    node.name,
                    node.max_runners,
                    node.status.as_str(),
                    if node.enabled { "enabled" } else { "disabled" }
                );
            }
        }
        Command::Node(NodeCommand::List) => {
            let nodes = client.list_nodes().await?;
            if cli.json {
                return print_json(&nodes).map(|()| ExitCode::SUCCESS);
            }
            let gib = |bytes: u64| format!("{:.1}", bytes as f64 / f64::from(1u32 << 30));
            let rows = nodes
                .into_iter()
                .map(|n| {
                    let (cpu, memory, disk) = match &n.metrics {
                        Some(m) => (
                            format!("{:.0}%", m.cpu_percent),
                            format!(
                                "{}/{} GiB",
                                gib(m.memory_used_bytes),
                                gib(m.memory_total_bytes)
                            ),
                            format!("{}/{} GiB", gib(m.disk_used_bytes), gib(m.disk_total_bytes)),
                        ),
                        None => ("-".into(), "-".into(), "-".into()),
                    };
                    let labels: Vec<String> =
                        n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        n.name,
                        n.status.as_str().into(),
                        if n.enabled { "yes" } else { "no" }.into(),
                        format!("{}/{}", n.running, n.max_runners),
                        cpu,
                        memory,
                        disk,
                        n.version,
                        n.last_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                        labels.join(","),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "STATUS",
                    "ENABLED",
                    "RUNNING",
                    "CPU",
                    "MEMORY",
                    "DISK",
                    "VERSION",
                    "LAST SEEN",
                    "LABELS",
                ],
                rows,
            )?;
        }
        Command::Schedule(command) => return schedule(&client, cli.json, command).await,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_event(event: &TaskEvent) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match event {
        TaskEvent::Changed(task) => {
            let mut line = format!(
                "{} {} {} {}",
                task.updated_at.format("%H:%M:%S"),
                task.id,
                task.spider_name,
                task.status
            );
            if let Some(node) = &task.node {
                line.push_str(&format!(" on {node}"));
            }
            if let Some(progress) = &task.progress {
                if let Some(fraction) = progress.status.progress {
                    line.push_str(&format!(" {:.0}%", fraction * 100.0));
                }
                if let Some(message) = &progress.status.message {
                    line.push_str(&format!(" {message}"));
                }
            }
            writeln!(out, "{line}")?;
        }
        TaskEvent::Deleted(id) => writeln!(out, "{id} deleted")?,
        TaskEvent::Lagged => writeln!(out, "(fell behind; some changes were skipped)")?,
    }
    out.flush()
}

fn print_event_json(event: &TaskEvent) -> std::io::Result<()> {
    let value = match event {
        TaskEvent::Changed(task) => serde_json::json!({"event": "task", "task": task}),
        TaskEvent::Deleted(id) => serde_json::json!({"event": "deleted", "id": id}),
        TaskEvent::Lagged => serde_json::json!({"event": "lagged"}),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()
}

fn print_tasks(tasks: Vec<Task>) -> Result<(), Error> {
    let rows = tasks
        .into_iter()
        .map(|t| {
            let status = crate::describe::status(&t);
            vec![
                t.id.to_string(),
                t.spider_name,
                status,
                or_dash(t.node.or(t.pinned_node)),
                t.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                t.attempt.to_string(),
                t.items.to_string(),
                or_dash(t.error),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "SPIDER", "STATUS", "NODE", "CREATED", "ATTEMPT", "ITEMS", "ERROR",
        ],
        rows,
    )
}

async fn schedule(
    client: &Client,
    json: bool,
    command: ScheduleCommand,
) -> Result<ExitCode, Error> {
    let view = match command {
        ScheduleCommand::Create(args) => client.create_schedule(&args.into_spec()).await?,
        ScheduleCommand::Update(args) => {
            let name = args.name.clone();
            client.update_schedule(&name, &args.into_spec()).await?
        }
        ScheduleCommand::Show { name } => client.get_schedule(&name).await?,
        ScheduleCommand::Enable { name } => client.set_schedule_enabled(&name, true).await?,
        ScheduleCommand::Disable { name } => client.set_schedule_enabled(&name, false).await?,
        ScheduleCommand::Delete { name } => {
            client.delete_schedule(&name).await?;
            if !json {
                outln!("schedule {name} deleted");
            }
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::RunNow { name } => {
            let task = client.run_schedule(&name).await?;
            if json {
                print_json(&task)?;
            } else {
                outln!("{}", task.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::List => {
            let schedules = client.list_schedules().await?;
            if json {
                return print_json(&schedules).map(|()| ExitCode::SUCCESS);
            }
            let rows = schedules
                .into_iter()
                .map(|v| {
                    let s = v.schedule;
                    vec![
                        s.name,
                        s.spider,
                        s.cron,
                        s.timezone,
                        s.mode.as_str().into(),
                        if s.enabled { "yes" } else { "no" }.into(),
                        s.overlap.as_str().into(),
                        or_dash(v.next.first().map(|t| t.format("%Y-%m-%d %H:%M:%S UTC"))),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME", "SPIDER", "CRON", "TZ", "MODE", "ENABLED", "OVERLAP", "NEXT",
                ],
                rows,
            )?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&view)?;
    } else {
        print_schedule(&view)?;
    }
    Ok(ExitCode::SUCCESS)
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
        outln!("    {}", at.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    Ok(())
}

/// Uploads a folder (packed here, leaving out what the ignore rules leave out) or an archive file, with a
/// progress bar on a terminal.
async fn upload(client: &Client, name: &str, path: &Path) -> Result<Spider, Error> {
    let archive = if path.is_dir() {
        arachne_shared::archive::pack_dir(path)?
    } else {
        std::fs::read(path).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
    };
    let show = std::io::stderr().is_terminal() && archive.len() > 1 << 20;
    let spider = client
        .upload_files_with_progress(name, archive, move |sent, total| {
            if show {
                eprint!("\r{}", progress_bar(sent, total));
            }
        })
        .await;
    if show {
        eprintln!();
    }
    Ok(spider?)
}

fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    format!(
        "uploading [{}{}] {:.1}/{:.1} MiB",
        "#".repeat(filled as usize),
        " ".repeat((WIDTH - filled) as usize),
        mib(done),
        mib(total)
    )
}

/// The full hash of a stored version named by a unique prefix.
async fn resolve_version(client: &Client, spider: &str, prefix: &str) -> Result<String, Error> {
    let versions = client.list_versions(spider).await?;
    let matching: Vec<_> = versions
        .iter()
        .filter(|v| v.hash.starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.hash.clone()),
        [] => Err(Error::Input(format!(
            "spider {spider} has no version {prefix}"
        ))),
        _ => Err(Error::Input(format!(
            "version prefix {prefix} is ambiguous: {} versions match",
            matching.len()
        ))),
    }
}

fn short(version: &str) -> &str {
    if version.is_empty() {
        "-"
    } else {
        &version[..version.len().min(12)]
    }
}

async fn wait_for(client: &Client, id: TaskId) -> Result<Task, Error> {
    loop {
        let task = client.wait_task(id, 60).await?;
        if task.status.is_terminal() {
            return Ok(task);
        }
    }
}

async fn follow_logs(client: &Client, id: TaskId) -> Result<ExitCode, Error> {
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
