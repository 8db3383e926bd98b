//! The HTTP routes, `/health` and everything under `/api/v1`, over any [`Backend`].

use std::sync::Arc;

use std::collections::HashMap;

use arachne_shared::{AuditEntry, AuditId, Caller, Role, TaskId};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::Method;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use axum::{Json, Router};

use crate::openapi::{self, Doc, Reply};
use crate::{Backend, Error, Result};
use arachne_api_types::{
    CLIENT_HEADER, CreateSpider, CronPreview, CronQuery, DEFAULT_LIMIT, EventQuery, ItemQuery,
    LogQuery, LogSearch, LogSearchQuery, MAX_LIMIT, Page, RunTask, ScheduleSpec, ScheduleView,
    TaskQuery, TaskTree, UpdateNode, VersionFiles, VersionQuery, WaitQuery,
};
use arachne_shared::notify::{Delivery, Notification};

mod access;
mod events;
mod nodes;
mod notifications;
mod output;
mod schedules;
mod spiders;
mod tasks;

use self::access as who;
use self::events::*;
use self::nodes::*;
use self::notifications::*;
use self::output::*;
use self::schedules::*;
use self::spiders::*;
use self::tasks::*;

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
        role: Some(Role::Viewer),
    };
    let mut docs: Vec<Doc> = table.iter().map(|(doc, _)| doc.clone()).collect();
    docs.push(openapi_doc.clone());
    let document = serde_json::to_string(&openapi::document(&docs)).expect("documents serialise");
    let serve_document =
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) });
    table.push((openapi_doc, serve_document));

    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<Api>> = Default::default();
    for (doc, handler) in table {
        // Scrapers of /metrics authenticate like any client: Prometheus sends a bearer token too. Without
        // tokens every caller is an admin, but the caller is still known to the handlers.
        let handler = match doc.role {
            Some(role) => handler.layer(axum::middleware::from_fn_with_state(
                Gate {
                    api: Arc::clone(&backend),
                    role,
                    required: options.require_token,
                },
                authenticate,
            )),
            None => handler,
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
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&backend),
            audit,
        ))
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
        let role = match (path, &method) {
            ("/health" | "/api/v1/sign-in", _) => None,
            _ if needs_admin(&method, path) => Some(Role::Admin),
            (_, &Method::GET) => Some(Role::Viewer),
            // Signing out ends one's own session, whatever one may do.
            ("/api/v1/sign-out", _) => Some(Role::Viewer),
            _ => Some(Role::Developer),
        };
        let doc = Doc {
            method,
            path,
            summary,
            query,
            body,
            reply,
            role,
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
            Out::Json(200, schema::<Vec<arachne_api_types::Spider>>),
            get(list_spiders),
        ),
        route(
            Method::POST,
            "/api/v1/spiders",
            "Create a spider, or update the one of that name",
            body(schema::<CreateSpider>),
            Out::Json(201, schema::<arachne_api_types::Spider>),
            post(put_spider),
        ),
        route(
            Method::GET,
            "/api/v1/spiders/{name}",
            "Show a spider",
            none,
            Out::Json(200, schema::<arachne_api_types::Spider>),
            get(get_spider),
        ),
        route(
            Method::DELETE,
            "/api/v1/spiders/{name}",
            "Delete a spider with its versions and schedules (and with ?tasks=true its tasks, logs and items); refused while any of its tasks has not ended",
            query(inline::<arachne_api_types::DeleteSpiderQuery>),
            Out::Json(200, schema::<arachne_api_types::DeletedSpider>),
            delete(delete_spider),
        ),
        route(
            Method::PUT,
            "/api/v1/spiders/{name}/files",
            "Upload a new version of a spider's files (a .tar.gz or .zip body, or multipart files) and make it current; an upload whose files are all in one folder is unwrapped (unless the command names a path in it), and the answer's `unwrapped` says so",
            (None, Some(In::Upload)),
            Out::Json(200, schema::<arachne_api_types::UploadedSpider>),
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
            Method::GET,
            "/api/v1/spiders/{name}/scrapy-spiders",
            "The Scrapy spiders of a Scrapy project's version (found once per version by a `scrapy list` task)",
            query(inline::<VersionQuery>),
            Out::Json(200, schema::<arachne_api_types::ScrapySpiders>),
            get(scrapy_spiders),
        ),
        route(
            Method::POST,
            "/api/v1/spiders/{name}/versions/{version}/current",
            "Make a stored version the one runs use",
            none,
            Out::Json(200, schema::<arachne_api_types::Spider>),
            post(set_current_version),
        ),
        route(
            Method::DELETE,
            "/api/v1/spiders/{name}/versions/{version}",
            "Delete a version that is not current and not run by an unended task; contents no other version uses go with it",
            none,
            Out::NoContent,
            delete(delete_version),
        ),
        route(
            Method::GET,
            "/api/v1/tasks",
            "List tasks, newest first, filtered by spider, status, node, parent, schedule and creation time",
            query(inline::<TaskQuery>),
            Out::Json(200, schema::<Page<arachne_api_types::Task>>),
            get(list_tasks),
        ),
        route(
            Method::POST,
            "/api/v1/tasks",
            "Run a spider: one task, or a parent with a child per node",
            body(schema::<RunTask>),
            Out::Json(201, schema::<arachne_api_types::Task>),
            post(run_task),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}",
            "Show a task",
            none,
            Out::Json(200, schema::<arachne_api_types::Task>),
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
            Out::Json(200, schema::<arachne_api_types::Task>),
            post(cancel_task),
        ),
        route(
            Method::POST,
            "/api/v1/tasks/{id}/restart",
            "Run an ended task again (for a parent, its children that did not finish)",
            none,
            Out::Json(201, schema::<arachne_api_types::Task>),
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
            "/api/v1/spider-folders",
            "The watched spiders folder (--spiders-dir) and each of its folders: synced, broken (with why: a bad arachne.toml, say) or removed (its spider stays until deleted)",
            none,
            Out::Json(200, schema::<arachne_api_types::SpiderFolders>),
            get(spider_folders),
        ),
        route(
            Method::GET,
            "/api/v1/spiders/{name}/items",
            "A spider's items across its tasks, newest first, filtered by task, time and field conditions (`where`, repeated), paged by cursor with a total; or every match as one file (format=csv, json or jsonl), streamed",
            query(inline::<arachne_api_types::SpiderItemQuery>),
            Out::Json(200, schema::<arachne_api_types::SpiderItems>),
            get(spider_items),
        ),
        route(
            Method::GET,
            "/api/v1/results/{collection}/items",
            "The items of every spider whose results collection this is, across their tasks, newest first, with the same filters, paging and export as a spider's items",
            query(inline::<arachne_api_types::SpiderItemQuery>),
            Out::Json(200, schema::<arachne_api_types::SpiderItems>),
            get(collection_items),
        ),
        route(
            Method::GET,
            "/api/v1/tasks/{id}/wait",
            "Answer when the run ends or the timeout passes, with its latest attempt: a failed attempt with retries left is followed to its retry",
            query(inline::<WaitQuery>),
            Out::Json(200, schema::<arachne_api_types::Task>),
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
            Out::Json(201, schema::<arachne_api_types::Task>),
            post(run_schedule),
        ),
        route(
            Method::GET,
            "/api/v1/nodes",
            "List nodes with their state and metrics",
            none,
            Out::Json(200, schema::<Vec<arachne_api_types::Node>>),
            get(list_nodes),
        ),
        route(
            Method::PATCH,
            "/api/v1/nodes/{name}",
            "Enable or disable a node, or change its runner slots",
            body(schema::<UpdateNode>),
            Out::Json(200, schema::<arachne_api_types::Node>),
            patch(update_node),
        ),
        route(
            Method::DELETE,
            "/api/v1/nodes/{name}",
            "Remove an offline node; refused while it is online, holds or awaits a task, or a schedule names it",
            none,
            Out::NoContent,
            delete(remove_node),
        ),
        route(
            Method::POST,
            "/api/v1/sign-in",
            "Sign in with a user's name and password: a session token for 12 hours (the web UI's sign-in); a wrong name or password is a 401 that does not say which",
            body(schema::<arachne_api_types::SignIn>),
            Out::Json(201, schema::<arachne_api_types::CreatedToken>),
            post(who::sign_in),
        ),
        route(
            Method::POST,
            "/api/v1/sign-out",
            "End the caller's web UI session: its session token is revoked",
            none,
            Out::NoContent,
            post(who::sign_out),
        ),
        route(
            Method::GET,
            "/api/v1/me",
            "Who the caller is: the user (or token) and the role its token gives",
            none,
            Out::Json(200, schema::<arachne_shared::Caller>),
            get(who::me),
        ),
        route(
            Method::GET,
            "/api/v1/users",
            "List users and their roles",
            none,
            Out::Json(200, schema::<Vec<arachne_shared::UserInfo>>),
            get(who::list_users),
        ),
        route(
            Method::POST,
            "/api/v1/users",
            "Create a user with a role and a password (stored as an argon2id hash)",
            body(schema::<arachne_api_types::CreateUser>),
            Out::Json(201, schema::<arachne_shared::UserInfo>),
            post(who::create_user),
        ),
        route(
            Method::PATCH,
            "/api/v1/users/{name}",
            "Change a user's role or password; their tokens follow the new role",
            body(schema::<arachne_api_types::UpdateUser>),
            Out::Json(200, schema::<arachne_shared::UserInfo>),
            patch(who::update_user),
        ),
        route(
            Method::DELETE,
            "/api/v1/users/{name}",
            "Delete a user and revoke every token of theirs",
            none,
            Out::NoContent,
            delete(who::delete_user),
        ),
        route(
            Method::GET,
            "/api/v1/tokens",
            "List tokens: name, kind, role, user, creation and expiry (never a secret)",
            none,
            Out::Json(200, schema::<Vec<arachne_shared::TokenInfo>>),
            get(who::list_tokens),
        ),
        route(
            Method::POST,
            "/api/v1/tokens",
            "Make a token with a role (at most its user's) and an expiry; its secret is in this answer only",
            body(schema::<arachne_api_types::CreateToken>),
            Out::Json(201, schema::<arachne_api_types::CreatedToken>),
            post(who::create_token),
        ),
        route(
            Method::DELETE,
            "/api/v1/tokens/{name}",
            "Revoke a token: it stops working within seconds",
            none,
            Out::NoContent,
            delete(who::revoke_token),
        ),
        route(
            Method::GET,
            "/api/v1/audit",
            "The audit log, newest first: who created, changed, ran, cancelled or deleted what, when, and the answer's status",
            query(inline::<arachne_api_types::AuditQuery>),
            Out::Json(200, schema::<Vec<arachne_shared::AuditEntry>>),
            get(who::audit),
        ),
        route(
            Method::GET,
            "/api/v1/stats",
            "The overview: runs that ended over the last days (default 7; 1 = the last 24 hours per hour), overall, per day and per spider (runs by status, success rate, items, median and p95 run time), the slowest and most failing spiders, and the nodes' load; read from hourly roll-ups the store keeps as runs end",
            query(inline::<arachne_api_types::StatsQuery>),
            Out::Json(200, schema::<arachne_shared::stats::Stats>),
            get(stats),
        ),
        route(
            Method::GET,
            "/api/v1/notifications",
            "List notification rules (webhook secrets and SMTP passwords masked)",
            none,
            Out::Json(200, schema::<Vec<Notification>>),
            get(list_notifications),
        ),
        route(
            Method::POST,
            "/api/v1/notifications",
            "Create a notification rule: a channel (webhook, slack or email), the triggers it announces, and optionally a spider or schedule it is limited to",
            body(schema::<Notification>),
            Out::Json(201, schema::<Notification>),
            post(create_notification),
        ),
        route(
            Method::GET,
            "/api/v1/notifications/{name}",
            "Show a notification rule",
            none,
            Out::Json(200, schema::<Notification>),
            get(get_notification),
        ),
        route(
            Method::PUT,
            "/api/v1/notifications/{name}",
            "Replace a notification rule; a secret sent back masked keeps the stored one",
            body(schema::<Notification>),
            Out::Json(200, schema::<Notification>),
            put(replace_notification),
        ),
        route(
            Method::DELETE,
            "/api/v1/notifications/{name}",
            "Delete a notification rule; its deliveries stay",
            none,
            Out::NoContent,
            delete(delete_notification),
        ),
        route(
            Method::POST,
            "/api/v1/notifications/{name}/test",
            "Send a test message on the rule's channel; answers the delivery, whose outcome the deliveries list shows",
            none,
            Out::Json(202, schema::<Delivery>),
            post(test_notification),
        ),
        route(
            Method::GET,
            "/api/v1/notification-deliveries",
            "Deliveries of notifications, newest first: when, channel, trigger, status, response status, attempts, error",
            query(inline::<arachne_api_types::DeliveryQuery>),
            Out::Json(200, schema::<Vec<Delivery>>),
            get(list_deliveries),
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
/// Routes only an admin may use: users, tokens and the audit log, and changes to nodes (which are the
/// cluster's, not one team's). Reading is a viewer's, any other change a developer's.
fn needs_admin(method: &Method, path: &str) -> bool {
    ["/api/v1/users", "/api/v1/tokens", "/api/v1/audit"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        || (path.starts_with("/api/v1/nodes/") && method != Method::GET)
}

/// The caller a request's bearer token speaks for; `Unauthorized` without a valid one.
async fn caller_of(api: &Api, headers: &axum::http::HeaderMap) -> Result<Caller> {
    let Some(header) = headers.get(header::AUTHORIZATION) else {
        return Err(Error::Unauthorized(
            "missing Authorization header: send `Authorization: Bearer <API token>` (sign in, or `arachne-master token create NAME` makes one)".into(),
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
    api.caller(secret)
        .await?
        .ok_or_else(|| Error::Unauthorized("the API token is unknown, revoked or expired".into()))
}

/// What a route asks of its callers.
#[derive(Clone)]
struct Gate {
    api: Api,
    role: Role,
    /// Off only for a master without tokens, whose every caller is an anonymous admin.
    required: bool,
}

/// Lets a request through when its token's role is at least the route's; the caller goes along with the
/// request (for the handlers) and with the response (for the audit log).
async fn authenticate(
    State(Gate {
        api,
        role,
        required,
    }): State<Gate>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response> {
    let caller = match required {
        true => caller_of(&api, request.headers()).await?,
        false => Caller {
            actor: "anonymous".into(),
            role: Role::Admin,
            token: String::new(),
            user: None,
        },
    };
    if caller.role < role {
        return Err(Error::Forbidden(format!(
            "this needs the {role} role; {} has {}",
            caller.actor, caller.role
        )));
    }
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(caller);
    Ok(response)
}

/// Records every request that may change something (not GET or HEAD) in the audit log once it is
/// answered: who (the caller the response carries; for a sign-in the name tried), what and to what, and
/// the answer's status. A refused token is not an actor; its request is not recorded.
async fn audit(
    State(api): State<Api>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let target = request.uri().path().to_owned();
    let response = next.run(request).await;
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return response;
    }
    let actor = match (
        response.extensions().get::<Caller>(),
        response.extensions().get::<SignInAttempt>(),
    ) {
        (Some(caller), _) => caller.actor.clone(),
        (None, Some(SignInAttempt(name))) => name.clone(),
        (None, None) => return response,
    };
    let route = matched.map_or_else(|| target.clone(), |m| m.as_str().to_owned());
    api.record_audit(AuditEntry {
        id: AuditId::new(),
        at: chrono::Utc::now(),
        actor,
        action: format!("{method} {route}"),
        target,
        status: response.status().as_u16(),
    })
    .await;
    response
}

/// The name a sign-in was tried with, for the audit log.
#[derive(Clone)]
pub(super) struct SignInAttempt(pub(super) String);

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

async fn metrics(State(api): State<Api>) -> Result<impl IntoResponse> {
    let metrics = api.metrics().await?;
    Ok((
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&metrics),
    ))
}
