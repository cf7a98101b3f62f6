//! The agent's Redis writes on the task path, each one command.
//!
//! Accepting a task and storing its result are Redis Functions
//! ([`protocol::functions`], called with `FCALL`): one command each, atomic like NS8's
//! MULTI/EXEC, and a single round trip instead of one per queued command. Redis 7
//! checks every command a function runs against the caller's ACL (keys and channels),
//! so a function grants nothing the agent's user could not do itself.
//! Progress messages are sent without waiting for their reply, in order with what
//! follows on the same connection.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bus::fred::prelude::*;
use bus::fred::types::Value as RedisValue;
use protocol::task::{Progress, TaskStatus};
use protocol::{AgentId, functions, keys};

/// Publish one stderr line of a running step for live viewers (`/ws`), without
/// waiting: nobody may be listening, and the line is in the task's `error` anyway.
pub fn publish_log(redis: &Client, agent: &AgentId, task_id: &str, line: &[u8]) {
    let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line)).into_owned();
    let redis = redis.clone();
    let channel = keys::task_log_channel(agent, task_id);
    send_now("publish a step's log line", async move { redis.publish(channel, text).await });
}

/// Hand a command to the client now, so it goes out before anything issued later,
/// and let a background task collect its reply. fred queues a command on its first
/// poll when the connection is not blocked (the agent's command connection never is).
pub fn send_now<F>(what: &'static str, future: F)
where
    F: Future<Output = Result<RedisValue, bus::fred::error::Error>> + Send + 'static,
{
    let mut future = Box::pin(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => tracing::warn!("cannot {what}: {e}"),
        Poll::Ready(Ok(_)) => {}
        Poll::Pending => {
            tokio::spawn(async move {
                if let Err(e) = future.await {
                    tracing::warn!("cannot {what}: {e}");
                }
            });
        }
    }
}

/// Store the masked context (TTL while running) and announce the task.
pub fn accept(redis: &Client, agent: &AgentId, task_id: &str, context: String, statuses: &[TaskStatus]) {
    let mut args = vec![context, keys::RUNNING_CONTEXT_TTL_SECS.to_string(), keys::progress_channel(agent, task_id)];
    args.extend(statuses.iter().map(|s| Progress { status: *s, progress: 0 }.to_json()));
    let redis = redis.clone();
    let task_keys = vec![keys::task_context(agent, task_id)];
    send_now("store the task context", async move {
        bus::functions::fcall(&redis, functions::TASK_ACCEPT, task_keys, args).await
    });
}

/// Publish a progress message without waiting.
pub fn progress(redis: &Client, agent: &AgentId, task_id: &str, status: TaskStatus, progress: u8) {
    let redis = redis.clone();
    let channel = keys::progress_channel(agent, task_id);
    let message = Progress { status, progress }.to_json();
    send_now("publish progress", async move { redis.publish(channel, message).await });
}

pub struct Finish<'a> {
    pub task_id: &'a str,
    pub raw: &'a str,
    pub output: &'a str,
    pub error: &'a str,
    pub exit_code: i32,
    pub final_progress: Progress,
    pub environment: Option<Vec<(String, String)>>,
}

/// Store a result and close the task, in one atomic command.
pub async fn finish(redis: &Client, agent: &AgentId, f: Finish<'_>) -> Result<(), bus::fred::error::Error> {
    let task_keys = vec![
        keys::environment(agent),
        keys::task_output(agent, f.task_id),
        keys::task_error(agent, f.task_id),
        keys::task_exit_code(agent, f.task_id),
        keys::task_context(agent, f.task_id),
        keys::inflight(agent),
    ];
    let mut args = vec![
        keys::RESULT_TTL_SECS.to_string(),
        f.output.to_owned(),
        f.error.to_owned(),
        f.exit_code.to_string(),
        f.raw.to_owned(),
        keys::progress_channel(agent, f.task_id),
        f.final_progress.to_json(),
        if f.environment.is_some() { "1" } else { "0" }.to_owned(),
    ];
    for (k, v) in f.environment.iter().flatten() {
        args.push(k.clone());
        args.push(v.clone());
    }
    let _: RedisValue = bus::functions::fcall(redis, functions::TASK_FINISH, task_keys, args).await?;
    Ok(())
}

/// Keep a long task's context alive (heartbeat), without waiting.
pub fn refresh_context(redis: &Client, agent: &AgentId, task_id: &str) {
    let redis = redis.clone();
    let key = keys::task_context(agent, task_id);
    send_now("refresh the task context", async move { redis.expire(key, keys::RUNNING_CONTEXT_TTL_SECS, None).await });
}

/// Take up to `count` queued tasks at once (empty when the queue is empty). Under load
/// this replaces one blocking pop per task with one command per batch.
pub async fn take(redis: &Client, agent: &AgentId, count: usize) -> Result<Vec<String>, bus::fred::error::Error> {
    let task_keys = vec![keys::tasks(agent), keys::inflight(agent)];
    bus::functions::fcall(redis, functions::TASK_TAKE, task_keys, vec![count.to_string()]).await
}
