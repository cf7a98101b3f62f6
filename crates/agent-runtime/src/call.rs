//! Typed sub-task calls ([`ActionContext::call`]): a native action runs an action of
//! another agent as a sub-task of its own task and gets the reply decoded, or a
//! [`CallError`] it can match on (the action's typed refusal among them).
//!
//! The wait is bounded and cancellable: it ends when the callee has had no live Redis
//! connection for [`AGENT_GONE`] (a task still queued is taken back first, so it never
//! runs late), and dropping it (the caller's task was cancelled) asks the callee to
//! cancel the sub-task.

use std::time::{Duration, Instant};

use bus::BusError;
use bus::fred::prelude::*;
use protocol::actions::{Action, Never, Refusal};
use protocol::task::{Task, ValidationError};
use protocol::{AgentId, exit, keys};
use serde_json::{Value, json};

use crate::ActionContext;

/// How long a callee may go without a live Redis connection before the wait for it
/// ends (a restart takes seconds; its queue keeps the task meanwhile).
pub const AGENT_GONE: Duration = Duration::from_secs(30);
/// How often the callee's liveness is checked during a wait.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Why a sub-task gave no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError<R: Refusal> {
    /// The callee refused the request with one of the action's own refusals.
    #[error("{agent}/{action} refused {value}: {}", .refusal.error())]
    Refused { agent: AgentId, action: &'static str, refusal: R, value: Value },
    /// The callee found the request invalid otherwise.
    #[error("{agent}/{action} refused its input: {}", describe(.errors))]
    Invalid { agent: AgentId, action: &'static str, errors: Vec<ValidationError> },
    /// It ran and failed. `cause` is the last line of its error (a step's stderr is its
    /// whole log, whose last line is the cause, as a rule); `log` the key of the whole.
    #[error("{agent}/{action} failed (exit code {exit_code}): {cause}{}", log_suffix(.log))]
    Failed { agent: AgentId, action: &'static str, exit_code: i32, cause: String, log: Option<String> },
    /// The callee stopped running while the call waited for it.
    #[error(
        "{agent} has not been running for {} s while {action} (task {task}) waited for it: {}",
        .gone_for.as_secs(),
        if *.withdrawn { "it was taken back from its queue, never run" } else { "it may still end later" }
    )]
    AgentGone { agent: AgentId, action: &'static str, task: String, gone_for: Duration, withdrawn: bool },
    /// The request does not encode as JSON (a map with non-text keys...).
    #[error("{agent}/{action}: the request does not encode: {why}")]
    Request { agent: AgentId, action: &'static str, why: String },
    /// Redis failed under the call.
    #[error("{agent}/{action}: {source}")]
    Bus { agent: AgentId, action: &'static str, source: BusError },
    /// It succeeded, but its output is not the action's reply type.
    #[error("{agent}/{action} answered {output}, which is not its reply: {why}")]
    BadReply { agent: AgentId, action: &'static str, output: Value, why: String },
}

fn describe(errors: &[ValidationError]) -> String {
    let parts: Vec<String> = errors.iter().map(|e| format!("{} ({})", e.error, e.value)).collect();
    parts.join(", ")
}

fn log_suffix(log: &Option<String>) -> String {
    log.as_ref().map(|k| format!(" (whole log: {k})")).unwrap_or_default()
}

impl<R: Refusal> CallError<R> {
    /// The same error without the typed refusal (as an [`Invalid`](Self::Invalid)
    /// input), for a caller that does not act on it.
    pub fn untyped(self) -> CallError<Never> {
        match self {
            CallError::Refused { agent, action, refusal, value } => {
                CallError::Invalid { agent, action, errors: vec![refusal.to_validation(value)] }
            }
            CallError::Invalid { agent, action, errors } => CallError::Invalid { agent, action, errors },
            CallError::Failed { agent, action, exit_code, cause, log } => {
                CallError::Failed { agent, action, exit_code, cause, log }
            }
            CallError::AgentGone { agent, action, task, gone_for, withdrawn } => {
                CallError::AgentGone { agent, action, task, gone_for, withdrawn }
            }
            CallError::Request { agent, action, why } => CallError::Request { agent, action, why },
            CallError::Bus { agent, action, source } => CallError::Bus { agent, action, source },
            CallError::BadReply { agent, action, output, why } => CallError::BadReply { agent, action, output, why },
        }
    }

    /// The typed refusal, if that is what it is.
    pub fn refusal(&self) -> Option<R> {
        match self {
            CallError::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }
}

/// Asks `agent` to cancel the sub-task if the wait for it is dropped before it ended.
struct CancelOnDrop {
    redis: Client,
    agent: AgentId,
    task: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut cancel = Task::new("cancel-task", json!({"task": self.task}));
        cancel.id = uuid_v4();
        cancel.queue = keys::tasks(&self.agent);
        let (redis, queue) = (self.redis.clone(), keys::tasks(&self.agent));
        let json = serde_json::to_string(&cancel).expect("a Task always serializes");
        tokio::spawn(async move {
            let _: Result<i64, _> = redis.lpush(queue, json).await;
        });
    }
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl ActionContext {
    /// Run action `A` on `agent` as a sub-task of this task; its reply, decoded.
    pub async fn call<A: Action>(
        &self,
        agent: &AgentId,
        request: &A::Request,
    ) -> Result<A::Reply, CallError<A::Refusal>> {
        let action = A::NAME;
        let bus = |source| CallError::Bus { agent: agent.clone(), action, source };
        let data = serde_json::to_value(request).map_err(|e| {
            bus(BusError::BadResult { task: action.to_owned(), detail: format!("the request does not encode: {e}") })
        })?;
        let tc = self.calls.client(&self.agent.to_string()).await.map_err(bus)?;
        let mut task = Task {
            id: uuid_v4(),
            action: action.to_owned(),
            data,
            extra: json!({}),
            parent: self.task_id.clone(),
            queue: String::new(),
            user: self.agent.to_string(),
            timestamp: None,
        };
        let mut guard =
            CancelOnDrop { redis: self.redis.clone(), agent: agent.clone(), task: task.id.clone(), armed: true };
        let pushed = task.clone();
        let watchdog = async {
            let mut gone_since: Option<Instant> = None;
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if bus::agent_is_alive(&self.redis, agent, 8).await.unwrap_or(true) {
                    gone_since = None;
                    continue;
                }
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= AGENT_GONE {
                    return since;
                }
            }
        };
        let r = tokio::select! {
            r = tc.run(agent, &mut task, |_| {}) => r,
            since = watchdog => {
                guard.armed = false;
                // Still queued: take it back, so that it does not run after this failure.
                let json = serde_json::to_string(&pushed).expect("a Task always serializes");
                let withdrawn: i64 = self.redis.lrem(keys::tasks(agent), 1, json).await.unwrap_or(0);
                return Err(CallError::AgentGone {
                    agent: agent.clone(),
                    action,
                    task: pushed.id,
                    gone_for: since.elapsed(),
                    withdrawn: withdrawn == 1,
                });
            }
        };
        guard.armed = false;
        let r = r.map_err(bus)?;
        if r.exit_code == exit::SUCCESS {
            return serde_json::from_value(r.output.clone()).map_err(|e| CallError::BadReply {
                agent: agent.clone(),
                action,
                output: r.output,
                why: e.to_string(),
            });
        }
        if r.exit_code == exit::VALIDATION_FAILED
            && let Ok(errors) = serde_json::from_value::<Vec<ValidationError>>(r.output.clone())
            && !errors.is_empty()
        {
            if let Some((refusal, e)) = errors.iter().find_map(|e| A::Refusal::from_validation(e).map(|r| (r, e))) {
                return Err(CallError::Refused { agent: agent.clone(), action, refusal, value: e.value.clone() });
            }
            return Err(CallError::Invalid { agent: agent.clone(), action, errors });
        }
        let lines: Vec<&str> = r.error.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let (cause, log) = match lines.last() {
            Some(last) if lines.len() > 1 => ((*last).to_owned(), Some(keys::task_error(agent, &task.id))),
            Some(last) => ((*last).to_owned(), None),
            None => (r.output.to_string(), None),
        };
        Err(CallError::Failed { agent: agent.clone(), action, exit_code: r.exit_code, cause, log })
    }

    /// Whether `agent` answers `action` (its `list-actions` names it): for optional
    /// actions such as a module's `create-module`.
    pub async fn has_action(&self, agent: &AgentId, action: &str) -> Result<bool, CallError<Never>> {
        let names = self.call::<protocol::actions::module::ListActions>(agent, &()).await?;
        Ok(names.iter().any(|n| n == action))
    }
}
