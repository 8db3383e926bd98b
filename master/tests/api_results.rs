//! A spider's results across its runs (`GET /api/v1/spiders/{name}/items`): newest first, paged by cursor with
//! a total, filtered by task, time and field conditions, exported as CSV, JSON or JSON lines; and a parent
//! task showing what its children produced. Through a real master, workers and spider processes.

use arachne_test_support as common;

use arachne_api_types::{ItemSource, RunTask, SpiderItemQuery, Task};
use arachne_client::Client;
use arachne_shared::RunMode;
use common::{API_TOKEN, TestMaster, TestWorker, create_spider, run_to_end};

/// Items by batch: `python3 main.py 1` sends the first batch, `... 2` the second.
const SHOP: &str = r#"
import json, sys
batches = {
    "1": [{"title": "Red book", "price": 10, "stock": True}, {"title": "blue", "price": "10"}],
    "2": [{"title": "green", "price": 12.5, "meta": {"lang": "en"}}, {"title": "Book of red", "price": 11}],
}
print("selling", flush=True)
print(json.dumps({"type": "INSERT_DATA", "payload": batches[sys.argv[1]]}), flush=True)
"#;

/// A master whose `shop` spider ran twice: batch 1, then batch 2.
async fn shop_after_two_runs(data: &std::path::Path) -> (TestMaster, Task, Task) {
    let master = TestMaster::start(data, true).await;
    create_spider(
        &master.client,
        "shop",
        "python3 main.py",
        &[("main.py", SHOP)],
    )
    .await;
    let mut runs = Vec::new();
    for batch in ["1", "2"] {
        let run = RunTask {
            spider: "shop".into(),
            param: Some(batch.into()),
            ..Default::default()
        };
        let (task, logs) = run_to_end(&master.client, &run).await;
        common::assert_finished(&task, &logs);
        runs.push(task);
    }
    let second = runs.pop().unwrap();
    let first = runs.pop().unwrap();
    (master, first, second)
}

