//! The fault suite behind `scripts/chaos`: every scenario of the faults the platform must survive, run against
//! the release binaries (`arachne-master`, `arachne-worker`) for N rounds, with what each round found counted:
//! lost and duplicated lines and items, tasks run twice, wrong final states, processes left running, and the
//! worker's peak memory. Exits non-zero when any count that must be zero is not.
//!
//! The tests keep a short, bounded form of each scenario (`master/tests/faults.rs`); this runs them longer and
//! at random points.

use arachne_test_support::{all_tasks, free_port, rss_mib, spider, until};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arachne_api_types::{ItemQuery, LogQuery, RunTask, Task};
use arachne_client::Client;
use arachne_shared::{NodeStatus, RunMode, TaskId, TaskStatus};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const API_TOKEN: &str = "arachne_api_chaos-token-0123456789abcdef0123456789";
const WORKER_TOKEN: &str = "arachne_worker_chaos-token-0123456789abcdef012345678";
/// Longest any one wait may take before the round counts as failed.
const WAIT: Duration = Duration::from_secs(120);

/// What one scenario found over its rounds.
#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    lost: u64,
    duplicated: u64,
    double_runs: u64,
    wrong_states: u64,
    leftovers: u64,
    peak_rss_mib: u64,
}

impl Tally {
    fn clean(&self) -> bool {
        self.lost + self.duplicated + self.double_runs + self.wrong_states + self.leftovers == 0
    }
}

struct Bins {
    master: PathBuf,
    worker: PathBuf,
}

/// A master process on a data folder and fixed ports, so it can be killed and started again in place.
struct Master {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
    data: PathBuf,
    local_worker: bool,
    heartbeat_timeout: f64,
}

impl Master {
    fn spawn(
        bins: &Bins,
        data: &Path,
        local_worker: bool,
        heartbeat_timeout: f64,
    ) -> anyhow::Result<Self> {
        let (http, grpc) = (free_port(), free_port());
        Ok(Self {
            child: start_master(bins, data, http, grpc, local_worker, heartbeat_timeout)?,
            http,
            grpc,
            data: data.to_owned(),
            local_worker,
            heartbeat_timeout,
        })
    }

