//! Node routes: list worker nodes, change their settings, and remove offline ones.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::Result;
use arachne_api_types::UpdateNode;

use super::*;

pub(super) async fn list_nodes(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_nodes().await?))
}

pub(super) async fn update_node(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<UpdateNode>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.update_node(&name, json(body)?).await?))
}

pub(super) async fn remove_node(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    api.remove_node(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
