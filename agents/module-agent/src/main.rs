//! `module-agent`: the agent of one installed application instance (`module/<id>`),
//! running as that instance's Unix user. Its actions are the module's scripts.

use std::process::ExitCode;

use agent_runtime::{AgentBinary, NativeActions};
use protocol::AgentId;

fn main() -> ExitCode {
    AgentBinary {
        name: "module-agent",
        about: "Runs the actions and event handlers of one module instance",
        default_id: None,
        expected: "module/<id>",
        accepts: |id| matches!(id, AgentId::Module(_)),
        natives: |_| NativeActions::new(),
    }
    .main()
}
