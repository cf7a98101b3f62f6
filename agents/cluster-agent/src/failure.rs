//! How the actions answer a failure: any error, as the task's error text (exit code 1).

use agent_runtime::ActionError;

pub fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}
