//! Access routes: signing in and out of the web UI, who the caller is, users, tokens and the audit log.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::Result;
use arachne_api_types::{AuditQuery, CreateToken, CreateUser, SignIn, UpdateUser};
use arachne_shared::Caller;

use super::*;

/// Signs in; the name tried goes to the audit log with the outcome, right or wrong.
pub(super) async fn sign_in(
    State(api): State<Api>,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Response {
    let body = match json(body) {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let name = body.name.clone();
    let mut response = match api.sign_in(body).await {
        Ok(token) => (StatusCode::CREATED, Json(token)).into_response(),
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(SignInAttempt(name));
    response
}

pub(super) async fn sign_out(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse> {
    api.sign_out(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn me(Extension(caller): Extension<Caller>) -> impl IntoResponse {
    Json(caller)
}

pub(super) async fn list_users(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_users().await?))
}

pub(super) async fn create_user(
    State(api): State<Api>,
    body: Result<Json<CreateUser>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(api.create_user(json(body)?).await?),
    ))
}

pub(super) async fn update_user(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<UpdateUser>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.update_user(&name, json(body)?).await?))
}

pub(super) async fn delete_user(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    api.delete_user(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_tokens(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_tokens().await?))
}

pub(super) async fn create_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let token = api.create_token(&caller, json(body)?).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

pub(super) async fn revoke_token(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    api.revoke_token(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn audit(
    State(api): State<Api>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.audit(query(q)?).await?))
}
