//! What runs produce: items (paged JSON, JSON lines or CSV), logs (paged, searched, or followed as SSE).

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
    LogSearchQuery, MAX_LIMIT,
};

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
pub(super) async fn export_csv(api: Api, id: TaskId, after: u64, rows: u64) -> Result<Response> {
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
pub(super) async fn items_page(
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
