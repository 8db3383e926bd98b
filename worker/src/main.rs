//! `arachne-worker`: parses configuration and runs the worker library.

use std::path::PathBuf;

use anyhow::Context;
use arachne_worker::Config;
use arachne_worker::args::RunnerArgs;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// An Arachne worker node: connects to a master and runs the spiders it is given.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The master's gRPC endpoint.
    #[arg(long, env = "ARACHNE_MASTER", default_value = "http://127.0.0.1:9666")]
    master: String,
    /// This node's unique name (defaults to the host name).
    #[arg(long, env = "ARACHNE_NODE_NAME")]
    name: Option<String>,
    /// How many spiders may run at once.
    #[arg(long, default_value_t = 8)]
    max_runners: u32,
    /// Where spider files are cached and runs get their working directories.
    #[arg(long, default_value = "./arachne-worker-data")]
    work_dir: PathBuf,
    /// A label shown with the node, as KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = arachne_shared::parse_key_value)]
    labels: Vec<(String, String)>,
    /// A file holding the worker token the master gave out (`arachne-master token create NAME --kind worker`);
    /// `$ARACHNE_WORKER_TOKEN` takes precedence. Never a flag: every user of the machine can read a command
    /// line.
    #[arg(long, env = "ARACHNE_WORKER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// A PEM certificate to trust for an https:// --master, besides the public authorities: the master's
    /// self-signed certificate, or the authority that signed it.
    #[arg(long, env = "ARACHNE_CA")]
    ca: Option<PathBuf>,
    /// Seconds between heartbeats to the master.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    #[command(flatten)]
    runner: RunnerArgs,
}

arachne_worker::binary_main!(run);

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let name = match args.name {
        Some(name) => name,
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .into_owned(),
    };
    let mut config = Config::new(args.master, name, args.work_dir);
    config.max_runners = args.max_runners;
    config.runner = args.runner.into();
    config.labels = args.labels.into_iter().collect();
    config.token =
        arachne_worker::args::secret("ARACHNE_WORKER_TOKEN", args.token_file.as_deref())?;
    config.heartbeat = std::time::Duration::from_secs(args.heartbeat_secs.max(1));
    config.ca_pem = args
        .ca
        .map(|path| {
            std::fs::read(&path).with_context(|| format!("reading the CA file {}", path.display()))
        })
        .transpose()?;
    let shutdown = CancellationToken::new();
    arachne_worker::signals::spawn_handler(shutdown.clone());
    arachne_worker::run(config, shutdown).await?;
    Ok(())
}
