//! Module locks (`cluster/module_locks`): one operation per module at a time. A second
//! caller is refused with the task holding the module.

use agent_runtime::ActionContext;
use bus::fred::prelude::*;
use protocol::keys;
use serde::{Deserialize, Serialize};

/// What holds a module.
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    task: Option<String>,
    operation: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("module {id} is busy with task {task} (its {operation}): try again when it has ended")]
    Busy { id: String, task: String, operation: String },
    #[error("cannot take module {id}: {source}")]
    Redis { id: String, source: bus::fred::error::Error },
}

/// Take module `id` for `operation` (`install`, `update`, `removal`).
pub async fn lock(ctx: &ActionContext, id: &str, operation: &str) -> Result<(), LockError> {
    let redis = |source| LockError::Redis { id: id.to_owned(), source };
    let entry = Holder { task: Some(ctx.task_id.clone()), operation: operation.to_owned() };
    let entry = serde_json::to_string(&entry).expect("a lock entry always serializes");
    let taken: bool = ctx.redis.hsetnx(keys::MODULE_LOCKS, id, entry).await.map_err(redis)?;
    if taken {
        return Ok(());
    }
    let holder: Option<String> = ctx.redis.hget(keys::MODULE_LOCKS, id).await.map_err(redis)?;
    let holder = holder.and_then(|h| serde_json::from_str::<Holder>(&h).ok());
    Err(LockError::Busy {
        id: id.to_owned(),
        task: holder.as_ref().and_then(|h| h.task.clone()).unwrap_or_else(|| "?".into()),
        operation: holder.map(|h| h.operation).unwrap_or_else(|| "operation".into()),
    })
}

/// Give module `id` back, if this task holds it.
pub async fn unlock(ctx: &ActionContext, id: &str) {
    let holder: Result<Option<String>, _> = ctx.redis.hget(keys::MODULE_LOCKS, id).await;
    let mine = holder
        .ok()
        .flatten()
        .and_then(|h| serde_json::from_str::<Holder>(&h).ok())
        .is_some_and(|h| h.task.as_deref() == Some(ctx.task_id.as_str()));
    if mine {
        let _: Result<i64, _> = ctx.redis.hdel(keys::MODULE_LOCKS, id).await;
    }
}

/// At start: every lock was held by a task of the previous run, now closed. The work
/// a crash cut short (`held`: module id and the task that ran it) holds its module
/// until it is finished, here or at a later start.
pub async fn reset(ctx: &ActionContext, held: &[(String, String)]) {
    let _: Result<i64, _> = ctx.redis.del(keys::MODULE_LOCKS).await;
    for (id, task) in held {
        let entry = Holder { task: Some(task.clone()), operation: "recovery after a restart".into() };
        let entry = serde_json::to_string(&entry).expect("a lock entry always serializes");
        let _: Result<i64, _> = ctx.redis.hset(keys::MODULE_LOCKS, (id.as_str(), entry)).await;
    }
}

/// Release module `id` after its recovery.
pub async fn release(ctx: &ActionContext, id: &str) {
    let _: Result<i64, _> = ctx.redis.hdel(keys::MODULE_LOCKS, id).await;
}
