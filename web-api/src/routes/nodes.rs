//! Node and overview routes: list worker nodes, change their settings, remove offline ones, and the overview
//! of runs and load.

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

pub(super) async fn stats(
    State(api): State<Api>,
    query: Result<
        axum::extract::Query<arachne_api_types::StatsQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<impl IntoResponse> {
    Ok(Json(api.stats(super::query(query)?).await?))
}
