//! Spider files end to end: versions uploaded, listed, run and made current; a worker syncing only the
//! contents it lacks; executable bits and clean working directories; a sync that fails failing its task.

use arachne_test_support as common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use arachne_api_types::{CreateSpider, FolderStatus, RunTask};
use arachne_client::Client;
use arachne_shared::RunMode;
use arachne_shared::TaskStatus;
use arachne_shared::spider::DedupMode;
use common::{TestMaster, TestWorker, all_logs, spider_dir, wait_done};

/// Contents in a worker's (or master's) blob store.
fn blobs(root: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(root.join("blobs")) else {
        return 0;
    };
    shards
        .map(|s| std::fs::read_dir(s.unwrap().path()).unwrap().count())
        .sum()
}

/// Writes `text` at `path` under `root`, making the folders it needs.
fn write_file(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Runs the spider (on `node` if given), expects it to finish, and returns its log.
async fn run_on(
    client: &Client,
    spider: &str,
    node: Option<&str>,
    version: Option<String>,
) -> Vec<String> {
    let task = client
        .run_task(&RunTask {
            spider: spider.into(),
            mode: node.map(|_| RunMode::Nodes),
            nodes: node.into_iter().map(str::to_owned).collect(),
            version,
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_done(client, task.id).await;
    assert_eq!(done.status, TaskStatus::Finished, "{:?}", done.error);
    all_logs(client, task.id)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect()
}

const RUN_SH: &str = "#!/bin/sh
cat VERSION
if [ -e leak.txt ]; then echo leaked; else echo clean; fi
echo written > leak.txt
";

#[tokio::test]
async fn a_changed_file_is_all_a_worker_fetches_and_every_version_stays_runnable() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    let client = &master.client;

    // 300 files, an executable run.sh, and what the upload leaves out.
    let mut files: Vec<(String, String)> = (0..300)
        .map(|i| (format!("pkg/m{i:03}.py"), format!("value = {i}\n")))
        .collect();
    files.push(("VERSION".into(), "v1\n".into()));
    files.push(("run.sh".into(), RUN_SH.into()));
    files.push((".arachneignore".into(), "*.log\n".into()));
    files.push(("debug.log".into(), "left out".into()));
    files.push((".git/HEAD".into(), "left out".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let dir = spider_dir(&refs);
    let run_sh = dir.path().join("run.sh");
    std::fs::set_permissions(&run_sh, std::fs::Permissions::from_mode(0o755)).unwrap();
    client
        .put_spider(&CreateSpider {
            name: "many".into(),
            cmd: "./run.sh".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let v1 = client
        .upload_files(
            "many",
            arachne_shared::archive::pack_dir(dir.path()).unwrap(),
        )
        .await
        .unwrap()
        .spider;
    assert_eq!(
        v1.file_count, 303,
        "300 modules, VERSION, run.sh, .arachneignore"
    );

    // The executable bit survives upload and sync: the command runs run.sh directly.
    assert_eq!(
        run_on(client, "many", Some("w1"), None).await,
        ["v1", "clean"]
    );
    let cached = blobs(&worker.work_dir().join("cache"));
    // A second run gets a clean directory: what the first one wrote is gone.
    assert_eq!(
        run_on(client, "many", Some("w1"), None).await,
        ["v1", "clean"]
    );

    // One file changed: one new content on the worker, nothing else fetched.
    std::fs::write(dir.path().join("VERSION"), "v2\n").unwrap();
    let v2 = client
        .upload_files(
            "many",
            arachne_shared::archive::pack_dir(dir.path()).unwrap(),
        )
        .await
        .unwrap()
        .spider;
    assert_ne!(v2.version, v1.version);
    assert_eq!(
        run_on(client, "many", Some("w1"), None).await,
        ["v2", "clean"]
    );
    assert_eq!(blobs(&worker.work_dir().join("cache")), cached + 1);

    // Both versions are listed; the older one still runs by name and can be made current again.
    let versions = client.list_versions("many").await.unwrap();
    let listed: Vec<(&str, bool)> = versions
        .iter()
        .map(|v| (v.hash.as_str(), v.current))
        .collect();
    assert_eq!(
        listed,
        [(v2.version.as_str(), true), (v1.version.as_str(), false)]
    );
    assert_eq!(
        run_on(client, "many", Some("w1"), Some(v1.version.clone())).await,
        ["v1", "clean"]
    );
    let back = client
        .set_current_version("many", &v1.version)
        .await
        .unwrap();
    assert_eq!(
        (back.version.as_str(), back.file_count),
        (v1.version.as_str(), 303)
    );
    assert_eq!(
        run_on(client, "many", Some("w1"), None).await,
        ["v1", "clean"]
    );

    // Files of any version can be listed and read.
    let listing = client.list_files("many", Some(&v2.version)).await.unwrap();
    assert_eq!(listing.files.len(), 303);
    let entry = listing.files.iter().find(|f| f.path == "run.sh").unwrap();
    assert_eq!(entry.mode & 0o777, 0o755);
    assert!(
        !listing
            .files
            .iter()
            .any(|f| f.path.ends_with(".log") || f.path.starts_with(".git"))
    );
    assert_eq!(
        client
            .read_file("many", "VERSION", Some(&v2.version))
            .await
            .unwrap(),
        b"v2\n"
    );
    assert_eq!(
        client.read_file("many", "VERSION", None).await.unwrap(),
        b"v1\n"
    );
    assert_eq!(
        client.read_file("many", "pkg/m007.py", None).await.unwrap(),
        b"value = 7\n"
    );

    // Contents are stored once on the master too, across versions and spiders.
    let master_blobs = blobs(&data.path().join("spiders"));
    common::create_spider(client, "copy", "true", &[("pkg/m001.py", "value = 1\n")]).await;
    assert_eq!(blobs(&data.path().join("spiders")), master_blobs);

    worker.stop().await;
    master.stop().await;
}

#[tokio::test]
async fn a_sync_that_fails_fails_the_task_and_never_runs_stale_files() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 1);
    master.wait_nodes_online(1).await;
    let client = &master.client;
    common::create_spider(
        client,
        "lost",
        "cat data.txt",
        &[("data.txt", "a content only this spider has")],
    )
    .await;
    // The master loses the content (a damaged disk): the worker cannot get it.
    let sha = client.list_files("lost", None).await.unwrap().files[0]
        .sha256
        .clone();
    match &master.mongodb {
        None => {
            let blob = data.path().join("spiders/blobs").join(&sha[..2]).join(&sha);
            std::fs::remove_file(&blob).unwrap();
        }
        Some(mongo) => {
            let db = mongodb::Client::with_uri_str(&mongo.uri)
                .await
                .unwrap()
                .database(mongo.database.as_deref().unwrap());
            let bucket = db.gridfs_bucket(
                mongodb::options::GridFsBucketOptions::builder()
                    .bucket_name("spider_files".to_owned())
                    .build(),
            );
            bucket.delete_by_name(sha.as_str()).await.unwrap();
        }
    }

    let task = client
        .run_task(&RunTask {
            spider: "lost".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_done(client, task.id).await;
    assert_eq!(done.status, TaskStatus::Error);
    let error = done.error.unwrap_or_default();
    assert!(error.contains("fetching files"), "{error}");
    let logs: Vec<String> = all_logs(client, task.id)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert!(
        !logs.iter().any(|l| l.contains("a content only")),
        "the spider never ran: {logs:?}"
    );
    // Nothing half-synced was kept: no manifest of that version on the worker.
    let cache = worker.work_dir().join("cache/versions");
    let kept = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(kept, 0);

    worker.stop().await;
    master.stop().await;
}

#[tokio::test]
async fn a_watched_spiders_folder_turns_edits_into_versions_and_skips_a_broken_spider() {
    let data = tempfile::tempdir().unwrap();
    let spiders = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| write_file(spiders.path(), path, text);
    write(
        "alpha/arachne.toml",
        "name = \"alpha\"\ncmd = \"cat out.txt\"\n",
    );
    write("alpha/out.txt", "first\n");
    write(
        "broken/arachne.toml",
        "name = \"broken\"\ncmd = [not toml\n",
    );
    write("broken/out.txt", "x\n");
    let mut config = arachne_master::Config::new(data.path().to_owned());
    config.local_worker = Some(arachne_master::LocalWorker {
        runner: common::quick_runner(),
        ..Default::default()
    });
    config.spiders_dir = Some(spiders.path().to_owned());
    let master = TestMaster::start_with(config).await;
    let client = &master.client;

    // Registered and uploaded: a spider is created first and gets its files right after.
    let has_files = |name: &'static str| async move {
        client
            .get_spider(name)
            .await
            .is_ok_and(|s| !s.version.is_empty())
    };
    common::eventually("alpha is registered from its folder", || has_files("alpha")).await;
    assert!(
        client.get_spider("broken").await.is_err(),
        "a broken arachne.toml registers nothing"
    );
    let first = client.get_spider("alpha").await.unwrap().version;
    assert_eq!(run_on(client, "alpha", None, None).await, ["first"]);

    // An edit becomes a new current version, without a restart.
    write("alpha/out.txt", "second\n");
    common::eventually("the edit becomes a version", || async {
        client.get_spider("alpha").await.unwrap().version != first
    })
    .await;
    assert_eq!(run_on(client, "alpha", None, None).await, ["second"]);
    assert_eq!(client.list_versions("alpha").await.unwrap().len(), 2);

    // A spider added while running, and the broken one once fixed, are picked up too.
    write("beta/out.txt", "beta\n");
    write(
        "beta/arachne.toml",
        r#"name = "beta"
cmd = "echo $GREETING; cat out.txt"
results_collection = "beta_items"
max_instances = 2

[settings]
env = { GREETING = "hi" }
timeout_secs = 60
memory_limit_mib = 256
retries = 1

[dedup]
keys = ["url", "page"]
mode = "ignore"
"#,
    );
    write(
        "broken/arachne.toml",
        "name = \"broken\"\ncmd = \"cat out.txt\"\n",
    );
    common::eventually("beta and the fixed spider are registered", || async {
        has_files("beta").await && has_files("broken").await
    })
    .await;
    assert_eq!(run_on(client, "beta", None, None).await, ["hi", "beta"]);
    let beta = client.get_spider("beta").await.unwrap();
    assert_eq!(
        (beta.results_collection.as_deref(), beta.max_instances),
        (Some("beta_items"), Some(2))
    );
    let dedup = beta.dedup.as_ref().expect("dedup is set");
    assert_eq!(
        (dedup.keys.as_slice(), dedup.mode),
        (
            &["url".to_owned(), "page".to_owned()][..],
            DedupMode::Ignore
        )
    );
    // The file is the whole truth: a setting taken out of it goes back to its default.
    write(
        "beta/arachne.toml",
        "name = \"beta\"\ncmd = \"cat out.txt\"\n",
    );
    common::eventually("beta's settings are reset", || async {
        let beta = client.get_spider("beta").await.unwrap();
        beta.dedup.is_none() && beta.max_instances.is_none() && beta.settings.env.is_empty()
    })
    .await;
    let settings = &beta.settings;
    assert_eq!(
        (
            settings.timeout_secs,
            settings.memory_limit_mib,
            settings.retries
        ),
        (Some(60), Some(256), Some(1))
    );
    let alpha = client.get_spider("alpha").await.unwrap();
    assert_eq!(
        alpha.results_collection, None,
        "none set: its items go to results_alpha, Crawlab's default name"
    );
    let reserved = client
        .put_spider(&CreateSpider {
            name: "alpha".into(),
            cmd: "true".into(),
            results_collection: Some("system.users".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(reserved.to_string().contains("reserved"), "{reserved}");
    master.stop().await;
}

#[tokio::test]
async fn a_version_whose_contents_are_all_cached_still_runs() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    common::create_spider(client, "moved", "cat a.txt", &[("a.txt", "same bytes\n")]).await;
    assert_eq!(run_on(client, "moved", None, None).await, ["same bytes"]);
    // A new version that only renames the file: its manifest is new, every content is cached already.
    client
        .put_spider(&CreateSpider {
            name: "moved".into(),
            cmd: "cat b.txt".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = spider_dir(&[("b.txt", "same bytes\n")]);
    let archive = arachne_shared::archive::pack_dir(dir.path()).unwrap();
    client.upload_files("moved", archive).await.unwrap();
    assert_eq!(run_on(client, "moved", None, None).await, ["same bytes"]);
    master.stop().await;
}

/// With MongoDB configured, spider files live in it: a second master with an empty data folder on the same
/// database runs a spider the first one took, and the first kept no content on its own disk.
#[tokio::test]
async fn spider_files_in_mongodb_leave_a_master_no_local_state() {
    let Some(uri) = std::env::var("ARACHNE_TEST_MONGODB_URI")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "ARACHNE_TEST_MONGODB_URI is not set; scripts/mongodb runs the tests with a server"
        );
        return;
    };
    let mongo = arachne_master::MongoConfig {
        uri,
        database: Some(format!(
            "arachne_test_files_{}",
            uuid::Uuid::now_v7().simple()
        )),
    };
    // Larger than a chunk sent to workers and than a GridFS chunk, and not a multiple of either.
    let big: String = (0..200_000).map(|i| format!("{i:07}\n")).collect();
    let first_dir = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(first_dir.path().to_owned());
    config.mongodb = Some(mongo.clone());
    config.local_worker = None;
    let first = TestMaster::start_with(config).await;
    common::create_spider(
        &first.client,
        "shared",
        "sh run.sh",
        &[
            ("run.sh", "wc -c < big.txt\ntail -n 1 big.txt\n"),
            ("big.txt", &big),
        ],
    )
    .await;
    let uploaded = first.client.list_versions("shared").await.unwrap();
    first.stop().await;
    assert_eq!(blobs(&first_dir.path().join("spiders")), 0);
    assert!(!first_dir.path().join("spiders/versions").exists());

    let second_dir = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(second_dir.path().to_owned());
    config.mongodb = Some(mongo);
    config.local_worker = Some(arachne_master::LocalWorker {
        runner: common::quick_runner(),
        ..Default::default()
    });
    let second = TestMaster::start_with(config).await;
    let client = &second.client;
    assert_eq!(client.list_versions("shared").await.unwrap(), uploaded);
    assert_eq!(
        client.read_file("shared", "big.txt", None).await.unwrap(),
        big.as_bytes()
    );
    assert_eq!(
        run_on(client, "shared", None, None).await,
        [big.len().to_string(), "0199999".to_owned()]
    );
    assert_eq!(blobs(&second_dir.path().join("spiders")), 0);
    second.stop().await;
}

/// Uploads over the concurrent limit wait, before their body is read, until one ends: six large uploads at
/// once cannot hold six bodies in the master's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_concurrent_limit_wait_for_their_turn() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(data.path().to_owned());
    config.local_worker = None;
    config.http.max_concurrent_uploads = 1;
    let master = TestMaster::start_with(config).await;
    common::create_spider(&master.client, "big", "true", &[("x", "")]).await;
    let zip = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("main.sh", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(&vec![b'#'; 64 << 10]).unwrap();
        zip.finish().unwrap().into_inner()
    };

    // The first upload asks to continue and is told to (so its handler, past the slot, reads its body), then
    // holds the only slot while it sends nothing.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = tokio::net::TcpStream::connect(master.http).await.unwrap();
    let head = format!(
        "PUT /api/v1/spiders/big/files HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/zip\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        common::API_TOKEN,
        zip.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    let mut reply = [0u8; 64];
    let n = tokio::time::timeout(common::TIMEOUT, first.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(
        reply[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&reply[..n])
    );

    let client = master.client.clone();
    let whole = zip.clone();
    let mut second = tokio::spawn(async move { client.upload_files("big", whole).await });
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut second).await;
    assert!(
        early.is_err(),
        "the second upload was served while the first held the only slot: {early:?}"
    );
    first.write_all(&zip).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tokio::time::timeout(common::TIMEOUT, first.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the first upload got no answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    second.await.unwrap().unwrap();
    master.stop().await;
}

/// Prints its version, then waits as many seconds as its argument says.
const WAIT_SH: &str = "cat VERSION\nsleep \"${1:-0}\"\n";

/// Starts a run that waits a minute, and waits until it runs.
async fn long_run(
    client: &Client,
    spider: &str,
    version: Option<String>,
) -> arachne_api_types::Task {
    let task = client
        .run_task(&RunTask {
            spider: spider.into(),
            version,
            param: Some("60".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    common::eventually("the long run is running", || async {
        client.get_task(task.id).await.unwrap().status == TaskStatus::Running
    })
    .await;
    task
}

#[tokio::test]
async fn a_version_is_deleted_only_when_not_current_nor_running_and_takes_only_its_own_files() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let shared = ("lib.py", "shared = True\n");
    common::create_spider(
        client,
        "vs",
        "sh run.sh",
        &[("run.sh", WAIT_SH), ("VERSION", "v1\n"), shared],
    )
    .await;
    let v1 = client.get_spider("vs").await.unwrap().version;
    let dir = spider_dir(&[("run.sh", WAIT_SH), ("VERSION", "v2\n"), shared]);
    let v2 = client
        .upload_files("vs", arachne_shared::archive::pack_dir(dir.path()).unwrap())
        .await
        .unwrap()
        .spider
        .version;

    common::assert_conflict(client.delete_version("vs", &v2).await, "current version");

    let running = long_run(client, "vs", Some(v1.clone())).await;
    let (status, message) = common::refusal(client.delete_version("vs", &v1).await);
    assert_eq!(status, 409);
    assert!(
        message.contains(&running.id.to_string()) && message.contains("running"),
        "{message}"
    );
    client.cancel_task(running.id).await.unwrap();
    wait_done(client, running.id).await;

    // On disk, v1's VERSION is the one content no other version names.
    let master_blobs = || blobs(&data.path().join("spiders"));
    let before = master_blobs();
    client.delete_version("vs", &v1).await.unwrap();
    let left: Vec<String> = client
        .list_versions("vs")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.hash)
        .collect();
    assert_eq!(left, std::slice::from_ref(&v2));
    let on_disk = std::env::var("ARACHNE_TEST_MONGODB_URI").map_or(true, |uri| uri.is_empty());
    if on_disk {
        assert_eq!(master_blobs(), before - 1);
    }
    let (status, message) = common::refusal(client.delete_version("vs", &v1).await);
    assert_eq!(status, 404, "{message}");

    // What stays still runs.
    assert_eq!(run_on(client, "vs", None, None).await, ["v2"]);
    master.stop().await;
}

#[tokio::test]
async fn a_spider_is_deleted_with_its_versions_and_schedules_and_its_tasks_only_when_asked() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    common::create_spider(
        client,
        "kept-runs",
        "sh run.sh",
        &[("run.sh", WAIT_SH), ("VERSION", "v1\n")],
    )
    .await;
    assert_eq!(run_on(client, "kept-runs", None, None).await, ["v1"]);
    client
        .create_schedule(&arachne_api_types::ScheduleSpec {
            name: "nightly".into(),
            spider: "kept-runs".into(),
            cron: "0 3 * * *".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let running = long_run(client, "kept-runs", None).await;
    common::assert_conflict(
        client.delete_spider("kept-runs", false).await,
        &running.id.to_string(),
    );
    assert!(
        client.get_spider("kept-runs").await.is_ok(),
        "a refusal changes nothing"
    );
    assert_eq!(client.list_schedules().await.unwrap().len(), 1);
    client.cancel_task(running.id).await.unwrap();
    wait_done(client, running.id).await;

    let deleted = client.delete_spider("kept-runs", false).await.unwrap();
    assert_eq!(
        (deleted.versions, deleted.schedules, deleted.tasks),
        (1, 1, 0)
    );
    assert_eq!(common::refusal(client.get_spider("kept-runs").await).0, 404);
    assert!(client.list_schedules().await.unwrap().is_empty());
    assert!(client.list_versions("kept-runs").await.is_err());
    let kept = client
        .list_tasks(&arachne_api_types::TaskQuery {
            spider: Some("kept-runs".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kept.total, 2, "its tasks stay when not asked for");

    common::create_spider(
        client,
        "all-gone",
        "sh run.sh",
        &[("run.sh", WAIT_SH), ("VERSION", "v1\n")],
    )
    .await;
    run_on(client, "all-gone", None, None).await;
    let task = client.list_tasks(&Default::default()).await.unwrap().items[0].id;
    let deleted = client.delete_spider("all-gone", true).await.unwrap();
    assert_eq!((deleted.versions, deleted.tasks), (1, 1));
    assert_eq!(common::refusal(client.get_task(task).await).0, 404);
    assert_eq!(
        common::refusal(client.delete_spider("all-gone", true).await).0,
        404
    );
    master.stop().await;
}

/// An archive of a spider's folder (`s1/main.py`) rather than of its contents: the folder is unwrapped, so
/// `python3 main.py` finds its file, and the answer says so. A command that names a path in the folder keeps
/// the layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_one_folder_is_unwrapped_unless_the_command_names_it() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    let parent = tempfile::tempdir().unwrap();
    write_file(parent.path(), "s1/main.py", "print('inside')\n");
    let archive = arachne_shared::archive::pack_dir(parent.path()).unwrap();
    for (name, cmd, unwrapped) in [
        ("wrapped", "python3 main.py", Some("s1")),
        ("laid-out", "python3 s1/main.py", None),
    ] {
        common::put_spider(client, name, cmd).await.unwrap();
        let uploaded = client.upload_files(name, archive.clone()).await.unwrap();
        assert_eq!(uploaded.unwrapped.as_deref(), unwrapped, "{name}");
        assert_eq!(run_on(client, name, None, None).await, ["inside"], "{name}");
    }
    master.stop().await;
}

/// What became of each watched folder is in the API, not only in the master's log: a broken `arachne.toml`
/// with why, and a removed folder, whose spider stays until someone deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_broken_and_removed_spider_folders() {
    let data = tempfile::tempdir().unwrap();
    let spiders = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| write_file(spiders.path(), path, text);
    write("alpha/arachne.toml", "name = \"alpha\"\ncmd = \"true\"\n");
    write(
        "broken/arachne.toml",
        "name = \"broken\"\ncmd = [not toml\n",
    );
    let mut config = arachne_master::Config::new(data.path().to_owned());
    config.spiders_dir = Some(spiders.path().to_owned());
    let master = TestMaster::start_with(config).await;
    let client = &master.client;
    let status_of = |folder: &'static str| async move {
        let report = client.spider_folders().await.unwrap();
        report
            .folders
            .into_iter()
            .find(|f| f.folder.ends_with(&format!("/{folder}")))
    };
    let broken = common::found("the broken folder is reported", || async {
        status_of("broken")
            .await
            .filter(|f| f.status == FolderStatus::Broken)
    })
    .await;
    let problem = broken.problem.unwrap();
    assert!(
        problem.contains("arachne.toml") && problem.contains("unclosed array"),
        "{problem}"
    );
    let alpha = common::found("alpha is synced", || async {
        status_of("alpha")
            .await
            .filter(|f| f.status == FolderStatus::Synced)
    })
    .await;
    assert_eq!(alpha.spider.as_deref(), Some("alpha"));
    let report = client.spider_folders().await.unwrap();
    assert_eq!(report.dir, Some(spiders.path().display().to_string()));

    // Removed: reported, and the spider (with its versions and results) stays.
    std::fs::remove_dir_all(spiders.path().join("alpha")).unwrap();
    let removed = common::found("the removed folder is reported", || async {
        status_of("alpha")
            .await
            .filter(|f| f.status == FolderStatus::Removed)
    })
    .await;
    assert_eq!(removed.spider.as_deref(), Some("alpha"));
    assert!(client.get_spider("alpha").await.is_ok());

    // Fixed: synced, the problem gone.
    write("broken/arachne.toml", "name = \"broken\"\ncmd = \"true\"\n");
    let fixed = common::found("the fixed folder is synced", || async {
        status_of("broken")
            .await
            .filter(|f| f.status == FolderStatus::Synced)
    })
    .await;
    assert_eq!(
        (fixed.spider.as_deref(), fixed.problem),
        (Some("broken"), None)
    );
    master.stop().await;
}

/// Deleting a version takes its contents off the workers too: a connected worker drops them at once, one that
/// was offline when the version went is told when it registers again. Contents another version still names
/// stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_version_s_contents_leave_the_workers_caches() {
    let data = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(data.path().to_owned());
    config.local_worker = None;
    let master = TestMaster::start_with(config).await;
    let client = &master.client;
    let worker = TestWorker::start(&master.grpc_url(), "w1", 2);
    master.wait_nodes_online(1).await;
    let upload = |text: &'static str| async move {
        let dir = spider_dir(&[("run.sh", "cat a.txt\n"), ("a.txt", text)]);
        let archive = arachne_shared::archive::pack_dir(dir.path()).unwrap();
        let uploaded = client.upload_files("gc", archive).await.unwrap();
        assert_eq!(run_on(client, "gc", Some("w1"), None).await, [text.trim()]);
        uploaded.spider.version
    };
    common::put_spider(client, "gc", "sh run.sh").await.unwrap();
    let one = upload("one\n").await;
    let _two = upload("two\n").await;
    let cache = worker.work_dir().join("cache");
    // run.sh is shared; each a.txt is its own content.
    assert_eq!(blobs(&cache), 3);

    client.delete_version("gc", &one).await.unwrap();
    common::eventually(
        "the connected worker drops the deleted version's content",
        || async { blobs(&cache) == 2 },
    )
    .await;

    // Deleted while the worker is away: it learns of it when it registers again.
    let two = client.get_spider("gc").await.unwrap().version;
    let _three = upload("three\n").await;
    assert_eq!(blobs(&cache), 3);
    let dir = worker.stop_keeping_dir().await;
    master.wait_nodes_online(0).await;
    client.delete_version("gc", &two).await.unwrap();
    assert_eq!(
        blobs(&dir.path().join("cache")),
        3,
        "nobody told the stopped worker yet"
    );
    let worker = TestWorker::start_in(&master.grpc_url(), "w1", 2, &[], dir);
    master.wait_nodes_online(1).await;
    let cache = worker.work_dir().join("cache");
    common::eventually(
        "the returning worker drops what was deleted meanwhile",
        || async { blobs(&cache) == 2 },
    )
    .await;
    assert_eq!(run_on(client, "gc", Some("w1"), None).await, ["three"]);
    worker.stop().await;
    master.stop().await;
}
