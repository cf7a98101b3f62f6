//! The task object, its progress messages and its stored result.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{IdError, validate_task_id};

/// A task as pushed on `<agent>/tasks` (reference section 3.1). Unknown fields are
/// tolerated; the raw object is kept separately for the stored context.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub action: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub extra: Value,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub user: String,
    /// RFC 3339, set by the api-server. Kept as text: the agent does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskDecodeError {
    #[error("task is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("task field \"action\" is empty")]
    EmptyAction,
    #[error(transparent)]
    Id(#[from] IdError),
}

/// What an agent pushes on its own queue to wake its blocking pop when it stops: the
/// pop takes it (or, if a task came first, it is removed from the queue at exit). It
/// is never a task: task JSON starts with `{`. Only the agent itself reads its queue.
pub const WAKE_MARKER_PREFIX: &str = "ns8rs-wake:";

/// Whether a queue item is a wake marker rather than a task.
pub fn is_wake_marker(raw: &str) -> bool {
    raw.starts_with(WAKE_MARKER_PREFIX)
}

impl Task {
    pub fn new(action: impl Into<String>, data: Value) -> Self {
        Task { action: action.into(), data, ..Default::default() }
    }

    /// Decode and check a queue item. The `Value` returned is the whole object, unknown
    /// fields included, for [`mask_secrets`] and the context key.
    pub fn decode(raw: &str) -> Result<(Task, Value), TaskDecodeError> {
        let value: Value = serde_json::from_str(raw)?;
        let task: Task = serde_json::from_value(value.clone())?;
        validate_task_id(&task.id)?;
        if task.action.is_empty() {
            return Err(TaskDecodeError::EmptyAction);
        }
        Ok((task, value))
    }
}

/// Life-cycle: `pending` → `running` → one of the three terminal states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Aborted,
    ValidationFailed,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Aborted | TaskStatus::ValidationFailed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Aborted => "aborted",
            TaskStatus::ValidationFailed => "validation-failed",
        }
    }
}

/// Published on `progress/<agent>/task/<id>`. Field order is part of the wire format:
/// NS8 clients see `{"status":...,"progress":...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub status: TaskStatus,
    pub progress: u8,
}

impl Progress {
    pub fn to_json(&self) -> String {
        format!("{{\"status\":\"{}\",\"progress\":{}}}", self.status.as_str(), self.progress)
    }
}

/// What a client reads back from `task/<agent>/<id>/{output,error,exit_code}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The steps' stdout, decoded when it is JSON, else a string.
    pub output: Value,
    pub error: String,
    pub exit_code: i32,
}

impl TaskResult {
    pub fn from_stored(output: &str, error: String, exit_code: i32) -> Self {
        TaskResult { output: decode_output(output), error, exit_code }
    }

    /// The status the exit code implies. The real final status travels only in the
    /// last progress message and can differ: `cancel-task` for an unknown task ends
    /// `validation-failed` with exit code 2.
    pub fn status_from_exit_code(&self) -> TaskStatus {
        match self.exit_code {
            0 => TaskStatus::Completed,
            crate::exit::VALIDATION_FAILED => TaskStatus::ValidationFailed,
            _ => TaskStatus::Aborted,
        }
    }
}

/// Output text as clients see it: JSON when it parses, the raw text otherwise, `null`
/// when empty.
pub fn decode_output(output: &str) -> Value {
    if output.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(output).unwrap_or_else(|_| Value::String(output.to_owned()))
}

/// One input-validation error, in the shape NS8's UI maps to messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationError {
    pub field: String,
    pub parameter: String,
    pub value: Value,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One golden check per shape: serialize, compare with the fixture, parse back.
    fn check<T>(value: &T, golden: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_string(value).unwrap(), golden);
        assert_eq!(&serde_json::from_str::<T>(golden).unwrap(), value);
    }

    #[test]
    fn api_server_task_with_all_eight_fields() {
        let raw = r#"{"id":"6f0a7c5e-0000-4000-8000-000000000001","action":"set-name","data":{"name":"x"},"extra":{"title":"t"},"parent":"","queue":"cluster/tasks","user":"admin","timestamp":"2026-11-26T16:14:49.695761Z"}"#;
        let (task, _) = Task::decode(raw).unwrap();
        assert_eq!(task.user, "admin");
        assert_eq!(task.timestamp.as_deref(), Some("2026-11-26T16:14:49.695761Z"));
        check(&task, raw);
    }

    #[test]
    fn minimal_task_and_unknown_fields() {
        let (task, value) = Task::decode(r#"{"id":"t1","action":"x","future":1}"#).unwrap();
        assert_eq!(task.data, Value::Null);
        assert_eq!(task.user, "");
        assert_eq!(value["future"], 1);
    }

    #[test]
    fn bad_tasks_are_named() {
        let err = |raw: &str| Task::decode(raw).unwrap_err().to_string();
        assert!(err("nope").contains("not valid JSON"));
        assert!(err(r#"{"action":"x"}"#).contains("id"));
        assert!(err(r#"{"id":"a/b","action":"x"}"#).contains("invalid task id"));
        assert!(err(r#"{"id":"a","action":""}"#).contains("action"));
    }

    #[test]
    fn progress_shape() {
        let p = Progress { status: TaskStatus::ValidationFailed, progress: 25 };
        check(&p, r#"{"status":"validation-failed","progress":25}"#);
        assert_eq!(p.to_json(), r#"{"status":"validation-failed","progress":25}"#);
        for s in ["pending", "running", "completed", "aborted"] {
            let p: Progress = serde_json::from_str(&format!(r#"{{"status":"{s}","progress":0}}"#)).unwrap();
            assert_eq!(p.status.as_str(), s);
        }
    }

    #[test]
    fn result_and_validation_error_shapes() {
        check(
            &TaskResult { output: json!({"a":1}), error: "".into(), exit_code: 0 },
            r#"{"output":{"a":1},"error":"","exit_code":0}"#,
        );
        check(
            &ValidationError {
                field: "network".into(),
                parameter: "network".into(),
                value: json!("10.0.0.0/33"),
                error: "network_pattern".into(),
            },
            r#"{"field":"network","parameter":"network","value":"10.0.0.0/33","error":"network_pattern"}"#,
        );
        assert_eq!(decode_output(""), Value::Null);
        assert_eq!(decode_output("hello\n"), json!("hello\n"));
        assert_eq!(decode_output("[1]\n"), json!([1]));
    }
}
