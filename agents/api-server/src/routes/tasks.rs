//! Tasks: create on an agent's queue, list, read status and context (NS8 7.2).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use protocol::secrets::mask_secrets;
use protocol::task::{Task, decode_output};
use protocol::{AgentId, keys, validate_action_name, validate_task_id};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Params, agent_from, parse_body};
use crate::audit::Entry;
use crate::authz::{Session, task_owner};
use crate::error::{ApiError, ApiResult, envelope, ok};
use crate::state::{Caller, Shared};

/// NS8's idle limit for the liveness check before a push.
const MAX_IDLE_SECS: u64 = 8;

fn task_id_from(p: &Params) -> Result<String, ApiError> {
    let id = p.get("task_id").cloned().unwrap_or_default();
    validate_task_id(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(id)
}

#[derive(Deserialize)]
struct TaskRequest {
    action: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    extra: Value,
    #[serde(default)]
    parent: Option<String>,
}

pub async fn create(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>, body: Bytes) -> ApiResult {
    let agent = agent_from(&p)?;
    let session = s.session(&caller, Some(agent.clone())).await?;
    let req: TaskRequest = parse_body(&body)?;
    validate_action_name(&req.action).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let parent = req.parent.unwrap_or_default();
    if !parent.is_empty() {
        validate_task_id(&parent).map_err(|e| ApiError::bad_request(format!("field \"parent\": {e}")))?;
    }
    require_action(&s, &session, &agent, &req.action).await?;
    require_master(&s).await?;
    if !bus::agent_is_alive(&s.redis, &agent, MAX_IDLE_SECS).await? {
        return Err(ApiError::not_found(format!(
            "agent {agent} is not running: no Redis connection named \"{agent}\" was active in the last {MAX_IDLE_SECS} s"
        )));
    }
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        action: req.action,
        data: req.data,
        extra: req.extra,
        parent,
        queue: keys::tasks(&agent),
        user: session.subject.name(),
        timestamp: Some(protocol::time::rfc3339(std::time::SystemTime::now())),
    };
    // The same object is pushed, audited (masked) and answered.
    let value = serde_json::to_value(&task)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the task: {e}")))?;
    let _: i64 = s.redis.lpush(&task.queue, value.to_string()).await?;
    s.audit(Entry {
        user: task.user,
        source: session.source.to_string(),
        action: "create-task".into(),
        agent: agent.to_string(),
        task: task.id,
        data: mask_secrets(&value).to_string(),
    })
    .await;
    Ok(envelope(StatusCode::CREATED, "success", value))
}

/// Whether the session may run `action` on `agent`: a role granted on the agent has a
/// pattern matching it. A refusal is audited (`auth-fail`, the action named) and
/// answered 403. Task creation and every route that acts as an action check this.
pub async fn require_action(s: &Shared, session: &Session, agent: &AgentId, action: &str) -> Result<(), ApiError> {
    if !session.may(action) {
        let mut entry = s.audit_entry(&session.subject.name(), session.source, "auth-fail");
        entry.agent = agent.to_string();
        entry.data = json!({"action": action}).to_string();
        s.audit(entry).await;
        session.require(action)?;
    }
    Ok(())
}

/// NS8 refuses tasks on a read-only replica and names the leader.
async fn require_master(s: &Shared) -> Result<(), ApiError> {
    let role: Vec<RedisValue> =
        s.redis.custom(CustomCommand::new_static("ROLE", ClusterHash::Random, false), Vec::<String>::new()).await?;
    if role.first().and_then(|v| v.as_string()).as_deref() == Some("master") {
        return Ok(());
    }
    let leader = role.get(1).and_then(|v| v.as_string()).unwrap_or_default();
    Err(ApiError::forbidden(format!("this node is not the cluster leader: send tasks to {leader}"))
        .with_data(json!(leader)))
}

/// The four keys of a task, in [`task_fields`] order.
fn task_keys(agent: &AgentId, id: &str) -> Vec<String> {
    vec![
        keys::task_context(agent, id),
        keys::task_output(agent, id),
        keys::task_error(agent, id),
        keys::task_exit_code(agent, id),
    ]
}

fn deny_task(session: &Session, agent: &AgentId, id: &str) -> ApiError {
    ApiError::forbidden(format!(
        "{} may not read task {id} of {agent}: it is not theirs and no granted role allows its action",
        session.subject.name()
    ))
}

