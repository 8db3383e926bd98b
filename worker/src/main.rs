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
    #[command(flatten)]
    runner: RunnerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    arachne_worker::args::init_tracing();
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
    let shutdown = CancellationToken::new();
    arachne_worker::signals::spawn_handler(shutdown.clone());
    arachne_worker::run(config, shutdown).await?;
    Ok(())
}
