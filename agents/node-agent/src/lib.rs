//! The node agent's native actions. Later issues add users, images, ports and the
//! firewall here.

mod info;

use agent_runtime::{AgentConfig, NativeActions};
use serde_json::json;

pub fn natives(cfg: &AgentConfig) -> NativeActions {
    let state_dir = cfg.state_dir.clone();
    NativeActions::new().add(
        "get-info",
        None,
        Some(json!({
            "type": "object",
            "required": ["hostname", "os", "kernel", "cpus", "memory", "disk", "uptime_seconds"],
        })),
        move |_, _| {
            let dir = state_dir.clone();
            async move { info::collect(&dir).map_err(agent_runtime::ActionError::failed) }
        },
    )
}
