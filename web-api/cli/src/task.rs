//! The task commands: `task list/show/restart/delete`, and `logs`, `items`, `cancel` and `events`.

use std::io::Write;
use std::process::ExitCode;

use arachne_api_types::{
    EventQuery, ItemFormat, ItemQuery, ItemSource, LogQuery, LogSearchQuery, MAX_LIMIT,
    SpiderItemQuery, Task, TaskQuery,
};
use arachne_client::{Client, TaskEvent};
use arachne_shared::TaskStatus;
use clap::{Subcommand, ValueEnum};

use crate::output::{Output, or_dash, print_table};
use crate::{Error, parse_id};

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

impl TaskCommand {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        match self {
            Self::List {
                spider,
                status,
                node,
                schedule,
                since,
                until,
                limit,
                offset,
            } => {
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
                output.show(&client.list_tasks(&query).await?, |page| {
                    print_tasks(&page.items)?;
                    outln!("({} of {} tasks)", page.items.len(), page.total);
                    Ok(())
                })
            }
            Self::Show { id, recursive } => {
                let id = parse_id(&id)?;
                if recursive {
                    return output.show(&client.task_tree(id).await?, |tree| {
                        print_tasks(std::slice::from_ref(&tree.task))?;
                        outln!("children:");
                        print_tasks(&tree.children_tasks)
                    });
                }
                output.show(&client.get_task(id).await?, |task| {
                    out!("{}", crate::describe::task(task));
                    Ok(())
                })
            }
            Self::Delete { id } => {
                let id = parse_id(&id)?;
                client.delete_task(id).await?;
                output.show(&serde_json::json!({"deleted": id}), |_| {
                    outln!("deleted task {id}");
                    Ok(())
                })
            }
            Self::Restart { id } => {
                output.show(&client.restart_task(parse_id(&id)?).await?, |task| {
                    outln!("{}", task.id);
                    Ok(())
                })
            }
        }
    }
}

/// `arachne logs ID`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    id: String,
    /// Keep streaming until the task ends.
    #[arg(long, short)]
    follow: bool,
    /// Print only the lines holding this text (case-insensitive), searched on the server.
    #[arg(long, conflicts_with = "follow")]
    grep: Option<String>,
}

