//! Spiders are other people's code: attacker spiders, run on the default setup by the master's local worker
//! and by a remote worker, try to reach the platform's secrets and data, and each attempt must fail.

use arachne_test_support as common;

use std::path::Path;

use arachne_api_types::RunTask;
use arachne_client::Client;
use arachne_master::{Config, LocalWorker};
use arachne_shared::{RunMode, TaskStatus};
use arachne_worker::sandbox::SpiderUser;
use common::{
    MasterProcess, TestMaster, all_logs, create_spider, eventually, free_port, quick_runner,
    wait_done,
};

/// A secret of the operators', in the environment of the master and of the worker.
const DB_PASSWORD: &str = "hunter2-db-password-of-the-operators";

/// Tries each attack and prints one `name: outcome` line per attempt; `denied` (or `absent`) is the only
/// good outcome. Arguments: the master's data folder, the master's pid, the worker's work folder, and the
/// sha256 of a cached file of another spider.
const ATTACK: &str = r#"
import os, sys
data, pid, work, sha = sys.argv[1:5]

def attempt(name, action):
    try:
        print(f"{name}: LEAKED {action()!r}"[:300])
    except FileNotFoundError:
        print(f"{name}: absent")
    except PermissionError:
        print(f"{name}: denied")
    except OSError as err:
        print(f"{name}: denied ({err})")

