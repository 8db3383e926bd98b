//! Dependencies of a version, installed by a real worker with the real tools (`python3 -m venv` and pip,
//! npm), from packages inside the spider so no test needs the network: installed before the first run into an
//! environment private to the version, reused by later runs, their output in the task's log, and a failed
//! install failing its task with that output.

use arachne_test_support as common;

use std::io::Write;
use std::path::Path;

use arachne_api_types::{RunTask, Task};
use arachne_client::Client;
use arachne_shared::TaskStatus;
use common::{TestMaster, all_logs, spider_dir, wait_done};

/// Uploads a spider from text files plus binary ones.
async fn upload(
    client: &Client,
    name: &str,
    cmd: &str,
    text: &[(&str, &str)],
    binary: &[(&str, Vec<u8>)],
) {
    let dir = spider_dir(text);
    for (path, bytes) in binary {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    common::put_spider(client, name, cmd).await.unwrap();
    let archive = arachne_shared::archive::pack_dir(dir.path()).unwrap();
    client.upload_files(name, archive).await.unwrap();
}

async fn run(client: &Client, spider: &str) -> (Task, Vec<String>) {
    let task = client
        .run_task(&RunTask {
            spider: spider.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_done(client, task.id).await;
    let logs = all_logs(client, task.id).await;
    (done, logs.into_iter().map(|l| l.text).collect())
}

fn has(logs: &[String], needle: &str) -> bool {
    logs.iter().any(|l| l.contains(needle))
}

/// A pure-Python wheel of package `name` whose `VALUE` is `value`.
fn wheel(name: &str, value: u32) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    let dist = format!("{name}-1.0.dist-info");
    let files = [
        (format!("{name}/__init__.py"), format!("VALUE = {value}\n")),
        (
            format!("{dist}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"),
        ),
        (
            format!("{dist}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: arachne-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n".into(),
        ),
        (format!("{dist}/RECORD"), String::new()),
    ];
    for (path, content) in files {
        zip.start_file(path, options).unwrap();
        zip.write_all(content.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// An npm package tarball (`package/…`) whose main module exports `value`.
fn npm_tarball(name: &str, value: u32) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let files = [
        (
            "package/package.json",
            format!(r#"{{"name":"{name}","version":"1.0.0","main":"index.js"}}"#),
        ),
        (
            "package/index.js",
            format!("module.exports = {{ value: {value} }};\n"),
        ),
    ];
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn envs(work_dir: &Path) -> usize {
    std::fs::read_dir(work_dir.join("envs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn requirements_install_once_per_version_into_a_private_venv() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let main = "import sys, mypkg\nprint('value', mypkg.VALUE)\nprint('prefix', sys.prefix)\n";
    let requirements = "--no-index\n--find-links wheels\nmypkg\n";
    let wheel_path = "wheels/mypkg-1.0-py3-none-any.whl";
    upload(
        client,
        "py",
        "python3 main.py",
        &[("main.py", main), ("requirements.txt", requirements)],
        &[(wheel_path, wheel("mypkg", 42))],
    )
    .await;

    let (first, logs) = run(client, "py").await;
    common::assert_finished(&first, &logs);
    assert!(has(&logs, "installing requirements.txt"), "{logs:#?}");
    assert!(
        has(&logs, "Successfully installed mypkg-1.0"),
        "pip's output is in the log: {logs:#?}"
    );
    assert!(has(&logs, "value 42"), "{logs:#?}");
    let venv_prefix = logs
        .iter()
        .find(|l| l.starts_with("prefix "))
        .unwrap()
        .clone();
    assert!(
        venv_prefix.contains("/envs/"),
        "the spider ran in the version's venv: {venv_prefix}"
    );

    let (second, logs) = run(client, "py").await;
    assert_eq!(second.status, TaskStatus::Finished, "{:?}", second.error);
    assert!(
        has(
            &logs,
            "using the Python environment installed for this version"
        ),
        "{logs:#?}"
    );
    assert!(
        !has(&logs, "Successfully installed"),
        "reused, not installed again: {logs:#?}"
    );
    assert!(
        has(&logs, "value 42") && has(&logs, &venv_prefix),
        "{logs:#?}"
    );

    // A new version gets its own environment: the old one is not changed under its runs.
    upload(
        client,
        "py",
        "python3 main.py",
        &[("main.py", main), ("requirements.txt", requirements)],
        &[(wheel_path, wheel("mypkg", 43))],
    )
    .await;
    let (third, logs) = run(client, "py").await;
    assert_eq!(third.status, TaskStatus::Finished, "{:?}", third.error);
    assert!(
        has(&logs, "Successfully installed mypkg-1.0") && has(&logs, "value 43"),
        "{logs:#?}"
    );
    assert!(!has(&logs, &venv_prefix), "{logs:#?}");
    master.stop().await;
}

#[tokio::test]
async fn a_failed_install_fails_the_task_with_its_output_and_is_retried_next_run() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let requirements = "--no-index\nno-such-package-for-arachne\n";
    upload(
        client,
        "broken",
        "echo should-not-run",
        &[("requirements.txt", requirements)],
        &[],
    )
    .await;
    for _ in 0..2 {
        let (task, logs) = run(client, "broken").await;
        assert_eq!(task.status, TaskStatus::Error, "{logs:#?}");
        let error = task.error.clone().unwrap_or_default();
        assert!(
            error.contains("pip install -r requirements.txt") && error.contains("exited with code"),
            "{error}"
        );
        assert!(
            has(&logs, "no-such-package-for-arachne"),
            "pip's complaint is in the log: {logs:#?}"
        );
        assert!(!has(&logs, "should-not-run"), "{logs:#?}");
        // Not marked installed, so the next run tries again instead of using a broken environment.
        assert!(has(&logs, "installing requirements.txt"), "{logs:#?}");
    }
    master.stop().await;
}

#[tokio::test]
async fn package_json_installs_node_modules_once_per_version() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let package =
        r#"{"name":"app","version":"1.0.0","dependencies":{"dep":"file:./dep-1.0.0.tgz"}}"#;
    upload(
        client,
        "js",
        "node main.js",
        &[
            ("package.json", package),
            ("main.js", "console.log('value', require('dep').value);\n"),
        ],
        &[("dep-1.0.0.tgz", npm_tarball("dep", 7))],
    )
    .await;
    let (first, logs) = run(client, "js").await;
    common::assert_finished(&first, &logs);
    assert!(
        has(&logs, "npm install") && has(&logs, "added 1 package"),
        "{logs:#?}"
    );
    assert!(has(&logs, "value 7"), "{logs:#?}");
    let (second, logs) = run(client, "js").await;
    assert_eq!(second.status, TaskStatus::Finished, "{:?}", second.error);
    assert!(
        has(&logs, "using the node_modules installed for this version"),
        "{logs:#?}"
    );
    assert!(
        !has(&logs, "added 1 package") && has(&logs, "value 7"),
        "{logs:#?}"
    );

    assert_eq!(
        envs(&data.path().join("local-worker")),
        1,
        "one environment for the one version"
    );
    master.stop().await;
}
