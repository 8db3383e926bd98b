//! Scrapyd's JSON API over any [`Backend`], served on a listener of its own so clients that assume root paths
//! (python-scrapyd-api, ScrapydWeb, scripts) work unchanged. It only maps: a Scrapyd project is an Arachne
//! spider whose command is `scrapy` (or `python -m scrapy`), a job is a task, a Scrapy spider and its
//! arguments and settings become the task's arguments (`crawl NAME -a K=V -s K=V`). Answers and errors have
//! Scrapyd's shapes: `{"node_name", "status": "ok", ...}`, and `{"status": "error", "message"}` with HTTP 200.
//! Clients authenticate with HTTP basic auth whose password is an Arachne API token, always. The HTML pages
//! Scrapyd's web tools read are in [`pages`].

use std::sync::Arc;

use arachne_api_types::{Task, TaskQuery};
use arachne_shared::{TaskId, TaskStatus};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::Backend;

mod pages;

/// How the Scrapyd listener behaves.
#[derive(Debug, Clone)]
pub struct ScrapydOptions {
    /// `node_name` in every answer (Scrapyd answers with its host name).
    pub node_name: String,
    /// Largest egg `addversion.json` takes.
    pub max_egg_bytes: usize,
}

/// Finished jobs `listjobs.json` lists per status, newest first (Scrapyd keeps 100 by default).
const FINISHED_LISTED: u32 = 100;
/// Largest form body accepted; an egg upload is not taken here.
const MAX_FORM_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct Ctx {
    backend: Arc<dyn Backend>,
    node_name: Arc<str>,
}

/// The Scrapyd API's routes.
pub fn router(backend: Arc<dyn Backend>, options: &ScrapydOptions) -> Router {
    let ctx = Ctx {
        backend,
        node_name: options.node_name.as_str().into(),
    };
    let routes = Router::new()
        .route("/", get(pages::home))
        .route("/jobs", get(pages::jobs_table))
        .route("/daemonstatus.json", get(serve(daemon_status)))
        .route("/listprojects.json", get(serve(list_projects)))
        .route("/listversions.json", get(serve(list_versions)))
        .route("/listspiders.json", get(serve(list_spiders)))
        .route(
            "/addversion.json",
            post(add_version).layer(axum::extract::DefaultBodyLimit::max(options.max_egg_bytes)),
        )
        .route("/listjobs.json", get(serve(list_jobs)))
        .route("/status.json", get(serve(status)))
        .route("/schedule.json", post(serve(schedule)))
        .route("/cancel.json", post(serve(cancel)))
        .route("/delversion.json", post(serve(delete_version)))
        .route("/delproject.json", post(serve(delete_project)))
        .route("/logs/{project}/{spider}/{job}", get(log_file))
        .route("/items/{project}/{spider}/{job}", get(items_file));
    // Always: its clients post plain forms, which the browser protections of the main API cannot tell from
    // another site's page, so it is never served without tokens.
    let routes = routes.layer(axum::middleware::from_fn_with_state(
        ctx.clone(),
        basic_auth,
    ));
    routes.with_state(ctx)
}

/// Why a Scrapyd request failed, in Scrapyd's words where it has them.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("'{0}' parameter is required")]
    Missing(&'static str),
    #[error("{param} is invalid: {reason}")]
    Invalid { param: &'static str, reason: String },
    #[error("project '{0}' not found")]
    NoProject(String),
    #[error("version '{0}' not found")]
    NoVersion(String),
    #[error("spider '{0}' not found")]
    NoSpider(String),
    #[error(
        "project '{project}' is not a Scrapy project for this API: its command is `{cmd}`, where `scrapy` (or `python -m scrapy`) is expected, so that a job can name its spider"
    )]
    NotScrapy { project: String, cmd: String },
    #[error("{0}")]
    Backend(#[from] crate::Error),
}

type Answer = Result<Map<String, Value>, Error>;

