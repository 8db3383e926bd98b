//! The web UI end to end in headless Chromium (Debian's `chromium`), driven by `browser/e2e.mjs` through
//! playwright-core: a real master serving the embedded UI, a real worker, real spider processes. The store
//! is filled first with 100,000 tasks and a task with a 1,000,000-line log, so the pages are exercised at the
//! size Crawlab's task page froze at. Screenshots of every page go to `target/ui-screenshots/`.
//!
//! Needs `chromium` (or `ARACHNE_CHROMIUM`) and `npm`; the first run installs playwright-core (pinned by
//! `browser/package-lock.json`) into `target/browser-deps/`. `ARACHNE_SKIP_BROWSER_TESTS=1` skips it, loudly.

use arachne_test_support as common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use arachne_master::Config;
use arachne_master::store::Store;
use arachne_shared::{LogLine, LogStream, Spider, Task, TaskStatus};
use common::{API_TOKEN, TIMEOUT, TestMaster, TestWorker, spider_dir};

const SEEDED_TASKS: usize = 100_000;
const BIG_LOG_LINES: u64 = 1_000_000;
/// The line of the big log the test searches for.
const NEEDLE_LINE: u64 = 777_777;

/// The spider the UI uploads as a folder and runs: items and an ERROR report first, then a line every 100 ms
/// with a STATUS report (progress and stats) every tenth line, until cancelled.
const TICKER: &str = r#"import json, time
print(json.dumps({"type": "INSERT_DATA", "payload": [{"title": "first", "n": 1}, {"title": "second", "n": 2}]}), flush=True)
print(json.dumps({"type": "ERROR", "payload": {"message": "page 7 answered 503", "fatal": False}}), flush=True)
for i in range(1, 6001):
    print(f"tick {i}", flush=True)
    if i % 10 == 0:
        stats = {"pages": i, "retries": 1}
        print(json.dumps({"type": "STATUS", "payload": {"progress": i / 6000, "message": f"{i} ticks", "stats": stats}}), flush=True)
    time.sleep(0.1)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_ui_uploads_runs_follows_cancels_schedules_and_pages_through_a_big_store() {
    if std::env::var("ARACHNE_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: ARACHNE_SKIP_BROWSER_TESTS=1; the web UI was not tested");
        return;
    }
    let chromium = chromium();
    let deps = install_driver();

    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path().to_owned());
    config.local_worker = None;
    // A watched spiders folder with a broken arachne.toml, which the Spiders page must point out.
    let watched = spider_dir(&[("broken/arachne.toml", "name = \"broken\"\ncmd = [\n")]);
    config.spiders_dir = Some(watched.path().to_owned());
    common::use_test_store(&mut config);
    let big = fill_store(&config).await;
    let master = TestMaster::start_with(config).await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;

    let spider = spider_dir(&[
        ("main.py", TICKER),
        ("README.md", "ticks until cancelled\n"),
    ]);
    // A second version, uploaded in the UI as an archive.
    let v2 = spider_dir(&[("main.py", TICKER), ("VERSION", "2\n")]);
    let archive = tempfile::Builder::new()
        .suffix(".tar.gz")
        .tempfile()
        .unwrap();
    std::fs::write(
        archive.path(),
        arachne_shared::archive::pack_dir(v2.path()).unwrap(),
    )
    .unwrap();
    // A Scrapy project, run from the dialog by naming one of its spiders.
    let python = common::venv_python(&["crawlab-sdk==0.7.0", "scrapy==2.19.0"]);
    common::create_spider(
        &master.client,
        "scrapy-demo",
        &format!("{} -m scrapy", python.display()),
        &[
            ("scrapy.cfg", "[settings]\ndefault = demo.settings\n"),
            ("demo/__init__.py", ""),
            (
                "demo/settings.py",
                "BOT_NAME = 'demo'\nSPIDER_MODULES = ['demo.spiders']\n",
            ),
            ("demo/spiders/__init__.py", ""),
            ("demo/spiders/pages.py", SCRAPY_SPIDERS),
        ],
    )
    .await;
    let shots = workspace_target().join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/e2e.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .env("ARACHNE_URL", format!("http://{}", master.http))
        .env("ARACHNE_TOKEN", API_TOKEN)
        .env("ARACHNE_CHROMIUM", &chromium)
        .env("ARACHNE_BROWSER_DEPS", &deps)
        .env("ARACHNE_SCREENSHOTS", &shots)
        .env("SPIDER_DIR", spider.path())
        .env("SPIDER_ARCHIVE", archive.path())
        .env("BIG_TASK", big.id.to_string())
        .env("BIG_LINES", BIG_LOG_LINES.to_string())
        .env("NEEDLE_LINE", NEEDLE_LINE.to_string())
        .env("SEEDED_TASKS", SEEDED_TASKS.to_string())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .status();
    // The script bounds each of its steps; this bounds the whole in case the browser itself hangs.
    let status = tokio::time::timeout(TIMEOUT * 5, run)
        .await
        .expect("the browser test finishes")
        .expect("node runs");
    assert!(
        status.success(),
        "the browser test failed ({status}); see its output above and the screenshots in {}",
        shots.display()
    );

    // What the UI did happened for real: the uploaded spider's task was cancelled and its process killed.
    let page = master
        .client
        .list_tasks(&arachne_api_types::TaskQuery {
            spider: Some("ui-demo".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        page.items.iter().any(|t| t.status == TaskStatus::Cancelled),
        "the task cancelled in the UI is Cancelled: {:?}",
        page.items.iter().map(|t| t.status).collect::<Vec<_>>()
    );
    let schedule = master.client.get_schedule("ui-every-10s").await.unwrap();
    assert_eq!(schedule.schedule.cron, "*/20 * * * * *");
    assert!(!schedule.schedule.enabled, "disabled in the UI");
    worker.stop().await;
    master.stop().await;
}

/// Fills the store the master will open: 100,000 ended tasks over four spiders, and one task whose log has
/// 1,000,000 lines (one of them holding a needle to search for). Returns that task.
async fn fill_store(config: &Config) -> Task {
    let store = arachne_master::open_store(config).await.unwrap();
    let now = chrono::Utc::now();
    let spiders: Vec<Spider> = ["quotes", "books", "news", "shop"]
        .iter()
        .map(|name| Spider::new(*name, "python3 main.py", now))
        .collect();
    for spider in &spiders {
        store.put_spider(spider).await.unwrap();
    }
    for chunk in (0..SEEDED_TASKS).collect::<Vec<_>>().chunks(5_000) {
        let tasks: Vec<Task> = chunk
            .iter()
            .map(|i| ended(&spiders[i % spiders.len()], i % 10 == 0, now))
            .collect();
        store.insert_tasks(&tasks).await.unwrap();
    }
    let big = ended(&spiders[0], false, now);
    store.insert_task(&big).await.unwrap();
    append_big_log(store.as_ref(), &big).await;
    store.get_task(big.id).await.unwrap().unwrap()
}

fn ended(spider: &Spider, failed: bool, now: chrono::DateTime<chrono::Utc>) -> Task {
    let mut task = Task::pending(spider, now);
    task.node = Some("w0".into());
    task.set_status(TaskStatus::Running, now);
    task.set_status(
        if failed {
            TaskStatus::Error
        } else {
            TaskStatus::Finished
        },
        now,
    );
    task
}

async fn append_big_log(store: &dyn Store, task: &Task) {
    let at = chrono::Utc::now();
    let mut seq = 0;
    while seq < BIG_LOG_LINES {
        let batch: Vec<LogLine> = (seq + 1..=(seq + 10_000).min(BIG_LOG_LINES))
            .map(|n| LogLine {
                seq: n,
                stream: if n % 100 == 0 {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                },
                text: if n == NEEDLE_LINE {
                    format!("line {n} holds the needle-in-a-haystack")
                } else {
                    format!("line {n} of a long crawl")
                },
                at,
            })
            .collect();
        seq += batch.len() as u64;
        store.append_logs(task.id, &batch).await.unwrap();
    }
}

fn workspace_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("ARACHNE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "no Chromium at {}: install Debian's `chromium` package (`.ci/run` does), name another build with \
         ARACHNE_CHROMIUM, or skip the web UI test with ARACHNE_SKIP_BROWSER_TESTS=1",
        path.display()
    );
    path
}

/// Installs playwright-core as locked in `browser/package-lock.json` into `target/browser-deps/` once (again
/// when the lock file changes), and returns that folder.
fn install_driver() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let deps = workspace_target().join("browser-deps");
    let lock = std::fs::read(source.join("package-lock.json")).unwrap();
    let installed = deps
        .join("node_modules/playwright-core/package.json")
        .exists()
        && std::fs::read(deps.join("package-lock.json")).is_ok_and(|l| l == lock);
    if !installed {
        std::fs::create_dir_all(&deps).unwrap();
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(source.join(file), deps.join(file)).unwrap();
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(&deps)
            .status()
            .expect("npm runs (install Node.js and npm)");
        assert!(status.success(), "npm ci of playwright-core failed");
    }
    deps
}

/// Two Scrapy spiders; `words` yields one item per word of its `words` argument.
const SCRAPY_SPIDERS: &str = r#"
import scrapy

class PagesSpider(scrapy.Spider):
    name = "pages"

class WordsSpider(scrapy.Spider):
    name = "words"
    start_urls = ["data:text/plain,x"]

    def parse(self, response):
        for word in getattr(self, "words", "").split():
            yield {"word": word}
"#;
