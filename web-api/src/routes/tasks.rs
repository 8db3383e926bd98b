//! Task routes: start a run, list, read, cancel, restart and delete tasks, a task's tree, and waiting for
//! a task's end.

use std::time::Duration;

use arachne_shared::{TaskChanged, TaskId};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::sync::broadcast;

use crate::Result;
use arachne_api_types::{MAX_LIMIT, RunTask, TaskQuery, TaskTree, WaitQuery};

use super::*;

pub(super) async fn run_task(
    State(api): State<Api>,
    body: Result<Json<RunTask>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(api.run_task(json(body)?).await?)))
}

pub(super) async fn list_tasks(
    State(api): State<Api>,
    q: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let mut q = query(q)?;
    q.limit = Some(limit(q.limit)?);
    Ok(Json(api.list_tasks(q).await?))
}

pub(super) async fn get_task(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.get_task(task_id(&id)?).await?))
}

pub(super) async fn delete_task(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    api.delete_task(task_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn cancel_task(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.cancel_task(task_id(&id)?).await?))
}

pub(super) async fn restart_task(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(api.restart_task(task_id(&id)?).await?),
    ))
}

pub(super) async fn task_tree(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
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

pub(super) async fn wait(
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
        if task.status.is_terminal() && !task.will_retry {
            return Ok(Json(task));
        }
        tokio::select! {
            () = next_change(&mut changes, id) => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Json(task)),
        }
    }
}

/// Waits until `id` may have changed. A lagged receiver counts as a change: the caller re-reads anyway.
pub(super) async fn next_change(changes: &mut broadcast::Receiver<TaskChanged>, id: TaskId) {
    loop {
        match changes.recv().await {
            Ok(changed) if changed.task_id == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}
