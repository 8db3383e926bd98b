//! What runs produce: a task's items (paged JSON, JSON lines or CSV), a spider's items across its tasks (a
//! searched page, or an export of every match), logs (paged, searched, or followed as SSE).

use std::convert::Infallible;

use arachne_shared::TaskId;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::csv::Columns;
use crate::{Error, Result};
use arachne_api_types::{
    EVENT_END, EVENT_LOG, ItemFormat, ItemQuery, LOG_SEARCH_SCAN, LogQuery, LogSearch,
    LogSearchQuery, MAX_LIMIT, SpiderItemQuery, SpiderItems,
};
use serde_json::value::RawValue;

use super::*;

pub(super) async fn items(
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
            let pages = TaskItems { api, id, after };
            export(pages, ItemFormat::Csv, rows, &id.to_string()).await?
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

/// `GET /api/v1/spiders/{name}/items`.
pub(super) async fn spider_items(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response> {
    items_of(api, crate::ItemSource::Spider(name), q).await
}

/// `GET /api/v1/results/{collection}/items`.
pub(super) async fn collection_items(
    State(api): State<Api>,
    Path(collection): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response> {
    items_of(api, crate::ItemSource::Collection(collection), q).await
}

/// A page of `source`'s items, or every match as one file. The `where` parameter repeats, which the typed
/// query cannot take, so the query string is read as pairs and the conditions taken out first.
async fn items_of(
    api: Api,
    source: crate::ItemSource,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response> {
    let (conditions, rest): (Vec<_>, Vec<_>) =
        query(q)?.into_iter().partition(|(key, _)| key == "where");
    let rest = serde_urlencoded::to_string(&rest).expect("pairs of strings encode");
    let mut q: SpiderItemQuery = serde_urlencoded::from_str(&rest)
        .map_err(|e| Error::BadRequest(format!("invalid query: {e}")))?;
    q.conditions = conditions.into_iter().map(|(_, c)| c).collect();
    let Some(format) = q.format else {
        q.limit = Some(limit(q.limit)?);
        let found = api.spider_items(&source, q, true).await?;
        return Ok(Json(SpiderItems {
            items: found.items,
            total: found.total.unwrap_or_default(),
            next: found.next,
        })
        .into_response());
    };
    let rows = match q.limit {
        Some(_) => u64::from(limit(q.limit)?),
        None => u64::MAX,
    };
    let file = format!("{}-items", source.name());
    export(
        SpiderPages {
            api,
            source,
            query: q,
        },
        format,
        rows,
        &file,
    )
    .await
}

/// Where an export reads its items, a page at a time.
#[async_trait::async_trait]
pub(super) trait ItemPages: Clone + Send + Sync + 'static {
    type Cursor: Clone + Send + Sync + 'static;
    /// Up to `left` items from `from` (the first page when `None`), and where the next page starts while
    /// there may be more.
    async fn page(
        &self,
        from: Option<Self::Cursor>,
        left: u64,
    ) -> Result<(Vec<Box<RawValue>>, Option<Self::Cursor>)>;
}

/// A task's items, oldest first from a sequence number.
#[derive(Clone)]
pub(super) struct TaskItems {
    api: Api,
    id: TaskId,
    after: u64,
}

#[async_trait::async_trait]
impl ItemPages for TaskItems {
    type Cursor = u64;

    async fn page(
        &self,
        from: Option<u64>,
        left: u64,
    ) -> Result<(Vec<Box<RawValue>>, Option<u64>)> {
        let mut page = self
            .api
            .items(self.id, from.unwrap_or(self.after), MAX_LIMIT)
            .await?;
        let more = page.len() == MAX_LIMIT as usize;
        page.truncate(usize::try_from(left).unwrap_or(usize::MAX));
        let next = page
            .last()
            .map(|last| last.seq)
            .filter(|_| more && (page.len() as u64) < left);
        Ok((page.into_iter().map(|i| i.data).collect(), next))
    }
}

/// A spider's (or a results collection's) items that match a query, newest first.
#[derive(Clone)]
struct SpiderPages {
    api: Api,
    source: crate::ItemSource,
    query: SpiderItemQuery,
}

#[async_trait::async_trait]
impl ItemPages for SpiderPages {
    type Cursor = String;

    async fn page(
        &self,
        from: Option<String>,
        left: u64,
    ) -> Result<(Vec<Box<RawValue>>, Option<String>)> {
        let query = SpiderItemQuery {
            after: from.or_else(|| self.query.after.clone()),
            limit: Some(u32::try_from(left).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
            ..self.query.clone()
        };
        let found = self.api.spider_items(&self.source, query, false).await?;
        Ok((
            found.items.into_iter().map(|i| i.data).collect(),
            found.next,
        ))
    }
}

/// Up to `rows` items as one file, streamed. The first page is read before the answer starts, so a bad query
/// or a failing store is an error status rather than a file cut short. A CSV file takes two passes over the
/// store, which keep memory flat however many items there are: the first learns the columns, the second
/// streams the rows.
pub(super) async fn export<P: ItemPages>(
    pages: P,
    format: ItemFormat,
    rows: u64,
    name: &str,
) -> Result<Response> {
    let mut columns = Columns::default();
    let mut rows = rows;
    let first = pages.page(None, rows).await?;
    if format == ItemFormat::Csv {
        first.0.iter().for_each(|item| columns.learn(item));
        let (mut seen, mut cursor) = (first.0.len() as u64, first.1.clone());
        while let Some(next) = cursor.filter(|_| seen < rows) {
            let (page, after) = pages.page(Some(next), rows - seen).await?;
            page.iter().for_each(|item| columns.learn(item));
            seen += page.len() as u64;
            cursor = after;
        }
        // Only the rows the first pass saw: items arriving in between would lack columns.
        rows = seen;
    }
    let mut first = Some(first);
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let (head, tail) = match format {
            ItemFormat::Csv => (columns.header(), ""),
            ItemFormat::Json => ("[".to_owned(), "]\n"),
            ItemFormat::Jsonl => (String::new(), ""),
        };
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        let (mut sent, mut cursor) = (0, None);
        while sent < rows {
            let fetched = match first.take() {
                Some(first) => Ok(first),
                None => pages.page(cursor, rows - sent).await,
            };
            let (page, next) = match fetched {
                Ok(page) => page,
                Err(err) => {
                    // The status line is gone already; cutting the body short tells the client it is incomplete.
                    let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            for (i, item) in page.iter().enumerate() {
                match format {
                    ItemFormat::Csv => chunk.push_str(&columns.row(item)),
                    ItemFormat::Json => {
                        if sent > 0 || i > 0 {
                            chunk.push(',');
                        }
                        chunk.push_str(item.get());
                    }
                    ItemFormat::Jsonl => {
                        chunk.push_str(item.get());
                        chunk.push('\n');
                    }
                }
            }
            sent += page.len() as u64;
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            cursor = match next {
                Some(next) => Some(next),
                None => break,
            };
        }
        let _ = tx.send(Ok(Bytes::from(tail))).await;
    });
    let (media, extension) = match format {
        ItemFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ItemFormat::Json => ("application/json", "json"),
        ItemFormat::Jsonl => ("application/x-ndjson", "jsonl"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, media.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.{extension}\""),
            ),
        ],
        axum::body::Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

pub(super) async fn logs(
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

pub(super) async fn search_logs(
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

/// Feeds one SSE follower: the store is read after every change notice, so a follower never misses a line
/// and never gets one twice, however far it lags.
pub(super) async fn follow(
    api: Api,
    id: TaskId,
    mut after: u64,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
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
