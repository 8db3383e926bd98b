//! The `arachne` command line: every command is one or a few client calls, printed as a table or as JSON.
//! One module per command group; each command's `apply` runs it against a [`Client`].

use std::process::ExitCode;

use arachne_client::Client;
use arachne_shared::TaskId;
use clap::{Parser, Subcommand};

#[macro_use]
mod output;
mod access;
mod describe;
mod node;
mod notification;
mod run;
mod schedule;
mod spider;
mod stats;
mod task;

use crate::output::Output;

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
    #[error(
        "spider {spider} runs `{cmd}`: --spider is for a Scrapy project, whose command is `scrapy` (or `python -m scrapy`)"
    )]
    NotScrapyProject { spider: String, cmd: String },
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A secret from an environment variable or a file (its first line), never from the command line itself,
/// which every local user can read.
pub(crate) fn read_secret(
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, Error> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| Error::Input(format!("the environment variable {var} is not set")));
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| s.lines().next().map(str::to_owned))
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())));
    }
    Ok(None)
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
    Spider(spider::SpiderCommand),
    /// Run a spider: creates a task and prints its id.
    Run(run::RunArgs),
    /// Inspect tasks.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Print a task's log.
    Logs(task::LogsArgs),
    /// Print the items a task produced.
    Items(task::ItemsArgs),
    /// Cancel a task; its processes are killed.
    Cancel(task::CancelArgs),
    /// Stream task status changes and STATUS progress as they happen (one line each, or JSON lines with
    /// --json) until interrupted.
    Events(task::EventsArgs),
    /// Print the master's metrics (Prometheus text format).
    Metrics,
    /// The overview: runs by status, success rate, items and run times over the last days, per spider, and
    /// the nodes' load.
    Stats(stats::StatsArgs),
    /// Inspect worker nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage cron schedules.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Announce task and node events on a webhook, Slack or by email.
    #[command(subcommand)]
    Notification(notification::NotificationCommand),
    /// Manage users (admins).
    #[command(subcommand)]
    User(access::UserCommand),
    /// Manage API and worker tokens (admins).
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Who changed what, and when (admins).
    Audit(access::AuditArgs),
    /// Who the CLI's token speaks for, with which role.
    Whoami,
}

impl Command {
    async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        match self {
            Self::Spider(command) => command.apply(client, output).await,
            Self::Run(args) => args.apply(client, output).await,
            Self::Task(command) => command.apply(client, output).await,
            Self::Logs(args) => args.apply(client).await,
            Self::Items(args) => args.apply(client).await,
            Self::Cancel(args) => args.apply(client, output).await,
            Self::Events(args) => args.apply(client, output).await,
            Self::Metrics => {
                out!("{}", client.metrics().await?);
                Ok(ExitCode::SUCCESS)
            }
            Self::Stats(args) => args.apply(client, output).await,
            Self::Node(command) => command.apply(client, output).await,
            Self::Schedule(command) => command.apply(client, output).await,
            Self::Notification(command) => command.apply(client, output).await,
            Self::User(command) => command.apply(client, output).await,
            Self::Token(command) => command.apply(client, output).await,
            Self::Audit(args) => args.apply(client, output).await,
            Self::Whoami => access::whoami(client, output).await,
        }
    }
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
    cli.command.apply(&client, Output { json: cli.json }).await
}