    fn restart(&mut self, bins: &Bins) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = start_master(
            bins,
            &self.data,
            self.http,
            self.grpc,
            self.local_worker,
            self.heartbeat_timeout,
        )?;
        Ok(())
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let client = Client::with_token(&format!("http://{}", self.http), API_TOKEN)?;
        until("the master answers", WAIT, || async {
            client.health().await.is_ok()
        })
        .await?;
        Ok(client)
    }

    fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_master(
    bins: &Bins,
    data: &Path,
    http: SocketAddr,
    grpc: SocketAddr,
    local_worker: bool,
    heartbeat_timeout: f64,
) -> anyhow::Result<Child> {
    let mut command = Command::new(&bins.master);
    command
        .arg("--data-dir")
        .arg(data)
        .args(["--http", &http.to_string(), "--grpc", &grpc.to_string()])
        .args(["--examples-dir", "/nonexistent"])
        .args(["--heartbeat-timeout", &heartbeat_timeout.to_string()])
        .env("ARACHNE_API_TOKEN", API_TOKEN)
        .env("ARACHNE_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null());
    if !local_worker {
        command.arg("--no-local-worker");
    }
    command.spawn().context("starting arachne-master")
}

fn start_worker(bins: &Bins, master: &Master, name: &str, work: &Path) -> anyhow::Result<Child> {
    Command::new(&bins.worker)
        .args(["--master", &master.grpc_url(), "--name", name])
        .args([
            "--max-runners",
            "4",
            "--heartbeat-secs",
            "1",
            "--cancel-grace",
            "1",
        ])
        .arg("--work-dir")
        .arg(work)
        .env("ARACHNE_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting arachne-worker")
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `look` every 20 ms until it finds something, or fails after [`WAIT`].
async fn found<T, F, Fut>(what: &str, mut look: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = look().await {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn nodes_online(client: &Client, names: &[&str]) -> anyhow::Result<()> {
    until("the workers are online", WAIT, || async {
        client.list_nodes().await.is_ok_and(|nodes| {
            names.iter().all(|name| {
                nodes
                    .iter()
                    .any(|n| n.name == *name && n.status == NodeStatus::Online)
            })
        })
    })
    .await
}

fn run(spider: &str, retries: u32, env: &[(&str, String)]) -> RunTask {
    RunTask {
        spider: spider.into(),
        mode: Some(RunMode::Random),
        settings: Some(arachne_shared::spider::RunSettings {
            retries: Some(retries),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The task itself (not a retry of it) once it has ended.
async fn ended(client: &Client, id: TaskId) -> anyhow::Result<Task> {
    let deadline = Instant::now() + WAIT;
    loop {
        let task = client.get_task(id).await?;
        if task.status.is_terminal() {
            return Ok(task);
        }
        if Instant::now() > deadline {
            bail!("task {id} did not end; it is {}", task.status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_texts(client: &Client, id: TaskId) -> anyhow::Result<Vec<String>> {
    let mut texts = Vec::new();
    let mut after = 0;
    loop {
        let query = LogQuery {
            after: Some(after),
            limit: Some(10_000),
            follow: None,
        };
        let page = client.logs(id, &query).await?;
        let Some(last) = page.last() else {
            return Ok(texts);
        };
        after = last.seq;
        texts.extend(page.into_iter().map(|l| l.text));
    }
}

async fn item_count(client: &Client, id: TaskId) -> anyhow::Result<usize> {
    let query = ItemQuery {
        limit: Some(10_000),
        ..Default::default()
    };
    Ok(client.items(id, &query).await?.len())
}

/// Live (not zombie) processes in process group `pgid`.
fn group_members(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                return false;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .count() as u64
}

/// A number in `range` from the clock, for kill points that differ from round to round.
fn jitter(range: std::ops::Range<u64>) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    range.start + nanos % (range.end - range.start).max(1)
}

/// Kill -9 the master while a queue of no-op tasks drains; every task must run exactly once and finish.
async fn master_killed_during_a_drain(bins: &Bins, tally: &mut Tally) -> anyhow::Result<()> {
    const TASKS: usize = 300;
    let data = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("runs");
    let mut master = Master::spawn(bins, data.path(), false, 15.0)?;
    let client = master.client().await?;
    let mut worker = start_worker(bins, &master, "w1", work.path())?;
    nodes_online(&client, &["w1"]).await?;
    let script = format!("echo \"$ARACHNE_TASK_ID\" >> {}\n", ledger.display());
    spider(&client, "noop", "sh main.sh", &[("main.sh", script)]).await?;
    let mut ids = Vec::new();
    for _ in 0..TASKS {
        ids.push(client.run_task(&run("noop", 1, &[])).await?.id);
    }
    let ran = |ledger: &Path| std::fs::read_to_string(ledger).map_or(0, |l| l.lines().count());
    let kill_after = jitter(5..(TASKS as u64 / 2)) as usize;
    until("the drain is under way", WAIT, || async {
        ran(&ledger) >= kill_after
    })
    .await?;
    master.restart(bins)?;
    let client = master.client().await?;
    for id in &ids {
        let task = ended(&client, *id).await?;
        tally.runs += 1;
        if task.status != TaskStatus::Finished {
            tally.wrong_states += 1;
        }
    }
    let extra = all_tasks(&client).await?.len().saturating_sub(TASKS);
    tally.wrong_states += extra as u64;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for line in std::fs::read_to_string(&ledger)?.lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    tally.double_runs += counts.values().filter(|n| **n > 1).count() as u64;
    tally.lost += TASKS.saturating_sub(counts.len()) as u64;
    stop(&mut worker);
    Ok(())
}

/// Kill -9 the master while a task runs; the task ends while the master is down. It must be Finished with every
/// line and item, and not run again.
async fn task_ends_while_the_master_is_down(bins: &Bins, tally: &mut Tally) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let gate = tempfile::tempdir()?;
    let (go, done) = (gate.path().join("go"), gate.path().join("done"));
    let mut master = Master::spawn(bins, data.path(), false, 15.0)?;
    let client = master.client().await?;
    let mut worker = start_worker(bins, &master, "w1", work.path())?;
    nodes_online(&client, &["w1"]).await?;
    let script = "echo start\nwhile [ ! -e \"$GO\" ]; do sleep 0.02; done\n\
        echo '{\"type\": \"INSERT_DATA\", \"payload\": {\"k\": 1}}'\necho end\ntouch \"$DONE\"\n";
    spider(
        &client,
        "gated",
        "sh main.sh",
        &[("main.sh", script.to_owned())],
    )
    .await?;
    let env = [
        ("GO", go.display().to_string()),
        ("DONE", done.display().to_string()),
    ];
    let task = client.run_task(&run("gated", 1, &env)).await?;
    until("the task runs", WAIT, || async {
        client
            .get_task(task.id)
            .await
            .is_ok_and(|t| t.status == TaskStatus::Running && t.log_lines >= 1)
    })
    .await?;
    let _ = master.child.kill();
    let _ = master.child.wait();
    std::fs::write(&go, "")?;
    let run_dir = work.path().join("tasks").join(task.id.to_string());
    until("the run ends on the worker", WAIT, || async {
        done.exists() && !run_dir.exists()
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(jitter(0..1500))).await;
    master.restart(bins)?;
    let client = master.client().await?;
    let task = ended(&client, task.id).await?;
    tally.runs += 1;
    if task.status != TaskStatus::Finished {
        tally.wrong_states += 1;
    }
    let lines = log_texts(&client, task.id).await?;
    tally.lost += 2u64.saturating_sub(lines.len() as u64);
    tally.duplicated += (lines.len() as u64).saturating_sub(2);
    let items = item_count(&client, task.id).await? as u64;
    tally.lost += 1u64.saturating_sub(items);
    tally.duplicated += items.saturating_sub(1);
    tally.double_runs += (all_tasks(&client).await?.len() as u64).saturating_sub(1);
    stop(&mut worker);
    Ok(())
}

/// Ignores SIGTERM, keeps a grandchild that ignores it too, and writes nothing.
const STUBBORN: &str =
    "trap '' TERM\nsh -c 'trap \"\" TERM; exec sleep 313' &\nwhile true; do sleep 1; done\n";

/// Kill -9 a worker (or a master with its local worker) while a stubborn spider runs: within 2 s nothing of the
/// run may be left.
async fn worker_killed(bins: &Bins, tally: &mut Tally, local: bool) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let mut master = Master::spawn(bins, data.path(), local, 3.0)?;
    let client = master.client().await?;
    let mut worker = if local {
        None
    } else {
        Some(start_worker(bins, &master, "w1", work.path())?)
    };
    nodes_online(&client, &[if local { "local" } else { "w1" }]).await?;
    spider(
        &client,
        "stubborn",
        "sh main.sh",
        &[("main.sh", STUBBORN.to_owned())],
    )
    .await?;
    let task = client.run_task(&run("stubborn", 0, &[])).await?;
    let pgid = found("the stubborn tree runs", || async {
        match client.get_task(task.id).await {
            Ok(Task {
                status: TaskStatus::Running,
                pid: Some(pid),
                ..
            }) if group_members(pid) >= 3 => Some(pid),
            _ => None,
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(jitter(0..500))).await;
    match &mut worker {
        Some(worker) => stop(worker),
        None => {
            let _ = master.child.kill();
            let _ = master.child.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while group_members(pgid) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tally.runs += 1;
    let left = group_members(pgid);
    tally.leftovers += left;
    if left > 0 {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
    if !local {
        let task = ended(&client, task.id).await?;
        if task.status != TaskStatus::Abnormal {
            tally.wrong_states += 1;
        }
    }
    Ok(())
}

/// SIGSTOP a worker while its task (with a retry) runs and writes; the retry runs on another worker. The two
/// attempts must not overlap, and the frozen attempt must gain nothing after its recorded end.
async fn worker_frozen(bins: &Bins, tally: &mut Tally) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (work, spare_work) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ticks");
    let master = Master::spawn(bins, data.path(), false, 3.0)?;
    let client = master.client().await?;
    let mut frozen = start_worker(bins, &master, "frozen", work.path())?;
    nodes_online(&client, &["frozen"]).await?;
    let script = format!(
        "while true; do echo \"$ARACHNE_TASK_ID\" >> {}; echo tick; echo '{{\"type\": \"INSERT_DATA\", \"payload\": {{\"t\": 1}}}}'; sleep 0.02; done\n",
        ledger.display()
    );
    spider(&client, "ticker", "sh main.sh", &[("main.sh", script)]).await?;
    let first = client.run_task(&run("ticker", 1, &[])).await?;
    until("the first attempt ticks", WAIT, || async {
        client.get_task(first.id).await.is_ok_and(|t| t.items > 5)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(jitter(0..1000))).await;
    kill(Pid::from_raw(frozen.id() as i32), Signal::SIGSTOP)?;
    let mut spare = start_worker(bins, &master, "spare", spare_work.path())?;
    let first = ended(&client, first.id).await?;
    tally.runs += 1;
    if first.status != TaskStatus::Abnormal {
        tally.wrong_states += 1;
    }
    if let Some(pid) = first.pid {
        tally.leftovers += group_members(pid);
    }
    let retry = found("the retry runs", || async {
        all_tasks(&client)
            .await
            .ok()
            .and_then(|tasks| {
                tasks
                    .into_iter()
                    .find(|t| t.first_attempt == Some(first.id))
            })
            .filter(|t| t.items > 5)
    })
    .await?;
    kill(Pid::from_raw(frozen.id() as i32), Signal::SIGCONT)?;
    kill(Pid::from_raw(frozen.id() as i32), Signal::SIGTERM)?;
    let _ = frozen.wait();
    let after = client.get_task(first.id).await?;
    tally.duplicated += after.log_lines.saturating_sub(first.log_lines);
    tally.duplicated += after.items.saturating_sub(first.items);
    let ticks = std::fs::read_to_string(&ledger)?;
    let ticks: Vec<&str> = ticks.lines().collect();
    let (first_id, retry_id) = (first.id.to_string(), retry.id.to_string());
    if let (Some(last_of_first), Some(first_of_retry)) = (
        ticks.iter().rposition(|l| *l == first_id),
        ticks.iter().position(|l| *l == retry_id),
    ) && last_of_first > first_of_retry
    {
        tally.double_runs += 1;
    }
    client.cancel_task(retry.id).await?;
    ended(&client, retry.id).await?;
    stop(&mut spare);
    Ok(())
}

/// 60 lines of 15 MiB through a worker: every line arrives, and the worker's memory stays bounded.
async fn output_flood(bins: &Bins, tally: &mut Tally) -> anyhow::Result<()> {
    const LINES: usize = 60;
    let data = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let master = Master::spawn(bins, data.path(), false, 15.0)?;
    let client = master.client().await?;
    let mut worker = start_worker(bins, &master, "w1", work.path())?;
    nodes_online(&client, &["w1"]).await?;
    let script = format!(
        "f=$(mktemp); head -c {} /dev/zero | tr '\\0' x > $f; echo >> $f\ni=0; while [ $i -lt {LINES} ]; do cat $f; i=$((i+1)); done; rm $f\n",
        15 << 20
    );
    spider(&client, "flood", "sh main.sh", &[("main.sh", script)]).await?;
    let task = client.run_task(&run("flood", 0, &[])).await?;
    let pid = worker.id();
    let mut peak = 0;
    let deadline = Instant::now() + WAIT;
    let task = loop {
        peak = peak.max(rss_mib(pid).0);
        let current = client.get_task(task.id).await?;
        if current.status.is_terminal() {
            break current;
        }
        if Instant::now() > deadline {
            bail!("the flood did not end");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tally.runs += 1;
    tally.peak_rss_mib = tally.peak_rss_mib.max(peak.max(rss_mib(pid).0));
    if task.status != TaskStatus::Finished {
        tally.wrong_states += 1;
    }
    tally.lost += (LINES as u64).saturating_sub(task.log_lines);
    stop(&mut worker);
    Ok(())
}

type Scenario = for<'a> fn(
    &'a Bins,
    &'a mut Tally,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: u32 = args.next().map_or(Ok(3), |r| r.parse()).context("rounds")?;
    let only: Option<String> = args.next();
    let dir = std::env::var_os("ARACHNE_BIN_DIR")
        .map(PathBuf::from)
        .context("scripts/chaos names the release binaries' folder in ARACHNE_BIN_DIR")?;
    let bins = Bins {
        master: dir.join("arachne-master"),
        worker: dir.join("arachne-worker"),
    };
    let scenarios: Vec<(&str, Scenario)> = vec![
        ("master killed during a drain", |b, t| {
            Box::pin(master_killed_during_a_drain(b, t))
        }),
        ("task ends while the master is down", |b, t| {
            Box::pin(task_ends_while_the_master_is_down(b, t))
        }),
        ("worker killed", |b, t| Box::pin(worker_killed(b, t, false))),
        ("master killed with its local worker", |b, t| {
            Box::pin(worker_killed(b, t, true))
        }),
        ("worker frozen (SIGSTOP)", |b, t| {
            Box::pin(worker_frozen(b, t))
        }),
        ("output flood (15 MiB lines)", |b, t| {
            Box::pin(output_flood(b, t))
        }),
    ];
    println!(
        "{:<38} {:>6} {:>6} {:>6} {:>7} {:>6} {:>9} {:>9} {:>7}",
        "scenario", "rounds", "runs", "lost", "dup", "double", "wrong", "leftover", "rss MiB"
    );
    let mut all_clean = true;
    for (name, scenario) in scenarios {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let mut tally = Tally::default();
        let mut failed_rounds = 0;
        for round in 0..rounds {
            if let Err(err) = scenario(&bins, &mut tally).await {
                eprintln!("{name}, round {}: {err:#}", round + 1);
                failed_rounds += 1;
            }
        }
        let clean = tally.clean() && failed_rounds == 0;
        all_clean &= clean;
        println!(
            "{:<38} {:>6} {:>6} {:>6} {:>7} {:>6} {:>9} {:>9} {:>7}{}",
            name,
            rounds,
            tally.runs,
            tally.lost,
            tally.duplicated,
            tally.double_runs,
            tally.wrong_states,
            tally.leftovers,
            tally.peak_rss_mib,
            if failed_rounds > 0 {
                format!("  ({failed_rounds} rounds failed)")
            } else {
                String::new()
            }
        );
    }
    if !all_clean {
        bail!("a scenario lost, duplicated, ran twice, misrecorded or left something running");
    }
    Ok(())
}
