//! The node agent's native actions: host facts, Podman settings, ports, and the
//! node's half of installing and removing modules; and `install`, the node's first
//! setup (`node-agent install`). Later issues add the firewall.

pub mod extract;
pub mod hands;
mod info;
pub mod install;
pub mod launcher;
pub mod modules;
pub mod podman;
pub mod ports;
pub mod registry;
pub mod update;
pub mod users;

use agent_runtime::{AgentConfig, NativeActions};
use serde_json::json;

/// For the crash tests: when `NS8RS_FAILPOINT` names this point, log that it was
/// reached and wait there (a blocking thread) for the test to kill the agent. Unset in
/// production; nothing else reads it.
pub(crate) fn failpoint(name: &str) {
    if std::env::var("NS8RS_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!("failpoint {name} reached: waiting to be killed");
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
}

/// Where `configure-podman` writes the node's containers.conf.
pub const CONTAINERS_CONF: &str = "containers.conf";

pub fn natives(cfg: &AgentConfig) -> NativeActions {
    let conf = cfg.state_dir.join(CONTAINERS_CONF);
    let setup = modules::NodeSetup::from_env(&cfg.state_dir);
    let recovery = setup.clone();
    NativeActions::new()
        // Updates and removals a crash of this agent cut short end before new tasks run.
        .on_start(move |ctx| {
            let setup = recovery.clone();
            async move {
                if let protocol::AgentId::Node(n) = ctx.agent {
                    use bus::fred::prelude::HashesInterface;
                    match ctx.redis.hgetall::<Vec<(String, String)>, _>(protocol::keys::MODULE_NODE).await {
                        Ok(placed) => modules::adopt_unrecorded(&setup, n, placed).await,
                        Err(e) => tracing::error!("cannot read {}: {e}", protocol::keys::MODULE_NODE),
                    }
                }
                update::recover(&setup).await;
                modules::recover_removals(&setup).await;
            }
        })
        .add_with("add-module", Some(modules::add_schema()), None, setup.clone(), modules::add)
        .add_with("remove-module", Some(modules::remove_schema()), None, setup.clone(), modules::remove)
        .add_with("update-module", Some(update::update_schema()), None, setup.clone(), update::update)
        .add_with("finish-update", Some(update::finish_schema()), None, setup, update::finish)
        .add("allocate-ports", Some(ports::allocate_schema()), None, ports::allocate)
        .add("deallocate-ports", Some(ports::deallocate_schema()), None, ports::deallocate)
        .add_with(
            "configure-podman",
            None,
            Some(json!({"type": "object", "required": ["path", "cgroups", "runtime", "default_ulimits"]})),
            conf,
            |_, _, conf| async move { podman::configure(&conf).map_err(agent_runtime::ActionError::failed) },
        )
        .add_with(
            "get-info",
            None,
            Some(json!({
                "type": "object",
                "required": ["hostname", "os", "kernel", "cpus", "memory", "disk", "uptime_seconds"],
            })),
            cfg.state_dir.clone(),
            |_, _, dir| async move { info::collect(&dir).map_err(agent_runtime::ActionError::failed) },
        )
}
