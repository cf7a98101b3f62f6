//! Errors as HTTP answers in NS8's envelope `{"code", "message", "data"}`.
//!
//! Every rejection is a 4xx naming what was wrong; a 5xx only ever means Redis failed.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub data: Value,
    /// Seconds for `Retry-After` (throttled logins).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), data: Value::Null, retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

impl From<fred::error::Error> for ApiError {
    fn from(e: fred::error::Error) -> Self {
        tracing::error!("redis: {e}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the cluster database (Redis) is not available")
    }
}

impl From<bus::BusError> for ApiError {
    fn from(e: bus::BusError) -> Self {
        tracing::error!("redis: {e}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the cluster database (Redis) is not available")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.status.as_u16(), "message": self.message, "data": self.data});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A success in the envelope.
pub fn ok(data: Value) -> Response {
    envelope(StatusCode::OK, "success", data)
}

pub fn envelope(status: StatusCode, message: &str, data: Value) -> Response {
    (status, axum::Json(json!({"code": status.as_u16(), "message": message, "data": data}))).into_response()
}

pub type ApiResult<T = Response> = Result<T, ApiError>;
