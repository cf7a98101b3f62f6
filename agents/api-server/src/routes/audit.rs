//! Audit queries (NS8 7.6) and the chain check. Reading the trail needs the cluster
//! action `read-audit` (granted by `owner` and `reader`).

use std::collections::HashMap;

use axum::extract::{Query, State};
use protocol::AgentId;
use serde_json::json;

use crate::audit::Query as AuditQuery;
use crate::authz::Session;
use crate::error::{ApiError, ApiResult, ok};
use crate::state::{Caller, Shared};

pub const READ_AUDIT: &str = "read-audit";
const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 10_000;

async fn reader(s: &Shared, caller: &Caller) -> Result<Session, ApiError> {
    let session = s.session(caller, Some(AgentId::Cluster)).await?;
    session.require(READ_AUDIT)?;
    Ok(session)
}

fn list(v: Option<&String>) -> Vec<String> {
    v.map(|s| s.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect()).unwrap_or_default()
}

fn time(name: &str, v: Option<&String>) -> Result<Option<u64>, ApiError> {
    match v.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(t) => protocol::time::parse_rfc3339_ms(t).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "parameter \"{name}\": {t:?} is not an ISO 8601 time such as 2026-11-27T10:00:00Z"
            ))
        }),
    }
}

pub async fn query(State(s): State<Shared>, caller: Caller, Query(p): Query<HashMap<String, String>>) -> ApiResult {
    reader(&s, &caller).await?;
    let limit = match p.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(ApiError::bad_request(format!("parameter \"limit\": expected 1-{MAX_LIMIT}, got {l:?}"))),
        },
    };
    let q = AuditQuery {
        users: list(p.get("user")),
        actions: list(p.get("action")),
        data: p.get("data").filter(|d| !d.is_empty()).cloned(),
        from_ms: time("from", p.get("from"))?,
        to_ms: time("to", p.get("to"))?,
        limit,
    };
    let audits = s.audit.query(&q).await?;
    Ok(ok(json!({"audits": audits})))
}

pub async fn users(State(s): State<Shared>, caller: Caller) -> ApiResult {
    reader(&s, &caller).await?;
    Ok(ok(json!({"users": s.audit.distinct("user").await?})))
}

pub async fn actions(State(s): State<Shared>, caller: Caller) -> ApiResult {
    reader(&s, &caller).await?;
    Ok(ok(json!({"actions": s.audit.distinct("action").await?})))
}

/// Walk the hash chain; `first_broken` names the first record that fails.
pub async fn verify(State(s): State<Shared>, caller: Caller) -> ApiResult {
    reader(&s, &caller).await?;
    Ok(ok(s.audit.verify().await?))
}
