//! The live stream of task changes (SSE), filtered by spider or task.

use std::convert::Infallible;
use std::time::Duration;

use std::collections::HashMap;

use arachne_shared::{ChangeKind, TaskChanged, TaskId, TaskStatus};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::{Error, Result};
use arachne_api_types::{EVENT_DELETED, EVENT_LAGGED, EVENT_TASK, EventQuery};

use super::*;

pub(super) async fn events(
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
pub(super) async fn stream_events(
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
pub(super) const OUTPUT_EVERY: Duration = Duration::from_secs(1);
