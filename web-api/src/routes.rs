//! The HTTP routes, `/health` and everything under `/api/v1`, over any [`Backend`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use arachne_shared::{ChangeKind, TaskChanged, TaskId, TaskStatus};
use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, State};
use axum::http::Method;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use axum::{Json, Router};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::csv::Columns;
use crate::openapi::{self, Doc, Reply};
use crate::{Backend, Error, Result};
use arachne_api_types::{
    CLIENT_HEADER, CreateSpider, CronPreview, CronQuery, DEFAULT_LIMIT, EVENT_DELETED, EVENT_END,
    EVENT_LAGGED, EVENT_LOG, EVENT_TASK, EventQuery, ItemFormat, ItemQuery, LOG_SEARCH_SCAN,
    LogQuery, LogSearch, LogSearchQuery, MAX_LIMIT, Page, RunTask, ScheduleSpec, ScheduleView,
    Spool, TaskQuery, TaskTree, UpdateNode, Upload, UploadedFile, VersionFiles, VersionQuery,
    WaitQuery,
};

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Largest spider archive accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Uploads received at once; more wait their turn before their body is read.
    pub max_concurrent_uploads: usize,
    /// Where uploads are spooled as they arrive (unnamed files); the system's temporary folder when `None`.
    pub upload_dir: Option<std::path::PathBuf>,
    /// Every route but `/health` needs `Authorization: Bearer <API token>`. Off only by explicit choice.
    pub require_token: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            max_upload_bytes: 256 << 20,
            max_concurrent_uploads: 2,
            upload_dir: None,
            require_token: true,
        }
    }
}

type Api = Arc<dyn Backend>;

/// Builds the router for `backend` from the table of [`endpoints`], which also makes its OpenAPI document.
pub fn router(backend: Api, options: &RouterOptions) -> Router {
    let mut table = endpoints(options);
    let openapi_doc = Doc {
        method: Method::GET,
        path: "/api/v1/openapi.json",
        summary: "This document: every route, its parameters and its types",
        query: None,
        body: None,
        reply: Reply::Json(200, openapi::schema::<serde_json::Value>),
        secured: true,
    };
    let mut docs: Vec<Doc> = table.iter().map(|(doc, _)| doc.clone()).collect();
    docs.push(openapi_doc.clone());
    let document = serde_json::to_string(&openapi::document(&docs)).expect("documents serialise");
    let serve_document =
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) });
    table.push((openapi_doc, serve_document));

    let auth = axum::middleware::from_fn_with_state(Arc::clone(&backend), authenticate);
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<Api>> = Default::default();
    for (doc, handler) in table {
        // Scrapers of /metrics authenticate like any client: Prometheus sends a bearer token too.
        let handler = if doc.secured && options.require_token {
            handler.layer(auth.clone())
        } else {
            handler
        };
        let merged = match by_path.remove(doc.path) {
            Some(other) => other.merge(handler),
            None => handler,
        };
        by_path.insert(doc.path, merged);
    }
    let mut router = Router::new();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    let router = router
        .merge(crate::ui::routes())
        .fallback(|| async { Error::NotFound("no such route".into()) })
        .layer(axum::middleware::map_response_with_state(
            Arc::new(allowed_methods(&docs)),
            method_not_allowed,
        ));
    // Without tokens, the only defence against a page in the browser of someone on this machine is the
    // request itself: another site's page can make the browser send it (CSRF), and a name of its own that
    // resolves to 127.0.0.1 (DNS rebinding) even read the answers.
    let router = if options.require_token {
        router
    } else {
        router.layer(axum::middleware::from_fn(loopback_only))
    };
    router.with_state(backend)
}

/// For a master without tokens: refuses a Host header that is not loopback, and a state-changing request
/// that has neither a JSON body nor [`CLIENT_HEADER`] (a form or a bare POST another site's page can send).
async fn loopback_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return Err(Error::Forbidden(format!(
            "Host {host:?} is not a loopback name: without tokens this master answers only requests addressed to localhost, 127.0.0.1 or [::1]"
        )));
    }
    let changes_state = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if changes_state && !json && !request.headers().contains_key(CLIENT_HEADER) {
        return Err(Error::Forbidden(format!(
            "without tokens, a {} needs a JSON body or the {CLIENT_HEADER} header (which the CLI and the web UI send), so that another site's page cannot make a browser send it",
            request.method()
        )));
    }
    Ok(next.run(request).await)
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Each documented path with the methods it answers, for the message of a 405.
type Allowed = Arc<HashMap<&'static str, String>>;

