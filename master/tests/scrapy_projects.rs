//! A plain Scrapy project (no crawlab-sdk, no Arachne code) stores its items and shows Scrapy's own numbers:
//! the runner adds a feed to a `scrapy crawl` and reads it, and reads Scrapy's log for its stats. Scrapy comes
//! from PyPI into a venv kept between runs.

use arachne_test_support as common;

use arachne_api_types::{ItemQuery, RunTask};
use common::{TestMaster, create_spider};

/// The same set as the Crawlab test's, so both use one venv.
const PACKAGES: [&str; 2] = ["crawlab-sdk==0.7.0", "scrapy==2.19.0"];

const SETTINGS: &str = "BOT_NAME = 'quotes'\nSPIDER_MODULES = ['quotes.spiders']\nROBOTSTXT_OBEY = False\n\
                        LOG_LEVEL = 'INFO'\n";

/// Two pages (a data: URL keeps the crawl off the network, still through Scrapy's downloader), five items.
const SPIDER: &str = r#"
import scrapy

class QuotesSpider(scrapy.Spider):
    name = "quotes"
    start_urls = [
        "data:text/html,<p class='q'>one</p><p class='q'>two</p><p class='q'>three</p>",
        "data:text/html,<p class='q'>four</p><p class='q'>five</p>",
    ]

    def parse(self, response):
        for text in response.css("p.q::text").getall():
            yield {"text": text, "tag": getattr(self, "tag", None)}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_scrapy_project_stores_its_items_and_scrapy_s_own_stats() {
    let python = common::venv_python(&PACKAGES);
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let files = [
        ("scrapy.cfg", "[settings]\ndefault = quotes.settings\n"),
        ("quotes/__init__.py", ""),
        ("quotes/settings.py", SETTINGS),
        ("quotes/spiders/__init__.py", ""),
        ("quotes/spiders/quotes.py", SPIDER),
    ];
    let cmd = format!("{} -m scrapy crawl quotes", python.display());
    create_spider(client, "plain-scrapy", &cmd, &files).await;
    let run = RunTask {
        spider: "plain-scrapy".into(),
        param: Some("-a tag=life".into()),
        ..Default::default()
    };
    let (task, logs) = common::run_to_end(client, &run).await;
    common::assert_finished(&task, &logs);

    let items = client.items(task.id, &ItemQuery::default()).await.unwrap();
    let mut texts: Vec<String> = items
        .iter()
        .map(|i| i.value()["text"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts, ["five", "four", "one", "three", "two"], "{logs:#?}");
    assert!(items.iter().all(|i| i.value()["tag"] == "life"));
    assert_eq!(task.items, 5);

    // The task's stats are Scrapy's own dump, read from its log.
    let dumped = |key: &str| -> u64 {
        let prefix = format!("'{key}': ");
        logs.iter()
            .find_map(|l| {
                let at = l.text.find(&prefix)?;
                l.text[at + prefix.len()..]
                    .trim_end_matches([',', '}'])
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{key} in Scrapy's dump: {logs:#?}"))
    };
    let progress = task.progress.as_ref().expect("progress from Scrapy's log");
    let stats = progress.status.stats.as_ref().unwrap();
    assert_eq!(stats["item_scraped_count"], dumped("item_scraped_count"));
    assert_eq!(stats["item_scraped_count"], 5);
    assert_eq!(
        stats["response_received_count"],
        dumped("response_received_count")
    );
    assert_eq!(stats["pages"], 2);
    assert_eq!(stats["finish_reason"], "finished");
    assert_eq!(progress.status.progress, Some(1.0));
    master.stop().await;
}
