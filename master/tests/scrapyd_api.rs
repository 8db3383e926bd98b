//! Scrapyd's JSON API as the real python-scrapyd-api client (from PyPI) drives it: a Scrapy project deployed as
//! an Arachne spider is listed, scheduled with arguments and settings, followed to its end, cancelled while it
//! runs, and its log and items files read; each error answers as Scrapyd's would.

use arachne_test_support as common;

use arachne_api_types::ItemQuery;
use arachne_shared::TaskStatus;
use common::{API_TOKEN, TestMaster, create_spider};
use serde_json::Value;

/// Scrapy for the project (the same set as the Crawlab test's, so one venv serves both).
const SCRAPY: [&str; 2] = ["crawlab-sdk==0.7.0", "scrapy==2.19.0"];
/// The clients: python-scrapyd-api, and scrapyd-client's scrapyd-deploy (which brings Scrapy, for
/// `scrapy startproject`).
const CLIENT: [&str; 2] = ["python-scrapyd-api==2.1.2", "scrapyd-client==2.0.3"];

const SETTINGS: &str =
    "BOT_NAME = 'quotes'\nSPIDER_MODULES = ['quotes.spiders']\nROBOTSTXT_OBEY = False\n";

const SPIDERS: &str = r#"
import time
import scrapy

class QuotesSpider(scrapy.Spider):
    name = "quotes"
    start_urls = ["data:text/html,<p class='q'>one</p><p class='q'>two</p>"]

    def parse(self, response):
        for text in response.css("p.q::text").getall():
            yield {"text": text, "tag": getattr(self, "tag", None), "bot": self.settings.get("BOT_NAME")}

class SlowSpider(scrapy.Spider):
    name = "slow"
    start_urls = ["data:text/html,<p>slow</p>"]

    def parse(self, response):
        print("slow spider started", flush=True)
        time.sleep(120)
"#;

/// Drives every call the client offers that this API serves, and prints what came back as JSON.
const CLIENT_SCRIPT: &str = r#"
import json, sys, time
import requests
from scrapyd_api import ScrapydAPI
from scrapyd_api.exceptions import ScrapydResponseError

target, token, project = sys.argv[1:4]
auth = ("scrapy", token)
api = ScrapydAPI(target, auth=auth, timeout=30)
out = {}

def wait_for(job, state):
    deadline = time.time() + 90
    while api.job_status(project, job) != state:
        if time.time() > deadline:
            raise SystemExit("job %s never reached %s: %r" % (job, state, api.list_jobs(project)))
        time.sleep(0.1)

def error(call):
    try:
        call()
        return None
    except ScrapydResponseError as e:
        return str(e)

out["projects"] = api.list_projects()
out["versions"] = api.list_versions(project)
out["spiders"] = api.list_spiders(project)
job = api.schedule(project, "quotes", settings={"BOT_NAME": "renamed"}, tag="life&death")
out["job"] = job
wait_for(job, "finished")
jobs = api.list_jobs(project)
out["jobs"] = jobs
finished = [j for j in jobs["finished"] if j["id"] == job][0]
out["log"] = requests.get(target + finished["log_url"], auth=auth).text
out["items"] = requests.get(target + finished["items_url"], auth=auth).text
out["cancel_finished"] = api.cancel(project, job)
named = api.schedule(project, "quotes", jobid="nightly-7")
out["named"] = named
wait_for(named, "finished")
out["named_listed"] = [j["id"] for j in api.list_jobs(project)["finished"]]
out["named_log"] = requests.get(target + "/logs/%s/quotes/nightly-7.log" % project, auth=auth).text
out["status"] = requests.get(target + "/status.json", params={"job": job}, auth=auth).json()

slow = api.schedule(project, "slow", _version=out["versions"][-1][:12])
wait_for(slow, "running")
out["running"] = [j for j in api.list_jobs(project)["running"] if j["id"] == slow][0]
out["delete_busy"] = error(lambda: api.delete_project(project))
out["cancel_running"] = api.cancel(project, slow)
wait_for(slow, "finished")
out["daemon"] = requests.get(target + "/daemonstatus.json", auth=auth).json()