fn allowed_methods(docs: &[Doc]) -> HashMap<&'static str, String> {
    let mut allowed: HashMap<&'static str, Vec<String>> = HashMap::new();
    for doc in docs {
        allowed
            .entry(doc.path)
            .or_default()
            .push(doc.method.to_string());
    }
    allowed
        .into_iter()
        .map(|(path, methods)| (path, methods.join(", ")))
        .collect()
}

/// Gives axum's bare 405 the JSON error body every other error has; axum adds the `Allow` header after.
async fn method_not_allowed(
    State(allowed): State<Allowed>,
    method: Method,
    matched: Option<axum::extract::MatchedPath>,
    response: Response,
) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let message = match matched.and_then(|m| allowed.get(m.as_str())) {
        Some(methods) => format!("{method} is not allowed here; use {methods}"),
        None => format!("{method} is not allowed here"),
    };
    Error::MethodNotAllowed(message).into_response()
}

/// A route with its documentation.
type Endpoint = (Doc, MethodRouter<Api>);

/// Every route but the OpenAPI document's own.
fn endpoints(options: &RouterOptions) -> Vec<Endpoint> {
    use openapi::{Body as In, Reply as Out, inline, schema};
    let route = |method: Method,
                 path: &'static str,
                 summary: &'static str,
                 (query, body): (Option<openapi::SchemaFn>, Option<In>),
                 reply: Out,
                 handler: MethodRouter<Api>| {
        let doc = Doc {
            method,
            path,
            summary,
            query,
            body,
            reply,
            secured: path != "/health",
        };
        (doc, handler)
    };
    let none = (None, None);
    let body = |schema: openapi::SchemaFn| (None, Some(In::Json(schema)));
    let query = |schema: openapi::SchemaFn| (Some(schema), None);
    vec![
        route(
            Method::GET,
            "/health",
            "Health for load balancers; needs no token. 503 with the cause while the store refuses writes",
            none,
            Out::Json(200, schema::<arachne_api_types::Health>),
            get(health),
        ),
        route(
            Method::GET,
            "/metrics",
            "Prometheus metrics: tasks by status, dispatch latency, ingest counters, nodes, slots",
            none,
            Out::Media(crate::metrics::CONTENT_TYPE),
            get(metrics),
        ),
        route(
            Method::GET,
            "/api/v1/spiders",
            "List spiders",
            none,
            Out::Json(200, schema::<Vec<arachne_shared::Spider>>),
            get(list_spiders),
        ),
        route(
            Method::POST,
            "/api/v1/spiders",
            "Create a spider, or update the one of that name",
            body(schema::<CreateSpider>),
            Out::Json(201, schema::<arachne_shared::Spider>),
            post(put_spider),
        ),
        route(
            Method::GET,
            "/api/v1/spiders/{name}",
            "Show a spider",
            none,
            Out::Json(200, schema::<arachne_shared::Spider>),
            get(get_spider),
        ),
        route(
            Method::PUT,
            "/api/v1/spiders/{name}/files",
            "Upload a new version of a spider's files (a .tar.gz or .zip body, or multipart files) and make it current",
            (None, Some(In::Upload)),
            Out::Json(200, schema::<arachne_shared::Spider>),
            put({
                let place = Arc::new(SpoolPlace {
                    dir: options.upload_dir.clone(),
                    max_bytes: options.max_upload_bytes as u64,
                });
                move |state, path, request| upload_files(state, path, request, Arc::clone(&place))
            })
            .layer(DefaultBodyLimit::max(options.max_upload_bytes))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(tokio::sync::Semaphore::new(
                    options.max_concurrent_uploads.max(1),
                )),
                wait_for_an_upload_slot,
            )),
        ),
        route(
            Method::GET,
            "/api/v1/spiders/{name}/files",
            "List the files of a version (the current one by default)",
            query(inline::<VersionQuery>),
            Out::Json(200, schema::<VersionFiles>),
            get(list_files),
        ),
        route(
            Method::GET,
            "/api/v1/spiders/{name}/files/{*path}",
            "Read one file of a version",
            query(inline::<VersionQuery>),
            Out::Media("application/octet-stream"),
            get(read_file),
        ),
        route(
            Method::GET,
            "/api/v1/spiders/{name}/versions",
            "List a spider's versions, newest first",
            none,
            Out::Json(200, schema::<Vec<arachne_shared::files::VersionInfo>>),
            get(list_versions),
        ),
        route(
            Method::POST,
            "/api/v1/spiders/{name}/versions/{version}/current",
            "Make a stored version the one runs use",
            none,
            Out::Json(200, schema::<arachne_shared::Spider>),
            post(set_current_version),
        ),
        route(
            Method::GET,
            "/api/v1/tasks",
            "List tasks, newest first, filtered by spider, status, node, parent, schedule and creation time",
            query(inline::<TaskQuery>),
            Out::Json(200, schema::<Page<arachne_shared::Task>>),
            get(list_tasks),
        ),
        route(
            Method::POST,
            "/api/v1/tasks",
            "Run a spider: one task, or a parent with a child per node",
            body(schema::<RunTask>),
            Out::Json(201, schema::<arachne_shared::Task>),
            post(run_task),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}",
            "Show a task",
            none,
            Out::Json(200, schema::<arachne_shared::Task>),
            get(get_task),
        ),
        route(
            Method::DELETE,
            "/api/v1/tasks/{id}",
            "Delete an ended task with its logs and items (a parent with its children)",
            none,
            Out::NoContent,
            delete(delete_task),
        ),
        route(
            Method::POST,
            "/api/v1/tasks/{id}/cancel",
            "Cancel a task; its processes are killed",
            none,
            Out::Json(200, schema::<arachne_shared::Task>),
            post(cancel_task),
        ),
        route(
            Method::POST,
            "/api/v1/tasks/{id}/restart",
            "Run an ended task again (for a parent, its children that did not finish)",
            none,
            Out::Json(201, schema::<arachne_shared::Task>),
            post(restart_task),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}/tree",
            "A task with its children",
            none,
            Out::Json(200, schema::<TaskTree>),
            get(task_tree),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}/logs",
            "Log lines after a sequence number; with follow=true, Server-Sent Events `log` (id = sequence number; Last-Event-ID resumes) then `end`",
            query(inline::<LogQuery>),
            Out::Json(200, schema::<Vec<arachne_shared::LogLine>>),
            get(logs),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}/logs/search",
            "Log lines holding a text (case-insensitive), scanning a bounded stretch per request; continue after `scanned_to` until `done`",
            query(inline::<LogSearchQuery>),
            Out::Json(200, schema::<LogSearch>),
            get(search_logs),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}/items",
            "Items after a sequence number: JSON, JSON lines (format=jsonl) or a CSV export of all of them (format=csv)",
            query(inline::<ItemQuery>),
            Out::Json(200, schema::<Vec<arachne_shared::ItemRecord>>),
            get(items),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}/wait",
            "Answer when the run ends or the timeout passes, with its latest attempt: a failed attempt with retries left is followed to its retry",
            query(inline::<WaitQuery>),
            Out::Json(200, schema::<arachne_shared::Task>),
            get(wait),
        ),
        route(
            Method::GET,
            "/api/v1/events",
            "Task changes as Server-Sent Events",
            query(inline::<EventQuery>),
            Out::Events(
                "`task` events (the task as JSON) on every status change and STATUS report, `deleted` ({\"id\"}) and `lagged` ({\"missed\"}) when changes were skipped",
            ),
            get(events),
        ),
        route(
            Method::GET,
            "/api/v1/schedules",
            "List schedules with their next fire times",
            none,
            Out::Json(200, schema::<Vec<ScheduleView>>),
            get(list_schedules),
        ),
        route(
            Method::POST,
            "/api/v1/schedules",
            "Create a cron schedule",
            body(schema::<ScheduleSpec>),
            Out::Json(201, schema::<ScheduleView>),
            post(create_schedule),
        ),
        route(
            Method::GET,
            "/api/v1/cron",
            "Check a cron expression in a time zone: its next 5 fire times, or a 400 naming the bad field",
            query(inline::<CronQuery>),
            Out::Json(200, schema::<CronPreview>),
            get(cron_preview),
        ),
        route(
            Method::GET,
            "/api/v1/schedules/{name}",
            "Show a schedule with its next 5 fire times",
            none,
            Out::Json(200, schema::<ScheduleView>),
            get(get_schedule),
        ),
        route(
            Method::PUT,
            "/api/v1/schedules/{name}",
            "Replace a schedule's definition",
            body(schema::<ScheduleSpec>),
            Out::Json(200, schema::<ScheduleView>),
            put(update_schedule),
        ),
        route(
            Method::DELETE,
            "/api/v1/schedules/{name}",
            "Delete a schedule; its tasks stay",
            none,
            Out::NoContent,
            delete(delete_schedule),
        ),
        route(
            Method::POST,
            "/api/v1/schedules/{name}/enable",
            "Enable a schedule",
            none,
            Out::Json(200, schema::<ScheduleView>),
            post(enable_schedule),
        ),
        route(
            Method::POST,
            "/api/v1/schedules/{name}/disable",
            "Disable a schedule",
            none,
            Out::Json(200, schema::<ScheduleView>),
            post(disable_schedule),
        ),
        route(
            Method::POST,
            "/api/v1/schedules/{name}/run",
            "Run a schedule's spider now",
            none,
            Out::Json(201, schema::<arachne_shared::Task>),
            post(run_schedule),
        ),
        route(
            Method::GET,
            "/api/v1/nodes",
            "List nodes with their state and metrics",
            none,
            Out::Json(200, schema::<Vec<arachne_shared::Node>>),
            get(list_nodes),
        ),
        route(
            Method::PATCH,
            "/api/v1/nodes/{name}",
            "Enable or disable a node, or change its runner slots",
            body(schema::<UpdateNode>),
            Out::Json(200, schema::<arachne_shared::Node>),
            patch(update_node),
        ),
    ]
}

