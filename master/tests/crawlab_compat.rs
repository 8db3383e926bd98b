//! Spiders written for Crawlab run unchanged: the real crawlab-sdk package (installed from PyPI into a venv
//! cached under `target/`) saves items through Arachne's runner.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use arachne_shared::{LogStream, TaskStatus};
use arachne_web_api::types::{ItemQuery, LogQuery, RunTask};
use common::{TestMaster, create_spider, wait_done};

const CRAWLAB_SDK: &str = "crawlab-sdk==0.7.0";

/// The venv's python, creating the venv on first use. Built in a temporary folder and renamed into place, so
/// an interrupted install is never mistaken for a finished one.
fn crawlab_python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        // The folder of the test binaries is target/<profile>; the venv goes beside it, in target/.
        let target = common::workspace_bin("").parent().unwrap().to_owned();
        let venv = target.join("test-venvs").join("crawlab-sdk-0.7.0");
        let python = venv.join("bin").join("python");
        if python.exists() {
            return python;
        }
        let staging = venv.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("python3 runs");
            assert!(
                out.status.success(),
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&staging));
        run(Command::new(staging.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "-q",
            CRAWLAB_SDK,
        ]));
        if std::fs::rename(&staging, &venv).is_err() {
            // Another test process finished first.
            let _ = std::fs::remove_dir_all(&staging);
        }
        python
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_using_crawlab_save_item_runs_unchanged() {
    let python = crawlab_python().clone();
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let script = r#"
import os
from crawlab import save_item
print("crawling for task", os.environ["CRAWLAB_TASK_ID"])
save_item({"title": "first", "price": 1.5}, {"title": "second"})
save_item({"title": "third", "tags": ["a", "b"]})
"#;
    let cmd = format!("{} main.py", python.display());
    create_spider(client, "crawlab", &cmd, &[("main.py", script)]).await;
    let task = client
        .run_task(&RunTask {
            spider: "crawlab".into(),
            param: None,
            priority: None,
            settings: None,
        })
        .await;
    let task = wait_done(client, task.unwrap().id).await;
    assert_eq!(task.status, TaskStatus::Finished, "{:?}", task.error);
    let items = client.items(task.id, &ItemQuery::default()).await.unwrap();
    let titles: Vec<_> = items
        .iter()
        .map(|i| i.data["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["first", "second", "third"]);
    assert_eq!(items[2].data["tags"], serde_json::json!(["a", "b"]));
    let logs = client.logs(task.id, &LogQuery::default()).await.unwrap();
    let stdout: Vec<_> = logs
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(
        stdout,
        [format!("crawling for task {}", task.id)],
        "IPC lines are not log lines"
    );
    master.stop().await;
}