out["errors"] = {
    "unknown_project": error(lambda: api.schedule("nope", "quotes")),
    "unknown_project_jobs": error(lambda: api.list_jobs("nope")),
    "missing_spider": error(lambda: api.client.post(target + "/schedule.json", data={"project": project})),
    "missing_job": error(lambda: api.client.get(target + "/status.json")),
    "unknown_version": error(lambda: api.schedule(project, "quotes", _version="0000")),
    "bad_priority": error(lambda: api.schedule(project, "quotes", priority="high")),
    "bad_jobid": error(lambda: api.schedule(project, "quotes", jobid="../x")),
    "unknown_spider": error(lambda: api.schedule(project, "nope")),
    "spiders_of_unknown_project": error(lambda: api.list_spiders("nope")),
    "delete_unknown_project": error(lambda: api.delete_project("nope")),
    "delete_missing_project": error(lambda: api.client.post(target + "/delproject.json", data={})),
}
out["delete_plain"] = api.delete_project("plain")
out["projects_after_delete"] = api.list_projects()
out["unknown_job_status"] = requests.get(target + "/status.json", params={"job": "nope"}, auth=auth).json()
out["unauthenticated"] = requests.get(target + "/listprojects.json").status_code
out["wrong_token"] = requests.get(target + "/listprojects.json", auth=("scrapy", "x" * 40)).status_code
print(json.dumps(out))
"#;