/// Holds an upload until one of the upload slots is free, before its body is read.
async fn wait_for_an_upload_slot(
    State(slots): State<Arc<tokio::sync::Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let _slot = slots
        .acquire()
        .await
        .expect("the upload slots are never closed");
    next.run(request).await
}

/// Lets a request through only with a valid API token.
async fn authenticate(
    State(api): State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response> {
    let header = request.headers().get(header::AUTHORIZATION);
    let Some(header) = header else {
        return Err(Error::Unauthorized(
            "missing Authorization header: send `Authorization: Bearer <API token>` (arachne-master token create NAME makes one)".into(),
        ));
    };
    let secret = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::Unauthorized(
                "malformed Authorization header: expected `Bearer <API token>`".into(),
            )
        })?;
    if !api.check_api_token(secret).await? {
        return Err(Error::Unauthorized(
            "the API token is unknown or revoked".into(),
        ));
    }
    Ok(next.run(request).await)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T> {
    q.map(|Query(q)| q)
        .map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))
}

fn json<T>(body: Result<Json<T>, JsonRejection>) -> Result<T> {
    body.map(|Json(b)| b)
        .map_err(|e| Error::BadRequest(format!("invalid body: {}", e.body_text())))
}

fn task_id(id: &str) -> Result<TaskId> {
    id.parse()
        .map_err(|_| Error::BadRequest(format!("invalid task id {id:?}")))
}