pub async fn status(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>) -> ApiResult {
    let agent = agent_from(&p)?;
    let id = task_id_from(&p)?;
    // Both in one round trip: the values are dropped unless the session allows them.
    let (session, values) = tokio::join!(
        s.session(&caller, Some(agent.clone())),
        s.redis.mget::<Vec<Option<String>>, _>(task_keys(&agent, &id))
    );
    let session = session?;
    let [context, output, error, code]: [Option<String>; 4] =
        values?.try_into().map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unexpected MGET reply"))?;
    let (action, user) = task_owner(context.as_deref());
    if context.is_none() && output.is_none() && code.is_none() {
        return Err(ApiError::not_found(format!("no task {id} on {agent} (unknown, or its result has expired)")));
    }
    if !session.may_see_task(&action, &user) {
        return Err(deny_task(&session, &agent, &id));
    }
    let (Some(output), Some(error), Some(code)) = (output, error, code) else {
        return Err(ApiError::bad_request(format!("task {id} on {agent} has not finished yet")));
    };
    let exit_code: i64 = code.trim().parse().unwrap_or(-1);
    Ok(ok(json!({
        "output": decode_output(&output),
        "error": error,
        "exit_code": exit_code,
        "file": keys::task_prefix(&agent, &id),
    })))
}

pub async fn context(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>) -> ApiResult {
    let agent = agent_from(&p)?;
    let id = task_id_from(&p)?;
    let session = s.session(&caller, Some(agent.clone())).await?;
    let context: Option<String> = s.redis.get(keys::task_context(&agent, &id)).await?;
    let Some(context) = context else {
        return Err(ApiError::not_found(format!("no task {id} on {agent} (unknown, or its context has expired)")));
    };
    let (action, user) = task_owner(Some(&context));
    if !session.may_see_task(&action, &user) {
        return Err(deny_task(&session, &agent, &id));
    }
    let value: Value = serde_json::from_str(&context).unwrap_or(Value::String(context));
    Ok(ok(json!({"context": value, "file": keys::task_prefix(&agent, &id)})))
}

pub async fn list(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>) -> ApiResult {
    let agent = agent_from(&p)?;
    let session = s.session(&caller, Some(agent.clone())).await?;
    let ids: Vec<String> = bus::scan(&s.redis, &keys::task_contexts_pattern(&agent), None)
        .await?
        .iter()
        .filter_map(|k| keys::parse_task_context(&agent, k).map(str::to_owned))
        .collect();
    let mut tasks = serde_json::Map::new();
    for id in ids {
        let values: Vec<Option<String>> = s.redis.mget(task_keys(&agent, &id)).await?;
        let [context, output, error, code]: [Option<String>; 4] = match values.try_into() {
            Ok(v) => v,
            Err(_) => continue,
        };
        let (action, user) = task_owner(context.as_deref());
        if context.is_none() || !session.may_see_task(&action, &user) {
            continue;
        }
        let context: Value = context.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or(Value::Null);
        tasks.insert(
            keys::task_prefix(&agent, &id),
            json!({
                "context": context,
                "output": output.as_deref().map(decode_output),
                "error": error,
                "exit_code": code.and_then(|c| c.trim().parse::<i64>().ok()),
            }),
        );
    }
    // Pending tasks, as their submitters sent them, secrets masked.
    let pending: Vec<String> = s.redis.lrange(keys::tasks(&agent), 0, -1).await?;
    let queue: Vec<Value> = pending
        .iter()
        .filter(|t| {
            let (action, user) = task_owner(Some(t));
            session.may_see_task(&action, &user)
        })
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .map(|t| mask_secrets(&t))
        .collect();
    Ok(ok(json!({"tasks": tasks, "queue": queue})))
}

/// The agents with keys matching `pattern` ([`keys::NODE_KEYS_PATTERN`] or
/// [`keys::MODULE_KEYS_PATTERN`]) the caller holds a role on, by their id without the
/// kind (`1`, `mail1`).
async fn granted_agents(s: &Shared, session: &Session, pattern: &str) -> Result<Vec<String>, ApiError> {
    let grants: std::collections::HashMap<String, String> =
        s.redis.hgetall(keys::grants(&session.subject.name())).await?;
    let mut seen = std::collections::BTreeSet::new();
    for key in bus::scan(&s.redis, pattern, None).await? {
        if let Some(agent) = keys::key_owner(&key)
            && grants.get(&agent.to_string()).is_some_and(|r| !r.trim().is_empty())
        {
            seen.insert(agent);
        }
    }
    let id = |a: AgentId| match a {
        AgentId::Node(n) => n.to_string(),
        AgentId::Module(m) => m,
        AgentId::Cluster => String::new(),
    };
    Ok(seen.into_iter().map(id).collect())
}

pub async fn nodes(State(s): State<Shared>, caller: Caller) -> ApiResult<Response> {
    let session = s.session(&caller, None).await?;
    let list = granted_agents(&s, &session, keys::NODE_KEYS_PATTERN).await?;
    Ok(ok(json!({"list": list, "queue": keys::NODE_KEYS_PATTERN})))
}

pub async fn modules(State(s): State<Shared>, caller: Caller) -> ApiResult<Response> {
    let session = s.session(&caller, None).await?;
    let list = granted_agents(&s, &session, keys::MODULE_KEYS_PATTERN).await?;
    Ok(ok(json!({"list": list, "queue": keys::MODULE_KEYS_PATTERN})))
}