/// The `quotes` project, uploaded as a folder, run with the Scrapy of `python`.
async fn quotes_project(client: &arachne_client::Client, python: &std::path::Path) {
    let files = [
        ("scrapy.cfg", "[settings]\ndefault = quotes.settings\n"),
        ("quotes/__init__.py", ""),
        ("quotes/settings.py", SETTINGS),
        ("quotes/spiders/__init__.py", ""),
        ("quotes/spiders/quotes.py", SPIDERS),
    ];
    let cmd = format!("{} -m scrapy", python.display());
    create_spider(client, "quotes", &cmd, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_scrapyd_api_drives_a_scrapy_project_through_the_scrapyd_api() {
    let scrapy_python = common::venv_python(&SCRAPY);
    let client_python = common::venv_python(&CLIENT);
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    quotes_project(client, &scrapy_python).await;
    create_spider(client, "plain", "sh run.sh", &[("run.sh", "echo hi")]).await;

    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), CLIENT_SCRIPT).unwrap();
    let target = format!("http://{}", master.scrapyd.unwrap());
    let output = tokio::process::Command::new(&client_python)
        .arg(script.path())
        .args([target.as_str(), API_TOKEN, "quotes"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();

    let projects = out["projects"].as_array().unwrap();
    assert!(projects.contains(&"quotes".into()) && projects.contains(&"plain".into()));
    let spider = client.get_spider("quotes").await.unwrap();
    // A version uploaded as a folder is known by its hash.
    assert_eq!(out["versions"], serde_json::json!([spider.version]));
    assert_eq!(out["spiders"], serde_json::json!(["quotes", "slow"]));

    // The job is the task, with the spider's arguments and settings.
    let job: arachne_shared::TaskId = out["job"].as_str().unwrap().parse().unwrap();
    let task = client.get_task(job).await.unwrap();
    assert_eq!(task.status, TaskStatus::Finished, "{out:#}");
    let param = task.param.clone().unwrap_or_default();
    assert!(
        param.starts_with("crawl quotes ")
            && param.contains("-s BOT_NAME=renamed")
            && param.contains("-a 'tag=life&death'"),
        "{param}"
    );
    let items = client.items(job, &ItemQuery::default()).await.unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| i.value()["tag"] == "life&death" && i.value()["bot"] == "renamed")
    );

    let finished = &out["jobs"]["finished"][0];
    assert_eq!(finished["id"], out["job"]);
    assert_eq!(finished["project"], "quotes");
    assert_eq!(finished["spider"], "quotes");
    let time = finished["start_time"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S%.6f").is_ok(),
        "{time}"
    );
    assert_eq!(
        finished["log_url"],
        format!("/logs/quotes/quotes/{job}.log")
    );
    let log = out["log"].as_str().unwrap();
    assert!(log.contains("Spider closed (finished)"), "{log}");
    let item_lines: Vec<Value> = out["items"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(item_lines.len(), 2);
    assert_eq!(out["cancel_finished"], Value::Null);
    // A job the client named is known by that name everywhere Scrapyd shows a job id.
    assert_eq!(out["named"], "nightly-7");
    assert!(
        out["named_listed"]
            .as_array()
            .unwrap()
            .contains(&"nightly-7".into())
    );
    assert!(
        out["named_log"]
            .as_str()
            .unwrap()
            .contains("Spider closed (finished)")
    );
    assert_eq!(out["status"]["currstate"], "finished");
    assert_eq!(out["status"]["status"], "ok");
    assert!(out["status"]["node_name"].is_string());

    // Cancelled while it ran; the task says so.
    assert_eq!(out["cancel_running"], "running");
    let running = &out["running"];
    assert_eq!(running["spider"], "slow");
    assert!(running["pid"].as_u64().is_some(), "{running}");
    let slow: arachne_shared::TaskId = running["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        client.get_task(slow).await.unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(out["daemon"]["finished"], 3);
    assert_eq!(out["daemon"]["running"], 0);

    let errors = &out["errors"];
    assert_eq!(errors["unknown_project"], "project 'nope' not found");
    assert_eq!(errors["unknown_project_jobs"], "project 'nope' not found");
    assert_eq!(errors["missing_spider"], "'spider' parameter is required");
    assert_eq!(errors["missing_job"], "'job' parameter is required");
    assert_eq!(errors["unknown_version"], "version '0000' not found");
    assert!(
        errors["bad_priority"]
            .as_str()
            .unwrap()
            .starts_with("priority is invalid"),
        "{errors}"
    );
    assert!(
        errors["bad_jobid"]
            .as_str()
            .unwrap()
            .starts_with("jobid is invalid"),
        "{errors}"
    );
    assert_eq!(errors["unknown_spider"], "spider 'nope' not found");
    assert_eq!(
        errors["spiders_of_unknown_project"],
        "project 'nope' not found"
    );
    assert_eq!(errors["delete_unknown_project"], "project 'nope' not found");
    assert_eq!(
        errors["delete_missing_project"],
        "'project' parameter is required"
    );
    let busy = out["delete_busy"].as_str().unwrap();
    assert!(
        busy.contains(&slow.to_string()) && busy.contains("cancel its runs"),
        "{busy}"
    );
    assert_eq!(out["delete_plain"], true);
    let left = out["projects_after_delete"].as_array().unwrap();
    assert!(left.contains(&"quotes".into()) && !left.contains(&"plain".into()));
    assert_eq!(out["unknown_job_status"]["currstate"], Value::Null);
    assert_eq!(out["unauthenticated"], 401);
    assert_eq!(out["wrong_token"], 401);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_that_is_not_a_scrapy_command_is_refused_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    create_spider(
        &master.client,
        "plain",
        "sh run.sh",
        &[("run.sh", "echo hi")],
    )
    .await;
    let base = format!("http://{}", master.scrapyd.unwrap());
    let params = [("project", "plain"), ("spider", "quotes")];
    let answer = scrapyd_answer(&base, "POST", "schedule.json", &params).await;
    assert_eq!(answer["status"], "error");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("is not a Scrapy project") && message.contains("sh run.sh"),
        "{message}"
    );
    // A viewer's token reads through Scrapyd's API but changes nothing; the admin's attempt is audited.
    let viewer = master
        .client
        .create_token(&arachne_api_types::CreateToken {
            name: "scrapyd-viewer".into(),
            kind: arachne_shared::TokenKind::Api,
            role: arachne_shared::Role::Viewer,
            user: None,
            expires_in_days: None,
        })
        .await
        .unwrap()
        .secret;
    let as_viewer = |path: &str| {
        let request = match path {
            "schedule.json" => common::http()
                .post(format!("{base}/{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("project=plain&spider=quotes"),
            _ => common::http().get(format!("{base}/{path}")),
        };
        request.basic_auth("scrapy", Some(&viewer)).send()
    };
    assert_eq!(as_viewer("listprojects.json").await.unwrap().status(), 200);
    let refused = as_viewer("schedule.json").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("needs the developer role")
    );
    let audit = master
        .client
        .audit(&arachne_api_types::AuditQuery::default())
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "POST (Scrapyd) /schedule.json"
                && e.actor == "token:configured-api"),
        "{audit:#?}"
    );
    master.stop().await;
}