fn limit(limit: Option<u32>) -> Result<u32> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(Error::BadRequest("limit must be at least 1".into())),
        n if n > MAX_LIMIT => Err(Error::BadRequest(format!(
            "limit must be at most {MAX_LIMIT}"
        ))),
        n => Ok(n),
    }
}

async fn health(State(api): State<Api>) -> impl IntoResponse {
    let health = api.health().await;
    let status = match health.status {
        arachne_api_types::HealthStatus::Ok => StatusCode::OK,
        arachne_api_types::HealthStatus::Failing => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(health))
}

async fn list_spiders(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_spiders().await?))
}

async fn put_spider(
    State(api): State<Api>,
    body: Result<Json<CreateSpider>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(api.put_spider(json(body)?).await?),
    ))
}

async fn get_spider(State(api): State<Api>, Path(name): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(api.get_spider(&name).await?))
}

/// Where an upload is spooled, and how large it may be.
struct SpoolPlace {
    dir: Option<std::path::PathBuf>,
    max_bytes: u64,
}

impl SpoolPlace {
    fn create(&self) -> Result<tokio::fs::File> {
        Spool::create(self.dir.as_deref())
            .map(|spool| tokio::fs::File::from_std(spool.file))
            .map_err(|e| Error::Internal(format!("cannot spool the upload: {e}")))
    }