/// A handler of a Scrapyd endpoint, served with its parameters read and its answer in Scrapyd's envelope.
fn serve<F, Fut>(
    handler: F,
) -> impl Fn(State<Ctx>, Request) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static
where
    F: Fn(Ctx, Params) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    move |State(ctx): State<Ctx>, request: Request| {
        let handler = handler.clone();
        Box::pin(async move {
            let answer = match Params::of(request).await {
                Ok(params) => handler(ctx.clone(), params).await,
                Err(err) => Err(err),
            };
            reply(&ctx, answer)
        })
    }
}

/// Wraps an answer in Scrapyd's envelope.
fn reply(ctx: &Ctx, answer: Answer) -> Response {
    let mut body = match answer {
        Ok(mut fields) => {
            fields.insert("status".into(), "ok".into());
            fields
        }
        Err(err) => {
            let mut fields = Map::new();
            fields.insert("status".into(), "error".into());
            fields.insert("message".into(), err.to_string().into());
            fields
        }
    };
    body.insert("node_name".into(), ctx.node_name.as_ref().into());
    Json(Value::Object(body)).into_response()
}

/// A request's parameters, from its query string and a form body, as Scrapyd reads them; a name may repeat.
struct Params(Vec<(String, String)>);

impl Params {
    async fn of(request: Request) -> Result<Self, Error> {
        let (parts, body) = request.into_parts();
        let mut pairs: Vec<(String, String)> = parts
            .uri
            .query()
            .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
            .unwrap_or_default();
        let form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form {
            let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
                .await
                .map_err(|err| Error::Invalid {
                    param: "body",
                    reason: err.to_string(),
                })?;
            let body: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&bytes).map_err(|err| Error::Invalid {
                    param: "body",
                    reason: err.to_string(),
                })?;
            pairs.extend(body);
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<&str, Error> {
        self.get(name).ok_or(Error::Missing(name))
    }
}

/// Scrapyd's clients send an Arachne API token as the basic-auth password. Reading takes a viewer's role;
/// a POST (deploy, schedule, cancel, delete) a developer's, and goes to the audit log.
async fn basic_auth(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    let caller = match password(request.headers()) {
        Some(secret) => ctx.backend.caller(&secret).await.ok().flatten(),
        None => None,
    };
    let Some(caller) = caller else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"Scrapyd\"")],
            "Unauthorized: basic auth with an Arachne API token as the password\n",
        )
            .into_response();
    };
    let changes = request.method() == axum::http::Method::POST;
    if changes && caller.role < arachne_shared::Role::Developer {
        let message = format!(
            "Forbidden: this needs the developer role; {} has {}\n",
            caller.actor, caller.role
        );
        return (StatusCode::FORBIDDEN, message).into_response();
    }
    let (method, target) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    if changes {
        ctx.backend
            .record_audit(arachne_shared::AuditEntry {
                id: arachne_shared::AuditId::new(),
                at: chrono::Utc::now(),
                actor: caller.actor,
                action: format!("{method} (Scrapyd) {target}"),
                target: target.clone(),
                status: response.status().as_u16(),
            })
            .await;
    }
    response
}

/// The password of an `Authorization: Basic` header.
fn password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

async fn daemon_status(ctx: Ctx, _: Params) -> Answer {
    let jobs = jobs(&ctx, None).await?;
    Ok(fields(json!({
        "pending": jobs.pending.len(),
        "running": jobs.running.len(),
        "finished": jobs.finished.len(),
    })))
}

async fn list_projects(ctx: Ctx, _: Params) -> Answer {
    let spiders = ctx.backend.list_spiders().await?;
    let projects: Vec<String> = spiders.into_iter().map(|s| s.name).collect();
    Ok(fields(json!({ "projects": projects })))
}

async fn list_versions(ctx: Ctx, params: Params) -> Answer {
    // As Scrapyd's egg storage does: a project it does not know has no versions.
    let labels: Vec<String> = match project(&ctx, params.required("project")?).await {
        Ok(project) => ctx.backend.scrapy_versions(&project.name).await?,
        Err(Error::NoProject(_)) => Vec::new(),
        Err(err) => return Err(err),
    }
    .into_iter()
    .map(|v| v.label)
    .collect();
    Ok(fields(json!({ "versions": labels })))
}