impl LogsArgs {
    pub(crate) async fn apply(self, client: &Client) -> Result<ExitCode, Error> {
        let id = parse_id(&self.id)?;
        if self.follow {
            return crate::run::follow_logs(client, id).await;
        }
        if let Some(text) = self.grep {
            return grep_logs(client, id, text).await;
        }
        each_page(
            Range::default(),
            |after, limit| async move { client.logs(id, &LogQuery::page(after, limit)).await },
            |line| line.seq,
            |lines| {
                let mut out = std::io::stdout().lock();
                for line in lines {
                    writeln!(out, "{}", line.text)?;
                }
                Ok(())
            },
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Prints the lines of a task's log that hold `text`, searched on the server in bounded steps.
async fn grep_logs(
    client: &Client,
    id: arachne_shared::TaskId,
    text: String,
) -> Result<ExitCode, Error> {
    let mut after = None;
    loop {
        let query = LogSearchQuery {
            q: text.clone(),
            after,
            limit: Some(MAX_LIMIT),
        };
        let found = client.search_logs(id, &query).await?;
        let mut out = std::io::stdout().lock();
        for line in &found.lines {
            writeln!(out, "{}", line.text)?;
        }
        if found.done {
            return Ok(ExitCode::SUCCESS);
        }
        after = Some(found.scanned_to);
    }
}

/// Which part of a task's output to read: after a sequence number, and at most how many records.
#[derive(Debug, Clone, Copy, Default)]
struct Range {
    after: u64,
    limit: Option<usize>,
}

/// Reads a task's output page by page from `range.after` until a page that is not full (or `range.limit`
/// records), handing each page to `sink`; `fetch` is asked for the page after a sequence number, of a size.
async fn each_page<T, Fut>(
    range: Range,
    mut fetch: impl FnMut(Option<u64>, Option<u32>) -> Fut,
    seq: impl Fn(&T) -> u64,
    mut sink: impl FnMut(Vec<T>) -> Result<(), Error>,
) -> Result<(), Error>
where
    Fut: std::future::Future<Output = Result<Vec<T>, arachne_client::Error>>,
{
    let mut after = range.after;
    let mut left = range.limit.unwrap_or(usize::MAX);
    while left > 0 {
        let size = left.min(MAX_LIMIT as usize) as u32;
        let page = fetch(Some(after), Some(size)).await?;
        let full = page.len() == size as usize;
        if let Some(last) = page.last() {
            after = seq(last);
        }
        left -= page.len();
        sink(page)?;
        if !full {
            break;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ItemsFormat {
    Jsonl,
    Json,
    /// One column per field, as the server exports it.
    Csv,
}

/// `arachne items ID`, `arachne items --spider NAME` and `arachne items --collection NAME`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("across").args(["spider", "collection"])))]
pub struct ItemsArgs {
    /// The task whose items to print; with --spider or --collection, leave it out.
    #[arg(required_unless_present = "across")]
    id: Option<String>,
    #[arg(long, value_enum, default_value_t = ItemsFormat::Jsonl)]
    format: ItemsFormat,
    /// Only items after this sequence number (a task's items are numbered from 1, in the order it sent them).
    #[arg(long, conflicts_with = "across")]
    after: Option<u64>,
    /// At most this many items.
    #[arg(long)]
    limit: Option<usize>,
    /// Every item of this spider across its tasks, newest first (newest task first, then its last item first).
    #[arg(long, conflicts_with = "id")]
    spider: Option<String>,
    /// Every item of the spiders that store in this results collection, newest first.
    #[arg(long, conflicts_with = "id")]
    collection: Option<String>,
    /// With --spider or --collection: only this task's items.
    #[arg(long, requires = "across")]
    task: Option<String>,
    /// With --spider or --collection: only items stored at or after this time (RFC 3339, e.g.
    /// 2026-11-22T10:00:00Z).
    #[arg(long, requires = "across")]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// With --spider or --collection: only items stored before this time (RFC 3339).
    #[arg(long, requires = "across")]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// With --spider or --collection: a condition every item must meet, repeatable: FIELD=VALUE (equals),
    /// FIELD~TEXT (a string field contains it), FIELD (present); dots name nested fields (price.amount=10).
    #[arg(long = "where", value_name = "CONDITION", requires = "across")]
    conditions: Vec<String>,
}

impl ItemsArgs {
    pub(crate) async fn apply(self, client: &Client) -> Result<ExitCode, Error> {
        if let Some(spider) = &self.spider {
            return self
                .found_items(client, ItemSource::Spider(spider.clone()))
                .await;
        }
        if let Some(collection) = &self.collection {
            let source = ItemSource::Collection(collection.clone());
            return self.found_items(client, source).await;
        }
        let id = parse_id(self.id.as_deref().unwrap_or_default())?;
        let format = self.format;
        let range = Range {
            after: self.after.unwrap_or(0),
            limit: self.limit,
        };
        if format == ItemsFormat::Csv && (self.after.is_some() || self.limit.is_some()) {
            return Err(Error::Input(
                "--after and --limit page JSON and JSONL output; the CSV export is every item of the task".into(),
            ));
        }
        if format == ItemsFormat::Csv {
            let mut out = Download::new();
            client
                .export_items_csv(id, |chunk| out.write(chunk))
                .await?;
            return out.finish();
        }
        let mut all = Vec::new();
        each_page(
            range,
            |after, limit| async move { client.items(id, &ItemQuery::page(after, limit)).await },
            |item| item.seq,
            |items| {
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
                Ok(())
            },
        )
        .await?;
        if format == ItemsFormat::Json {
            crate::output::print_json(&all)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ItemsArgs {
    /// The server's export of the spider's (or the collection's) matching items, in the format asked,
    /// straight to stdout.
    async fn found_items(&self, client: &Client, source: ItemSource) -> Result<ExitCode, Error> {
        let format = match self.format {
            ItemsFormat::Jsonl => ItemFormat::Jsonl,
            ItemsFormat::Json => ItemFormat::Json,
            ItemsFormat::Csv => ItemFormat::Csv,
        };
        let query = SpiderItemQuery {
            task: self.task.as_deref().map(parse_id).transpose()?,
            since: self.since,
            until: self.until,
            conditions: self.conditions.clone(),
            limit: self
                .limit
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX).min(MAX_LIMIT)),
            format: Some(format),
            ..SpiderItemQuery::default()
        };
        let mut out = Download::new();
        client
            .export_items(&source, &query, |chunk| out.write(chunk))
            .await?;
        out.finish()
    }
}

/// Standard output for a download's chunks: a write error (a closed pipe) stops the download and is the
/// command's error.
struct Download {
    out: std::io::StdoutLock<'static>,
    failed: Option<std::io::Error>,
}

impl Download {
    fn new() -> Self {
        Self {
            out: std::io::stdout().lock(),
            failed: None,
        }
    }

    fn write(&mut self, chunk: &[u8]) -> bool {
        match self.out.write_all(chunk) {
            Ok(()) => true,
            Err(err) => {
                self.failed = Some(err);
                false
            }
        }
    }

    fn finish(self) -> Result<ExitCode, Error> {
        match self.failed {
            Some(err) => Err(err.into()),
            None => Ok(ExitCode::SUCCESS),
        }
    }
}

/// `arachne cancel ID`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    id: String,
}

impl CancelArgs {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let task = client.cancel_task(parse_id(&self.id)?).await?;
        output.show(&task, |task| {
            if task.status.is_terminal() {
                outln!("task {} {}", task.id, task.status);
            } else {
                outln!(
                    "task {} cancelling: its process group is being stopped",
                    task.id
                );
            }
            Ok(())
        })
    }
}

/// `arachne events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only tasks of this spider.
    #[arg(long)]
    spider: Option<String>,
    /// Only this task and its children.
    #[arg(long)]
    task: Option<String>,
}

impl EventsArgs {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let query = EventQuery {
            spider: self.spider,
            task: self.task.as_deref().map(parse_id).transpose()?,
        };
        let mut failed = None;
        client
            .events(&query, |event| {
                let written = if output.json {
                    print_event_json(&event)
                } else {
                    print_event(&event)
                };
                written.map_err(|err| failed = Some(err)).is_ok()
            })
            .await?;
        match failed {
            Some(err) => Err(err.into()),
            None => Ok(ExitCode::SUCCESS),
        }
    }
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

fn print_tasks(tasks: &[Task]) -> Result<(), Error> {
    let rows = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.spider_name.clone(),
                crate::describe::status(t),
                or_dash(t.node.as_ref().or(t.pinned_node.as_ref())),
                t.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                t.attempt.to_string(),
                t.items.to_string(),
                or_dash(t.error.as_ref()),
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