    /// Writes `chunk` to `file`, refusing what would take the upload (`*total` so far) over the limit.
    async fn write(&self, file: &mut tokio::fs::File, total: &mut u64, chunk: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        *total += chunk.len() as u64;
        if *total > self.max_bytes {
            return Err(Error::PayloadTooLarge(
                "the upload is over the upload size limit".into(),
            ));
        }
        file.write_all(chunk)
            .await
            .map_err(|e| Error::Internal(format!("cannot spool the upload: {e}")))
    }

    /// The spooled content, ready to be read from its start.
    async fn finish(file: tokio::fs::File, len: u64) -> Result<Spool> {
        use tokio::io::AsyncSeekExt;
        let mut file = file;
        file.rewind()
            .await
            .map_err(|e| Error::Internal(format!("cannot spool the upload: {e}")))?;
        Ok(Spool {
            file: file.into_std().await,
            len,
        })
    }
}

async fn upload_files(
    State(api): State<Api>,
    Path(name): Path<String>,
    request: axum::extract::Request,
    place: Arc<SpoolPlace>,
) -> Result<impl IntoResponse> {
    use futures_util::StreamExt;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = || Error::PayloadTooLarge("the upload is over the upload size limit".into());
    // Spooled to disk as it arrives: six uploads of 255 MiB once held 2 GB of memory.
    let mut total = 0u64;
    let upload = if multipart {
        let bad = |e: MultipartError| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            _ => Error::BadRequest(format!("invalid multipart upload: {}", e.body_text())),
        };
        let mut form = Multipart::from_request(request, &()).await.map_err(|e| {
            Error::BadRequest(format!("invalid multipart upload: {}", e.body_text()))
        })?;
        let mut files = Vec::new();
        while let Some(mut field) = form.next_field().await.map_err(bad)? {
            let field_name = field.name().unwrap_or_default().to_owned();
            let Some(path) = field.file_name().map(str::to_owned) else {
                return Err(Error::BadRequest(format!(
                    "form field {field_name:?} is not a file: every part needs a file name (its path)"
                )));
            };
            // A part named `executable` keeps the executable bit; multipart has no other way to say so.
            let mode = (field_name == "executable").then_some(0o755);
            let mut file = place.create()?;
            let start = total;
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                place.write(&mut file, &mut total, &chunk).await?;
            }
            let data = SpoolPlace::finish(file, total - start).await?;
            files.push(UploadedFile { path, data, mode });
        }
        if files.is_empty() {
            return Err(Error::BadRequest(
                "empty upload: the form holds no files".into(),
            ));
        }
        Upload::Files(files)
    } else {
        let mut file = place.create()?;
        let mut body = request.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| Error::BadRequest(format!("reading the upload failed: {e}")))?;
            place.write(&mut file, &mut total, &chunk).await?;
        }
        if total == 0 {
            return Err(Error::BadRequest(
                "empty upload: send the spider's files as a .tar.gz or .zip archive, or as multipart files".into(),
            ));
        }
        Upload::Archive(SpoolPlace::finish(file, total).await?)
    };
    Ok(Json(api.upload_files(&name, upload).await?))
}

async fn list_versions(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.list_versions(&name).await?))
}

async fn set_current_version(
    State(api): State<Api>,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.set_current_version(&name, &version).await?))
}

async fn list_files(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.list_files(&name, query(q)?.version).await?))
}

async fn read_file(
    State(api): State<Api>,
    Path((name, path)): Path<(String, String)>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let content = api.read_file(&name, &path, query(q)?.version).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        content,
    ))
}

async fn run_task(
    State(api): State<Api>,
    body: Result<Json<RunTask>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(api.run_task(json(body)?).await?)))
}

async fn list_tasks(
    State(api): State<Api>,
    q: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let mut q = query(q)?;
    q.limit = Some(limit(q.limit)?);
    Ok(Json(api.list_tasks(q).await?))
}

async fn get_task(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(api.get_task(task_id(&id)?).await?))
}