async fn list_spiders(ctx: Ctx, params: Params) -> Answer {
    let project = scrapy_project(&ctx, params.required("project")?).await?;
    let (_, spiders) = spiders_of(&ctx, &project.name, params.get("_version")).await?;
    Ok(fields(json!({ "spiders": spiders })))
}

/// `addversion.json`: a multipart form with `project`, `version` and the `egg` file, as scrapyd-deploy sends.
async fn add_version(State(ctx): State<Ctx>, request: Request) -> Response {
    let answer = async {
        let multipart = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        if !multipart {
            // A plain form can hold no egg: say which parameter is missing first, as Scrapyd does.
            let params = Params::of(request).await?;
            params.required("project")?;
            params.required("version")?;
            return Err(Error::Missing("egg"));
        }
        let (mut project, mut version, mut egg) = (None, None, None);
        let mut form = <axum::extract::Multipart as axum::extract::FromRequest<()>>::from_request(
            request,
            &(),
        )
        .await
        .map_err(|err| Error::Invalid {
            param: "body",
            reason: err.body_text(),
        })?;
        let invalid = |err: axum::extract::multipart::MultipartError| Error::Invalid {
            param: "body",
            reason: err.body_text(),
        };
        while let Some(field) = form.next_field().await.map_err(invalid)? {
            match field.name() {
                Some("project") => project = Some(field.text().await.map_err(invalid)?),
                Some("version") => version = Some(field.text().await.map_err(invalid)?),
                Some("egg") => egg = Some(field.bytes().await.map_err(invalid)?),
                _ => {}
            }
        }
        let project = project.ok_or(Error::Missing("project"))?;
        let version = version.ok_or(Error::Missing("version"))?;
        let egg = egg.ok_or(Error::Missing("egg"))?;
        let spiders = ctx
            .backend
            .deploy_egg(&project, &version, egg.to_vec())
            .await?;
        Ok(fields(json!({
            "project": project,
            "version": version,
            "spiders": spiders.len(),
        })))
    }
    .await;
    reply(&ctx, answer)
}

async fn schedule(ctx: Ctx, params: Params) -> Answer {
    let project = scrapy_project(&ctx, params.required("project")?).await?;
    let spider = params.required("spider")?;
    let jobid = params.get("jobid").map(client_job_id).transpose()?;
    let (version, spiders) = spiders_of(&ctx, &project.name, params.get("_version")).await?;
    if !spiders.iter().any(|s| s == spider) {
        return Err(Error::NoSpider(spider.to_owned()));
    }
    let priority = match params.get("priority") {
        Some(text) => Some(priority(text)?),
        None => None,
    };
    let (mut args, mut settings) = (Vec::new(), Vec::new());
    for (key, value) in &params.0 {
        match key.as_str() {
            "project" | "spider" | "_version" | "priority" | "jobid" => {}
            "setting" => {
                let (name, value) = value.split_once('=').unwrap_or((value, ""));
                settings.push((name.to_owned(), value.to_owned()));
            }
            _ => args.push((key.clone(), value.clone())),
        }
    }
    let run = arachne_api_types::RunTask {
        spider: project.name,
        version,
        param: Some(arachne_shared::scrapy::crawl_args(spider, &args, &settings)),
        priority,
        ..Default::default()
    };
    let task = ctx.backend.run_job(run, jobid).await?;
    Ok(fields(json!({ "jobid": job_id(&task) })))
}

async fn cancel(ctx: Ctx, params: Params) -> Answer {
    let project = project(&ctx, params.required("project")?).await?;
    let job = params.required("job")?;
    // Scrapyd's `signal` picks the signal; Arachne's cancel asks the spider, then escalates.
    let prevstate = match job_of(&ctx, Some(&project.name), job).await? {
        Some(task) if !task.status.is_terminal() => {
            let state = state_of(task.status);
            ctx.backend.cancel_task(task.id).await?;
            Value::from(state)
        }
        _ => Value::Null,
    };
    Ok(fields(json!({ "prevstate": prevstate })))
}