fn titles(items: &[arachne_shared::results::FoundItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            let value: serde_json::Value = serde_json::from_str(i.data.get()).unwrap();
            value["title"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// JSON text without the spaces Python's `json.dumps` writes (the embedded store keeps an item's text as
/// sent, MongoDB writes it anew), so a comparison still sees the fields' order. No test string holds ": "
/// or ", ".
fn compact(text: &str) -> String {
    text.replace("\": ", "\":").replace(", \"", ",\"")
}

/// The titles a raw query string finds, and the total it reports.
async fn found(master: &TestMaster, query: &str) -> (Vec<String>, u64) {
    let response = common::http()
        .get(format!(
            "http://{}/api/v1/spiders/shop/items?{query}",
            master.http
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    let page: arachne_api_types::SpiderItems = response.json().await.unwrap();
    (titles(&page.items), page.total)
}

/// The status and error message of a refused query.
async fn refused(master: &TestMaster, spider: &str, query: &str) -> (u16, String) {
    let response = common::http()
        .get(format!(
            "http://{}/api/v1/spiders/{spider}/items?{query}",
            master.http
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_s_items_page_newest_first_across_its_runs_with_a_total() {
    let data = tempfile::tempdir().unwrap();
    let (master, first, second) = shop_after_two_runs(data.path()).await;
    let client = &master.client;
    let query = SpiderItemQuery {
        limit: Some(3),
        ..Default::default()
    };
    let shop = ItemSource::Spider("shop".into());
    let page = client.spider_items(&shop, &query).await.unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(titles(&page.items), ["Book of red", "green", "blue"]);
    let tasks: Vec<_> = page.items.iter().map(|i| (i.task_id, i.seq)).collect();
    assert_eq!(tasks, [(second.id, 2), (second.id, 1), (first.id, 2)]);
    // Each item as the spider wrote it, its fields in their order.
    assert_eq!(
        compact(page.items[1].data.get()),
        r#"{"title":"green","price":12.5,"meta":{"lang":"en"}}"#
    );
    let rest = client
        .spider_items(
            &shop,
            &SpiderItemQuery {
                after: page.next.clone(),
                ..query
            },
        )
        .await
        .unwrap();
    assert_eq!(titles(&rest.items), ["Red book"]);
    assert_eq!((rest.total, rest.next), (4, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_s_items_filter_by_task_time_and_field_conditions() {
    let data = tempfile::tempdir().unwrap();
    let (master, first, _) = shop_after_two_runs(data.path()).await;
    let all = ["Book of red", "green", "blue", "Red book"].map(String::from);
    assert_eq!(found(&master, "").await, (all.to_vec(), 4));
    for (query, expected) in [
        // A number field equals the number the text spells, a string field the text.
        ("where=price%3D10", vec!["blue", "Red book"]),
        ("where=stock%3Dtrue", vec!["Red book"]),
        ("where=meta.lang%3Den", vec!["green"]),
        // Case-sensitive containment; conditions all hold.
        ("where=title~ook", vec!["Book of red", "Red book"]),
        ("where=title~ook&where=price%3D11", vec!["Book of red"]),
        ("where=meta", vec!["green"]),
        (&format!("task={}", first.id), vec!["blue", "Red book"]),
        ("since=2999-01-01T00:00:00Z", vec![]),
        ("until=2000-01-01T00:00:00Z", vec![]),
        (
            "since=2000-01-01T00:00:00Z&where=price%3D12.5",
            vec!["green"],
        ),
    ] {
        let expected: Vec<String> = expected.into_iter().map(String::from).collect();
        let count = expected.len() as u64;
        assert_eq!(found(&master, query).await, (expected, count), "{query}");
    }

    // A bad query names its problem; an unknown spider is not found.
    for (spider, query, status, says) in [
        ("shop", "where=%24where%3D1", 400, "may not start with $"),
        ("shop", "where=_tid%3D1", 400, "the store's own field"),
        ("shop", "after=nope", 400, "cursor"),
        ("shop", "limit=0", 400, "limit"),
        (
            "shop",
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            400,
            "time range is empty",
        ),
        ("shop", "colour=red", 400, "colour"),
        ("nope", "", 404, "nope"),
    ] {
        let (got, message) = refused(&master, spider, query).await;
        assert_eq!(got, status, "{query}: {message}");
        assert!(message.contains(says), "{query}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_s_filtered_items_export_as_csv_json_and_json_lines() {
    let data = tempfile::tempdir().unwrap();
    let (master, _, _) = shop_after_two_runs(data.path()).await;
    let export = |format: &'static str| {
        let url = format!(
            "http://{}/api/v1/spiders/shop/items?format={format}&where=title~ook",
            master.http
        );
        async move {
            let response = common::http()
                .get(url)
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{format}");
            let disposition = response.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                disposition.contains(&format!("shop-items.{format}")),
                "{disposition}"
            );
            response.text().await.unwrap()
        }
    };
    assert_eq!(
        export("csv").await,
        "title,price,stock\r\nBook of red,11,\r\nRed book,10,true\r\n"
    );
    assert_eq!(
        compact(&export("jsonl").await),
        "{\"title\":\"Book of red\",\"price\":11}\n{\"title\":\"Red book\",\"price\":10,\"stock\":true}\n"
    );
    let json: serde_json::Value = serde_json::from_str(&export("json").await).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"title": "Book of red", "price": 11},
            {"title": "Red book", "price": 10, "stock": true},
        ])
    );

    // The client streams the same file; a limit caps it.
    let mut csv = Vec::new();
    let query = SpiderItemQuery {
        format: Some(arachne_api_types::ItemFormat::Csv),
        limit: Some(1),
        ..Default::default()
    };
    master
        .client
        .export_items(
            &arachne_api_types::ItemSource::Spider("shop".into()),
            &query,
            |chunk| {
                csv.extend_from_slice(chunk);
                true
            },
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "title,price\r\nBook of red,11\r\n"
    );
}

/// A parent never runs itself: it shows what its children produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_shows_the_sums_of_its_children_s_items_and_log_lines() {
    let data = tempfile::tempdir().unwrap();
    let (master, _, _) = shop_after_two_runs(data.path()).await;
    let worker = TestWorker::start(&master.grpc_url(), "w2", 2);
    master.wait_nodes_online(2).await;
    let client: &Client = &master.client;
    let run = RunTask {
        spider: "shop".into(),
        param: Some("1".into()),
        mode: Some(RunMode::All),
        ..Default::default()
    };
    let (parent, _) = run_to_end(client, &run).await;
    let children = client.task_tree(parent.id).await.unwrap().children_tasks;
    assert_eq!(children.len(), 2);
    let parent = client.get_task(parent.id).await.unwrap();
    assert_eq!(
        (parent.items, parent.log_lines),
        (
            children.iter().map(|c| c.items).sum(),
            children.iter().map(|c| c.log_lines).sum()
        )
    );
    assert_eq!(parent.items, 4, "{children:#?}");
    let listed = client
        .list_tasks(&arachne_api_types::TaskQuery {
            spider: Some("shop".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = listed.items.iter().find(|t| t.id == parent.id).unwrap();
    assert_eq!(listed.items, 4);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_collection_s_items_come_from_every_spider_that_stores_there() {
    let data = tempfile::tempdir().unwrap();
    let (master, _, _) = shop_after_two_runs(data.path()).await;
    // A second spider writes into the first one's collection.
    create_spider(
        &master.client,
        "outlet",
        "python3 main.py",
        &[("main.py", SHOP)],
    )
    .await;
    let outlet = arachne_api_types::CreateSpider {
        name: "outlet".into(),
        cmd: "python3 main.py".into(),
        results_collection: Some("results_shop".into()),
        ..Default::default()
    };
    master.client.put_spider(&outlet).await.unwrap();
    let run = RunTask {
        spider: "outlet".into(),
        param: Some("1".into()),
        ..Default::default()
    };
    let (task, logs) = run_to_end(&master.client, &run).await;
    common::assert_finished(&task, &logs);

    let collection = ItemSource::Collection("results_shop".into());
    let page = |after: Option<String>| {
        let query = SpiderItemQuery {
            limit: Some(3),
            after,
            ..Default::default()
        };
        let (client, collection) = (&master.client, &collection);
        async move { client.spider_items(collection, &query).await.unwrap() }
    };
    // Newest task first across both spiders, each task's last item first, one cursor for all.
    let first = page(None).await;
    assert_eq!(
        (titles(&first.items), first.total),
        (
            vec!["blue".to_owned(), "Red book".into(), "Book of red".into()],
            6
        )
    );
    let second = page(first.next).await;
    assert_eq!(titles(&second.items), ["green", "blue", "Red book"]);
    let jsonl = SpiderItemQuery {
        format: Some(arachne_api_types::ItemFormat::Jsonl),
        ..Default::default()
    };
    let mut all = Vec::new();
    master
        .client
        .export_items(&collection, &jsonl, |chunk| {
            all.extend_from_slice(chunk);
            true
        })
        .await
        .unwrap();
    let all = String::from_utf8(all).unwrap();
    assert_eq!(all.lines().count(), 6, "{all}");
    let nowhere = ItemSource::Collection("nowhere".into());
    let (status, message) = common::refusal(
        master
            .client
            .spider_items(&nowhere, &SpiderItemQuery::default())
            .await,
    );
    assert_eq!(status, 404);
    assert!(
        message.contains("no spider stores its items in results collection"),
        "{message}"
    );
    master.stop().await;
}