async fn delete_task(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse> {
    api.delete_task(task_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn cancel_task(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(api.cancel_task(task_id(&id)?).await?))
}

async fn restart_task(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(api.restart_task(task_id(&id)?).await?),
    ))
}

async fn task_tree(State(api): State<Api>, Path(id): Path<String>) -> Result<impl IntoResponse> {
    let id = task_id(&id)?;
    let task = api.get_task(id).await?;
    let mut children_tasks = Vec::new();
    while (children_tasks.len() as u64) < u64::from(task.children) * 4 + MAX_LIMIT as u64 {
        let query = TaskQuery {
            parent: Some(id),
            limit: Some(MAX_LIMIT),
            offset: Some(children_tasks.len() as u32),
            ..TaskQuery::default()
        };
        let page = api.list_tasks(query).await?;
        let full = page.items.len() == MAX_LIMIT as usize;
        children_tasks.extend(page.items);
        if !full {
            break;
        }
    }
    children_tasks.reverse();
    Ok(Json(TaskTree {
        task,
        children_tasks,
    }))
}

async fn list_schedules(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_schedules().await?))
}

async fn create_schedule(
    State(api): State<Api>,
    body: Result<Json<ScheduleSpec>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(api.create_schedule(json(body)?).await?),
    ))
}

async fn get_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.get_schedule(&name).await?))
}

async fn update_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<ScheduleSpec>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.update_schedule(&name, json(body)?).await?))
}

async fn delete_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    api.delete_schedule(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn enable_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.set_schedule_enabled(&name, true).await?))
}

async fn disable_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.set_schedule_enabled(&name, false).await?))
}

async fn run_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(api.run_schedule(&name).await?)))
}

async fn items(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<ItemQuery>, QueryRejection>,
) -> Result<Response> {
    let q = query(q)?;
    let id = task_id(&id)?;
    api.get_task(id).await?;
    let after = q.after.unwrap_or(0);
    Ok(match q.format.unwrap_or_default() {
        ItemFormat::Csv => {
            let rows = match q.limit {
                Some(_) => u64::from(limit(q.limit)?),
                None => u64::MAX,
            };
            export_csv(api, id, after, rows).await?
        }
        ItemFormat::Json => Json(api.items(id, after, limit(q.limit)?).await?).into_response(),
        ItemFormat::Jsonl => {
            let items = api.items(id, after, limit(q.limit)?).await?;
            let mut body = String::new();
            for item in items {
                body.push_str(item.data.get());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
    })
}

/// Up to `rows` items after `after` as one CSV file. Two passes over the store keep memory flat however many
/// items there are: the first learns the columns, the second streams the rows.
async fn export_csv(api: Api, id: TaskId, after: u64, rows: u64) -> Result<Response> {
    let mut columns = Columns::default();
    let (mut seen, mut cursor) = (0, Some(after));
    while let Some(from) = cursor {
        let (page, next) = items_page(&api, id, from, rows - seen).await?;
        for item in &page {
            columns.learn(&item.data);
        }
        seen += page.len() as u64;
        cursor = next;
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(columns.header()))).await.is_err() {
            return;
        }
        // Only the rows the first pass saw: items arriving in between would lack columns.
        let (mut sent, mut cursor) = (0, (seen > 0).then_some(after));
        while let Some(from) = cursor {
            let (page, next) = match items_page(&api, id, from, seen - sent).await {
                Ok(page) => page,
                Err(err) => {
                    // The status line is gone already; cutting the body short tells the client it is incomplete.
                    let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
                    return;
                }
            };
            let chunk: String = page.iter().map(|item| columns.row(&item.data)).collect();
            sent += page.len() as u64;
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            cursor = next;
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.csv\""),
            ),
        ],
        axum::body::Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Up to `left` items after `from`, and where the next page starts while there may be more to read.
async fn items_page(
    api: &Api,
    id: TaskId,
    from: u64,
    left: u64,
) -> Result<(Vec<arachne_shared::ItemRecord>, Option<u64>)> {
    let mut page = api.items(id, from, MAX_LIMIT).await?;
    let more = page.len() == MAX_LIMIT as usize;
    page.truncate(usize::try_from(left).unwrap_or(usize::MAX));
    let next = page
        .last()
        .map(|last| last.seq)
        .filter(|_| more && (page.len() as u64) < left);
    Ok((page, next))
}

