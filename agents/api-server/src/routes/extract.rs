//! What the handlers read from a request: the path parameters, the JSON body and
//! bounded fields; and the plain JSON response.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::AgentId;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// The agent a route is about: `node_id` or `module_id` parameters, else the cluster.
pub fn agent_from(p: &Params) -> Result<AgentId, ApiError> {
    if let Some(n) = p.get("node_id") {
        return AgentId::node(n).map_err(|e| ApiError::bad_request(e.to_string()));
    }
    if let Some(m) = p.get("module_id") {
        return AgentId::module(m).map_err(|e| ApiError::bad_request(e.to_string()));
    }
    Ok(AgentId::Cluster)
}

/// Decode a JSON request body, naming what is wrong with it.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("request body missing: a JSON object is expected"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {}", without_value(&e))))
}

/// A JSON decoding error without the offending value: "invalid type: string \"...\",
/// expected ..." would repeat a password sent as the wrong type.
fn without_value(e: &serde_json::Error) -> String {
    let text = e.to_string();
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = text.strip_prefix(prefix)
            && let Some(at) = rest.rfind(", expected")
        {
            let kind = rest[..at].split_whitespace().next().unwrap_or("value");
            return format!("{prefix}{kind}{}", &rest[at..]);
        }
    }
    text
}

/// A string field bounded in length, named in the error.
pub fn bounded<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, ApiError> {
    if value.len() > max {
        return Err(ApiError::bad_request(format!("field \"{field}\" too long: at most {max} bytes")));
    }
    Ok(value)
}

pub type Params = HashMap<String, String>;

pub fn json_response(status: StatusCode, value: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], Body::from(value.to_string())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        password: String,
        n: u8,
    }

    #[test]
    fn decoding_errors_never_repeat_the_value() {
        let msg = |body: &str| parse_body::<Body>(&Bytes::from(body.to_owned())).unwrap_err().message;
        let m = msg(r#"{"password": 31415926535, "n": 1}"#);
        assert!(!m.contains("31415926535") && m.contains("invalid type: integer, expected a string"), "{m}");
        let m = msg(r#"{"password": "x", "n": "s3cret, expected"}"#);
        assert!(!m.contains("s3cret") && m.contains("invalid type: string, expected u8"), "{m}");
        let m = msg(r#"{"password": "x", "n": 300}"#);
        assert!(!m.contains("300") && m.contains("invalid value: integer, expected u8"), "{m}");
        assert!(msg(r#"{"n": 1}"#).contains("missing field `password`"));
    }
}
