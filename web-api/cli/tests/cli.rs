//! The `arachne` CLI against a real master: create a spider from a folder, run it with --follow and --wait,
//! and read tasks, logs, items and nodes, checking exit codes as scripts would.

use arachne_test_support as common;

use std::process::Output;

use common::{TestMaster, workspace_bin};

async fn arachne(master: &TestMaster, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(workspace_bin("arachne"))
        .args(["--server", &format!("http://{}", master.http)])
        .env("ARACHNE_TOKEN", common::API_TOKEN)
        .args(args)
        .output();
    tokio::time::timeout(common::TIMEOUT, output)
        .await
        .expect("the CLI returns in time")
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_whole_path() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    let spider = common::spider_dir(&[(
        "main.py",
        "import json\nprint('hello from the cli')\nprint(json.dumps({'type':'INSERT_DATA','payload':{'k':'v'}}))\n",
    )]);
    let dir = spider.path().to_str().unwrap();
    let created = arachne(
        &master,
        &[
            "spider",
            "create",
            "cli",
            "--cmd",
            "python3 main.py",
            "--dir",
            dir,
        ],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    assert!(
        stdout(&created).starts_with("spider cli version "),
        "{}",
        stdout(&created)
    );
    let list = stdout(&arachne(&master, &["spider", "list"]).await);
    assert!(
        list.contains("cli") && list.contains("python3 main.py"),
        "{list}"
    );

    let run = arachne(&master, &["run", "cli", "--follow"]).await;
    assert!(run.status.success(), "{run:?}");
    let out = stdout(&run);
    let mut lines = out.lines();
    let id = lines.next().unwrap().to_owned();
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["hello from the cli"],
        "the log streamed, the item did not"
    );

    let items = arachne(&master, &["items", &id]).await;
    // One JSON object per line (the embedded store keeps the spider's own text; MongoDB its fields).
    let lines: Vec<serde_json::Value> = stdout(&items)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, [serde_json::json!({"k": "v"})]);
    let items = arachne(&master, &["items", &id, "--format", "json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&items)).unwrap(),
        serde_json::json!([{"k": "v"}])
    );
    let logs = arachne(&master, &["logs", &id]).await;
    assert_eq!(stdout(&logs), "hello from the cli\n");
    let show = stdout(&arachne(&master, &["task", "show", &id]).await);
    assert!(
        show.starts_with(&format!("task {id}\n"))
            && show.contains("  status:")
            && show.contains("finished\n"),
        "{show}"
    );
    let show = stdout(&arachne(&master, &["--json", "task", "show", &id]).await);
    assert!(show.contains("\"status\": \"finished\""), "{show}");
    let tasks = stdout(&arachne(&master, &["task", "list"]).await);
    assert!(tasks.contains(&id) && tasks.contains("finished"), "{tasks}");
    let nodes = stdout(&arachne(&master, &["node", "list"]).await);
    assert!(
        nodes.contains("local") && nodes.contains("online"),
        "{nodes}"
    );

    // Versions and files: a .zip archive uploaded as a second version, both listed, the files read back, and
    // the first made current again by a prefix of its hash.
    let first = stdout(&created)
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_owned();
    let zip_path = spider.path().join("../cli-upload.zip");
    {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        zip.start_file("main.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"print('second version')\n").unwrap();
        zip.finish().unwrap();
    }
    let uploaded = arachne(
        &master,
        &["spider", "upload", "cli", zip_path.to_str().unwrap()],
    )
    .await;
    assert!(uploaded.status.success(), "{uploaded:?}");
    let versions = stdout(&arachne(&master, &["spider", "versions", "cli"]).await);
    assert_eq!(
        versions.lines().count(),
        3,
        "a header and two versions: {versions}"
    );
    assert!(
        versions.lines().nth(2).unwrap().contains(&first),
        "{versions}"
    );
    let files = stdout(&arachne(&master, &["spider", "files", "cli"]).await);
    assert!(
        files.contains("main.py") && files.contains("644"),
        "{files}"
    );
    let content = stdout(&arachne(&master, &["spider", "files", "cli", "main.py"]).await);
    assert_eq!(content, "print('second version')\n");
    let used = arachne(&master, &["spider", "use", "cli", &first]).await;
    assert!(used.status.success(), "{used:?}");
    let content = stdout(&arachne(&master, &["spider", "files", "cli", "main.py"]).await);
    assert!(content.contains("hello from the cli"), "{content}");
    let unknown = arachne(&master, &["spider", "use", "cli", "ffffff"]).await;
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("has no version ffffff"),
        "{unknown:?}"
    );

    // --wait and --follow exit non-zero unless the task Finished.
    let failing = common::spider_dir(&[("run.sh", "exit 4\n")]);
    let dir = failing.path().to_str().unwrap();
    assert!(
        arachne(
            &master,
            &[
                "spider",
                "create",
                "bad",
                "--cmd",
                "sh run.sh",
                "--dir",
                dir
            ]
        )
        .await
        .status
        .success()
    );
    let run = arachne(&master, &["run", "bad", "--wait"]).await;
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("error: exit status 4"),
        "{run:?}"
    );
    let run = arachne(&master, &["run", "bad", "--follow"]).await;
    assert!(!run.status.success());

    // Errors from the server are printed with its message.
    let missing = arachne(&master, &["run", "nope"]).await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("spider \"nope\" not found"),
        "{missing:?}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_a_schedule_from_creation_to_deletion() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    let spider = common::spider_dir(&[("main.sh", "echo hi\n")]);
    let dir = spider.path().to_str().unwrap();
    let created = arachne(
        &master,
        &["spider", "create", "s", "--cmd", "sh main.sh", "--dir", dir],
    )
    .await;
    assert!(created.status.success(), "{created:?}");

    let bad = arachne(
        &master,
        &[
            "schedule",
            "create",
            "bad",
            "--spider",
            "s",
            "--cron",
            "* 25 * * *",
        ],
    )
    .await;
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.contains("invalid hour field \"25\": hour must be 0-23"),
        "{message}"
    );

    let args = [
        "schedule",
        "create",
        "nightly",
        "--spider",
        "s",
        "--cron",
        "30 2 * * 1-5",
        "--tz",
        "Europe/Berlin",
        "--node",
        "local",
        "--overlap",
        "skip",
    ];
    let created = arachne(&master, &args).await;
    assert!(created.status.success(), "{created:?}");
    let shown = stdout(&arachne(&master, &["schedule", "show", "nightly"]).await);
    assert!(shown.contains("mode:     nodes local"), "{shown}");
    assert_eq!(
        shown.matches(" 02:30:00 CE").count(),
        5,
        "five next fire times, on Berlin's clock (CET or CEST): {shown}"
    );
    let list = stdout(&arachne(&master, &["schedule", "list"]).await);
    assert!(
        list.contains("nightly") && list.contains("Europe/Berlin"),
        "{list}"
    );
    let disabled = stdout(&arachne(&master, &["--json", "schedule", "disable", "nightly"]).await);
    let view: serde_json::Value = serde_json::from_str(&disabled).unwrap();
    assert_eq!(view["enabled"], false);
    let run = arachne(&master, &["schedule", "run-now", "nightly"]).await;
    assert!(run.status.success(), "{run:?}");
    let deleted = arachne(&master, &["schedule", "delete", "nightly"]).await;
    assert!(deleted.status.success(), "{deleted:?}");
    let gone = arachne(&master, &["schedule", "show", "nightly"]).await;
    assert!(!gone.status.success());
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_changes_a_node_and_will_not_remove_an_online_one() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    let disabled = stdout(&arachne(&master, &["node", "disable", "local"]).await);
    assert!(disabled.contains("disabled"), "{disabled}");
    let nodes = stdout(&arachne(&master, &["node", "list"]).await);
    assert!(
        nodes.contains("ENABLED") && nodes.contains("CPU"),
        "{nodes}"
    );
    let enabled = stdout(&arachne(&master, &["node", "enable", "local"]).await);
    assert!(enabled.contains("enabled"), "{enabled}");
    let removed = arachne(&master, &["node", "remove", "local"]).await;
    assert!(!removed.status.success());
    let message = String::from_utf8_lossy(&removed.stderr);
    assert!(message.contains("is online"), "{message}");
    master.stop().await;
}

