//! A typed client of the HTTP API, used by the CLI and by tests.

use std::time::Duration;

use arachne_api_types::Task;
use arachne_shared::files::VersionInfo;
use arachne_shared::notify::{Delivery, Notification};
use arachne_shared::{ItemRecord, LogLine, TaskId};
use futures_util::StreamExt;
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;

use arachne_api_types::{
    AuditQuery, CreateSpider, CreateToken, CreateUser, CreatedToken, CronPreview, CronQuery,
    DeleteSpiderQuery, DeletedSpider, DeliveryQuery, EVENT_DELETED, EVENT_END, EVENT_LAGGED,
    EVENT_LOG, EVENT_TASK, ErrorBody, EventQuery, ItemQuery, ItemSource, LogQuery, LogSearch,
    LogSearchQuery, Node, Page, RunTask, ScheduleSpec, ScheduleView, SignIn, Spider, SpiderFolders,
    SpiderItemQuery, SpiderItems, StatsQuery, TaskQuery, TaskTree, UpdateNode, UpdateUser,
    UploadedSpider, VersionFiles, VersionQuery,
};

/// Errors of client calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error; carries its message.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the server at {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected response: {0}")]
    Decode(String),
    #[error("unusable API token: {0}")]
    Token(String),
    #[error("the CA file is not PEM: {0}")]
    CaPem(#[source] rustls_pki_types::pem::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl Error {
    /// Whether the server answered that what was asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }
}

/// Result of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an events subscriber sees.
#[derive(Debug)]
pub enum TaskEvent {
    /// A task's status or record changed; this is the task as it now is.
    Changed(Box<Task>),
    Deleted(TaskId),
    /// The subscriber fell behind and changes were skipped: re-read what you show.
    Lagged,
}

/// What a log follower sees.
#[derive(Debug)]
pub enum FollowEvent {
    Line(LogLine),
    /// The task ended; no more lines will come.
    End(Box<Task>),
}