/// `delversion.json`: as in Scrapyd, the project goes with its last version. Arachne refuses while a job
/// runs or waits on that version, which Scrapyd does not check.
async fn delete_version(ctx: Ctx, params: Params) -> Answer {
    let name = params.required("project")?;
    let version = params.required("version")?;
    // Scrapyd looks for the version's egg first, so an unknown project is an unknown version.
    let project = match project(&ctx, name).await {
        Err(Error::NoProject(_)) => return Err(Error::NoVersion(version.to_owned())),
        other => other?,
    };
    let hash = version_of(&ctx, &project.name, version).await?;
    ctx.backend
        .scrapy_delete_version(&project.name, &hash)
        .await?;
    Ok(Map::new())
}

/// `delproject.json`: the project's versions and schedules go; its finished jobs stay listed, as in Scrapyd.
/// Arachne refuses while any of its jobs runs or waits.
async fn delete_project(ctx: Ctx, params: Params) -> Answer {
    let project = project(&ctx, params.required("project")?).await?;
    ctx.backend.delete_spider(&project.name, false).await?;
    Ok(Map::new())
}

async fn status(ctx: Ctx, params: Params) -> Answer {
    let job = params.required("job")?;
    let project = match params.get("project") {
        Some(name) => Some(project(&ctx, name).await?.name),
        None => None,
    };
    let currstate = job_of(&ctx, project.as_deref(), job)
        .await?
        .map(|t| state_of(t.status));
    Ok(fields(json!({ "currstate": currstate })))
}

async fn list_jobs(ctx: Ctx, params: Params) -> Answer {
    let project = match params.get("project") {
        Some(name) => Some(project(&ctx, name).await?.name),
        None => None,
    };
    let jobs = jobs(&ctx, project).await?;
    Ok(fields(json!({
        "pending": jobs.pending.iter().map(pending_job).collect::<Vec<_>>(),
        "running": jobs.running.iter().map(running_job).collect::<Vec<_>>(),
        "finished": jobs.finished.iter().map(finished_job).collect::<Vec<_>>(),
    })))
}

/// Tasks as Scrapyd's jobs, by state.
struct Jobs {
    pending: Vec<Task>,
    running: Vec<Task>,
    /// The latest [`FINISHED_LISTED`], newest first.
    finished: Vec<Task>,
}

/// The jobs of a project (of all, when `None`). A run on several nodes is its children's jobs, and the
/// `scrapy list` runs that find a version's spiders are none.
async fn jobs(ctx: &Ctx, project: Option<String>) -> Result<Jobs, Error> {
    let tasks = |status, limit| {
        let (backend, project) = (Arc::clone(&ctx.backend), project.clone());
        async move {
            let query = TaskQuery {
                spider: project,
                status: Some(status),
                limit: Some(limit),
                ..TaskQuery::default()
            };
            let page = backend.list_tasks(query).await?;
            Ok::<_, Error>(page.items.into_iter().filter(|t| {
                t.children == 0 && t.param.as_deref() != Some(arachne_shared::scrapy::LIST_ARGS)
            }))
        }
    };
    let max = arachne_api_types::MAX_LIMIT;
    let mut pending = Vec::new();
    for status in [TaskStatus::Created, TaskStatus::Pending] {
        pending.extend(tasks(status, max).await?);
    }
    let running = tasks(TaskStatus::Running, max).await?.collect();
    let mut finished: Vec<Task> = Vec::new();
    for status in TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        finished.extend(tasks(status, FINISHED_LISTED).await?);
    }
    finished.sort_by_key(|t| std::cmp::Reverse(t.ended_at));
    finished.truncate(FINISHED_LISTED as usize);
    Ok(Jobs {
        pending,
        running,
        finished,
    })
}