/// The `url` and `run` fields of a task's items, through `arachne items`.
async fn crawled(master: &TestMaster, id: &str) -> Vec<(String, String)> {
    let items = arachne(master, &["items", id, "--format", "json"]).await;
    assert!(items.status.success(), "{items:?}");
    let items: Vec<serde_json::Value> = serde_json::from_str(&stdout(&items)).unwrap();
    items
        .iter()
        .map(|i| {
            (
                i["url"].as_str().unwrap().into(),
                i["run"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn urls(run: &str, urls: &[&str]) -> Vec<(String, String)> {
    urls.iter()
        .map(|u| (u.to_string(), run.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_item_deduplication_and_runs_keep_one_item_per_key() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    // Each run crawls the pages named on its command line and tags them with its own name.
    let spider = common::spider_dir(&[(
        "main.py",
        "import json, sys\nrun, pages = sys.argv[1], sys.argv[2:]\n\
         for p in pages:\n    print(json.dumps({'type': 'INSERT_DATA', 'payload': {'url': p, 'run': run}}))\n",
    )]);
    let dir = spider.path().to_str().unwrap();
    let create = |extra: &'static [&'static str]| {
        let mut args = vec![
            "spider",
            "create",
            "pages",
            "--cmd",
            "python3 main.py",
            "--dir",
            dir,
        ];
        args.extend_from_slice(extra);
        args
    };
    let run = |param: &'static str| {
        let master = &master;
        async move {
            let out = arachne(master, &["run", "pages", "--wait", "--param", param]).await;
            assert!(out.status.success(), "{out:?}");
            stdout(&out).lines().next().unwrap().to_owned()
        }
    };

    let created = arachne(
        &master,
        &create(&["--dedup-key", "url", "--dedup-mode", "ignore"]),
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    let shown: serde_json::Value = serde_json::from_str(&stdout(
        &arachne(&master, &["--json", "spider", "show", "pages"]).await,
    ))
    .unwrap();
    assert_eq!(
        shown["dedup"],
        serde_json::json!({"keys": ["url"], "mode": "ignore"})
    );
    let described = stdout(&arachne(&master, &["spider", "show", "pages"]).await);
    assert!(
        described.starts_with("spider pages\n") && described.contains("ignore on url\n"),
        "{described}"
    );
    let first = run("one a b").await;
    let second = run("two b c").await;
    assert_eq!(crawled(&master, &first).await, urls("one", &["a", "b"]));
    assert_eq!(
        crawled(&master, &second).await,
        urls("two", &["c"]),
        "b was kept from the first run"
    );

    // Overwrite: the latest run's items replace the stored ones, and move to it.
    let changed = arachne(
        &master,
        &create(&["--dedup-key", "url", "--dedup-mode", "overwrite"]),
    )
    .await;
    assert!(changed.status.success(), "{changed:?}");
    let third = run("three a c d").await;
    assert_eq!(
        crawled(&master, &third).await,
        urls("three", &["a", "c", "d"])
    );
    assert_eq!(crawled(&master, &first).await, urls("one", &["b"]));
    assert_eq!(crawled(&master, &second).await, []);
    let task: serde_json::Value = serde_json::from_str(&stdout(
        &arachne(&master, &["--json", "task", "show", &second]).await,
    ))
    .unwrap();
    assert_eq!(task["items"], 2, "a task counts the items it produced");

    // Off again: every item is stored.
    let off = arachne(&master, &create(&["--no-dedup"])).await;
    assert!(off.status.success(), "{off:?}");
    let fourth = run("four a a").await;
    assert_eq!(crawled(&master, &fourth).await, urls("four", &["a", "a"]));
    let shown: serde_json::Value = serde_json::from_str(&stdout(
        &arachne(&master, &["--json", "spider", "show", "pages"]).await,
    ))
    .unwrap();
    assert_eq!(shown.get("dedup"), None);

    // Bad keys are refused with the field named, and the spider keeps what it had.
    let bad = arachne(&master, &create(&["--dedup-key", "a.b"])).await;
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.contains("dedup.keys: invalid field \"a.b\""),
        "{message}"
    );
    let lone_mode = arachne(&master, &create(&["--dedup-mode", "ignore"])).await;
    assert!(
        !lone_mode.status.success(),
        "a mode without keys is refused"
    );
    master.stop().await;
}

/// A master with a local worker that has run the `csv` spider (two items) once: the task's id and node.
async fn one_csv_run(data: &std::path::Path) -> (TestMaster, String, String) {
    let master = TestMaster::start(data, true).await;
    master.wait_nodes_online(1).await;
    common::create_spider(
        &master.client,
        "csv",
        "python3 main.py",
        &[(
            "main.py",
            "import json\nprint(json.dumps({'type':'INSERT_DATA','payload':[{'a':1,'b':'x, y'},{'b':'z','c':True}]}))\n",
        )],
    )
    .await;
    let run = arachne(&master, &["run", "csv", "--wait"]).await;
    assert!(run.status.success(), "{run:?}");
    let page = stdout(&arachne(&master, &["--json", "task", "list"]).await);
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let node = page["items"][0]["node"].as_str().unwrap().to_owned();
    (master, id, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_items_as_csv() {
    let data = tempfile::tempdir().unwrap();
    let (master, id, _) = one_csv_run(data.path()).await;
    let csv = arachne(&master, &["items", &id, "--format", "csv"]).await;
    assert!(csv.status.success(), "{csv:?}");
    assert_eq!(stdout(&csv), "a,b,c\r\n1,\"x, y\",\r\n,z,true\r\n");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_tasks_by_node_and_creation_time() {
    let data = tempfile::tempdir().unwrap();
    let (master, _, node) = one_csv_run(data.path()).await;
    let total = |listed: Output| {
        serde_json::from_str::<serde_json::Value>(&stdout(&listed)).unwrap()["total"].clone()
    };
    let on_node = arachne(&master, &["--json", "task", "list", "--node", &node]).await;
    assert_eq!(total(on_node), 1);
    let later = ["--json", "task", "list", "--since", "2999-01-01T00:00:00Z"];
    assert_eq!(total(arachne(&master, &later).await), 0);
    let bad = arachne(&master, &["task", "list", "--since", "yesterday"]).await;
    assert!(!bad.status.success());
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_metrics() {
    let data = tempfile::tempdir().unwrap();
    let (master, _, _) = one_csv_run(data.path()).await;
    let metrics = arachne(&master, &["metrics"]).await;
    assert!(
        stdout(&metrics).contains("arachne_tasks{status=\"finished\"} 1"),
        "{metrics:?}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_overview() {
    let data = tempfile::tempdir().unwrap();
    let (master, _, _) = one_csv_run(data.path()).await;
    let stats = stdout(&arachne(&master, &["stats", "--days", "1"]).await);
    assert!(
        stats.starts_with(
            "last 1 day: 1 runs (1 finished, 0 error, 0 cancelled, 0 abnormal), success 100.0%"
        ),
        "{stats}"
    );
    assert!(
        stats.contains("SPIDER") && stats.contains("NODE") && stats.contains("local"),
        "{stats}"
    );
    let refused = arachne(&master, &["stats", "--days", "0"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("days must be 1 to 366"));
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deletes_a_task_once() {
    let data = tempfile::tempdir().unwrap();
    let (master, id, _) = one_csv_run(data.path()).await;
    let deleted = arachne(&master, &["task", "delete", &id]).await;
    assert!(deleted.status.success(), "{deleted:?}");
    assert_eq!(stdout(&deleted).trim(), format!("deleted task {id}"));
    let again = arachne(&master, &["task", "delete", &id]).await;
    assert!(!again.status.success(), "deleting twice fails");
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("not found"), "{message}");
    master.stop().await;
}

/// A CLI never panics: not on an item nested deeper than a JSON reader goes (it prints it as stored), and not
/// when the reader of its output goes away early (`arachne ... | head`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_deep_items_and_stops_quietly_when_its_reader_leaves() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    let deep = format!(
        "{{\"type\": \"INSERT_DATA\", \"payload\": {{\"deep\": {}1{}}}}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    common::create_spider(
        &master.client,
        "deep",
        "cat item.json",
        &[("item.json", &format!("{deep}\n"))],
    )
    .await;
    let task = arachne(&master, &["run", "deep", "--wait"]).await;
    assert!(task.status.success(), "{task:?}");
    let id = stdout(&task).lines().next().unwrap().to_owned();
    let printed = arachne(&master, &["items", &id, "--format", "json"]).await;
    assert!(printed.status.success(), "{printed:?}");
    let text = stdout(&printed);
    assert!(
        text.contains(&format!("{}1{}", "[".repeat(300), "]".repeat(300))),
        "{text}"
    );

    // More tasks than a pipe holds in a listing, read one line at a time.
    for _ in 0..700 {
        master
            .client
            .run_task(&arachne_api_types::RunTask {
                spider: "deep".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut list = std::process::Command::new(workspace_bin("arachne"))
        .args(["--server", &format!("http://{}", master.http)])
        .env("ARACHNE_TOKEN", common::API_TOKEN)
        .args(["task", "list", "--limit", "1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(list.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    assert!(first.starts_with("ID"), "{first}");
    drop(reader);
    let output = tokio::task::spawn_blocking(move || list.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{output:?} {stderr}");
}

/// `run --wait` (and `/wait` under it) waits for the run's last attempt: a first attempt that fails with a
/// retry left is not the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_waits_for_the_last_attempt() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    let marks = common::shared_dir();
    let mark = marks.path().join("failed-once");
    let script = format!(
        "if [ -e {mark} ]; then echo second; else touch {mark}; echo first; exit 3; fi\n",
        mark = mark.display()
    );
    common::create_spider(
        &master.client,
        "flaky",
        "sh main.sh",
        &[("main.sh", &script)],
    )
    .await;
    let waited = arachne(&master, &["run", "flaky", "--retries", "1", "--wait"]).await;
    assert!(waited.status.success(), "{waited:?}");
    let first: arachne_shared::TaskId = stdout(&waited).lines().next().unwrap().parse().unwrap();
    let last = master.client.wait_task(first, 5).await.unwrap();
    assert_eq!(
        last.status,
        arachne_shared::TaskStatus::Finished,
        "{last:#?}"
    );
    assert_eq!((last.attempt, last.first_attempt), (2, Some(first)));
    let failed = master.client.get_task(first).await.unwrap();
    assert_eq!(failed.status, arachne_shared::TaskStatus::Error);
    assert_eq!(failed.retried_by, Some(last.id));
}

/// A Scrapy project folder (no Arachne code), made into a spider and run by naming its Scrapy spider.
const SCRAPY_SPIDER: &str = r#"
import scrapy

class QuotesSpider(scrapy.Spider):
    name = "quotes"
    start_urls = ["data:text/html,<p class='q'>one</p><p class='q'>two</p>"]

    def parse(self, response):
        for text in response.css("p.q::text").getall():
            yield {"text": text, "tag": getattr(self, "tag", None), "bot": self.settings.get("BOT_NAME")}

class OtherSpider(scrapy.Spider):
    name = "other"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrapy_project_lists_its_spiders_and_runs_one_by_name() {
    let python = common::venv_python(&["crawlab-sdk==0.7.0", "scrapy==2.19.0"]);
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let project = common::spider_dir(&[
        ("scrapy.cfg", "[settings]\ndefault = quotes.settings\n"),
        ("quotes/__init__.py", ""),
        (
            "quotes/settings.py",
            "BOT_NAME = 'quotes'\nSPIDER_MODULES = ['quotes.spiders']\n",
        ),
        ("quotes/spiders/__init__.py", ""),
        ("quotes/spiders/quotes.py", SCRAPY_SPIDER),
    ]);
    let dir = project.path().to_str().unwrap();
    let cmd = format!("{} -m scrapy", python.display());
    let created = arachne(
        &master,
        &["spider", "create", "project", "--cmd", &cmd, "--dir", dir],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    assert!(
        stdout(&created).starts_with("scrapy spiders: other, quotes\n"),
        "{}",
        stdout(&created)
    );

    let run = arachne(
        &master,
        &[
            "run",
            "project",
            "--spider",
            "quotes",
            "-a",
            "tag=it's",
            "-s",
            "BOT_NAME=cli",
            "--wait",
        ],
    )
    .await;
    assert!(run.status.success(), "{run:?}");
    let id = stdout(&run).lines().next().unwrap().to_owned();
    let items = stdout(&arachne(&master, &["items", &id]).await);
    let items: Vec<serde_json::Value> = items
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        items
            .iter()
            .all(|i| i["tag"] == "it's" && i["bot"] == "cli"),
        "{items:?}"
    );

    // The default command of a Scrapy folder, and what --spider refuses.
    let defaulted = arachne(&master, &["spider", "create", "bare", "--dir", dir]).await;
    assert!(defaulted.status.success(), "{defaulted:?}");
    let bare = master.client.get_spider("bare").await.unwrap();
    assert_eq!(bare.cmd, "scrapy");
    let plain = common::spider_dir(&[("main.py", "print(1)")]);
    let plain_dir = plain.path().to_str().unwrap();
    let no_cmd = arachne(&master, &["spider", "create", "plain", "--dir", plain_dir]).await;
    assert!(!no_cmd.status.success());
    assert!(
        String::from_utf8_lossy(&no_cmd.stderr).contains("--cmd is required"),
        "{no_cmd:?}"
    );
    let made = arachne(
        &master,
        &[
            "spider",
            "create",
            "plain",
            "--cmd",
            "python3 main.py",
            "--dir",
            plain_dir,
        ],
    )
    .await;
    assert!(made.status.success(), "{made:?}");
    let refused = arachne(&master, &["run", "plain", "--spider", "quotes"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--spider is for a Scrapy project"),
        "{refused:?}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deletes_versions_and_spiders_and_says_why_when_it_cannot() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    common::create_spider(&master.client, "old", "true", &[("a.txt", "1")]).await;
    let first = master.client.get_spider("old").await.unwrap().version;
    let dir = common::spider_dir(&[("a.txt", "2")]);
    let upload = arachne(
        &master,
        &["spider", "upload", "old", dir.path().to_str().unwrap()],
    )
    .await;
    assert!(upload.status.success(), "{upload:?}");
    let current = master.client.get_spider("old").await.unwrap().version;

    let refused = arachne(
        &master,
        &["spider", "delete-version", "old", &current[..12]],
    )
    .await;
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("current version"), "{message}");

    let deleted = arachne(&master, &["spider", "delete-version", "old", &first[..12]]).await;
    assert!(deleted.status.success(), "{deleted:?}");
    assert_eq!(
        stdout(&deleted).trim(),
        format!("deleted version {} of spider old", &first[..12])
    );

    let gone = arachne(&master, &["spider", "delete", "old", "--tasks"]).await;
    assert!(gone.status.success(), "{gone:?}");
    assert_eq!(
        stdout(&gone).trim(),
        "deleted spider old: 1 versions, 0 schedules, 0 tasks"
    );
    let again = arachne(&master, &["spider", "delete", "old"]).await;
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not found"),
        "{again:?}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pages_a_task_s_items() {
    let data = tempfile::tempdir().unwrap();
    let (master, id, _) = one_csv_run(data.path()).await;
    // Read as JSON: the stores keep an item's text differently (as sent, or re-encoded from BSON).
    let items = |output: Output| -> Vec<serde_json::Value> {
        assert!(output.status.success(), "{output:?}");
        stdout(&output)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let second = items(arachne(&master, &["items", &id, "--after", "1"]).await);
    assert_eq!(second, [serde_json::json!({"b": "z", "c": true})]);
    let first = items(arachne(&master, &["items", &id, "--limit", "1"]).await);
    assert_eq!(first, [serde_json::json!({"a": 1, "b": "x, y"})]);
    let csv = arachne(&master, &["items", &id, "--format", "csv", "--limit", "1"]).await;
    assert!(!csv.status.success());
    assert!(String::from_utf8_lossy(&csv.stderr).contains("CSV export is every item"));
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_searches_a_spider_s_items_across_its_runs() {
    let data = tempfile::tempdir().unwrap();
    let (master, first, _) = one_csv_run(data.path()).await;
    let again = arachne(&master, &["run", "csv", "--wait"]).await;
    assert!(again.status.success(), "{again:?}");
    let lines = |output: Output| -> Vec<serde_json::Value> {
        assert!(output.status.success(), "{output:?}");
        stdout(&output)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    // Newest first: the second run's items (last first), then the first run's.
    let all = lines(arachne(&master, &["items", "--spider", "csv"]).await);
    let (x, z) = (
        serde_json::json!({"a": 1, "b": "x, y"}),
        serde_json::json!({"b": "z", "c": true}),
    );
    assert_eq!(all, [z.clone(), x.clone(), z.clone(), x.clone()]);
    let of_first = arachne(
        &master,
        &[
            "items", "--spider", "csv", "--task", &first, "--where", "b~, ",
        ],
    )
    .await;
    assert_eq!(lines(of_first), [x]);
    let both = arachne(
        &master,
        &[
            "items", "--spider", "csv", "--where", "c=true", "--where", "b=z",
        ],
    )
    .await;
    assert_eq!(lines(both), [z.clone(), z.clone()]);
    // The spider's results collection reads the same, through the collection's route.
    let collection = arachne(
        &master,
        &["items", "--collection", "results_csv", "--where", "c=true"],
    )
    .await;
    assert_eq!(lines(collection), [z.clone(), z]);
    let csv = arachne(
        &master,
        &[
            "items", "--spider", "csv", "--format", "csv", "--limit", "1",
        ],
    )
    .await;
    assert!(csv.status.success(), "{csv:?}");
    assert_eq!(stdout(&csv), "b,c\r\nz,true\r\n");
    let bad = arachne(&master, &["items", "--spider", "csv", "--where", "$x=1"]).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("may not start with $"),
        "{bad:?}"
    );
    let mixed = arachne(&master, &["items", &first, "--spider", "csv"]).await;
    assert!(!mixed.status.success(), "{mixed:?}");
    master.stop().await;
}

/// A run on every node has no log of its own: --follow prints its children's, each line under its node, and
/// exits by the parent's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follow_of_a_run_on_every_node_prints_each_child_s_log_by_node() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let worker = common::TestWorker::start(&master.grpc_url(), "w2", 1);
    master.wait_nodes_online(2).await;
    common::create_spider(
        &master.client,
        "hello",
        "sh main.sh",
        &[("main.sh", "echo hello\necho bye\n")],
    )
    .await;
    let run = arachne(&master, &["run", "hello", "--mode", "all", "--follow"]).await;
    assert!(run.status.success(), "{run:?}");
    let printed = stdout(&run);
    let mut lines: Vec<&str> = printed.lines().skip(1).collect();
    lines.sort();
    assert_eq!(
        lines,
        ["[local] bye", "[local] hello", "[w2] bye", "[w2] hello"],
        "{printed}"
    );
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("finished"),
        "{run:?}"
    );
    worker.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_greps_a_task_s_log_on_the_server() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    master.wait_nodes_online(1).await;
    let script = "for w in alpha beta ALPHA-2 gamma; do echo $w; done";
    common::create_spider(
        &master.client,
        "words",
        "sh main.sh",
        &[("main.sh", script)],
    )
    .await;
    let run = arachne(&master, &["run", "words", "--wait"]).await;
    assert!(run.status.success(), "{run:?}");
    let page = stdout(&arachne(&master, &["--json", "task", "list"]).await);
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let found = arachne(&master, &["logs", &id, "--grep", "alpha"]).await;
    assert!(found.status.success(), "{found:?}");
    assert_eq!(stdout(&found), "alpha\nALPHA-2\n");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_checks_a_cron_expression_on_the_zone_s_clock() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let checked = arachne(
        &master,
        &["schedule", "check", "30 2 * * *", "--tz", "Europe/Berlin"],
    )
    .await;
    assert!(checked.status.success(), "{checked:?}");
    assert_eq!(
        stdout(&checked).matches(" 02:30:00 CE").count(),
        5,
        "{checked:?}"
    );
    let bad = arachne(&master, &["schedule", "check", "0 25 * * *"]).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("hour must be 0-23"),
        "{bad:?}"
    );
    master.stop().await;
}

/// A webhook receiver that answers 204 to everything and keeps each request's head and body.
async fn hook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let kept = std::sync::Arc::clone(&kept);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as many body bytes as it announces.
                loop {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            kept.lock().unwrap().push(text);
                            break;
                        }
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_a_notification_tests_it_and_lists_its_deliveries() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let (url, requests) = hook_receiver().await;
    let cli = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(workspace_bin("arachne"));
        command
            .args(["--server", &format!("http://{}", master.http)])
            .env("ARACHNE_TOKEN", common::API_TOKEN)
            .env("HOOK_SECRET", "from-the-environment")
            .args(args);
        async move {
            tokio::time::timeout(common::TIMEOUT, command.output())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let args = |line: &str| {
        line.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let set = cli(args(&format!("notification set ops --webhook {url} --secret-env HOOK_SECRET --on error,node_offline --longer-than 30"))).await;
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let listed = stdout(&cli(args("notification list")).await);
    assert!(
        listed.contains("ops") && listed.contains("error,node_offline,longer_than 30m"),
        "{listed}"
    );
    // Set again without the secret: the rule changes, the secret stays.
    let again = cli(args(&format!(
        "notification set ops --webhook {url} --on error"
    )))
    .await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&cli(args("--json notification show ops")).await)).unwrap();
    assert_eq!(shown["channel"]["secret"], "********");
    assert_eq!(shown["triggers"], serde_json::json!(["error"]));

    let tested = cli(args("notification test ops")).await;
    assert!(
        tested.status.success(),
        "{}{}",
        stdout(&tested),
        String::from_utf8_lossy(&tested.stderr)
    );
    assert!(stdout(&tested).contains("delivered"), "{}", stdout(&tested));
    let got = requests.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0]
            .to_ascii_lowercase()
            .contains("x-arachne-signature: sha256="),
        "signed with the kept secret: {}",
        got[0]
    );
    let deliveries = stdout(&cli(args("notification deliveries --notification ops")).await);
    assert!(
        deliveries.contains("test") && deliveries.contains("204"),
        "{deliveries}"
    );

    // A secret on the command line itself is not an option; a missing variable is named.
    let missing = cli(args(&format!(
        "notification set other --webhook {url} --secret-env NOT_SET_ANYWHERE --on error"
    )))
    .await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_SET_ANYWHERE is not set"));
    let deleted = cli(args("notification delete ops")).await;
    assert!(deleted.status.success());
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_users_and_tokens_and_reads_the_audit_log() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let run = |token: String, line: String| {
        let mut command = tokio::process::Command::new(workspace_bin("arachne"));
        command
            .args(["--server", &format!("http://{}", master.http)])
            .env("ARACHNE_TOKEN", token)
            .env("ADA_PASSWORD", "ada-has-a-long-password")
            .args(line.split_whitespace());
        async move {
            tokio::time::timeout(common::TIMEOUT, command.output())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let admin = |line: &str| run(common::API_TOKEN.to_owned(), line.to_owned());
    let made = admin("user create ada --role developer --password-env ADA_PASSWORD").await;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(stdout(&admin("user list").await).contains("developer"));
    let token = admin("token create ada-ci --role developer --user ada --expires-in-days 7").await;
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let secret = stdout(&token).trim().to_owned();
    assert!(secret.starts_with("arachne_api_"), "{secret}");
    let whoami = stdout(&run(secret.clone(), "whoami".into()).await);
    assert!(
        whoami.starts_with("ada (developer, token ada-ci)"),
        "{whoami}"
    );
    // A developer is refused what only admins do, with the reason.
    let refused = run(secret.clone(), "token list".into()).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("needs the admin role; ada has developer")
    );
    let listed = stdout(&admin("token list").await);
    assert!(
        listed.contains("ada-ci") && listed.contains("ada") && !listed.contains(&secret),
        "{listed}"
    );
    assert!(admin("token revoke ada-ci").await.status.success());
    assert!(!run(secret, "whoami".into()).await.status.success());
    let audit = stdout(&admin("audit --actor token:configured-api").await);
    assert!(
        audit.contains("POST /api/v1/users") && audit.contains("DELETE /api/v1/tokens/{name}"),
        "{audit}"
    );
    master.stop().await;
}
