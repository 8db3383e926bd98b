//! Notification routes: rules (create, show, replace, delete, test) and the record of their deliveries.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::Result;
use arachne_api_types::DeliveryQuery;
use arachne_shared::notify::Notification;

use super::*;

pub(super) async fn list_notifications(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_notifications().await?))
}

pub(super) async fn get_notification(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.get_notification(&name).await?))
}

pub(super) async fn create_notification(
    State(api): State<Api>,
    body: Result<Json<Notification>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let rule = api.put_notification(json(body)?, false).await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

pub(super) async fn replace_notification(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<Notification>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let rule = json(body)?;
    if rule.name != name {
        return Err(crate::Error::BadRequest(format!(
            "the body names notification {:?}, the path {name:?}: a rule is renamed by creating the new one and deleting the old",
            rule.name
        )));
    }
    Ok(Json(api.put_notification(rule, true).await?))
}

pub(super) async fn delete_notification(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    api.delete_notification(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn test_notification(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::ACCEPTED,
        Json(api.test_notification(&name).await?),
    ))
}

pub(super) async fn list_deliveries(
    State(api): State<Api>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.list_deliveries(super::query(query)?).await?))
}