/// `/logs/{project}/{spider}/{job}.log`: the task's whole log, one line each.
async fn log_file(State(ctx): State<Ctx>, Path(path): Path<(String, String, String)>) -> Response {
    output_file(ctx, path, OutputFile::Log).await
}

/// `/items/{project}/{spider}/{job}.jl`: the task's items as JSON lines, as the spider wrote them.
async fn items_file(
    State(ctx): State<Ctx>,
    Path(path): Path<(String, String, String)>,
) -> Response {
    output_file(ctx, path, OutputFile::Items).await
}

/// The two files of a job's output Scrapyd serves.
#[derive(Debug, Clone, Copy)]
enum OutputFile {
    Log,
    Items,
}

async fn output_file(
    ctx: Ctx,
    (project, _spider, job): (String, String, String),
    kind: OutputFile,
) -> Response {
    let (suffix, content_type) = match kind {
        OutputFile::Log => (".log", "text/plain; charset=utf-8"),
        OutputFile::Items => (".jl", "application/x-ndjson"),
    };
    let Some(task) = file_task(&ctx, &project, &job, suffix).await else {
        return not_found();
    };
    let backend = Arc::clone(&ctx.backend);
    let pages = lines_of(move |after, limit| {
        let backend = Arc::clone(&backend);
        async move {
            Ok(match kind {
                OutputFile::Log => backend
                    .logs(task, after, limit)
                    .await?
                    .into_iter()
                    .map(|l| (l.seq, l.text))
                    .collect(),
                OutputFile::Items => backend
                    .items(task, after, limit)
                    .await?
                    .into_iter()
                    .map(|i| (i.seq, i.data.get().to_owned()))
                    .collect(),
            })
        }
    });
    let body = Body::from_stream(pages);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A file of lines read page by page: `fetch(after, limit)` gives `(seq, line)` pairs after a sequence number.
fn lines_of<F, Fut>(
    fetch: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    F: Fn(u64, u32) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = crate::Result<Vec<(u64, String)>>> + Send,
{
    let fetch = Arc::new(fetch);
    futures_util::stream::unfold(Some(0u64), move |after| {
        let fetch = Arc::clone(&fetch);
        async move {
            let after = after?;
            let limit = arachne_api_types::MAX_LIMIT;
            match fetch(after, limit).await {
                Ok(lines) if lines.is_empty() => None,
                Ok(lines) => {
                    let full = lines.len() == limit as usize;
                    let next = lines.last().map(|(seq, _)| *seq).filter(|_| full);
                    let mut text = String::new();
                    for (_, line) in &lines {
                        text.push_str(line);
                        text.push('\n');
                    }
                    Some((Ok(Bytes::from(text)), next))
                }
                Err(err) => Some((Err(std::io::Error::other(err.to_string())), None)),
            }
        }
    })
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "No Such Resource\n").into_response()
}

/// The task a log or items file names, when it is a task of that project.
async fn file_task(ctx: &Ctx, project: &str, file: &str, suffix: &str) -> Option<TaskId> {
    let job = file.strip_suffix(suffix)?;
    let task = job_of(ctx, Some(project), job).await.ok()??;
    Some(task.id)
}

/// The spider a project names.
async fn project(ctx: &Ctx, name: &str) -> Result<arachne_api_types::Spider, Error> {
    match ctx.backend.get_spider(name).await {
        Ok(spider) => Ok(spider),
        Err(crate::Error::NotFound(_)) => Err(Error::NoProject(name.to_owned())),
        Err(err) => Err(err.into()),
    }
}

/// A project whose command can take `crawl NAME ...`.
async fn scrapy_project(ctx: &Ctx, name: &str) -> Result<arachne_api_types::Spider, Error> {
    let spider = project(ctx, name).await?;
    if arachne_shared::scrapy::is_project_command(&spider.cmd) {
        Ok(spider)
    } else {
        Err(Error::NotScrapy {
            project: spider.name,
            cmd: spider.cmd,
        })
    }
}

/// The stored version a `_version` names: the name its client deployed it as, or a unique prefix of its hash.
async fn version_of(ctx: &Ctx, project: &str, name: &str) -> Result<String, Error> {
    match ctx.backend.scrapy_version(project, name).await {
        Ok(hash) => Ok(hash),
        Err(crate::Error::NotFound(_)) => Err(Error::NoVersion(name.to_owned())),
        Err(err) => Err(err.into()),
    }
}

/// The stored version a `_version` names (the current one when absent, then `None`) and its Scrapy spiders.
async fn spiders_of(
    ctx: &Ctx,
    project: &str,
    version: Option<&str>,
) -> Result<(Option<String>, Vec<String>), Error> {
    let version = match version {
        Some(label) => Some(version_of(ctx, project, label).await?),
        None => None,
    };
    let spiders = ctx
        .backend
        .scrapy_spiders(project, version.as_deref())
        .await?;
    Ok((version, spiders))
}

/// The task a job id names (a task id, or the `jobid` its client chose: the newest such job Scrapyd would
/// still list), when it is one of the project's (of any, when `None`).
async fn job_of(ctx: &Ctx, project: Option<&str>, job: &str) -> Result<Option<Task>, Error> {
    if let Ok(id) = job.parse::<TaskId>() {
        match ctx.backend.get_task(id).await {
            Ok(task) if project.is_none_or(|p| p == task.spider_name) => return Ok(Some(task)),
            Ok(_) | Err(crate::Error::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let jobs = jobs(ctx, project.map(str::to_owned)).await?;
    Ok(jobs
        .pending
        .into_iter()
        .chain(jobs.running)
        .chain(jobs.finished)
        .find(|t| t.client_job_id.as_deref() == Some(job)))
}

/// A job's id as its client knows it: the `jobid` it chose, else the task's id.
fn job_id(task: &Task) -> String {
    task.client_job_id
        .clone()
        .unwrap_or_else(|| task.id.to_string())
}

/// A client's `jobid`: it names the job's log and items files, so it is a file name.
fn client_job_id(jobid: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::Invalid {
        param: "jobid",
        reason: reason.to_owned(),
    };
    if jobid.is_empty() || jobid.chars().count() > 200 {
        return Err(bad("it must be 1 to 200 characters"));
    }
    if jobid.contains('/') || jobid.chars().any(char::is_control) || jobid.starts_with('.') {
        return Err(bad(
            "it names the job's log file: no '/', no control characters, no leading '.'",
        ));
    }
    Ok(jobid.to_owned())
}

/// Scrapyd's priority (any number, higher first, 0 by default) as Arachne's (1 highest to 10, 5 by default).
fn priority(text: &str) -> Result<u8, Error> {
    let value: f64 = text.trim().parse().map_err(|_| Error::Invalid {
        param: "priority",
        // Scrapyd converts the raw bytes, so Python names them as bytes.
        reason: format!("could not convert string to float: b'{text}'"),
    })?;
    if !value.is_finite() {
        return Err(Error::Invalid {
            param: "priority",
            reason: format!("{text} is not a finite number"),
        });
    }
    Ok((5.0 - value.round()).clamp(1.0, 10.0) as u8)
}

fn state_of(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Created | TaskStatus::Pending => "pending",
        TaskStatus::Running => "running",
        _ => "finished",
    }
}

/// The crawl a task runs: its Scrapy spider, arguments and settings as Scrapyd's API wrote them. Arguments
/// written otherwise (by a user, with `-o`, say) give the word after `crawl` as the spider and no arguments;
/// a task that crawls nothing, the project's name.
fn crawl_of(task: &Task) -> arachne_shared::scrapy::Crawl {
    if let Some(crawl) = task
        .param
        .as_deref()
        .and_then(arachne_shared::scrapy::parse_crawl)
    {
        return crawl;
    }
    let line = task.command_line();
    let mut words = line.split_whitespace();
    let spider = words
        .by_ref()
        .find(|w| *w == "crawl")
        .and(words.next())
        .map(|w| w.trim_matches('\'').to_owned());
    arachne_shared::scrapy::Crawl {
        spider: spider.unwrap_or_else(|| task.spider_name.clone()),
        ..Default::default()
    }
}

/// The Scrapy spider a task crawls.
fn scrapy_spider(task: &Task) -> String {
    crawl_of(task).spider
}

/// A time as Scrapyd writes one (`2026-12-07 08:30:00.123456`); Arachne's are UTC.
fn time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |at| {
        at.format("%Y-%m-%d %H:%M:%S%.6f").to_string().into()
    })
}

fn urls(task: &Task, spider: &str) -> (String, String) {
    let base = format!("{}/{spider}/{}", task.spider_name, job_id(task));
    (format!("/logs/{base}.log"), format!("/items/{base}.jl"))
}

fn pending_job(task: &Task) -> Value {
    let crawl = crawl_of(task);
    let map = |pairs: Vec<(String, String)>| -> Map<String, Value> {
        pairs.into_iter().map(|(k, v)| (k, v.into())).collect()
    };
    json!({
        "project": task.spider_name,
        "spider": crawl.spider,
        "id": job_id(task),
        "version": task.version,
        "settings": map(crawl.settings),
        "args": map(crawl.args),
    })
}

/// A started job's listing, running or finished: its names and where its log and items are, then the
/// fields of its state (`state`: a running job's pid and start, a finished one's start and end).
fn started_job(task: &Task, state: Value) -> Value {
    let spider = scrapy_spider(task);
    let (log_url, items_url) = urls(task, &spider);
    let mut job = fields(json!({
        "project": task.spider_name,
        "spider": spider,
        "id": job_id(task),
        "log_url": log_url,
        "items_url": items_url,
    }));
    job.extend(fields(state));
    Value::Object(job)
}

fn running_job(task: &Task) -> Value {
    started_job(
        task,
        json!({ "pid": task.pid, "start_time": time(task.started_at) }),
    )
}

fn finished_job(task: &Task) -> Value {
    started_job(
        task,
        json!({
            "start_time": time(task.started_at.or(Some(task.created_at))),
            "end_time": time(task.ended_at),
        }),
    )
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_higher_first_onto_one_to_ten() {
        assert_eq!(priority("0").unwrap(), 5);
        assert_eq!(priority("1.4").unwrap(), 4);
        assert_eq!(priority("100").unwrap(), 1);
        assert_eq!(priority("-9").unwrap(), 10);
        assert!(priority("high").is_err());
        assert!(priority("nan").is_err());
    }

    #[test]
    fn a_pending_job_lists_its_spider_arguments_and_settings() {
        let spider = arachne_shared::Spider::new("quotes", "scrapy", Utc::now());
        let mut task = arachne_shared::Task::pending(&spider, Utc::now());
        task.param = Some(arachne_shared::scrapy::crawl_args(
            "quotes",
            &[("tag".into(), "life & death".into())],
            &[("DOWNLOAD_DELAY".into(), "2".into())],
        ));
        task.client_job_id = Some("j1".into());
        let job = pending_job(&Task::from(task));
        assert_eq!(job["spider"], "quotes");
        assert_eq!(job["id"], "j1");
        assert_eq!(job["args"], json!({"tag": "life & death"}));
        assert_eq!(job["settings"], json!({"DOWNLOAD_DELAY": "2"}));
    }

    #[test]
    fn a_crawl_written_by_hand_still_names_its_spider() {
        let spider = arachne_shared::Spider::new("quotes", "scrapy", Utc::now());
        let mut task = arachne_shared::Task::pending(&spider, Utc::now());
        task.param = Some("crawl books -o out.json".into());
        assert_eq!(scrapy_spider(&Task::from(task.clone())), "books");
        task.param = Some("list".into());
        assert_eq!(scrapy_spider(&Task::from(task)), "quotes");
    }

    #[test]
    fn a_basic_auth_password_is_read() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("user:secret:x");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(password(&headers).as_deref(), Some("secret:x"));
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(password(&headers), None);
    }
}
