//! `arachne-master`: parses configuration, binds the listeners and runs the master library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use arachne_master::{Config, Listeners, LocalWorker};
use arachne_shared::TokenKind;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The Arachne master: API, scheduler and (by default) a local worker in one process.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where the embedded store and spider files live.
    #[arg(long, env = "ARACHNE_DATA_DIR", default_value = "./arachne-data")]
    data_dir: PathBuf,
    /// Keep tasks, logs, items, spiders, schedules and nodes in this MongoDB (a mongodb:// URI) instead of the
    /// embedded store.
    #[arg(long, env = "ARACHNE_MONGODB_URI")]
    mongodb_uri: Option<String>,
    /// The MongoDB database (default: the one the URI names, else "arachne").
    #[arg(long, env = "ARACHNE_MONGODB_DB", requires = "mongodb_uri")]
    mongodb_db: Option<String>,
    /// Days ended tasks and their logs are kept (their items stay); 0 keeps them forever.
    #[arg(long, env = "ARACHNE_RETENTION_DAYS", default_value_t = 30)]
    retention_days: u64,
    /// HTTP API address.
    #[arg(long, env = "ARACHNE_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Worker gRPC address.
    #[arg(long, env = "ARACHNE_GRPC", default_value = "127.0.0.1:9666")]
    grpc: SocketAddr,
    /// Also serve Scrapyd's JSON API on this address (Scrapyd's own port is 6800), for scrapyd clients,
    /// ScrapydWeb and scripts; off by default. They authenticate with basic auth, an API token as the password;
    /// refused with --no-auth.
    #[arg(long, env = "ARACHNE_SCRAPYD")]
    scrapyd: Option<SocketAddr>,
    /// The pip requirement for Scrapy that the venv of an egg deployed through Scrapyd's API gets, besides the
    /// egg's own requirements; "" for none (Scrapy must then be on the workers' PATH).
    #[arg(long, env = "ARACHNE_SCRAPY_REQUIREMENT", default_value = arachne_master::DEFAULT_SCRAPY_REQUIREMENT)]
    scrapy_requirement: String,
    /// The web UI's address as people reach it (behind a proxy, say), for the links in notifications;
    /// http://HOST:PORT of the HTTP listener by default.
    #[arg(long, value_name = "URL", env = "ARACHNE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Do not run a worker inside the master.
    #[arg(long)]
    no_local_worker: bool,
    /// Runner slots of the local worker.
    #[arg(long, default_value_t = 4)]
    local_max_runners: u32,
    /// Spider folders registered on start when missing (each holds an arachne.toml).
    #[arg(long, default_value = "examples")]
    examples_dir: PathBuf,
    /// A folder of spider folders (each with an arachne.toml) kept in sync while the master runs: every edit
    /// becomes the spider's new current version.
    #[arg(long, env = "ARACHNE_SPIDERS_DIR")]
    spiders_dir: Option<PathBuf>,
    /// Seconds without a word from a worker before it counts as offline and its running tasks are settled
    /// (Abnormal, or retried); also how long a disconnected worker has to come back for its tasks.
    #[arg(long, default_value_t = 15.0)]
    heartbeat_timeout: f64,
    /// A node over this CPU use (percent of its machine) takes no new task until it is back under it; a
    /// node's own threshold (`arachne node set NAME --max-cpu`) wins. None by default.
    #[arg(long, value_name = "PERCENT", env = "ARACHNE_MAX_NODE_CPU")]
    max_node_cpu: Option<f32>,
    /// The same for memory in use (percent); `arachne node set NAME --max-memory` wins.
    #[arg(long, value_name = "PERCENT", env = "ARACHNE_MAX_NODE_MEMORY")]
    max_node_memory: Option<f32>,
    /// Largest spider upload, in MiB.
    #[arg(long, default_value_t = 256)]
    max_upload_mib: usize,
    /// Uploads received at once (each is spooled to disk as it arrives); more wait before their body is read.
    #[arg(long, default_value_t = 2)]
    max_concurrent_uploads: usize,
    /// Connections each listener keeps open at once (half-open ones included); one more is refused, on HTTP
    /// with a 503 that says so. A connection must send its first byte (or finish TLS) within 10 s, and an HTTP
    /// client its request headers within 30 s.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// A PEM certificate chain: the HTTP API and the worker port serve TLS (workers then use an https://
    /// --master, and `--ca` if the certificate is not from a public authority). Needs --tls-key.
    #[arg(long, env = "ARACHNE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ARACHNE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve without tokens: anyone who reaches the ports controls the master. Refused unless both listeners
    /// are on loopback.
    #[arg(long)]
    no_auth: bool,
    /// A file holding an API token to accept, registered at start as "configured-api" (for deployments that
    /// hand secrets in); `$ARACHNE_API_TOKEN` takes precedence. At least 32 characters. Tokens are never taken
    /// from a flag: every user of the machine can read a command line.
    #[arg(long, env = "ARACHNE_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// A file holding a worker token to accept, registered at start as "configured-worker"; workers present
    /// the same value. `$ARACHNE_WORKER_TOKEN` takes precedence. At least 32 characters.
    #[arg(long, env = "ARACHNE_WORKER_TOKEN_FILE")]
    worker_token_file: Option<PathBuf>,
    /// Runner settings of the local worker.
    #[command(flatten)]
    runner: arachne_worker::args::RunnerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage access tokens in the store the other flags name (the master may be running).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage users in the store the other flags name: the first admin who signs in to the web UI, say.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Make a user; the password comes from $ARACHNE_USER_PASSWORD, or the first line of standard input.
    Create {
        name: String,
        /// admin, developer or viewer.
        #[arg(long, default_value = "viewer")]
        role: arachne_shared::Role,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token and print its secret, which is shown this once and stored only as a hash.
    Create {
        name: String,
        /// `api` for the HTTP API and CLI, `worker` for workers joining over gRPC.
        #[arg(long, default_value = "api")]
        kind: TokenKind,
        /// What an API token may do: admin (everything), developer or viewer.
        #[arg(long, default_value = "admin")]
        role: arachne_shared::Role,
        /// It stops working after this many days.
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
    },
    /// List tokens (names, kinds and creation times; never secrets).
    List,
    /// Revoke a token: it stops working within seconds.
    Revoke { name: String },
}

async fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let store = arachne_master::open_store(config).await?;
    match command {
        TokenCommand::Create {
            name,
            kind,
            role,
            expires_in_days,
        } => {
            let mut new = arachne_master::auth::NewToken::master(&name, kind, role);
            new.expires_at = match expires_in_days {
                Some(days @ 1..=3650) => {
                    Some(chrono::Utc::now() + chrono::Duration::days(days.into()))
                }
                Some(_) => anyhow::bail!("--expires-in-days must be 1 to 3650"),
                None => None,
            };
            let (_, secret) = arachne_master::auth::create_token(store.as_ref(), new).await?;
            println!("{secret}");
        }
        TokenCommand::List => {
            for token in store.list_tokens().await? {
                println!(
                    "{:<24} {:<7} {:<10} {:<12} {}",
                    token.name,
                    token.kind.as_str(),
                    token.role.as_str(),
                    token.user.as_deref().unwrap_or("-"),
                    token.created_at.to_rfc3339()
                );
            }
        }
        TokenCommand::Revoke { name } => {
            arachne_master::auth::revoke_token(store.as_ref(), &name).await?;
            println!("revoked {name}");
        }
    }
    Ok(())
}

async fn user(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let store = arachne_master::open_store(config).await?;
    match command {
        UserCommand::Create { name, role } => {
            let password = match std::env::var("ARACHNE_USER_PASSWORD") {
                Ok(password) => password,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let user = arachne_master::access::new_user(&name, role, &password).await?;
            store.insert_user(&user).await?;
            println!("user {name} created ({role})");
        }
    }
    Ok(())
}

arachne_worker::binary_main!(run);

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = Config::new(args.data_dir);
    config.examples_dir = Some(args.examples_dir);
    config.retention = (args.retention_days > 0)
        .then(|| std::time::Duration::from_secs(args.retention_days.saturating_mul(24 * 3600)));
    config.mongodb = args.mongodb_uri.map(|uri| arachne_master::MongoConfig {
        uri,
        database: args.mongodb_db,
    });
    config.spiders_dir = args.spiders_dir;
    config.scrapy_requirement = args.scrapy_requirement;
    if let Some(url) = &args.public_url {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--public-url {url:?} must start with http:// or https://"
        );
    }
    config.notify.public_url = args.public_url;
    config.http.max_upload_bytes = args.max_upload_mib << 20;
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    config.listen.max_connections = args.max_connections;
    config.listen.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| arachne_master::TlsFiles { cert, key });
    anyhow::ensure!(
        args.heartbeat_timeout.is_finite() && args.heartbeat_timeout >= 0.5,
        "--heartbeat-timeout must be at least 0.5 seconds"
    );
    config.scheduler.heartbeat_timeout = std::time::Duration::from_secs_f64(args.heartbeat_timeout);
    for (flag, value) in [
        ("--max-node-cpu", args.max_node_cpu),
        ("--max-node-memory", args.max_node_memory),
    ] {
        if let Some(value) = value {
            arachne_shared::node::validate_percent(flag, value)?;
        }
    }
    config.scheduler.load_limits = arachne_shared::node::LoadLimits {
        cpu_percent: args.max_node_cpu,
        memory_percent: args.max_node_memory,
    };
    // The local worker beats well inside the timeout.
    let local_heartbeat =
        (config.scheduler.heartbeat_timeout / 3).min(std::time::Duration::from_secs(5));
    config.local_worker = (!args.no_local_worker).then(|| LocalWorker {
        max_runners: args.local_max_runners,
        runner: args.runner.into(),
        heartbeat: local_heartbeat,
        ..LocalWorker::default()
    });
    config.auth = arachne_master::AuthConfig {
        required: !args.no_auth,
        api_token: arachne_worker::args::secret(
            "ARACHNE_API_TOKEN",
            args.api_token_file.as_deref(),
        )?,
        worker_token: arachne_worker::args::secret(
            "ARACHNE_WORKER_TOKEN",
            args.worker_token_file.as_deref(),
        )?,
    };
    match args.command {
        Some(Command::Token(command)) => return token(&config, command).await,
        Some(Command::User(command)) => return user(&config, command).await,
        None => {}
    }
    let listeners = Listeners {
        http: TcpListener::bind(args.http)
            .await
            .with_context(|| format!("binding the HTTP address {}", args.http))?,
        grpc: TcpListener::bind(args.grpc)
            .await
            .with_context(|| format!("binding the gRPC address {}", args.grpc))?,
        scrapyd: match args.scrapyd {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the Scrapyd API address {addr}"))?,
            ),
            None => None,
        },
    };
    let shutdown = CancellationToken::new();
    arachne_worker::signals::spawn_handler(shutdown.clone());
    arachne_master::run(config, listeners, shutdown).await?;
    Ok(())
}
