//! Secret environment values of spiders and runs: masked in every answer of the API, kept when a client sends
//! the mask back, and given to the spider process as set. Through a real master and spider.

use arachne_test_support as common;

use arachne_api_types::{CreateSpider, RunTask};
use arachne_shared::spider::{RunSettings, SECRET_MASK};
use common::{TestMaster, create_spider, run_to_end};

fn env(pairs: &[(&str, &str)]) -> RunSettings {
    RunSettings {
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..RunSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_are_masked_in_answers_kept_when_sent_back_and_given_to_the_spider() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    create_spider(
        client,
        "keyed",
        "sh main.sh",
        &[("main.sh", "echo \"key=$API_KEY greeting=$GREETING\"\n")],
    )
    .await;
    let put = |settings: RunSettings| CreateSpider {
        name: "keyed".into(),
        cmd: "sh main.sh".into(),
        settings: Some(settings),
        ..Default::default()
    };
    let answer = client
        .put_spider(&put(env(&[("API_KEY", "k-123"), ("GREETING", "hi")])))
        .await
        .unwrap();
    assert_eq!(answer.settings.env["API_KEY"], SECRET_MASK);
    assert_eq!(answer.settings.env["GREETING"], "hi");
    let shown = client.get_spider("keyed").await.unwrap();
    assert_eq!(shown.settings.env["API_KEY"], SECRET_MASK);

    // The settings as shown, one plain value edited, sent back: the secret stays as it was.
    let mut edited = shown.settings.clone();
    edited.env.insert("GREETING".into(), "hello".into());
    client.put_spider(&put(edited)).await.unwrap();
    let run = RunTask {
        spider: "keyed".into(),
        ..Default::default()
    };
    let (task, logs) = run_to_end(client, &run).await;
    common::assert_finished(&task, &logs);
    assert_eq!(logs[0].text, "key=k-123 greeting=hello");
    assert_eq!(
        task.settings.env["API_KEY"], SECRET_MASK,
        "a task's settings are masked too"
    );

    // A run may override a secret; its answer masks the override as well.
    let run = RunTask {
        settings: Some(env(&[("API_KEY", "k-run")])),
        ..run
    };
    let (task, logs) = run_to_end(client, &run).await;
    assert_eq!(logs[0].text, "key=k-run greeting=hello");
    assert_eq!(task.settings.env["API_KEY"], SECRET_MASK);

    // The mask of a secret nobody stored stands for nothing: refused, naming it.
    let err = client
        .put_spider(&put(env(&[("NEW_TOKEN", SECRET_MASK)])))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NEW_TOKEN"), "{err}");
    master.stop().await;
}
