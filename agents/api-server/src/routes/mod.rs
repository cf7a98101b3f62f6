//! The HTTP routes. [`ROUTES`] lists every one of them; the router is built from the
//! same handlers, and a test checks the list against the OpenAPI document.

pub mod audit;
pub mod backup;
pub mod extract;
pub mod login;
pub mod secret;
pub mod tasks;
pub mod twofa;
pub mod users;

use axum::Router;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::Shared;

/// (method, path) of every route, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/login"),
    ("post", "/api/logout"),
    ("post", "/api/refresh"),
    ("get", "/api/module/{module_id}/http-basic/{action}"),
    ("get", "/api/cluster/tasks"),
    ("post", "/api/cluster/tasks"),
    ("get", "/api/cluster/task/{task_id}/status"),
    ("get", "/api/cluster/task/{task_id}/context"),
    ("get", "/api/cluster/backup/{token}/{file}"),
    ("get", "/api/nodes"),
    ("get", "/api/node/{node_id}/tasks"),
    ("post", "/api/node/{node_id}/tasks"),
    ("get", "/api/node/{node_id}/task/{task_id}/status"),
    ("get", "/api/node/{node_id}/task/{task_id}/context"),
    ("get", "/api/modules"),
    ("get", "/api/module/{module_id}/tasks"),
    ("post", "/api/module/{module_id}/tasks"),
    ("get", "/api/module/{module_id}/task/{task_id}/status"),
    ("get", "/api/module/{module_id}/task/{task_id}/context"),
    ("get", "/api/audit"),
    ("get", "/api/audit/users"),
    ("get", "/api/audit/actions"),
    ("get", "/api/audit/verify"),
    ("get", "/api/2FA"),
    ("post", "/api/2FA"),
    ("delete", "/api/2FA"),
    ("get", "/api/2FA/qr-code"),
    ("get", "/api/users"),
    ("post", "/api/users"),
    ("delete", "/api/users/{user}"),
    ("post", "/api/users/{user}/password"),
    ("get", "/api/grants"),
    ("post", "/api/grants"),
    ("delete", "/api/grants"),
    ("get", "/api/openapi.json"),
    ("post", "/api/ws-ticket"),
    ("get", "/ws"),
];

pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Login bodies are tiny; NS8 caps them at 16 KiB too.
pub const LOGIN_BODY_LIMIT: usize = 16 * 1024;

pub fn router(state: Shared, body_limit: usize) -> Router {
    let login = Router::new().route("/api/login", post(login::login)).layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT));
    Router::new()
        .route("/api/logout", post(login::logout))
        .route("/api/refresh", post(login::refresh))
        .route("/api/module/{module_id}/http-basic/{action}", get(login::http_basic))
        .route("/api/cluster/tasks", get(tasks::list).post(tasks::create))
        .route("/api/cluster/task/{task_id}/status", get(tasks::status))
        .route("/api/cluster/task/{task_id}/context", get(tasks::context))
        .route("/api/cluster/backup/{token}/{file}", get(backup::download))
        .route("/api/nodes", get(tasks::nodes))
        .route("/api/node/{node_id}/tasks", get(tasks::list).post(tasks::create))
        .route("/api/node/{node_id}/task/{task_id}/status", get(tasks::status))
        .route("/api/node/{node_id}/task/{task_id}/context", get(tasks::context))
        .route("/api/modules", get(tasks::modules))
        .route("/api/module/{module_id}/tasks", get(tasks::list).post(tasks::create))
        .route("/api/module/{module_id}/task/{task_id}/status", get(tasks::status))
        .route("/api/module/{module_id}/task/{task_id}/context", get(tasks::context))
        .route("/api/audit", get(audit::query))
        .route("/api/audit/users", get(audit::users))
        .route("/api/audit/actions", get(audit::actions))
        .route("/api/audit/verify", get(audit::verify))
        .route("/api/2FA", get(twofa::status).post(twofa::enable).delete(twofa::disable))
        .route("/api/2FA/qr-code", get(twofa::qr_code))
        .route("/api/users", get(users::list).post(users::add))
        .route("/api/users/{user}", axum::routing::delete(users::remove))
        .route("/api/users/{user}/password", post(users::password))
        .route("/api/grants", get(users::grants).post(users::grant).delete(users::revoke))
        .route("/api/openapi.json", get(openapi))
        .route("/api/ws-ticket", post(crate::ws::ticket))
        .route("/ws", get(crate::ws::handler))
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(login)
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("API not found")
}

/// Rejections produced by axum itself (bad path parameter, wrong method, body too
/// large...) are plain text; rewrite them into the JSON envelope.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        message = format!("request body too large ({message})");
    }
    let mut fixed = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}
