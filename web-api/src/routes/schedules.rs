//! Schedule routes, and the preview of a cron expression's next fire times.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::{Error, Result};
use arachne_api_types::{CronPreview, CronQuery, ScheduleSpec};

use super::*;

pub(super) async fn list_schedules(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_schedules().await?))
}

pub(super) async fn create_schedule(
    State(api): State<Api>,
    body: Result<Json<ScheduleSpec>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(api.create_schedule(json(body)?).await?),
    ))
}

pub(super) async fn get_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.get_schedule(&name).await?))
}

pub(super) async fn update_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<ScheduleSpec>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.update_schedule(&name, json(body)?).await?))
}

pub(super) async fn delete_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    api.delete_schedule(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn enable_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.set_schedule_enabled(&name, true).await?))
}

pub(super) async fn disable_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.set_schedule_enabled(&name, false).await?))
}

pub(super) async fn run_schedule(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(api.run_schedule(&name).await?)))
}

pub(super) async fn cron_preview(
    q: Result<Query<CronQuery>, QueryRejection>,
) -> Result<Json<CronPreview>> {
    let q = query(q)?;
    let tz = q.tz.as_deref().filter(|tz| !tz.is_empty()).unwrap_or("UTC");
    let expr = arachne_shared::schedule::CronExpr::parse(&q.cron, tz)
        .map_err(|e| Error::BadRequest(e.0))?;
    Ok(Json(CronPreview {
        next: expr.next(chrono::Utc::now(), 5),
    }))
}
