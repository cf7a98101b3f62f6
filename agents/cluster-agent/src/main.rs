//! `cluster-agent`: the leader's control logic (agent id `cluster`).

use std::process::ExitCode;

use agent_runtime::AgentBinary;
use protocol::AgentId;

fn main() -> ExitCode {
    AgentBinary {
        name: "cluster-agent",
        about: "Runs the cluster's control actions (agent id \"cluster\")",
        default_id: Some("cluster"),
        expected: "cluster",
        accepts: AgentId::is_cluster,
        natives: cluster_agent::natives,
    }
    .main()
}
