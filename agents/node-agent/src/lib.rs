//! The node agent's native actions: host facts, Podman settings, ports, and the
//! node's half of installing and removing modules. Later issues add the firewall.

pub mod extract;
mod info;
pub mod launcher;
pub mod modules;
pub mod podman;
pub mod ports;
pub mod update;
pub mod users;

use agent_runtime::{AgentConfig, NativeActions};
use serde_json::json;

/// Where `configure-podman` writes the node's containers.conf.
pub const CONTAINERS_CONF: &str = "containers.conf";

pub fn natives(cfg: &AgentConfig) -> NativeActions {
    let state_dir = cfg.state_dir.clone();
    let conf = cfg.state_dir.join(CONTAINERS_CONF);
    let setup = modules::NodeSetup::from_env(&cfg.state_dir);
    let (setup2, setup3, setup4) = (setup.clone(), setup.clone(), setup.clone());
    NativeActions::new()
        .add("add-module", Some(modules::add_schema()), None, move |ctx, data| modules::add(ctx, data, setup.clone()))
        .add("remove-module", Some(modules::remove_schema()), None, move |ctx, data| {
            modules::remove(ctx, data, setup2.clone())
        })
        .add("update-module", Some(update::update_schema()), None, move |ctx, data| {
            update::update(ctx, data, setup3.clone())
        })
        .add("finish-update", Some(update::finish_schema()), None, move |ctx, data| {
            update::finish(ctx, data, setup4.clone())
        })
        .add("allocate-ports", Some(ports::allocate_schema()), None, ports::allocate)
        .add("deallocate-ports", Some(ports::deallocate_schema()), None, ports::deallocate)
        .add(
            "configure-podman",
            None,
            Some(json!({"type": "object", "required": ["path", "cgroups", "runtime", "default_ulimits"]})),
            move |_, _| {
                let conf = conf.clone();
                async move { podman::configure(&conf).map_err(agent_runtime::ActionError::failed) }
            },
        )
        .add(
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
