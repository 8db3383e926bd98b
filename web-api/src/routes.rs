//! The HTTP routes, `/health` and everything under `/api/v1`, over any [`Backend`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arachne_shared::TaskId;
use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::types::{
    CreateSpider, DEFAULT_LIMIT, EVENT_END, EVENT_LOG, ItemFormat, ItemQuery, LogQuery, MAX_LIMIT,
    RunTask, ScheduleSpec, TaskQuery, TaskTree, UpdateNode, Upload, UploadedFile, VersionQuery,
    WaitQuery,
};
use crate::{Backend, Error, Result};

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Largest spider archive accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Every route but `/health` needs `Authorization: Bearer <API token>`. Off only by explicit choice.
    pub require_token: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            max_upload_bytes: 256 << 20,
            require_token: true,
        }
    }
}

type Api = Arc<dyn Backend>;

/// Builds the router for `backend`.
pub fn router(backend: Api, options: &RouterOptions) -> Router {
    let api = Router::new()
        .route("/spiders", get(list_spiders).post(put_spider))
        .route("/spiders/{name}", get(get_spider))
        .route(
            "/spiders/{name}/files",
            put(upload_files)
                .get(list_files)
                .layer(DefaultBodyLimit::max(options.max_upload_bytes)),
        )
        .route("/spiders/{name}/files/{*path}", get(read_file))
        .route("/spiders/{name}/versions", get(list_versions))
        .route(
            "/spiders/{name}/versions/{version}/current",
            post(set_current_version),
        )
        .route("/tasks", get(list_tasks).post(run_task))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/tasks/{id}/restart", post(restart_task))
        .route("/tasks/{id}/tree", get(task_tree))
        .route("/schedules", get(list_schedules).post(create_schedule))
        .route(
            "/schedules/{name}",
            get(get_schedule)
                .put(update_schedule)
                .delete(delete_schedule),
        )
        .route("/schedules/{name}/enable", post(enable_schedule))
        .route("/schedules/{name}/disable", post(disable_schedule))
        .route("/schedules/{name}/run", post(run_schedule))
        .route("/tasks/{id}/logs", get(logs))
        .route("/tasks/{id}/items", get(items))
        .route("/tasks/{id}/wait", get(wait))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{name}", axum::routing::patch(update_node))
        .fallback(|| async { Error::NotFound("no such route".into()) });
    let api = if options.require_token {
        api.layer(axum::middleware::from_fn_with_state(
            Arc::clone(&backend),
            authenticate,
        ))
    } else {
        api
    };
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .nest("/api/v1", api)
        .with_state(backend)
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

async fn upload_files(
    State(api): State<Api>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<impl IntoResponse> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = || Error::PayloadTooLarge("the upload is over the upload size limit".into());
    let upload = if multipart {
        let bad = |e: MultipartError| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            _ => Error::BadRequest(format!("invalid multipart upload: {}", e.body_text())),
        };
        let mut form = Multipart::from_request(request, &()).await.map_err(|e| {
            Error::BadRequest(format!("invalid multipart upload: {}", e.body_text()))
        })?;
        let mut files = Vec::new();
        while let Some(field) = form.next_field().await.map_err(bad)? {
            let field_name = field.name().unwrap_or_default().to_owned();
            let Some(path) = field.file_name().map(str::to_owned) else {
                return Err(Error::BadRequest(format!(
                    "form field {field_name:?} is not a file: every part needs a file name (its path)"
                )));
            };
            // A part named `executable` keeps the executable bit; multipart has no other way to say so.
            let mode = (field_name == "executable").then_some(0o755);
            let data = field.bytes().await.map_err(bad)?.to_vec();
            files.push(UploadedFile { path, data, mode });
        }
        if files.is_empty() {
            return Err(Error::BadRequest(
                "empty upload: the form holds no files".into(),
            ));
        }
        Upload::Files(files)
    } else {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => too_large(),
                _ => Error::BadRequest(format!("reading the upload failed: {}", e.body_text())),
            })?;
        if body.is_empty() {
            return Err(Error::BadRequest(
                "empty upload: send the spider's files as a .tar.gz or .zip archive, or as multipart files".into(),
            ));
        }
        Upload::Archive(body.to_vec())
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
    let items = api.items(id, q.after.unwrap_or(0), limit(q.limit)?).await?;
    Ok(match q.format.unwrap_or_default() {
        ItemFormat::Json => Json(items).into_response(),
        ItemFormat::Jsonl => {
            let mut body = String::new();
            for item in items {
                body.push_str(item.data.get());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
    })
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
    let id = task_id(&id)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = api.subscribe();
    loop {
        let task = api.get_task(id).await?;
        if task.status.is_terminal() {
            return Ok(Json(task));
        }
        tokio::select! {
            () = next_change(&mut changes, id) => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Json(task)),
        }
    }
}

/// Waits until `id` may have changed. A lagged receiver counts as a change: the caller re-reads anyway.
async fn next_change(changes: &mut broadcast::Receiver<TaskId>, id: TaskId) {
    loop {
        match changes.recv().await {
            Ok(changed) if changed == id => return,
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
