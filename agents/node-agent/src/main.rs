//! `node-agent`: one per node (agent id `node/<N>`): Unix users, images, ports,
//! firewall. Runs as root.

use std::process::ExitCode;

use agent_runtime::AgentBinary;
use protocol::AgentId;

fn main() -> ExitCode {
    AgentBinary {
        name: "node-agent",
        about: "Runs the actions of one node (agent id \"node/<N>\")",
        default_id: None,
        expected: "node/<N>",
        accepts: |id| matches!(id, AgentId::Node(_)),
        natives: node_agent::natives,
    }
    .main()
}