async fn list_nodes(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_nodes().await?))
}

async fn update_node(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<UpdateNode>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.update_node(&name, json(body)?).await?))
}

async fn wait(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let timeout = Duration::from_secs(query(q)?.timeout.unwrap_or(30).min(300));
    let mut id = task_id(&id)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = api.subscribe();
    loop {
        let task = api.get_task(id).await?;
        // A failed attempt with retries left is not the run's end: follow it to its retry.
        if let Some(next) = task.retried_by {
            id = next;
            continue;
        }
        if task.status.is_terminal() && !task.will_retry() {
            return Ok(Json(task));
        }
        tokio::select! {
            () = next_change(&mut changes, id) => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Json(task)),
        }
    }
}

/// Waits until `id` may have changed. A lagged receiver counts as a change: the caller re-reads anyway.
async fn next_change(changes: &mut broadcast::Receiver<TaskChanged>, id: TaskId) {
    loop {
        match changes.recv().await {
            Ok(changed) if changed.task_id == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

async fn logs(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response> {
    let q = query(q)?;
    let id = task_id(&id)?;
    api.get_task(id).await?;
    let page = limit(q.limit)?;
    if !q.follow.unwrap_or(false) {
        return Ok(Json(api.logs(id, q.after.unwrap_or(0), page).await?).into_response());
    }
    // A reconnecting EventSource says where it stopped; that wins over `after`.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let after = resume.or(q.after).unwrap_or(0);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(follow(api, id, after, tx));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn search_logs(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<LogSearchQuery>, QueryRejection>,
) -> Result<Json<LogSearch>> {
    const PAGE: u32 = 5_000;
    let q = query(q)?;
    let id = task_id(&id)?;
    let needle = q.q.to_lowercase();
    if needle.is_empty() {
        return Err(Error::BadRequest("q must not be empty".into()));
    }
    let wanted = limit(Some(q.limit.unwrap_or(100)))? as usize;
    api.get_task(id).await?;
    let mut found = LogSearch {
        lines: Vec::new(),
        scanned_to: q.after.unwrap_or(0),
        done: false,
    };
    let mut scanned = 0;
    while found.lines.len() < wanted && scanned < LOG_SEARCH_SCAN {
        let page = api.logs(id, found.scanned_to, PAGE).await?;
        found.done = page.len() < PAGE as usize;
        scanned += page.len() as u32;
        for line in page {
            found.scanned_to = line.seq;
            if line.text.to_lowercase().contains(&needle) {
                found.lines.push(line);
                if found.lines.len() == wanted {
                    // The rest of this page is unscanned: the next request starts right after this match.
                    found.done = false;
                    break;
                }
            }
        }
        if found.done {
            break;
        }
    }
    Ok(Json(found))
}

async fn cron_preview(q: Result<Query<CronQuery>, QueryRejection>) -> Result<Json<CronPreview>> {
    let q = query(q)?;
    let tz = q.tz.as_deref().filter(|tz| !tz.is_empty()).unwrap_or("UTC");
    let expr = arachne_shared::schedule::CronExpr::parse(&q.cron, tz)
        .map_err(|e| Error::BadRequest(e.0))?;
    Ok(Json(CronPreview {
        next: expr.next(chrono::Utc::now(), 5),
    }))
}

/// Feeds one SSE follower: the store is read after every change notice, so a follower never misses a line
/// and never gets one twice, however far it lags.
async fn follow(api: Api, id: TaskId, mut after: u64, tx: mpsc::Sender<Result<Event, Infallible>>) {
    const PAGE: u32 = 1_000;
    let mut changes = api.subscribe();
    loop {
        // Status first: a task seen ended here has all its lines stored, so draining them below is complete.
        let task = match api.get_task(id).await {
            Ok(task) => task,
            Err(err) => {
                let _ = tx
                    .send(Ok(Event::default().event("error").data(err.to_string())))
                    .await;
                return;
            }
        };
        loop {
            let lines = match api.logs(id, after, PAGE).await {
                Ok(lines) => lines,
                Err(err) => {
                    let _ = tx
                        .send(Ok(Event::default().event("error").data(err.to_string())))
                        .await;
                    return;
                }
            };
            let full = lines.len() == PAGE as usize;
            for line in lines {
                after = line.seq;
                let data = serde_json::to_string(&line).expect("log lines serialise");
                let event = Event::default()
                    .event(EVENT_LOG)
                    .id(line.seq.to_string())
                    .data(data);
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        if task.status.is_terminal() {
            let data = serde_json::to_string(&task).expect("tasks serialise");
            let _ = tx
                .send(Ok(Event::default().event(EVENT_END).data(data)))
                .await;
            return;
        }
        tokio::select! {
            () = next_change(&mut changes, id) => {}
            () = tx.closed() => return,
        }
    }
}

async fn events(
    State(api): State<Api>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response> {
    let q = query(q)?;
    // Subscribed before answering, so no change after the response starts is missed.
    let changes = api.subscribe();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(stream_events(api, q, changes, tx));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Feeds one events subscriber: a task is re-read on each notice that its record changed and sent when its
/// status, record or counts moved on since it was last sent. Log and item notices count only for the one task
/// a `task=` subscriber watches, and re-read it at most once per [`OUTPUT_EVERY`], so its page shows its log
/// and item counts growing; for everyone else the logs stream is where output goes, and a busy spider would
/// otherwise cost a read per batch per subscriber.
async fn stream_events(
    api: Api,
    q: EventQuery,
    mut changes: broadcast::Receiver<TaskChanged>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    /// Tasks remembered at once; past this the memory starts over, which at worst sends a task again.
    const REMEMBERED: usize = 10_000;
    type Mark = (TaskStatus, chrono::DateTime<chrono::Utc>, u64, u64);
    let mut sent: HashMap<TaskId, Mark> = HashMap::new();
    // When the watched task's output is next read (and which task that is), and when it last was.
    let mut output_due: Option<(tokio::time::Instant, TaskId)> = None;
    let now = tokio::time::Instant::now();
    let mut output_read = now.checked_sub(OUTPUT_EVERY).unwrap_or(now);
    loop {
        let due = async {
            match output_due {
                Some((at, task_id)) => {
                    tokio::time::sleep_until(at).await;
                    task_id
                }
                None => std::future::pending().await,
            }
        };
        let change = tokio::select! {
            change = changes.recv() => change,
            task_id = due => {
                output_due = None;
                output_read = tokio::time::Instant::now();
                Ok(TaskChanged { task_id, kind: ChangeKind::State })
            }
            () = tx.closed() => return,
        };
        let id = match change {
            Ok(TaskChanged {
                task_id,
                kind: ChangeKind::Output,
            }) => {
                if q.task == Some(task_id) && output_due.is_none() {
                    output_due = Some((output_read + OUTPUT_EVERY, task_id));
                }
                continue;
            }
            Ok(TaskChanged { task_id, .. }) => task_id,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Changes were dropped: say so, so a UI reloads its list rather than trusting a stale one.
                sent.clear();
                let data = serde_json::json!({ "missed": missed }).to_string();
                if tx
                    .send(Ok(Event::default().event(EVENT_LAGGED).data(data)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let event = match api.get_task(id).await {
            Ok(task) => {
                let wanted = q
                    .task
                    .is_none_or(|t| t == task.id || task.parent_id == Some(t))
                    && q.spider.as_ref().is_none_or(|s| *s == task.spider_name);
                let mark = (task.status, task.updated_at, task.log_lines, task.items);
                if !wanted || sent.get(&id) == Some(&mark) {
                    continue;
                }
                if sent.len() >= REMEMBERED {
                    sent.clear();
                }
                sent.insert(id, mark);
                let data = serde_json::to_string(&task).expect("tasks serialise");
                Event::default().event(EVENT_TASK).data(data)
            }
            Err(Error::NotFound(_)) => {
                if q.task.is_some_and(|t| t != id) {
                    continue;
                }
                sent.remove(&id);
                let data = serde_json::json!({ "id": id }).to_string();
                Event::default().event(EVENT_DELETED).data(data)
            }
            Err(err) => Event::default().event("error").data(err.to_string()),
        };
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
    }
}

/// How often a `task=` events subscriber gets the watched task again while only its output grows.
const OUTPUT_EVERY: Duration = Duration::from_secs(1);

async fn metrics(State(api): State<Api>) -> Result<impl IntoResponse> {
    let metrics = api.metrics().await?;
    Ok((
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&metrics),
    ))
}
