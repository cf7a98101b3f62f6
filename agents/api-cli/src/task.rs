//! What both transports share: the task's input from the command line, and how a
//! finished task is printed and turned into api-cli's exit code.

use std::io::IsTerminal;

use protocol::{AgentId, exit, keys};
use serde_json::Value;

use crate::cli::RunArgs;
use crate::failure::Failure;
use crate::{input, output};

/// The target agent, `data`, `extra` and `parent` of the task. Everything that can
/// be checked locally is checked before connecting, so a typo never reaches a queue.
pub fn task_input(args: &RunArgs) -> Result<(AgentId, Value, Value, String), Failure> {
    let node_id = std::env::var("NODE_ID").ok();
    let agent = input::resolve_agent(&args.agent, node_id.as_deref()).map_err(Failure::cli)?;
    let data = input::json_arg("--data", &args.data, std::io::stdin().lock()).map_err(Failure::cli)?;
    let extra = input::json_inline("--extra", &args.extra).map_err(Failure::cli)?;
    let parent = input::parent_task(std::env::var(protocol::stepenv::AGENT_TASK_ID).ok().as_deref());
    Ok((agent, data, extra, parent))
}

/// Print a finished task's output (`raw`, its stored text) and, when it failed, its
/// error and a line naming it; return our exit code. Both transports end here.
pub fn finish(
    agent: &AgentId,
    action: &str,
    id: &str,
    raw: &str,
    exit_code: i32,
    error: String,
) -> Result<u8, Failure> {
    let text = output::render(raw, std::io::stdout().is_terminal());
    output::write_stdout(&text).map_err(Failure::cli)?;

    if exit_code == exit::SUCCESS {
        return Ok(0);
    }
    let (code, note) = exit_status(exit_code);
    let mut err = error;
    if !err.is_empty() && !err.ends_with('\n') {
        err.push('\n');
    }
    eprintln!(
        "{err}api-cli: action {action} failed on {agent} with exit code {exit_code}{note} (task {})",
        keys::task_prefix(agent, id)
    );
    Ok(code)
}

/// The process exit code for a task's exit code, and a note for the message.
///
/// 1-255 pass through. A step killed by a signal (or a cancelled task) reports -1 in
/// NS8; a process cannot exit with that, so negative codes become 1, and codes above
/// 255 (only a native action could produce one) become 255.
fn exit_status(task_code: i32) -> (u8, &'static str) {
    let code = match u8::try_from(task_code) {
        Ok(c) => c,
        Err(_) if task_code < 0 => 1,
        Err(_) => 255,
    };
    let note = match task_code {
        exit::SIGNALED => ": a step was killed by a signal or the task was cancelled",
        exit::UNDEFINED_ACTION => ": the agent has no such action",
        exit::VALIDATION_FAILED => ": validation failed",
        exit::INTERRUPTED => ": the agent restarted while the task ran",
        _ => "",
    };
    (code, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_mapped_into_a_byte() {
        assert_eq!(exit_status(3), (3, ""));
        assert_eq!(exit_status(255).0, 255);
        assert_eq!(exit_status(-1).0, 1);
        assert!(exit_status(-1).1.contains("signal"));
        assert_eq!(exit_status(-7).0, 1);
        assert_eq!(exit_status(256).0, 255);
        assert_eq!(exit_status(10).0, 10);
    }
}