/// The spider of the deployed project: no Arachne or Crawlab code.
const EGG_SPIDER: &str = r#"
import scrapy

class QuotesSpider(scrapy.Spider):
    name = "quotes"
    start_urls = ["data:text/html,<p class='q'>one</p><p class='q'>two</p><p class='q'>three</p>"]

    def parse(self, response):
        for text in response.css("p.q::text").getall():
            yield {"text": text, "release": getattr(self, "release", None)}
"#;

/// python-scrapyd-api's add_version of an egg file; prints the spider count it answers.
const ADD_VERSION: &str = r#"
import sys
from scrapyd_api import ScrapydAPI
target, token, egg = sys.argv[1:4]
api = ScrapydAPI(target, auth=("scrapy", token), timeout=600)
with open(egg, "rb") as f:
    print(api.add_version("eggbot", "v2", f))
"#;

const DEPLOYED_SCRIPT: &str = r#"
import json, sys, time
import requests
from scrapyd_api import ScrapydAPI
from scrapyd_api.exceptions import ScrapydResponseError

target, token = sys.argv[1:3]
auth = ("scrapy", token)
api = ScrapydAPI(target, auth=auth, timeout=600)

def error(call):
    try:
        call()
        return None
    except ScrapydResponseError as e:
        return str(e)

out = {"versions": api.list_versions("eggbot"), "spiders": api.list_spiders("eggbot")}
jobs = {}
for version in ["v1", None]:
    kwargs = {"_version": version} if version else {}
    job = api.schedule("eggbot", "quotes", release=version or "current", **kwargs)
    deadline = time.time() + 600
    while api.job_status("eggbot", job) != "finished":
        if time.time() > deadline:
            raise SystemExit("job never finished: %r" % api.list_jobs("eggbot"))
        time.sleep(0.2)
    jobs[version or "current"] = job
