//! Spiders written for Crawlab run unchanged: the real crawlab-sdk package, and a Scrapy project using its
//! `CrawlabPipeline` (both installed from PyPI into a venv cached under `target/`), save items through
//! Arachne's runner.

use arachne_test_support as common;

use std::path::PathBuf;

use arachne_api_types::{ItemQuery, LogQuery, RunTask};
use arachne_shared::{LogStream, TaskStatus};
use common::{TestMaster, create_spider, wait_done};

const PACKAGES: [&str; 2] = ["crawlab-sdk==0.7.0", "scrapy==2.19.0"];

fn crawlab_python() -> PathBuf {
    common::venv_python(&PACKAGES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_using_crawlab_save_item_runs_unchanged() {
    let python = crawlab_python();
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
            ..Default::default()
        })
        .await;
    let task = wait_done(client, task.unwrap().id).await;
    assert_eq!(task.status, TaskStatus::Finished, "{:?}", task.error);
    let items = client.items(task.id, &ItemQuery::default()).await.unwrap();
    let titles: Vec<_> = items
        .iter()
        .map(|i| i.value()["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(titles, ["first", "second", "third"]);
    assert_eq!(items[2].value()["tags"], serde_json::json!(["a", "b"]));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrapy_project_with_crawlab_pipeline_runs_unchanged() {
    let python = crawlab_python();
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let settings = "BOT_NAME = 'quotes'\nSPIDER_MODULES = ['quotes.spiders']\nROBOTSTXT_OBEY = False\n\
                    ITEM_PIPELINES = {'crawlab.CrawlabPipeline': 300}\nLOG_LEVEL = 'INFO'\n";
    // A data: URL keeps the crawl off the network while still going through Scrapy's downloader.
    let spider = r#"
import scrapy

class QuotesSpider(scrapy.Spider):
    name = "quotes"
    start_urls = ["data:text/html,<p class='q'>one</p><p class='q'>two</p><p class='q'>three</p>"]

    def parse(self, response):
        for text in response.css("p.q::text").getall():
            yield {"text": text}
"#;
    let files = [
        ("scrapy.cfg", "[settings]\ndefault = quotes.settings\n"),
        ("quotes/__init__.py", ""),
        ("quotes/settings.py", settings),
        ("quotes/spiders/__init__.py", ""),
        ("quotes/spiders/quotes.py", spider),
    ];
    let cmd = format!("{} -m scrapy crawl quotes", python.display());
    create_spider(client, "scrapy-quotes", &cmd, &files).await;
    let run = RunTask {
        spider: "scrapy-quotes".into(),
        param: None,
        priority: None,
        settings: None,
        ..Default::default()
    };
    let (task, logs) = common::run_to_end(client, &run).await;
    common::assert_finished(&task, &logs);
    let items = client.items(task.id, &ItemQuery::default()).await.unwrap();
    let texts: Vec<_> = items
        .iter()
        .map(|i| i.value()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    assert!(
        logs.iter()
            .any(|l| l.stream == LogStream::Stderr && l.text.contains("Spider closed (finished)")),
        "{logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.text.contains("\"ipc\"")),
        "IPC lines are not log lines"
    );
    master.stop().await;
}
