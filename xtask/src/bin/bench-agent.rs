//! The benchmark's agent: the shipped agent runtime (`AgentBinary`, as every agent
//! binary uses it) plus one native no-op action, which no real agent should carry.
//! Not installed anywhere; `cargo xtask bench` starts it.

use std::process::ExitCode;

use agent_runtime::{AgentBinary, NativeActions};
use serde_json::Value;

fn main() -> ExitCode {
    AgentBinary {
        name: "bench-agent",
        about: "Agent runtime with a native no-op action, for cargo xtask bench",
        default_id: None,
        expected: "module/<id>",
        accepts: |id| matches!(id, protocol::AgentId::Module(_)),
        natives: |_| NativeActions::new().add("noop", None, None, |_, _| async { Ok(Value::Null) }),
    }
    .main()
}