out["jobs"] = jobs
out["not_zip"] = error(lambda: api.add_version("eggbot", "v3", b"not a zip"))
out["delete_errors"] = {
    "unknown_version": error(lambda: api.delete_version("eggbot", "v9")),
    "missing_version": error(lambda: api.client.post(target + "/delversion.json", data={"project": "eggbot"})),
}
# As in Scrapyd: the current version goes and the one before it runs; the last one takes the project along.
out["delete_current"] = api.delete_version("eggbot", "v2")
out["versions_left"] = api.list_versions("eggbot")
out["spiders_left"] = api.list_spiders("eggbot")
out["delete_last"] = api.delete_version("eggbot", "v1")
out["projects_left"] = api.list_projects()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapyd_deploy_uploads_an_egg_that_runs_with_its_versions_and_spiders() {
    let client_python = common::venv_python(&CLIENT);
    let data = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(data.path().to_owned());
    config.local_worker = Some(arachne_master::LocalWorker {
        runner: common::quick_runner(),
        max_runners: 4,
        ..Default::default()
    });
    // The version's venv gets Scrapy from PyPI, as a user's would.
    config.scrapy_requirement = SCRAPY[1].into();
    let master = TestMaster::start_with(config).await;
    let target = format!("http://{}", master.scrapyd.unwrap());

    // A project as `scrapy startproject` makes it, deployed as its scrapy.cfg says.
    let work = tempfile::tempdir().unwrap();
    // Through `python -m`: the venv's scripts name the folder it was built in.
    let made = std::process::Command::new(&client_python)
        .args(["-m", "scrapy", "startproject", "eggbot"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let project = work.path().join("eggbot");
    std::fs::write(project.join("eggbot/spiders/quotes.py"), EGG_SPIDER).unwrap();
    let cfg = format!(
        "[settings]\ndefault = eggbot.settings\n\n[deploy]\nurl = {target}/\nproject = eggbot\nusername = scrapy\npassword = {API_TOKEN}\n"
    );
    std::fs::write(project.join("scrapy.cfg"), cfg).unwrap();
    // v1 as scrapyd-deploy sends it; v2 built by it and uploaded with python-scrapyd-api's add_version.
    let deployed = tokio::process::Command::new(&client_python)
        .args(["-m", "scrapyd_client.deploy", "--version", "v1"])
        .current_dir(&project)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&deployed.stdout).into_owned()
        + &String::from_utf8_lossy(&deployed.stderr);
    let answer: Option<Value> = said
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok());
    assert!(deployed.status.success(), "{said}");
    let answer = answer.unwrap_or_else(|| panic!("no answer in {said}"));
    assert_eq!(answer["spiders"], 1, "{said}");
    assert_eq!(answer["version"], "v1", "{said}");
    let egg = work.path().join("eggbot-v2.egg");
    let built = tokio::process::Command::new(&client_python)
        .args(["-m", "scrapyd_client.deploy", "--build-egg"])
        .arg(&egg)
        .current_dir(&project)
        .output()
        .await
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let added = tokio::process::Command::new(&client_python)
        .args(["-c", ADD_VERSION, target.as_str(), API_TOKEN])
        .arg(&egg)
        .output()
        .await
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    assert_eq!(
        String::from_utf8_lossy(&added.stdout).trim(),
        "1",
        "one spider"
    );

    // Read before the script deletes them.
    let versions = master.client.list_versions("eggbot").await.unwrap();
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), DEPLOYED_SCRIPT).unwrap();
    let output = tokio::process::Command::new(&client_python)
        .arg(script.path())
        .args([target.as_str(), API_TOKEN])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["versions"], serde_json::json!(["v1", "v2"]));
    assert_eq!(out["spiders"], serde_json::json!(["quotes"]));
    let client = &master.client;
    for (name, release) in [("v1", "v1"), ("current", "current")] {
        let job: arachne_shared::TaskId = out["jobs"][name].as_str().unwrap().parse().unwrap();
        let task = client.get_task(job).await.unwrap();
        let logs = common::all_logs(client, job).await;
        assert_eq!(task.status, TaskStatus::Finished, "{logs:#?}");
        let items = client.items(job, &ItemQuery::default()).await.unwrap();
        let texts: Vec<String> = items
            .iter()
            .map(|i| i.value()["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(texts, ["one", "two", "three"], "{logs:#?}");
        assert!(items.iter().all(|i| i.value()["release"] == release));
        let stats = task
            .progress
            .as_ref()
            .unwrap()
            .status
            .stats
            .clone()
            .unwrap();
        assert_eq!(stats["item_scraped_count"], 3);
        let current = versions.iter().find(|v| v.current).unwrap();
        assert_eq!(task.version == current.hash, name == "current");
    }
    assert_eq!(
        out["not_zip"],
        "egg is not a ZIP file (if using curl, use egg=@path not egg=path)"
    );
    assert_eq!(
        out["delete_errors"]["unknown_version"],
        "version 'v9' not found"
    );
    assert_eq!(
        out["delete_errors"]["missing_version"],
        "'version' parameter is required"
    );
    assert_eq!(out["delete_current"], true);
    assert_eq!(out["versions_left"], serde_json::json!(["v1"]));
    assert_eq!(out["spiders_left"], serde_json::json!(["quotes"]));
    assert_eq!(out["delete_last"], true);
    assert!(
        !out["projects_left"]
            .as_array()
            .unwrap()
            .contains(&"eggbot".into())
    );
    // Its jobs stay, as Scrapyd's finished jobs do.
    let kept: arachne_shared::TaskId = out["jobs"]["v1"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        client.get_task(kept).await.unwrap().status,
        TaskStatus::Finished
    );
    assert!(client.get_spider("eggbot").await.is_err());
    master.stop().await;
}

#[tokio::test]
async fn scrapyd_s_api_is_refused_without_tokens() {
    let data = tempfile::tempdir().unwrap();
    let mut config = arachne_master::Config::new(data.path().to_owned());
    config.local_worker = None;
    config.auth.required = false;
    let listeners = arachne_master::Listeners {
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        scrapyd: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
    };
    let err = arachne_master::run(config, listeners, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, arachne_master::Error::ScrapydWithoutTokens),
        "{err}"
    );
    assert!(err.to_string().contains("without tokens"), "{err}");
}

/// ScrapydWeb's settings: one Scrapyd server (this master's Scrapyd API, with a token as its password), and
/// none of the parts that need more than Scrapyd's API (LogParser, the monitor).
fn scrapydweb_settings(scrapyd: std::net::SocketAddr, port: u16, data: &std::path::Path) -> String {
    format!(
        "SCRAPYDWEB_BIND = '127.0.0.1'\nSCRAPYDWEB_PORT = {port}\nENABLE_AUTH = False\n\
         SCRAPYD_SERVERS = [('scrapy', '{API_TOKEN}', '127.0.0.1', '{}', 'arachne')]\n\
         LOCAL_SCRAPYD_SERVER = ''\nENABLE_LOGPARSER = False\nENABLE_MONITOR = False\n\
         DATA_PATH = {:?}\nDATABASE_URL = ''\n",
        scrapyd.port(),
        data.display().to_string(),
    )
}

/// Starts ScrapydWeb against `scrapyd`; returns its home folder, the process and its URL.
async fn start_scrapydweb(
    python: &std::path::Path,
    scrapyd: std::net::SocketAddr,
) -> (tempfile::TempDir, tokio::process::Child, String) {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (child, url) = common::start_python_service(
        python,
        "scrapydweb.run",
        home.path(),
        "scrapydweb_settings_v11.py",
        |port| scrapydweb_settings(scrapyd, port, &data),
        "/1/",
    )
    .await;
    (home, child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapydweb_lists_the_jobs_and_shows_a_job_s_log_and_stats() {
    let scrapy_python = common::venv_python(&SCRAPY);
    let web_python = common::venv_python(&["scrapydweb==1.6.0"]);
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    let client = &master.client;
    quotes_project(client, &scrapy_python).await;
    let scrapyd = master.scrapyd.unwrap();
    let params = [("project", "quotes"), ("spider", "quotes")];
    let answer = scrapyd_answer(
        &format!("http://{scrapyd}"),
        "POST",
        "schedule.json",
        &params,
    )
    .await;
    let job: arachne_shared::TaskId = answer["jobid"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        common::wait_done(client, job).await.status,
        TaskStatus::Finished
    );

    let (_home, _scrapydweb, web) = start_scrapydweb(&web_python, scrapyd).await;
    let http = common::http();
    let page = |path: String| {
        let http = http.clone();
        async move {
            let response = http.get(path).send().await.unwrap();
            assert!(response.status().is_success(), "{response:?}");
            response.text().await.unwrap()
        }
    };
    // The job list, parsed from the jobs table, in both of ScrapydWeb's views.
    for style in ["classic", "database"] {
        let jobs = page(format!("{web}/1/jobs/?style={style}")).await;
        assert!(
            jobs.contains(&job.to_string()),
            "the job is not in ScrapydWeb's {style} job list:\n{jobs}"
        );
    }
    // The job's log, read from /logs/quotes/quotes/{job}.log, and the stats ScrapydWeb parses from it.
    let log = page(format!("{web}/1/log/utf8/quotes/quotes/{job}/")).await;
    assert!(
        log.contains("Spider closed (finished)"),
        "the log page lacks the log:\n{log}"
    );
    let stats = page(format!("{web}/1/log/stats/quotes/quotes/{job}/")).await;
    assert!(
        stats.contains("item_scraped_count"),
        "the stats page lacks Scrapy's stats:\n{stats}"
    );
    // Its project list and daemon status come from listprojects.json and daemonstatus.json.
    let projects = page(format!("{web}/1/projects/")).await;
    assert!(projects.contains("quotes"), "{projects}");
    // Its start and stop buttons: schedule.json with a jobid of its own (a time), then cancel.json.
    let started: Value =
        serde_json::from_str(&page(format!("{web}/1/api/start/quotes/slow/")).await).unwrap();
    assert_eq!(started["status"], "ok", "{started}");
    let named = started["jobid"].as_str().unwrap().to_owned();
    common::eventually("ScrapydWeb's job runs", || async {
        let tasks = client.list_tasks(&Default::default()).await.unwrap().items;
        tasks.iter().any(|t| {
            t.client_job_id.as_deref() == Some(named.as_str()) && t.status == TaskStatus::Running
        })
    })
    .await;
    let stopped: Value =
        serde_json::from_str(&page(format!("{web}/1/api/stop/quotes/{named}/")).await).unwrap();
    assert_eq!(stopped["prevstate"], "running", "{stopped}");
    let tasks = client.list_tasks(&Default::default()).await.unwrap().items;
    let slow = tasks
        .iter()
        .find(|t| t.client_job_id.as_deref() == Some(named.as_str()))
        .unwrap();
    assert_eq!(
        common::wait_done(client, slow.id).await.status,
        TaskStatus::Cancelled
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_s_spiders_are_listed_once_even_across_master_restarts() {
    let scrapy_python = common::venv_python(&SCRAPY);
    let data = tempfile::tempdir().unwrap();
    let listings = |client: arachne_client::Client| async move {
        let tasks = client.list_tasks(&Default::default()).await.unwrap().items;
        tasks
            .iter()
            .filter(|t| t.param.as_deref() == Some(arachne_shared::scrapy::LIST_ARGS))
            .count()
    };
    let master = TestMaster::start(data.path(), true).await;
    quotes_project(&master.client, &scrapy_python).await;
    let spiders = master.client.scrapy_spiders("quotes", None).await.unwrap();
    assert_eq!(spiders, ["quotes", "slow"]);
    master.client.scrapy_spiders("quotes", None).await.unwrap();
    assert_eq!(listings(master.client.clone()).await, 1);
    master.stop().await;

    let master = TestMaster::start(data.path(), true).await;
    let again = master.client.scrapy_spiders("quotes", None).await.unwrap();
    assert_eq!(again, spiders);
    assert_eq!(
        listings(master.client.clone()).await,
        1,
        "the restarted master reads the earlier listing"
    );
    master.stop().await;
}

/// A real Scrapyd 1.6 with Scrapy, and scrapyd-client to deploy to it.
const SCRAPYD: [&str; 3] = ["scrapyd==1.6.0", "scrapyd-client==2.0.3", "scrapy==2.19.0"];

/// Starts a real Scrapyd with basic auth in `home`; returns it (killed when dropped) and its URL.
async fn start_scrapyd(
    python: &std::path::Path,
    home: &std::path::Path,
) -> (tokio::process::Child, String) {
    let config = |port| {
        format!(
            "[scrapyd]\nbind_address = 127.0.0.1\nhttp_port = {port}\npoll_interval = 0.2\n\
             eggs_dir = eggs\nlogs_dir = logs\nitems_dir = items\ndbs_dir = dbs\n\
             username = scrapy\npassword = {API_TOKEN}\n"
        )
    };
    common::start_python_service(python, "scrapyd", home, "scrapyd.conf", config, "/").await
}

/// Sends one request as Scrapyd's clients do (a form, or a query string), and reads the answer without the
/// node name, which differs between servers by design.
async fn scrapyd_answer(base: &str, method: &str, path: &str, params: &[(&str, &str)]) -> Value {
    let http = common::http();
    let query = serde_urlencoded::to_string(params).unwrap();
    let request = match method {
        "GET" => http.get(format!("{base}/{path}?{query}")),
        _ => http
            .post(format!("{base}/{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(query),
    };
    let response = request
        .basic_auth("scrapy", Some(API_TOKEN))
        .send()
        .await
        .unwrap();
    let mut answer: Value = response.json().await.unwrap();
    answer.as_object_mut().unwrap().remove("node_name");
    answer
}

/// A Scrapyd request: method, path, parameters.
type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answers_as_a_real_scrapyd_answers_it() {
    let python = common::venv_python(&SCRAPYD);
    // The same project on both: uploaded as a folder here, deployed as an egg there.
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), true).await;
    quotes_project(&master.client, &python).await;
    let arachne = format!("http://{}", master.scrapyd.unwrap());
    let home = tempfile::tempdir().unwrap();
    let (_scrapyd, scrapyd) = start_scrapyd(&python, home.path()).await;
    let project = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[settings]\ndefault = quotes.settings\n\n[deploy]\nurl = {scrapyd}/\nproject = quotes\n\
         username = scrapy\npassword = {API_TOKEN}\n"
    );
    for (path, text) in [
        ("scrapy.cfg", cfg.as_str()),
        ("quotes/__init__.py", ""),
        ("quotes/settings.py", SETTINGS),
        ("quotes/spiders/__init__.py", ""),
        ("quotes/spiders/quotes.py", SPIDERS),
    ] {
        let path = project.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let deployed = tokio::process::Command::new(&python)
        .args(["-m", "scrapyd_client.deploy", "--version", "r1"])
        .current_dir(project.path())
        .output()
        .await
        .unwrap();
    assert!(deployed.status.success(), "{deployed:?}");

    let cases: &[Request] = &[
        ("POST", "schedule.json", &[]),
        ("POST", "schedule.json", &[("project", "quotes")]),
        (
            "POST",
            "schedule.json",
            &[("project", "nope"), ("spider", "quotes")],
        ),
        (
            "POST",
            "schedule.json",
            &[("project", "quotes"), ("spider", "nope")],
        ),
        (
            "POST",
            "schedule.json",
            &[
                ("project", "quotes"),
                ("spider", "quotes"),
                ("_version", "nope"),
            ],
        ),
        (
            "POST",
            "schedule.json",
            &[
                ("project", "quotes"),
                ("spider", "quotes"),
                ("priority", "high"),
            ],
        ),
        ("POST", "cancel.json", &[("project", "quotes")]),
        ("POST", "cancel.json", &[("project", "nope"), ("job", "j1")]),
        (
            "POST",
            "cancel.json",
            &[("project", "quotes"), ("job", "nope")],
        ),
        ("GET", "status.json", &[]),
        ("GET", "status.json", &[("job", "nope")]),
        (
            "GET",
            "status.json",
            &[("job", "nope"), ("project", "nope")],
        ),
        ("GET", "listversions.json", &[]),
        ("GET", "listversions.json", &[("project", "nope")]),
        ("GET", "listspiders.json", &[]),
        ("GET", "listspiders.json", &[("project", "nope")]),
        (
            "GET",
            "listspiders.json",
            &[("project", "quotes"), ("_version", "nope")],
        ),
        ("GET", "listjobs.json", &[("project", "nope")]),
        ("POST", "delversion.json", &[("project", "quotes")]),
        (
            "POST",
            "delversion.json",
            &[("project", "quotes"), ("version", "nope")],
        ),
        (
            "POST",
            "delversion.json",
            &[("project", "nope"), ("version", "r1")],
        ),
        ("POST", "delproject.json", &[]),
        ("POST", "delproject.json", &[("project", "nope")]),
        (
            "POST",
            "addversion.json",
            &[("project", "quotes"), ("version", "r2")],
        ),
    ];
    let mut differences = Vec::new();
    for (method, path, params) in cases {
        let theirs = scrapyd_answer(&scrapyd, method, path, params).await;
        let ours = scrapyd_answer(&arachne, method, path, params).await;
        if ours != theirs {
            differences.push(format!(
                "{method} {path} {params:?}:\n  Scrapyd: {theirs}\n  Arachne: {ours}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));

    // And a job that finished: the same answers, and the same fields in its listing, but for times.
    for base in [&arachne, &scrapyd] {
        let params = [
            ("project", "quotes"),
            ("spider", "quotes"),
            ("jobid", "same-1"),
        ];
        let scheduled = scrapyd_answer(base, "POST", "schedule.json", &params).await;
        assert_eq!(
            scheduled,
            serde_json::json!({"status": "ok", "jobid": "same-1"}),
            "{base}"
        );
        common::eventually("the job finishes", || async {
            let status = scrapyd_answer(base, "GET", "status.json", &[("job", "same-1")]).await;
            status["currstate"] == "finished"
        })
        .await;
    }
    let listed = |mut answer: Value| {
        let job = answer["finished"][0].as_object_mut().unwrap();
        let (start, end) = (job.remove("start_time"), job.remove("end_time"));
        assert!(start.is_some_and(|t| t.is_string()) && end.is_some_and(|t| t.is_string()));
        answer
    };
    let params = [("project", "quotes")];
    assert_eq!(
        listed(scrapyd_answer(&arachne, "GET", "listjobs.json", &params).await),
        listed(scrapyd_answer(&scrapyd, "GET", "listjobs.json", &params).await),
    );
    let cancelled = [("project", "quotes"), ("job", "same-1")];
    assert_eq!(
        scrapyd_answer(&arachne, "POST", "cancel.json", &cancelled).await,
        scrapyd_answer(&scrapyd, "POST", "cancel.json", &cancelled).await,
    );
    master.stop().await;
}
