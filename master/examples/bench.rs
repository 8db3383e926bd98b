//! The benchmark behind `scripts/bench`: each figure is measured beside a baseline taken in the same run on the
//! same machine, and all rows are printed and written as JSON.
//!
//! Figures: trigger → spider started (p50/p99) against a bare spawn; no-op task throughput against a bare
//! spawn-and-wait loop with the same concurrency; items/s and log lines/s through the whole path against
//! writing the same records straight into the same store.

use arachne_test_support::{rss_mib, spider};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use arachne_api_types::{CreateSpider, RunTask, TaskQuery};
use arachne_client::{Client, FollowEvent};
use arachne_master::store::embedded::EmbeddedStore;
use arachne_master::store::{OutputStore, Store};
use arachne_master::{Config, Listeners, LocalWorker};
use arachne_shared::{
    ItemRecord, ItemTarget, LogLine, LogStream, RunMode, SpiderId, Task, TaskId, TaskStatus,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Serialize)]
struct Row {
    figure: String,
    unit: String,
    measured: f64,
    baseline: f64,
    baseline_name: String,
    ratio: f64,
    target: String,
    met: bool,
}

fn row(
    figure: &str,
    unit: &str,
    measured: f64,
    baseline: (f64, &str),
    target: &str,
    met: bool,
) -> Row {
    Row {
        figure: figure.into(),
        unit: unit.into(),
        measured,
        baseline: baseline.0,
        baseline_name: baseline.1.into(),
        ratio: if baseline.0 == 0.0 {
            0.0
        } else {
            measured / baseline.0
        },
        target: target.into(),
        met,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn bare_spawn_ms(runs: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "true"])
            .spawn()?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        child.wait().await?;
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Seconds for `concurrency` loops to spawn and wait for `tasks` no-op processes in all.
async fn bare_loop_secs(tasks: usize, concurrency: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        set.spawn(async move {
            for _ in 0..tasks / concurrency {
                tokio::process::Command::new("sh")
                    .args(["-c", "true"])
                    .status()
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn run_to_end(client: &Client, run: &RunTask) -> anyhow::Result<arachne_api_types::Task> {
    let task = client.run_task(run).await?;
    loop {
        let task = client.wait_task(task.id, 60).await?;
        if task.status.is_terminal() {
            anyhow::ensure!(
                task.status == TaskStatus::Finished,
                "bench task ended {}: {:?}",
                task.status,
                task.error
            );
            return Ok(task);
        }
    }
}

const ITEMS_SPIDER: &str = r#"
import json, sys
n, batch = int(sys.argv[1]), 1000
item = {"url": "https://example.com/catalogue/page-1/item-00001.html", "title": "A Light in the Attic, and other things", "price": 51.77, "stock": 22, "rating": 3}
line = json.dumps({"type": "INSERT_DATA", "payload": [item] * batch}) + "\n"
out = sys.stdout
for _ in range(n // batch):
    out.write(line)
"#;

const LOGS_SPIDER: &str = r#"
import sys
n = int(sys.argv[1])
line = "2026-11-22 10:00:00 [quotes] INFO: Crawled (200) <GET https://example.com/page/1> ok\n"
block = line * 1000
for _ in range(n // 1000):
    sys.stdout.write(block)
"#;

/// The figures `scripts/bench` can measure; a second argument (comma-separated names) picks some of them.
const SECTIONS: [&str; 11] = [
    "latency",
    "throughput",
    "sync",
    "items",
    "logs",
    "streams",
    "listing",
    "idle",
    "flood",
    "scrapyd",
    "mongodb",
];

/// Prints `n` lines at 1,000 a second, each starting with the Unix time it was printed at.
const TICKER_SPIDER: &str = r#"
import sys, time
n, rate = int(sys.argv[1]), 1000.0
start = time.time()
for i in range(n):
    delay = start + i / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    sys.stdout.write("%.6f tick %d\n" % (time.time(), i))
    sys.stdout.flush()
"#;

/// The master under measurement, with its one local worker, and a client on its HTTP API.
/// The tokens of the benchmark's masters and workers.
const API_TOKEN: &str = "arachne_api_bench-0123456789abcdef0123456789";
const WORKER_TOKEN: &str = "arachne_worker_bench-0123456789abcdef01234567";

/// A master running in this process on free ports.
struct RunningMaster {
    client: Client,
    grpc_addr: std::net::SocketAddr,
    /// Where it serves Scrapyd's API.
    scrapyd_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), arachne_master::Error>>,
}

impl RunningMaster {
    /// Starts a master and waits until its local worker is online and idle.
    async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_waiting_for(config, &["local"]).await
    }

    /// Starts a master with no worker at all.
    async fn start_without_workers(mut config: Config) -> anyhow::Result<Self> {
        config.local_worker = None;
        Self::start_waiting_for(config, &[]).await
    }

    async fn start_waiting_for(mut config: Config, nodes: &[&str]) -> anyhow::Result<Self> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc.local_addr()?;
        let scrapyd = TcpListener::bind("127.0.0.1:0").await?;
        let scrapyd_addr = scrapyd.local_addr()?;
        // Tokens on, as in production: every request and every worker is checked.
        config.auth.api_token = Some(API_TOKEN.into());
        config.auth.worker_token = Some(WORKER_TOKEN.into());
        let client = Client::with_token(&format!("http://{}", http.local_addr()?), API_TOKEN)?;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(arachne_master::run(
            config,
            Listeners {
                http,
                grpc,
                scrapyd: Some(scrapyd),
            },
            shutdown.clone(),
        ));
        wait_nodes_idle(&client, nodes).await?;
        Ok(Self {
            client,
            grpc_addr,
            scrapyd_addr,
            shutdown,
            handle,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }
}

struct Bench {
    client: Client,
    grpc_addr: std::net::SocketAddr,
    rows: Vec<Row>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out: PathBuf = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| "bench-results/bench.json".into());
    let only: Vec<String> = match args.next() {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => SECTIONS.iter().map(|s| (*s).to_owned()).collect(),
    };
    if let Some(unknown) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        anyhow::bail!("unknown figure {unknown:?}; known: {}", SECTIONS.join(", "));
    }
    let data = tempfile::tempdir()?;
    let master = RunningMaster::start(local_worker_config(data.path())?).await?;
    let (client, grpc_addr) = (master.client.clone(), master.grpc_addr);
    spider(&client, "noop", "true", &[("README", "no-op")]).await?;
    run_to_end(&client, &noop_run(None)).await?; // warm the file cache
    let mut bench = Bench {
        client,
        grpc_addr,
        rows: Vec::new(),
    };
    for section in &only {
        // Each figure starts with no dirty pages of the one before: otherwise it pays for the earlier figure's
        // writeback (100 MB of spider files, a database of 400 tasks) in the middle of its own measurement.
        std::process::Command::new("sync").status()?;
        match section.as_str() {
            "latency" => bench.latency().await?,
            "throughput" => bench.throughput().await?,
            "sync" => bench.sync().await?,
            "items" => bench.items().await?,
            "logs" => bench.logs().await?,
            "mongodb" => bench.mongodb().await?,
            "streams" => bench.streams().await?,
            "listing" => bench.listing().await?,
            "flood" => bench.flood().await?,
            "scrapyd" => bench.scrapyd().await?,
            _ => bench.idle_workers().await?,
        }
    }

    master.stop().await?;
    println!(
        "{:<66} {:>12} {:>12} {:>7}  {:<8} target",
        "figure", "measured", "baseline", "ratio", "unit"
    );
    for r in &bench.rows {
        let verdict = if r.met { "met" } else { "NOT MET" };
        println!(
            "{:<66} {:>12.2} {:>12.2} {:>7.2}  {:<8} {} ({verdict}; baseline: {})",
            r.figure, r.measured, r.baseline, r.ratio, r.unit, r.target, r.baseline_name
        );
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&bench.rows)?)?;
    println!("saved {}", out.display());
    Ok(())
}

/// A master on `data` with a local worker of 4 slots.
fn local_worker_config(data: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::new(data.to_owned());
    config.local_worker = Some(LocalWorker {
        max_runners: 4,
        helper_exe: Some(worker_bin()?),
        ..LocalWorker::default()
    });
    Ok(config)
}

fn noop_run(node: Option<&str>) -> RunTask {
    RunTask {
        spider: "noop".into(),
        mode: node.map(|_| RunMode::Nodes),
        nodes: node.into_iter().map(str::to_owned).collect(),
        ..Default::default()
    }
}

/// Items/s of a spider sending `n` items through `client`'s master, all of them checked to be stored.
async fn items_through(client: &Client, n: u64) -> anyhow::Result<f64> {
    let task = through(client, "items", ITEMS_SPIDER, n).await?;
    anyhow::ensure!(task.0.items == n, "items lost: {} of {n}", task.0.items);
    Ok(n as f64 / task.1)
}

/// Log lines/s of a spider printing `n` lines through `client`'s master, all of them checked to be stored.
async fn lines_through(client: &Client, n: u64) -> anyhow::Result<f64> {
    let task = through(client, "logs", LOGS_SPIDER, n).await?;
    anyhow::ensure!(
        task.0.log_lines == n,
        "log lines lost: {} of {n}",
        task.0.log_lines
    );
    Ok(n as f64 / task.1)
}

/// Runs a Python spider with `n` as its parameter; the ended task and the seconds from trigger to end.
async fn through(
    client: &Client,
    name: &str,
    main: &str,
    n: u64,
) -> anyhow::Result<(arachne_api_types::Task, f64)> {
    spider(client, name, "python3 main.py", &[("main.py", main)]).await?;
    let start = Instant::now();
    let run = RunTask {
        spider: name.into(),
        param: Some(n.to_string()),
        ..Default::default()
    };
    let task = run_to_end(client, &run).await?;
    Ok((task, start.elapsed().as_secs_f64()))
}

/// Waits until no task of `spider` is Pending or Running. It waits on one such task at a time: asking after
/// every task separately made the client's requests a tenth of the CPU the measured figure competes for.
async fn wait_all_ended(client: &Client, spider: &str) -> anyhow::Result<()> {
    loop {
        let mut open = None;
        for status in [TaskStatus::Pending, TaskStatus::Running] {
            let query = TaskQuery {
                spider: Some(spider.into()),
                status: Some(status),
                limit: Some(1),
                ..Default::default()
            };
            open = open.or(client.list_tasks(&query).await?.items.into_iter().next());
        }
        match open {
            Some(task) => drop(client.wait_task(task.id, 60).await?),
            None => return Ok(()),
        }
    }
}

/// Waits until each named node is online with nothing running.
async fn wait_nodes_idle(client: &Client, names: &[&str]) -> anyhow::Result<()> {
    for _ in 0..1000 {
        let nodes = client.list_nodes().await.unwrap_or_default();
        let idle = |name: &&str| {
            nodes.iter().any(|n| {
                n.name == *name && n.running == 0 && n.status == arachne_shared::NodeStatus::Online
            })
        };
        if names.iter().all(idle) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("nodes {names:?} did not come online")
}

impl Bench {
    /// Trigger → Running recorded, for a no-op spider, one at a time: on the master's local worker, and on a
    /// worker binary in its own process, connected over TCP.
    async fn latency(&mut self) -> anyhow::Result<()> {
        let spawn = bare_spawn_ms(100).await?;
        let local = self.trigger_to_started(None).await?;
        let (mut worker, _worker_dir) = self.remote_worker("remote").await?;
        run_to_end(&self.client, &noop_run(Some("remote"))).await?; // warm its file cache
        let remote = self.trigger_to_started(Some("remote")).await?;
        worker.kill().await?;
        for (where_, samples) in [
            ("local worker", &local),
            ("separate worker process", &remote),
        ] {
            for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
                let (measured, base) = (percentile(samples, p), percentile(&spawn, p));
                self.rows.push(row(
                    &format!("trigger -> spider started, {label}, {where_}"),
                    "ms",
                    measured,
                    (base, "bare spawn of sh -c true"),
                    "<= bare spawn + 2 ms",
                    measured <= base + 2.0,
                ));
            }
        }
        Ok(())
    }

    /// Starts an `arachne-worker` process of its own, connected over TCP, and waits until it is online.
    async fn remote_worker(
        &self,
        name: &str,
    ) -> anyhow::Result<(tokio::process::Child, tempfile::TempDir)> {
        let worker_dir = tempfile::tempdir()?;
        let worker = tokio::process::Command::new(worker_bin()?)
            .args(["--master", &format!("http://{}", self.grpc_addr)])
            .args(["--name", name, "--max-runners", "4"])
            .arg("--work-dir")
            .arg(worker_dir.path())
            .env("RUST_LOG", "warn")
            .env("ARACHNE_WORKER_TOKEN", WORKER_TOKEN)
            .kill_on_drop(true)
            .spawn()
            .context("starting the worker binary")?;
        wait_nodes_idle(&self.client, &[name]).await?;
        Ok((worker, worker_dir))
    }

    /// Spider files synced to a separate worker: what a one-file change transfers, and the speed of a 100 MB
    /// first sync against copying the same bytes over loopback into files.
    async fn sync(&mut self) -> anyhow::Result<()> {
        let (mut worker, worker_dir) = self.remote_worker("syncer").await?;
        let cache = worker_dir.path().join("cache");
        let run = |name: &str| RunTask {
            spider: name.into(),
            mode: Some(RunMode::Nodes),
            nodes: vec!["syncer".into()],
            ..Default::default()
        };

        let files: Vec<(String, String)> = (0..1000)
            .map(|i| {
                (
                    format!("spider/part{i:04}.py"),
                    format!("# part {i}\n{}\n", "x = 1\n".repeat(100)),
                )
            })
            .collect();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        spider(&self.client, "thousand", "true", &refs).await?;
        run_to_end(&self.client, &run("thousand")).await?;
        let before = count_blobs(&cache);
        let mut changed = files.clone();
        changed[500].1.push_str("x = 2\n");
        let refs: Vec<(&str, &str)> = changed
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        spider(&self.client, "thousand", "true", &refs).await?;
        run_to_end(&self.client, &run("thousand")).await?;
        let fetched = (count_blobs(&cache) - before) as f64;
        self.rows.push(row(
            "1,000-file spider, one file changed: files transferred on re-sync",
            "files",
            fetched,
            (1000.0, "a full sync"),
            "1 (only the changed file)",
            fetched == 1.0,
        ));

        // 100 MB in 20 files of incompressible bytes.
        const FILES: usize = 20;
        const FILE_BYTES: usize = 5 << 20;
        let dir = tempfile::tempdir()?;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..FILES {
            let mut data = Vec::with_capacity(FILE_BYTES);
            while data.len() < FILE_BYTES {
                seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            std::fs::write(dir.path().join(format!("blob{i:02}.bin")), &data)?;
        }
        self.client
            .put_spider(&CreateSpider {
                name: "big".into(),
                cmd: "true".into(),
                ..Default::default()
            })
            .await?;
        self.client
            .upload_files("big", arachne_shared::archive::pack_dir(dir.path())?)
            .await?;
        let task = run_to_end(&self.client, &run("big")).await?;
        let started = task
            .started_at
            .context("a finished task has a start time")?;
        let secs = (started - task.created_at).num_microseconds().unwrap_or(1) as f64 / 1e6;
        let bytes = (FILES * FILE_BYTES) as f64;
        let measured = bytes / secs / 1e6;
        let base = loopback_copy_mb_per_sec(FILES, FILE_BYTES).await?;
        self.rows.push(row(
            "100 MB spider, first sync to a separate worker (trigger -> started)",
            "MB/s",
            measured,
            (base, "the same bytes over loopback TCP into files"),
            ">= 50% of baseline",
            measured >= base * 0.5,
        ));
        worker.kill().await?;
        Ok(())
    }

    async fn trigger_to_started(&self, node: Option<&str>) -> anyhow::Result<Vec<f64>> {
        let mut latencies = Vec::new();
        for _ in 0..100 {
            let task = run_to_end(&self.client, &noop_run(node)).await?;
            let started = task
                .started_at
                .context("a finished task has a start time")?;
            latencies
                .push((started - task.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        Ok(latencies)
    }

    /// No-op task throughput with 4 runner slots, against a bare loop of 4 concurrent spawn-and-wait: tasks are
    /// submitted by 4 concurrent clients, as the baseline spawns from 4 concurrent loops. The two alternate
    /// over several rounds and each side's figure is its total over all of them: this machine's speed drifts
    /// by a sixth over tens of seconds, and one run of each, back to back, put that drift into the ratio.
    async fn throughput(&mut self) -> anyhow::Result<()> {
        const ROUNDS: usize = 5;
        const TASKS: usize = 400;
        const CONCURRENCY: usize = 4;
        let (mut measured_secs, mut base_secs) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            measured_secs += self.noop_tasks(TASKS, CONCURRENCY).await?;
            base_secs += bare_loop_secs(TASKS, CONCURRENCY).await?;
        }
        let total = (ROUNDS * TASKS) as f64;
        let (measured, base) = (total / measured_secs, total / base_secs);
        self.rows.push(row(
            "no-op task throughput, one worker, 4 slots, 4 submitters",
            "tasks/s",
            measured,
            (base, "bare spawn-and-wait loop, 4 concurrent"),
            ">= 50% of baseline",
            measured >= base * 0.5,
        ));
        Ok(())
    }

    /// Seconds to run `tasks` no-op tasks submitted by `concurrency` clients, each checked to have finished.
    async fn noop_tasks(&self, tasks: usize, concurrency: usize) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut submitters = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let client = self.client.clone();
            submitters.spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..tasks / concurrency {
                    ids.push(client.run_task(&noop_run(None)).await?.id);
                }
                anyhow::Ok(ids)
            });
        }
        let mut ids: Vec<TaskId> = Vec::new();
        while let Some(submitted) = submitters.join_next().await {
            ids.extend(submitted??);
        }
        wait_all_ended(&self.client, "noop").await?;
        let secs = start.elapsed().as_secs_f64();
        for id in &ids {
            let task = self.client.get_task(*id).await?;
            anyhow::ensure!(
                task.status == TaskStatus::Finished,
                "task {id} ended {}",
                task.status
            );
        }
        Ok(secs)
    }

    /// Items through the whole path, against direct inserts into the same kind of store.
    async fn items(&mut self) -> anyhow::Result<()> {
        let n_items = 200_000;
        let measured = items_through(&self.client, n_items).await?;
        let direct = direct_items(n_items).await?;
        self.rows.push(row(
            "items/s, INSERT_DATA batches of ~200-byte items, embedded store",
            "items/s",
            measured,
            (direct, "direct insert into the embedded store"),
            ">= 200000/s and >= 50% of baseline",
            measured >= 200_000.0 && measured >= direct * 0.5,
        ));
        Ok(())
    }

    /// Items and log lines through a master keeping its records in MongoDB, each beside the same server's raw
    /// bulk-insert rate of the same documents.
    async fn mongodb(&mut self) -> anyhow::Result<()> {
        let uri = std::env::var("ARACHNE_TEST_MONGODB_URI").context(
            "scripts/bench starts a MongoDB test server and names it in ARACHNE_TEST_MONGODB_URI",
        )?;
        let database = format!(
            "arachne_bench_{}",
            TaskId::new().to_string().replace('-', "")
        );
        let data = tempfile::tempdir()?;
        let mut config = Config::new(data.path().to_owned());
        config.mongodb = Some(arachne_master::MongoConfig {
            uri: uri.clone(),
            database: Some(database.clone()),
        });
        // This binary cannot be the local worker's watchdog or sandbox helper; the worker binary can.
        if let Some(local) = &mut config.local_worker {
            local.helper_exe = Some(worker_bin()?);
        }
        let master = RunningMaster::start(config).await?;
        let client = master.client.clone();

        let db = mongodb::Client::with_uri_str(&uri)
            .await?
            .database(&database);
        let (n_items, n_lines) = (100_000, 200_000);
        let measured = items_through(&client, n_items).await?;
        let raw = raw_mongo_items(&db, n_items).await?;
        self.rows.push(row(
            "items/s, INSERT_DATA batches of ~200-byte items, MongoDB store",
            "items/s",
            measured,
            (raw, "insert_many of the same item documents, 2,000 a call"),
            ">= 50% of baseline",
            measured >= raw * 0.5,
        ));
        let measured = lines_through(&client, n_lines).await?;
        let raw = raw_mongo_lines(&db, n_lines).await?;
        self.rows.push(row(
            "log lines/s, 80-byte lines, MongoDB store",
            "lines/s",
            measured,
            (
                raw,
                "insert_many of the same 1,000-line documents, 2,000 lines a call",
            ),
            ">= 50% of baseline",
            measured >= raw * 0.5,
        ));
        master.stop().await?;
        db.drop().await?;
        Ok(())
    }

    /// Live log following: the delay from a spider's print to an SSE follower at 1,000 lines/s, against the
    /// same spider read straight from its pipe; then 200 followers of one task, each of which must get every
    /// line once.
    async fn streams(&mut self) -> anyhow::Result<()> {
        let lines = 6_000;
        spider(
            &self.client,
            "ticker",
            "python3 main.py",
            &[("main.py", TICKER_SPIDER)],
        )
        .await?;
        let run = RunTask {
            spider: "ticker".into(),
            param: Some(lines.to_string()),
            ..Default::default()
        };
        let task = self.client.run_task(&run).await?;
        let mut delays = Vec::new();
        self.client
            .follow_logs(task.id, 0, |event| {
                if let FollowEvent::Line(line) = event
                    && let Some(delay) = print_delay_ms(&line.text)
                {
                    delays.push(delay);
                }
            })
            .await?;
        let followed = settle_delays(delays, lines)?;
        let direct = settle_delays(direct_ticker_delays(lines).await?, lines)?;
        self.rows.push(row(
            "print -> SSE follower, p50 at 1,000 lines/s",
            "ms",
            percentile(&followed, 0.5),
            (
                percentile(&direct, 0.5),
                "the spider's own pipe read directly",
            ),
            "<= 100 ms",
            percentile(&followed, 0.5) <= 100.0,
        ));
        self.rows.push(row(
            "print -> SSE follower, p99 at 1,000 lines/s",
            "ms",
            percentile(&followed, 0.99),
            (
                percentile(&direct, 0.99),
                "the spider's own pipe read directly",
            ),
            "reported",
            true,
        ));

        let (followers, n) = (200, 20_000_u64);
        spider(
            &self.client,
            "logs",
            "python3 main.py",
            &[("main.py", LOGS_SPIDER)],
        )
        .await?;
        let task = self
            .client
            .run_task(&RunTask {
                spider: "logs".into(),
                param: Some(n.to_string()),
                ..Default::default()
            })
            .await?;
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..followers {
            let client = self.client.clone();
            set.spawn(async move {
                let mut expected = 1;
                let mut in_order = true;
                let mut ended = false;
                client
                    .follow_logs(task.id, 0, |event| match event {
                        FollowEvent::Line(line) => {
                            in_order &= line.seq == expected;
                            expected += 1;
                        }
                        FollowEvent::End(_) => ended = true,
                    })
                    .await?;
                anyhow::Ok(in_order && ended && expected == n + 1)
            });
        }
        let (mut complete, mut failed) = (0, 0);
        while let Some(done) = set.join_next().await {
            match done? {
                Ok(true) => complete += 1,
                Ok(false) => failed += 1,
                Err(err) => {
                    eprintln!("a follower failed: {err:#}");
                    failed += 1;
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        self.rows.push(row(
            "200 SSE followers of one 20,000-line task: followers with every line",
            "followers",
            f64::from(complete),
            (f64::from(followers), "followers started"),
            "all, no errors",
            complete == followers && failed == 0,
        ));
        self.rows.push(row(
            "200 SSE followers of one 20,000-line task: lines delivered/s in all",
            "lines/s",
            f64::from(complete) * n as f64 / elapsed,
            (n as f64 / elapsed, "the task's own lines/s while followed"),
            "reported",
            true,
        ));
        Ok(())
    }

    /// `GET /api/v1/tasks` pages under concurrent clients, over 10,000 stored tasks, against the same queries
    /// straight on the store with the same concurrency.
    async fn listing(&mut self) -> anyhow::Result<()> {
        let data = tempfile::tempdir()?;
        let config = Config::new(data.path().to_owned());
        let store = arachne_master::open_store(&config).await?;
        fill_history(store.as_ref(), 10_000).await?;
        let (clients, window) = (16, Duration::from_secs(5));
        let direct = {
            let store = std::sync::Arc::clone(&store);
            hammer(clients, window, move |i| {
                let store = std::sync::Arc::clone(&store);
                async move {
                    store.list_tasks(&listing_filter(i)).await?;
                    anyhow::Ok(())
                }
            })
            .await?
        };
        drop(store);
        let master = RunningMaster::start_without_workers(config).await?;
        let client = master.client.clone();
        let measured = hammer(clients, window, move |i| {
            let client = client.clone();
            async move {
                let filter = listing_filter(i);
                let query = TaskQuery {
                    status: filter.status,
                    offset: Some(filter.offset),
                    limit: Some(filter.limit),
                    ..Default::default()
                };
                client.list_tasks(&query).await?;
                anyhow::Ok(())
            }
        })
        .await?;
        master.stop().await?;
        self.rows.push(row(
            "task listing, 16 concurrent clients, pages of 50 over 10,000 tasks",
            "req/s",
            measured.per_sec,
            (
                direct.per_sec,
                "the same queries straight on the embedded store",
            ),
            "reported, no errors",
            measured.errors == 0,
        ));
        self.rows.push(row(
            "task listing, 16 concurrent clients: p99 latency",
            "ms",
            measured.p99_ms,
            (
                direct.p99_ms,
                "the same queries straight on the embedded store",
            ),
            "reported",
            true,
        ));
        Ok(())
    }

    /// An `arachne-worker` process under output floods: its peak RSS under 150 lines of 15 MiB (just under the
    /// line limit) and its RSS once idle after, against its RSS idle before; and 10 M lines of 105 bytes, none
    /// of which may be lost.
    async fn flood(&mut self) -> anyhow::Result<()> {
        let (mut worker, _worker_dir) = self.remote_worker("flooded").await?;
        let pid = worker.id().context("the worker runs")?;
        run_to_end(&self.client, &noop_run(Some("flooded"))).await?;
        let idle_before = rss_mib(pid).1;
        let long = format!(
            "f=$(mktemp); head -c {} /dev/zero | tr '\\0' x > $f; echo >> $f\ni=0; while [ $i -lt 150 ]; do cat $f; i=$((i+1)); done; rm $f\n",
            (15 << 20) - 1
        );
        spider(
            &self.client,
            "flood",
            "sh main.sh",
            &[("main.sh", long.as_str())],
        )
        .await?;
        let run = RunTask {
            spider: "flood".into(),
            mode: Some(RunMode::Nodes),
            nodes: vec!["flooded".into()],
            ..Default::default()
        };
        let task = run_to_end(&self.client, &run).await?;
        let peak = rss_mib(pid).0;
        anyhow::ensure!(
            task.log_lines == 150,
            "long lines lost: {} of 150",
            task.log_lines
        );
        // Memory the allocator has not given back yet is not the worker's to hold for ever: wait a while.
        let mut idle_after = rss_mib(pid).1;
        let settle = Instant::now() + Duration::from_secs(10);
        while idle_after > 64 && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(250)).await;
            idle_after = rss_mib(pid).1;
        }
        self.rows.push(row(
            "worker peak RSS, 150 lines of 15 MiB",
            "MiB",
            peak as f64,
            (idle_before as f64, "the same worker idle before"),
            "<= 256 MiB",
            peak <= 256,
        ));
        self.rows.push(row(
            "worker RSS idle after the flood",
            "MiB",
            idle_after as f64,
            (idle_before as f64, "the same worker idle before"),
            "<= 64 MiB",
            idle_after <= 64,
        ));
        let n: u64 = 10_000_000;
        let short = "import sys\nline = 'x' * 104 + '\\n'\nout = sys.stdout\nfor _ in range(int(sys.argv[1])):\n    out.write(line)\n";
        spider(
            &self.client,
            "short",
            "python3 main.py",
            &[("main.py", short)],
        )
        .await?;
        let run = RunTask {
            spider: "short".into(),
            param: Some(n.to_string()),
            mode: Some(RunMode::Nodes),
            nodes: vec!["flooded".into()],
            ..Default::default()
        };
        let task = run_to_end(&self.client, &run).await?;
        let lost = n.saturating_sub(task.log_lines);
        self.rows.push(row(
            "10 M lines of 105 B through a worker process: lines lost",
            "lines",
            lost as f64,
            (0.0, "none"),
            "0",
            lost == 0,
        ));
        worker.kill().await?;
        Ok(())
    }

    /// Log lines through the whole path, against direct appends into the same kind of store.
    async fn logs(&mut self) -> anyhow::Result<()> {
        let n_lines = 300_000;
        let measured = lines_through(&self.client, n_lines).await?;
        let direct = direct_logs(n_lines).await?;
        self.rows.push(row(
            "log lines/s, 80-byte lines, embedded store",
            "lines/s",
            measured,
            (direct, "direct append into the embedded store"),
            ">= 300000/s persisted, none lost",
            measured >= 300_000.0,
        ));
        Ok(())
    }

    /// 50 idle connected workers: CPU of this whole process (master plus the 50 workers' session code, so an
    /// upper bound for the master alone), against the same process idle with only its local worker.
    /// The same Scrapy project driven through Scrapyd's API of Arachne and of a real Scrapyd 1.6 (poll
    /// interval 0.2 s, 4 processes), against the same crawls run by a bare `xargs -P 4` loop.
    async fn scrapyd(&mut self) -> anyhow::Result<()> {
        const JOBS: usize = 40;
        const BURST_ROUNDS: usize = 2;
        let python =
            arachne_test_support::venv_python(&["scrapyd==1.6.0", "scrapyd-client==2.0.3", SCRAPY]);
        let work = tempfile::tempdir()?;
        let project = work.path().join("project");

        let data = tempfile::tempdir()?;
        let mut config = local_worker_config(data.path())?;
        config.scrapy_requirement = SCRAPY.into();
        let arachne = RunningMaster::start(config).await?;
        let arachne_url = format!("http://{}", arachne.scrapyd_addr);

        let home = work.path().join("scrapyd");
        std::fs::create_dir_all(&home)?;
        let config = |port| {
            format!(
                "[scrapyd]\nbind_address = 127.0.0.1\nhttp_port = {port}\npoll_interval = 0.2\nmax_proc = 4\n\
                 eggs_dir = eggs\nlogs_dir = logs\nitems_dir = items\ndbs_dir = dbs\nfinished_to_keep = 1000\n"
            )
        };
        let (mut server, scrapyd_url) = arachne_test_support::start_python_service(
            &python,
            "scrapyd",
            &home,
            "scrapyd.conf",
            config,
            "/daemonstatus.json",
        )
        .await;

        for (file, text) in [
            (
                "scrapy.cfg",
                format!(
                    "[settings]\ndefault = noop.settings\n\n[deploy:arachne]\nurl = {arachne_url}/\nproject = noop\n\
                 username = bench\npassword = {API_TOKEN}\n\n[deploy:scrapyd]\nurl = {scrapyd_url}/\nproject = noop\n"
                ),
            ),
            ("noop/__init__.py", String::new()),
            (
                "noop/settings.py",
                "BOT_NAME = 'noop'\nSPIDER_MODULES = ['noop.spiders']\nLOG_LEVEL = 'INFO'\n".into(),
            ),
            ("noop/spiders/__init__.py", String::new()),
            ("noop/spiders/noop.py", SCRAPY_NOOP.into()),
        ] {
            let path = project.join(file);
            std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
            std::fs::write(path, text)?;
        }
        for target in ["arachne", "scrapyd"] {
            let deployed = tokio::process::Command::new(&python)
                .args(["-m", "scrapyd_client.deploy", target, "--version", "1"])
                .current_dir(&project)
                .output()
                .await?;
            anyhow::ensure!(
                deployed.status.success()
                    && String::from_utf8_lossy(&deployed.stdout).contains("\"ok\""),
                "deploying to {target}: {deployed:?}"
            );
        }

        let http = arachne_test_support::http();
        let arachne_api = ScrapydClient {
            http: http.clone(),
            url: arachne_url,
            auth: true,
        };
        let scrapyd_api = ScrapydClient {
            http,
            url: scrapyd_url,
            auth: false,
        };
        let (a_running, a_finished) = arachne_api.latencies(10).await?;
        let (s_running, s_finished) = scrapyd_api.latencies(10).await?;
        // The bursts alternate over rounds and the totals are compared, so the machine's drift reaches each side.
        let (mut a_secs, mut s_secs, mut bare_secs) = (0.0, 0.0, 0.0);
        let (mut own_ticks, mut crawl_ticks) = (0, 0);
        for _ in 0..BURST_ROUNDS {
            let before = cpu_ticks()?.0;
            a_secs += arachne_api.burst(JOBS).await?;
            own_ticks += cpu_ticks()?.0 - before;
            s_secs += scrapyd_api.burst(JOBS).await?;
            let (start, before) = (Instant::now(), cpu_ticks()?.1);
            let bare = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "seq {JOBS} | xargs -P 4 -I{{}} {} -m scrapy crawl noop 2>/dev/null",
                    python.display()
                ))
                .current_dir(&project)
                .status()
                .await?;
            anyhow::ensure!(bare.success(), "the bare loop failed");
            bare_secs += start.elapsed().as_secs_f64();
            crawl_ticks += cpu_ticks()?.1 - before;
        }
        let jobs = (JOBS * BURST_ROUNDS) as f64;
        let (a_rate, s_rate, bare_rate) = (jobs / a_secs, jobs / s_secs, jobs / bare_secs);
        // Ticks are 10 ms.
        let (own_ms, crawl_ms) = (
            own_ticks as f64 * 10.0 / jobs,
            crawl_ticks as f64 * 10.0 / jobs,
        );
        server.kill().await?;
        arachne.stop().await?;

        self.rows.push(row(
            "scrapyd API: schedule -> running, median of 10",
            "ms",
            a_running,
            (s_running, "Scrapyd 1.6, poll_interval 0.2 s"),
            "<= 1/3 of Scrapyd's",
            a_running * 3.0 <= s_running,
        ));
        self.rows.push(row(
            "scrapyd API: schedule -> finished, median of 10",
            "ms",
            a_finished,
            (s_finished, "Scrapyd 1.6, poll_interval 0.2 s"),
            "report",
            true,
        ));
        self.rows.push(row(
            "scrapyd API: 40 jobs scheduled at once, 2 rounds alternating with Scrapyd's",
            "jobs/s",
            a_rate,
            (s_rate, "Scrapyd 1.6, 4 processes"),
            ">= Scrapyd's",
            a_rate >= s_rate,
        ));
        self.rows.push(row(
            "scrapyd API: the same rounds against a bare loop",
            "jobs/s",
            a_rate,
            (bare_rate, "the same 40 crawls by xargs -P 4"),
            ">= 95% of baseline",
            a_rate >= bare_rate * 0.95,
        ));
        self.rows.push(row(
            "scrapyd API: Arachne's own CPU per job in the bursts (master, worker, this client)",
            "ms",
            own_ms,
            (crawl_ms, "the CPU of one crawl in the bare loop"),
            "report",
            true,
        ));
        Ok(())
    }

    async fn idle_workers(&mut self) -> anyhow::Result<()> {
        let window = Duration::from_secs(10);
        let idle = cpu_percent_over(window).await?;
        let worker_shutdown = CancellationToken::new();
        let mut worker_dirs = Vec::new();
        let mut names = Vec::new();
        for i in 0..50 {
            let dir = tempfile::tempdir()?;
            let mut config = arachne_worker::Config::new(
                format!("http://{}", self.grpc_addr),
                format!("idle-{i}"),
                dir.path().to_owned(),
            );
            config.token = Some(WORKER_TOKEN.into());
            config.helper_exe = Some(worker_bin()?);
            names.push(config.name.clone());
            tokio::spawn(arachne_worker::run(config, worker_shutdown.clone()));
            worker_dirs.push(dir);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        wait_nodes_idle(&self.client, &names).await?;
        let measured = cpu_percent_over(window).await?;
        self.rows.push(row(
            "CPU with 50 idle connected workers (master + workers, one process)",
            "% core",
            measured,
            (idle, "the same process idle with one local worker"),
            "< 1% (master alone is below this)",
            measured < 1.0,
        ));
        worker_shutdown.cancel();
        Ok(())
    }
}

/// Contents in a worker's file cache.
fn count_blobs(cache: &std::path::Path) -> usize {
    std::fs::read_dir(cache.join("blobs"))
        .map(|shards| {
            shards
                .filter_map(Result::ok)
                .map(|s| std::fs::read_dir(s.path()).map(|d| d.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// MB/s of sending `files` × `file_bytes` over a loopback TCP connection and writing them into files, as a
/// plain copy tool would.
async fn loopback_copy_mb_per_sec(files: usize, file_bytes: usize) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let data = vec![0x5a_u8; file_bytes];
    let target = tempfile::tempdir()?;
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        for _ in 0..files {
            for piece in data.chunks(256 * 1024) {
                stream.write_all(piece).await?;
            }
        }
        anyhow::Ok(())
    });
    let (mut stream, _) = listener.accept().await?;
    let mut buffer = vec![0u8; 256 * 1024];
    for i in 0..files {
        let mut file = tokio::fs::File::create(target.path().join(i.to_string())).await?;
        let mut left = file_bytes;
        while left > 0 {
            let n = stream.read(&mut buffer[..left.min(256 * 1024)]).await?;
            anyhow::ensure!(n > 0, "the loopback sender stopped early");
            file.write_all(&buffer[..n]).await?;
            left -= n;
        }
        file.flush().await?;
    }
    sender.await??;
    Ok((files * file_bytes) as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// CPU ticks (100 a second) this process has used, and those of its children it has waited for, from /proc.
fn cpu_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .context("malformed /proc/self/stat")?
        .1;
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(rest
            .split_whitespace()
            .nth(i)
            .context("short /proc/self/stat")?
            .parse()?)
    };
    Ok((field(11)? + field(12)?, field(13)? + field(14)?))
}

/// This process's CPU use over `window`, in percent of one core.
async fn cpu_percent_over(window: Duration) -> anyhow::Result<f64> {
    let before = cpu_ticks()?.0;
    tokio::time::sleep(window).await;
    let used = cpu_ticks()?.0 - before;
    Ok(used as f64 / window.as_secs_f64())
}

async fn direct_items(n: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(&dir.path().join("direct.db"))?;
    // The same text the spider sends, stored as items are: as JSON text.
    let item = serde_json::value::RawValue::from_string(
        r#"{"url": "https://example.com/catalogue/page-1/item-00001.html", "title": "A Light in the Attic, and other things", "price": 51.77, "stock": 22, "rating": 3}"#
            .to_owned(),
    )?;
    let target = ItemTarget {
        task: TaskId::new(),
        spider_id: SpiderId::new(),
        collection: "results_direct".into(),
        dedup: None,
    };
    let start = Instant::now();
    for batch in 0..n / 2000 {
        let items: Vec<_> = (1..=2000)
            .map(|i| ItemRecord {
                seq: batch * 2000 + i,
                data: item.clone(),
            })
            .collect();
        store.insert_items(&target, &items).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Items/s of inserting item documents as the MongoDB store writes them, straight through the driver.
async fn raw_mongo_items(db: &mongodb::Database, n: u64) -> anyhow::Result<f64> {
    let coll = db.collection::<bson::Document>("raw_items");
    let tid = TaskId::new().to_string();
    let start = Instant::now();
    for batch in 0..n / 2000 {
        let docs = (1..=2000).map(|i| {
            bson::doc! {
                "url": "https://example.com/catalogue/page-1/item-00001.html",
                "title": "A Light in the Attic, and other things", "price": 51.77, "stock": 22_i64, "rating": 3_i64,
                "_tid": &tid, "_sid": &tid, "_seq": (batch * 2000 + i) as i64,
            }
        });
        coll.insert_many(docs).ordered(false).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Lines/s of inserting log documents of 1,000 lines each, as the MongoDB store writes them.
async fn raw_mongo_lines(db: &mongodb::Database, n: u64) -> anyhow::Result<f64> {
    let coll = db.collection::<bson::Document>("raw_logs");
    let tid = TaskId::new().to_string();
    let text =
        "2026-11-22 10:00:00 [quotes] INFO: Crawled (200) <GET https://example.com/page/1> ok";
    let start = Instant::now();
    for batch in 0..n / 2000 {
        let docs = (0..2).map(|half| {
            let first = batch * 2000 + half * 1000 + 1;
            let lines: Vec<bson::Document> = (first..first + 1000)
                .map(|seq| bson::doc! {"seq": seq as i64, "stream": "stdout", "at": 0_i64, "text": text})
                .collect();
            bson::doc! {"_id": format!("{tid}:{first}"), "task_id": &tid, "first": first as i64,
                "last": (first + 999) as i64, "lines": lines}
        });
        coll.insert_many(docs).ordered(false).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn direct_logs(n: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(&dir.path().join("direct.db"))?;
    let text =
        "2026-11-22 10:00:00 [quotes] INFO: Crawled (200) <GET https://example.com/page/1> ok"
            .to_owned();
    let task = TaskId::new();
    let start = Instant::now();
    for batch in 0..n / 2000 {
        let lines: Vec<_> = (1..=2000)
            .map(|i| LogLine {
                seq: batch * 2000 + i,
                stream: LogStream::Stdout,
                text: text.clone(),
                at: chrono::Utc::now(),
            })
            .collect();
        store.append_logs(task, &lines).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Milliseconds from the Unix time a ticker line starts with to now.
fn print_delay_ms(text: &str) -> Option<f64> {
    let printed: f64 = text.split(' ').next()?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some((now - printed) * 1000.0)
}

/// The delays of a ticker run past its first second (start-up and catching up are not live following),
/// sorted; all `lines` must have arrived.
fn settle_delays(delays: Vec<f64>, lines: usize) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(
        delays.len() == lines,
        "{} of {lines} lines arrived",
        delays.len()
    );
    let mut settled = delays[1_000..].to_vec();
    settled.sort_by(f64::total_cmp);
    Ok(settled)
}

/// The ticker's delays read straight from its stdout.
async fn direct_ticker_delays(lines: usize) -> anyhow::Result<Vec<f64>> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", TICKER_SPIDER, &lines.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut reader = tokio::io::BufReader::new(stdout).lines();
    let mut delays = Vec::with_capacity(lines);
    while let Some(line) = reader.next_line().await? {
        delays.extend(print_delay_ms(&line));
    }
    child.wait().await?;
    Ok(delays)
}

/// Stores `n` ended tasks of a few spiders, as a master's history would hold them.
async fn fill_history(store: &dyn Store, n: usize) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let spiders: Vec<arachne_shared::Spider> = ["quotes", "books", "news", "shop"]
        .iter()
        .map(|name| arachne_shared::Spider::new(*name, "python3 main.py", now))
        .collect();
    let tasks: Vec<Task> = (0..n)
        .map(|i| {
            let mut task = Task::pending(&spiders[i % spiders.len()], now);
            task.node = Some("local".into());
            task.set_status(TaskStatus::Running, now);
            let status = if i.is_multiple_of(10) {
                TaskStatus::Error
            } else {
                TaskStatus::Finished
            };
            task.set_status(status, now);
            task
        })
        .collect();
    for chunk in tasks.chunks(1_000) {
        store.insert_tasks(chunk).await?;
    }
    Ok(())
}

/// The `i`-th listing query: pages of 50 across the history, every fourth one by status.
fn listing_filter(i: u64) -> arachne_master::store::TaskFilter {
    arachne_master::store::TaskFilter {
        status: i.is_multiple_of(4).then_some(TaskStatus::Finished),
        limit: 50,
        offset: ((i * 50) % 2_000) as u32,
        ..Default::default()
    }
}

struct Load {
    per_sec: f64,
    p99_ms: f64,
    errors: u64,
}

/// Runs `request` from `clients` concurrent loops for `window`; requests/s, p99 latency and errors.
async fn hammer<F, Fut>(clients: u64, window: Duration, request: F) -> anyhow::Result<Load>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for client in 0..clients {
        let request = request.clone();
        set.spawn(async move {
            let (mut samples, mut errors, mut i) = (Vec::new(), 0_u64, client);
            while start.elapsed() < window {
                let sent = Instant::now();
                match request(i).await {
                    Ok(()) => samples.push(sent.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => errors += 1,
                }
                i += clients;
            }
            (samples, errors)
        });
    }
    let (mut samples, mut errors) = (Vec::new(), 0);
    while let Some(done) = set.join_next().await {
        let (s, e) = done?;
        samples.extend(s);
        errors += e;
    }
    anyhow::ensure!(!samples.is_empty(), "no request succeeded");
    samples.sort_by(f64::total_cmp);
    Ok(Load {
        per_sec: samples.len() as f64 / start.elapsed().as_secs_f64(),
        p99_ms: percentile(&samples, 0.99),
        errors,
    })
}

/// The `arachne-worker` binary: run as a worker of its own, and as the process watchdog of the workers the
/// bench runs in its own process.
fn worker_bin() -> anyhow::Result<PathBuf> {
    std::env::var_os("ARACHNE_WORKER_BIN")
        .map(PathBuf::from)
        .context("scripts/bench names the worker binary in ARACHNE_WORKER_BIN")
}

/// The Scrapy the Scrapyd comparison runs, on both sides.
const SCRAPY: &str = "scrapy==2.19.0";

/// A crawl with one page (a data: URL) and one item.
const SCRAPY_NOOP: &str = r#"
import scrapy

class NoopSpider(scrapy.Spider):
    name = "noop"
    start_urls = ["data:text/plain,x"]

    def parse(self, response):
        yield {"n": 1}
"#;

/// A Scrapyd API (Arachne's or Scrapyd's own), driven as its clients drive it.
struct ScrapydClient {
    http: reqwest::Client,
    url: String,
    /// Arachne's wants basic auth with an API token; Scrapyd here has none.
    auth: bool,
}

impl ScrapydClient {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}/{path}", self.url));
        if self.auth {
            request.basic_auth("bench", Some(API_TOKEN))
        } else {
            request
        }
    }

    async fn schedule(&self) -> anyhow::Result<String> {
        let answer: serde_json::Value = self
            .request(reqwest::Method::POST, "schedule.json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("project=noop&spider=noop")
            .send()
            .await?
            .json()
            .await?;
        answer["jobid"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("schedule.json answered {answer}"))
    }

    async fn state(&self, job: &str) -> anyhow::Result<String> {
        let answer: serde_json::Value = self
            .request(
                reqwest::Method::GET,
                &format!("status.json?project=noop&job={job}"),
            )
            .send()
            .await?
            .json()
            .await?;
        Ok(answer["currstate"].as_str().unwrap_or_default().to_owned())
    }

    /// Medians, in ms, from `schedule.json` to the job seen running and seen finished (polled every 5 ms).
    async fn latencies(&self, runs: usize) -> anyhow::Result<(f64, f64)> {
        let (mut running, mut finished) = (Vec::new(), Vec::new());
        for run in 0..runs {
            // Spread the schedule times over Scrapyd's 0.2 s poll interval (golden-ratio steps), so its
            // figure is its average wait and not one phase of its poll loop against the previous job's end.
            let offset = (run as f64 * 0.618_034).fract() * 200.0;
            tokio::time::sleep(Duration::from_secs_f64(offset / 1000.0)).await;
            let start = Instant::now();
            let job = self.schedule().await?;
            let mut seen_running = None;
            let deadline = start + Duration::from_secs(120);
            loop {
                let state = self.state(&job).await?;
                if state != "pending" && seen_running.is_none() {
                    seen_running = Some(start.elapsed());
                }
                if state == "finished" {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "job {job} did not finish");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            running.push(seen_running.unwrap_or_default().as_secs_f64() * 1000.0);
            finished.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        running.sort_by(f64::total_cmp);
        finished.sort_by(f64::total_cmp);
        Ok((percentile(&running, 0.5), percentile(&finished, 0.5)))
    }

    /// Seconds from scheduling `jobs` at once until the last is finished.
    async fn burst(&self, jobs: usize) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut ids = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            ids.push(self.schedule().await?);
        }
        let deadline = start + Duration::from_secs(600);
        for job in &ids {
            while self.state(job).await? != "finished" {
                anyhow::ensure!(Instant::now() < deadline, "job {job} did not finish");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(start.elapsed().as_secs_f64())
    }
}