attempt("token file", lambda: open(os.path.join(data, "api-token")).read())
attempt("master environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
attempt("store for writing", lambda: open(os.path.join(data, "arachne.db"), "r+b").write(b"x"))
attempt("store folder listing", lambda: os.listdir(data))
attempt("spider files of the master", lambda: os.listdir(os.path.join(data, "spiders")))
blob = os.path.join(work, "cache", "blobs", sha[:2], sha)
def poison():
    os.chmod(blob, 0o644)
    with open(blob, "w") as f:
        f.write("echo poisoned\n")
attempt("cached file of another spider", poison)
attempt("worker's cache listing", lambda: os.listdir(os.path.join(work, "cache")))
# The shared /tmp of the machine: a private one takes the write, or nothing does.
def shared_tmp():
    with open("/tmp/arachne-containment-marker", "w") as f:
        f.write("x")
    return "written (checked from outside)"
try:
    shared_tmp()
except OSError:
    pass
cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
print("master cmdline:", cmdline)
for key, value in sorted(os.environ.items()):
    print(f"env {key}={value}")
"#;

/// The cached file of `hello`: its only file, `hello.sh`.
const HELLO: &str = "echo hello\n";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

async fn run_on(client: &Client, spider: &str, node: &str, param: Option<String>) -> Vec<String> {
    let task = client
        .run_task(&RunTask {
            spider: spider.into(),
            param,
            mode: Some(RunMode::Nodes),
            nodes: vec![node.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let task = wait_done(client, task.id).await;
    let logs: Vec<String> = all_logs(client, task.id)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(task.status, TaskStatus::Finished, "{task:#?} {logs:#?}");
    logs
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    arachne_shared::files::hex(&sha2::Sha256::digest(text.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_spiders_reach_nothing_of_the_master_or_the_workers() {
    if !is_root() {
        // Without root there is no other user to run spiders as: Landlock alone is tested below.
        eprintln!("skipped: spiders run as another user only when the worker runs as root");
        return;
    }
    // Outside /tmp, so that each run gets a private /tmp mounted (a run under /tmp keeps the shared one).
    let base = tempfile::tempdir_in(common::outside_tmp()).unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let data = base.path().join("master");
    let work = base.path().join("worker");
    let _ = std::fs::remove_file("/tmp/arachne-containment-marker");
    // The default setup: no configured API token, so the master makes one and writes it to its data folder.
    let master = MasterProcess::spawn_env(
        &data,
        (free_port(), free_port()),
        true,
        &[("SOME_DB_PASSWORD", DB_PASSWORD), ("ARACHNE_API_TOKEN", "")],
    );
    let token_file = data.join("api-token");
    eventually("the master wrote its first token", || async {
        std::fs::read_to_string(&token_file).is_ok_and(|t| !t.trim().is_empty())
    })
    .await;
    let token = std::fs::read_to_string(&token_file).unwrap();
    let client = Client::with_token(&format!("http://{}", master.http), token.trim()).unwrap();
    eventually("the master answers", || async {
        client.health().await.is_ok()
    })
    .await;
    let mut worker = tokio::process::Command::new(common::workspace_bin("arachne-worker"))
        .args([
            "--master",
            &format!("http://{}", master.grpc),
            "--name",
            "remote",
        ])
        .arg("--work-dir")
        .arg(&work)
        .env("ARACHNE_WORKER_TOKEN", common::WORKER_TOKEN)
        .env("SOME_DB_PASSWORD", DB_PASSWORD)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("both workers are online", || async {
        client.list_nodes().await.unwrap().len() == 2
    })
    .await;

    create_spider(&client, "hello", "sh hello.sh", &[("hello.sh", HELLO)]).await;
    create_spider(
        &client,
        "attack",
        "python3 attack.py",
        &[("attack.py", ATTACK)],
    )
    .await;
    let pid = master.child.id();
    for (node, work) in [
        ("local", data.join("local-worker")),
        ("remote", work.clone()),
    ] {
        assert_eq!(run_on(&client, "hello", node, None).await, ["hello"]);
        let param = format!(
            "{} {pid} {} {}",
            data.display(),
            work.display(),
            sha256_hex(HELLO)
        );
        let logs = run_on(&client, "attack", node, Some(param)).await;
        let outcomes: Vec<&String> = logs.iter().filter(|l| l.contains(": ")).collect();
        for line in logs
            .iter()
            .filter(|l| !l.starts_with("env ") && !l.starts_with("master cmdline"))
        {
            assert!(
                line.ends_with(": denied")
                    || line.ends_with(": absent")
                    || line.contains(": denied ("),
                "on {node}: {line}\n{logs:#?}"
            );
        }
        assert!(
            outcomes.len() >= 7,
            "every attempt reported on {node}: {logs:#?}"
        );
        let whole = logs.join("\n");
        for secret in [DB_PASSWORD, token.trim(), common::WORKER_TOKEN] {
            assert!(
                !whole.contains(secret),
                "{secret} reached a spider on {node}: {logs:#?}"
            );
        }
        let names: Vec<&str> = logs
            .iter()
            .filter_map(|l| l.strip_prefix("env "))
            .map(|kv| kv.split('=').next().unwrap())
            .collect();
        for name in &names {
            assert!(
                // PWD is the shell's own.
                [
                    "PATH",
                    "HOME",
                    "TMPDIR",
                    "LANG",
                    "LANGUAGE",
                    "TZ",
                    "PYTHONUNBUFFERED",
                    "PWD"
                ]
                .contains(name)
                    || name.starts_with("LC_")
                    || name.starts_with("ARACHNE_")
                    || name.starts_with("CRAWLAB_"),
                "{name} reached a spider on {node}: {names:?}"
            );
        }
        assert!(
            !Path::new("/tmp/arachne-containment-marker").exists(),
            "a spider on {node} wrote into the machine's /tmp"
        );
        // The poisoned file, had it been written, would run now.
        assert_eq!(run_on(&client, "hello", node, None).await, ["hello"]);
    }
    // The data the spiders could not read is closed to every other user too.
    for (path, mode) in [
        (data.clone(), 0o711),
        (data.join("spiders"), 0o700),
        (data.join("api-token"), 0o600),
        (work.join("cache"), 0o700),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            mode,
            "{}",
            path.display()
        );
    }
    if data.join("arachne.db").exists() {
        let meta = std::fs::metadata(data.join("arachne.db")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
    }
    let _ = worker.kill().await;
}

/// Tries to append to each argument and says which it could; then writes in its own three folders.
const WRITER: &str = r#"
for target in "$@"; do
  if (echo x >> "$target") 2>/dev/null; then echo "wrote $target"; else echo "refused $target"; fi
done
for own in ./own "$HOME/own" "$TMPDIR/own"; do
  if (echo x > "$own") 2>/dev/null; then echo "own ok"; else echo "own refused $own"; fi
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spider_of_the_workers_own_user_still_writes_only_in_its_own_folders() {
    if !arachne_worker::sandbox::landlock_available() {
        eprintln!("skipped: this kernel has no Landlock");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path().to_owned());
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    config.local_worker = Some(LocalWorker {
        runner: arachne_worker::RunnerOptions {
            // The worker's own user (root too, when the tests run as root): file modes stop nothing here.
            spider_user: SpiderUser::Named(me),
            ..quick_runner()
        },
        ..LocalWorker::default()
    });
    let master = TestMaster::start_with(config).await;
    master.wait_nodes_online(1).await;
    let client = &master.client;
    create_spider(client, "hello", "sh hello.sh", &[("hello.sh", HELLO)]).await;
    create_spider(client, "writer", "sh writer.sh", &[("writer.sh", WRITER)]).await;
    assert_eq!(run_on(client, "hello", "local", None).await, ["hello"]);
    let sha = sha256_hex(HELLO);
    let blob = data
        .path()
        .join("local-worker/cache/blobs")
        .join(&sha[..2])
        .join(&sha);
    assert!(blob.exists());
    let marker = format!("/tmp/arachne-landlock-marker-{}", std::process::id());
    let targets = [
        data.path().join("arachne.db"),
        data.path().join("intruder"),
        blob.clone(),
        Path::new(&marker).to_owned(),
    ];
    let param = targets
        .iter()
        .map(|t| t.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let logs = run_on(client, "writer", "local", Some(param)).await;
    let expected: Vec<String> = targets
        .iter()
        .map(|t| format!("refused {}", t.display()))
        .chain(std::iter::repeat_n("own ok".to_owned(), 3))
        .collect();
    assert_eq!(logs, expected);
    assert!(!Path::new(&marker).exists());
    assert_eq!(run_on(client, "hello", "local", None).await, ["hello"]);
    master.stop().await;
}

/// A worker whose folder sits where the spider user cannot enter (a home folder closed to others) keeps its
/// runs in a folder of their own under /var/lib/arachne, and its spiders run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_a_closed_folder_runs_its_spiders_from_a_reachable_one() {
    if !is_root() {
        eprintln!("skipped: spiders run as another user only when the worker runs as root");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(data.path().to_owned());
    config.local_worker = None;
    let master = TestMaster::start_with(config).await;
    // Closed to other users, as /root is: the spider user cannot pass it.
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        closed.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let work = closed.path().join("worker");
    let mut worker_config = arachne_worker::Config::new(master.grpc_url(), "closed", work.clone());
    worker_config.token = Some(common::WORKER_TOKEN.into());
    worker_config.helper_exe = Some(common::helper_exe());
    worker_config.runner = quick_runner();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(arachne_worker::run(worker_config, shutdown.clone()));
    master.wait_nodes_online(1).await;
    create_spider(
        &master.client,
        "hello",
        "sh hello.sh; pwd",
        &[("hello.sh", HELLO)],
    )
    .await;
    let logs = run_on(&master.client, "hello", "closed", None).await;
    let runs = arachne_worker::sandbox::runs_root_for(&std::fs::canonicalize(&work).unwrap());
    assert_eq!(logs[0], "hello");
    assert!(
        logs[1].starts_with(&runs.join("tasks").display().to_string()),
        "{logs:?}"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    master.stop().await;
}