/// An API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (for example `http://127.0.0.1:8080`), without a token.
    pub fn new(base: &str) -> Self {
        Self::build(base, None).expect("a client without headers builds")
    }

    /// A client that sends `token` as `Authorization: Bearer` with every request.
    pub fn with_token(base: &str, token: &str) -> Result<Self> {
        Self::build(base, Some(token))
    }

    /// A client for `base` with `token`, trusting `ca_pem` (PEM certificates) besides the public authorities
    /// when `base` is `https://`.
    pub fn with_tls(base: &str, token: Option<&str>, ca_pem: Option<&[u8]>) -> Result<Self> {
        Self::build_tls(base, token, ca_pem)
    }

    fn build(base: &str, token: Option<&str>) -> Result<Self> {
        Self::build_tls(base, token, None)
    }

    fn build_tls(base: &str, token: Option<&str>, ca_pem: Option<&[u8]>) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            arachne_api_types::CLIENT_HEADER,
            reqwest::header::HeaderValue::from_static("cli"),
        );
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    Error::Token("it holds characters an HTTP header cannot carry".into())
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .tls_backend_preconfigured(tls_config(ca_pem)?)
            .build()
            .expect("client builds");
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await.map_err(|source| Error::Http {
            url: self.base.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Error::Api {
                status,
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => Error::Api {
                status,
                code: "http".into(),
                message: text,
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let response = self.send(request).await?;
        let bytes = response.bytes().await.map_err(|source| Error::Http {
            url: self.base.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    /// `/metrics` as Prometheus text.
    pub async fn metrics(&self) -> Result<String> {
        let response = self
            .send(self.http.get(format!("{}/metrics", self.base)))
            .await?;
        response.text().await.map_err(|source| Error::Http {
            url: self.base.clone(),
            source,
        })
    }

    pub async fn health(&self) -> Result<serde_json::Value> {
        self.json(self.http.get(format!("{}/health", self.base)))
            .await
    }

    pub async fn put_spider(&self, spider: &CreateSpider) -> Result<Spider> {
        self.json(self.http.post(self.url("/spiders")).json(spider))
            .await
    }

    /// Uploads a `.tar.gz` or `.zip` archive as the spider's new current version.
    pub async fn upload_files(&self, name: &str, archive: Vec<u8>) -> Result<UploadedSpider> {
        self.upload_files_with_progress(name, archive, |_, _| {})
            .await
    }

    /// [`Self::upload_files`], calling `progress(sent, total)` as the body goes out.
    pub async fn upload_files_with_progress(
        &self,
        name: &str,
        archive: Vec<u8>,
        mut progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<UploadedSpider> {
        const PIECE: usize = 256 * 1024;
        let total = archive.len() as u64;
        let archive = bytes::Bytes::from(archive);
        let pieces: Vec<bytes::Bytes> = (0..archive.len())
            .step_by(PIECE)
            .map(|at| archive.slice(at..(at + PIECE).min(archive.len())))
            .collect();
        let mut sent = 0u64;
        let body = futures_util::stream::iter(pieces.into_iter().map(move |piece| {
            sent += piece.len() as u64;
            progress(sent, total);
            Ok::<_, std::io::Error>(piece)
        }));
        let request = self
            .http
            .put(self.url(&format!("/spiders/{name}/files")))
            .header("content-type", "application/octet-stream")
            .header("content-length", total)
            .body(reqwest::Body::wrap_stream(body));
        self.json(request).await
    }

    pub async fn list_versions(&self, name: &str) -> Result<Vec<VersionInfo>> {
        self.json(
            self.http
                .get(self.url(&format!("/spiders/{name}/versions"))),
        )
        .await
    }

    /// The Scrapy spiders of a Scrapy project's version (the current one when `None`). The first ask of a
    /// version runs `scrapy list` on a worker, so it may take as long as that version's install.
    pub async fn scrapy_spiders(&self, name: &str, version: Option<&str>) -> Result<Vec<String>> {
        let mut request = self
            .http
            .get(self.url(&format!("/spiders/{name}/scrapy-spiders")));
        if let Some(version) = version {
            request = request.query(&[("version", version)]);
        }
        let answer: arachne_api_types::ScrapySpiders = self.json(request).await?;
        Ok(answer.spiders)
    }

    pub async fn set_current_version(&self, name: &str, version: &str) -> Result<Spider> {
        let url = self.url(&format!("/spiders/{name}/versions/{version}/current"));
        self.json(self.http.post(url)).await
    }

    pub async fn delete_version(&self, name: &str, version: &str) -> Result<()> {
        let url = self.url(&format!("/spiders/{name}/versions/{version}"));
        self.send(self.http.delete(url)).await.map(drop)
    }

    /// Deletes a spider with its versions and schedules, and with `tasks` its tasks, logs and items.
    pub async fn delete_spider(&self, name: &str, tasks: bool) -> Result<DeletedSpider> {
        let request = self
            .http
            .delete(self.url(&format!("/spiders/{name}")))
            .query(&DeleteSpiderQuery { tasks });
        self.json(request).await
    }

    pub async fn list_files(&self, name: &str, version: Option<&str>) -> Result<VersionFiles> {
        let request = self
            .http
            .get(self.url(&format!("/spiders/{name}/files")))
            .query(&VersionQuery {
                version: version.map(str::to_owned),
            });
        self.json(request).await
    }

    pub async fn read_file(
        &self,
        name: &str,
        path: &str,
        version: Option<&str>,
    ) -> Result<Vec<u8>> {
        let request = self
            .http
            .get(self.url(&format!("/spiders/{name}/files/{path}")))
            .query(&VersionQuery {
                version: version.map(str::to_owned),
            });
        let response = self.send(request).await?;
        let bytes = response.bytes().await.map_err(|source| Error::Http {
            url: self.base.clone(),
            source,
        })?;
        Ok(bytes.to_vec())
    }

    pub async fn list_spiders(&self) -> Result<Vec<Spider>> {
        self.json(self.http.get(self.url("/spiders"))).await
    }

    pub async fn get_spider(&self, name: &str) -> Result<Spider> {
        self.json(self.http.get(self.url(&format!("/spiders/{name}"))))
            .await
    }

    pub async fn run_task(&self, run: &RunTask) -> Result<Task> {
        self.json(self.http.post(self.url("/tasks")).json(run))
            .await
    }

    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<Page<Task>> {
        self.json(self.http.get(self.url("/tasks")).query(query))
            .await
    }

    pub async fn get_task(&self, id: TaskId) -> Result<Task> {
        self.json(self.http.get(self.url(&format!("/tasks/{id}"))))
            .await
    }

    pub async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        self.json(self.http.post(self.url(&format!("/tasks/{id}/cancel"))))
            .await
    }

    /// Deletes an ended task with its logs and items (a parent with its children).
    pub async fn delete_task(&self, id: TaskId) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/tasks/{id}"))))
            .await
            .map(drop)
    }

    /// Every item of the task as CSV, handed to `write` chunk by chunk as it arrives; `write` returns false
    /// to stop early.
    pub async fn export_items_csv(
        &self,
        id: TaskId,
        write: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let request = self
            .http
            .get(self.url(&format!("/tasks/{id}/items")))
            .query(&[("format", "csv")]);
        self.stream(request, write).await
    }

    /// The watched spiders folder and what became of each of its folders.
    pub async fn spider_folders(&self) -> Result<SpiderFolders> {
        self.json(self.http.get(self.url("/spider-folders"))).await
    }

    /// A page of a spider's (or a results collection's) items across its tasks, newest first, with the
    /// total that match.
    pub async fn spider_items(
        &self,
        source: &ItemSource,
        query: &SpiderItemQuery,
    ) -> Result<SpiderItems> {
        self.json(self.items_request(source, query)).await
    }

    /// Every item of a spider (or a results collection) that matches `query`, as the file its `format`
    /// names, handed to `write` chunk by chunk as it arrives; `write` returns false to stop early.
    pub async fn export_items(
        &self,
        source: &ItemSource,
        query: &SpiderItemQuery,
        write: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        self.stream(self.items_request(source, query), write).await
    }

    /// Its conditions go as repeated `where` parameters, which a query struct cannot encode.
    fn items_request(&self, source: &ItemSource, query: &SpiderItemQuery) -> RequestBuilder {
        let rest = SpiderItemQuery {
            conditions: Vec::new(),
            ..query.clone()
        };
        let conditions: Vec<(&str, &str)> = query
            .conditions
            .iter()
            .map(|c| ("where", c.as_str()))
            .collect();
        self.http
            .get(self.url(&source.path()))
            .query(&rest)
            .query(&conditions)
    }

    /// A response body handed to `write` chunk by chunk.
    async fn stream(
        &self,
        request: RequestBuilder,
        mut write: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let mut body = self.send(request).await?.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| Error::Http {
                url: self.base.clone(),
                source,
            })?;
            if !write(&chunk) {
                break;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout_secs` for the task to end and returns it as it then is.
    pub async fn wait_task(&self, id: TaskId, timeout_secs: u64) -> Result<Task> {
        let request = self
            .http
            .get(self.url(&format!("/tasks/{id}/wait")))
            .query(&[("timeout", timeout_secs)]);
        self.json(request).await
    }

    pub async fn logs(&self, id: TaskId, query: &LogQuery) -> Result<Vec<LogLine>> {
        self.json(
            self.http
                .get(self.url(&format!("/tasks/{id}/logs")))
                .query(query),
        )
        .await
    }

    /// One bounded step of a search through a task's log; continue from `scanned_to` until `done`.
    pub async fn search_logs(&self, id: TaskId, query: &LogSearchQuery) -> Result<LogSearch> {
        self.json(
            self.http
                .get(self.url(&format!("/tasks/{id}/logs/search")))
                .query(query),
        )
        .await
    }

    /// The next fire times of a cron expression, or the server's message naming its bad field.
    pub async fn check_cron(&self, query: &CronQuery) -> Result<CronPreview> {
        self.json(self.http.get(self.url("/cron")).query(query))
            .await
    }

    pub async fn items(&self, id: TaskId, query: &ItemQuery) -> Result<Vec<ItemRecord>> {
        self.json(
            self.http
                .get(self.url(&format!("/tasks/{id}/items")))
                .query(query),
        )
        .await
    }

    pub async fn restart_task(&self, id: TaskId) -> Result<Task> {
        self.json(self.http.post(self.url(&format!("/tasks/{id}/restart"))))
            .await
    }

    pub async fn task_tree(&self, id: TaskId) -> Result<TaskTree> {
        self.json(self.http.get(self.url(&format!("/tasks/{id}/tree"))))
            .await
    }

    pub async fn create_schedule(&self, spec: &ScheduleSpec) -> Result<ScheduleView> {
        self.json(self.http.post(self.url("/schedules")).json(spec))
            .await
    }

    pub async fn update_schedule(&self, name: &str, spec: &ScheduleSpec) -> Result<ScheduleView> {
        self.json(
            self.http
                .put(self.url(&format!("/schedules/{name}")))
                .json(spec),
        )
        .await
    }

    pub async fn list_schedules(&self) -> Result<Vec<ScheduleView>> {
        self.json(self.http.get(self.url("/schedules"))).await
    }

    pub async fn get_schedule(&self, name: &str) -> Result<ScheduleView> {
        self.json(self.http.get(self.url(&format!("/schedules/{name}"))))
            .await
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/schedules/{name}"))))
            .await
            .map(drop)
    }

    pub async fn set_schedule_enabled(&self, name: &str, enabled: bool) -> Result<ScheduleView> {
        let action = if enabled { "enable" } else { "disable" };
        self.json(
            self.http
                .post(self.url(&format!("/schedules/{name}/{action}"))),
        )
        .await
    }

    pub async fn run_schedule(&self, name: &str) -> Result<Task> {
        self.json(self.http.post(self.url(&format!("/schedules/{name}/run"))))
            .await
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>> {
        self.json(self.http.get(self.url("/nodes"))).await
    }

    pub async fn remove_node(&self, name: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/nodes/{name}"))))
            .await
            .map(drop)
    }

    /// Signs in with a user's name and password; the answer's secret is a session token for 12 hours.
    pub async fn sign_in(&self, name: &str, password: &str) -> Result<CreatedToken> {
        let body = SignIn {
            name: name.to_owned(),
            password: password.to_owned(),
        };
        self.json(self.http.post(self.url("/sign-in")).json(&body))
            .await
    }

    /// Ends the session the client's token is.
    pub async fn sign_out(&self) -> Result<()> {
        self.send(self.http.post(self.url("/sign-out")))
            .await
            .map(drop)
    }

    /// Who this client's token speaks for, with which role.
    pub async fn me(&self) -> Result<arachne_shared::Caller> {
        self.json(self.http.get(self.url("/me"))).await
    }

    pub async fn list_users(&self) -> Result<Vec<arachne_shared::UserInfo>> {
        self.json(self.http.get(self.url("/users"))).await
    }

    pub async fn create_user(&self, user: &CreateUser) -> Result<arachne_shared::UserInfo> {
        self.json(self.http.post(self.url("/users")).json(user))
            .await
    }

    pub async fn update_user(
        &self,
        name: &str,
        update: &UpdateUser,
    ) -> Result<arachne_shared::UserInfo> {
        self.json(
            self.http
                .patch(self.url(&format!("/users/{name}")))
                .json(update),
        )
        .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/users/{name}"))))
            .await
            .map(drop)
    }

    pub async fn list_tokens(&self) -> Result<Vec<arachne_shared::TokenInfo>> {
        self.json(self.http.get(self.url("/tokens"))).await
    }

    /// Makes a token; its secret is in the answer only.
    pub async fn create_token(&self, token: &CreateToken) -> Result<CreatedToken> {
        self.json(self.http.post(self.url("/tokens")).json(token))
            .await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/tokens/{name}"))))
            .await
            .map(drop)
    }

    /// The audit log, newest first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<arachne_shared::AuditEntry>> {
        self.json(self.http.get(self.url("/audit")).query(query))
            .await
    }

    /// The overview of runs and load.
    pub async fn stats(&self, query: &StatsQuery) -> Result<arachne_shared::stats::Stats> {
        self.json(self.http.get(self.url("/stats")).query(query))
            .await
    }

    pub async fn list_notifications(&self) -> Result<Vec<Notification>> {
        self.json(self.http.get(self.url("/notifications"))).await
    }

    pub async fn get_notification(&self, name: &str) -> Result<Notification> {
        self.json(self.http.get(self.url(&format!("/notifications/{name}"))))
            .await
    }

    /// Creates a rule.
    pub async fn create_notification(&self, rule: &Notification) -> Result<Notification> {
        self.json(self.http.post(self.url("/notifications")).json(rule))
            .await
    }

    /// Replaces the rule of `rule.name`.
    pub async fn replace_notification(&self, rule: &Notification) -> Result<Notification> {
        let url = self.url(&format!("/notifications/{}", rule.name));
        self.json(self.http.put(url).json(rule)).await
    }

    pub async fn delete_notification(&self, name: &str) -> Result<()> {
        self.send(
            self.http
                .delete(self.url(&format!("/notifications/{name}"))),
        )
        .await
        .map(drop)
    }

    /// Sends a test message on the rule's channel; the delivery, still pending.
    pub async fn test_notification(&self, name: &str) -> Result<Delivery> {
        self.json(
            self.http
                .post(self.url(&format!("/notifications/{name}/test"))),
        )
        .await
    }

    pub async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        self.json(
            self.http
                .get(self.url("/notification-deliveries"))
                .query(query),
        )
        .await
    }

    pub async fn update_node(&self, name: &str, update: &UpdateNode) -> Result<Node> {
        self.json(
            self.http
                .patch(self.url(&format!("/nodes/{name}")))
                .json(update),
        )
        .await
    }

    /// Follows a task's log from line `after` on, calling `on_event` for each line and once at the end. If the
    /// stream breaks before the task ends, it reconnects and resumes after the last line seen.
    pub async fn follow_logs(
        &self,
        id: TaskId,
        mut after: u64,
        mut on_event: impl FnMut(FollowEvent),
    ) -> Result<()> {
        let mut failures = 0u32;
        loop {
            match self.follow_once(id, &mut after, &mut on_event).await {
                Ok(true) => return Ok(()),
                Ok(false) => failures = 0,
                Err(err @ Error::Api { .. }) => return Err(err),
                Err(err) => {
                    failures += 1;
                    if failures > 30 {
                        return Err(err);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
        }
    }

    /// One SSE connection. `Ok(true)` when the task ended.
    async fn follow_once(
        &self,
        id: TaskId,
        after: &mut u64,
        on_event: &mut impl FnMut(FollowEvent),
    ) -> Result<bool> {
        let query = LogQuery {
            after: Some(*after),
            follow: Some(true),
            ..LogQuery::default()
        };
        let request = self
            .http
            .get(self.url(&format!("/tasks/{id}/logs")))
            .query(&query);
        self.read_sse(request, |event, data| match event {
            EVENT_LOG => {
                let log: LogLine =
                    serde_json::from_str(data).map_err(|e| Error::Decode(e.to_string()))?;
                *after = log.seq;
                on_event(FollowEvent::Line(log));
                Ok(false)
            }
            EVENT_END => {
                let task: Task =
                    serde_json::from_str(data).map_err(|e| Error::Decode(e.to_string()))?;
                on_event(FollowEvent::End(Box::new(task)));
                Ok(true)
            }
            "error" => Err(Error::Decode(data.to_owned())),
            _ => Ok(false),
        })
        .await
    }

    /// Streams task changes (`GET /api/v1/events`) to `on_event` until it returns false or the server closes
    /// the stream.
    pub async fn events(
        &self,
        query: &EventQuery,
        mut on_event: impl FnMut(TaskEvent) -> bool,
    ) -> Result<()> {
        let request = self.http.get(self.url("/events")).query(query);
        self.read_sse(request, |event, data| {
            let decode = |e: serde_json::Error| Error::Decode(e.to_string());
            let event = match event {
                EVENT_TASK => {
                    TaskEvent::Changed(Box::new(serde_json::from_str(data).map_err(decode)?))
                }
                EVENT_DELETED => {
                    let deleted: serde_json::Value = serde_json::from_str(data).map_err(decode)?;
                    let id = deleted["id"].as_str().and_then(|id| id.parse().ok());
                    TaskEvent::Deleted(id.ok_or_else(|| {
                        Error::Decode(format!("deleted event without an id: {data}"))
                    })?)
                }
                EVENT_LAGGED => TaskEvent::Lagged,
                "error" => return Err(Error::Decode(data.to_owned())),
                _ => return Ok(false),
            };
            Ok(!on_event(event))
        })
        .await
        .map(drop)
    }

    /// Reads one Server-Sent Events response, handing each event's name and data to `on_event` until it
    /// returns `Ok(true)` (then this returns `Ok(true)`) or the stream ends (`Ok(false)`).
    async fn read_sse(
        &self,
        request: RequestBuilder,
        mut on_event: impl FnMut(&str, &str) -> Result<bool>,
    ) -> Result<bool> {
        let response = self.send(request).await?;
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut event = String::new();
        let mut data = String::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| Error::Http {
                url: self.base.clone(),
                source,
            })?;
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !event.is_empty() && on_event(&event, &data)? {
                        return Ok(true);
                    }
                    event.clear();
                    data.clear();
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim_start().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
        }
        Ok(false)
    }
}

/// TLS with the public authorities (Mozilla's list) and `ca_pem`, over the ring provider the whole project
/// uses.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.map_err(Error::CaPem)?)?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
