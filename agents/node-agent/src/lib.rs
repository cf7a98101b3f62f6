//! The node agent's native actions: host facts, Podman settings, ports, and the
//! node's half of installing and removing modules; and `install`, the node's first
//! setup (`node-agent install`). Later issues add the firewall.

pub mod backup;
mod blocking;
pub mod error;
pub mod extract;
pub mod files;
pub mod hands;
mod info;
pub mod install;
pub mod launcher;
pub mod modules;
pub mod podman;
pub mod ports;
pub mod registry;
pub mod restore;
pub mod update;
pub mod users;

use agent_runtime::{ActionError, NativeActions};
use protocol::actions::node;
use serde_json::json;

pub use podman::CONTAINERS_CONF;

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}

pub fn natives(cfg: &agent_runtime::AgentConfig) -> NativeActions {
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
                        Ok(placed) => modules::adopt::adopt_unrecorded(&setup, n, placed).await,
                        Err(e) => tracing::error!("cannot read {}: {e}", protocol::keys::MODULE_NODE),
                    }
                }
                update::recover(&setup).await;
                modules::remove::recover_removals(&setup).await;
            }
        })
        .typed_with::<node::AddModule, _, _, _>(setup.clone(), modules::add::add)
        .typed_with::<node::RemoveModule, _, _, _>(setup.clone(), modules::remove::remove)
        .typed_with::<node::UpdateModule, _, _, _>(setup.clone(), update::update)
        .typed_with::<node::FinishUpdate, _, _, _>(setup.clone(), update::finish)
        .typed_with::<protocol::actions::backup::NodeRunBackup, _, _, _>(setup.clone(), backup::run_backup)
        .typed::<protocol::actions::backup::NodeReadSnapshots, _, _>(restore::snapshots)
        .typed::<protocol::actions::backup::ReadBackupEnvironment, _, _>(restore::environment)
        .typed::<protocol::actions::backup::CheckBackupRepository, _, _>(restore::check)
        .typed_with::<protocol::actions::backup::RestoreModuleData, _, _, _>(setup, restore::restore_data)
        .typed::<protocol::actions::backup::ValidateBackupDestination, _, _>(backup::validate)
        .typed::<protocol::actions::disaster::UploadClusterBackup, _, _>(backup::upload_cluster_backup)
        .typed::<protocol::actions::backup::NodeReadRepositories, _, _>(backup::read_repositories)
        .typed::<node::AllocatePorts, _, _>(ports::allocate)
        .typed::<node::DeallocatePorts, _, _>(ports::deallocate)
        .add_with(
            "configure-podman",
            None,
            Some(json!({"type": "object", "required": ["path", "cgroups", "runtime", "default_ulimits"]})),
            conf,
            |_, _, conf| async move {
                tokio::task::spawn_blocking(move || podman::configure(&conf)).await.map_err(failed)?.map_err(failed)
            },
        )
        .add_with(
            "get-info",
            None,
            Some(json!({
                "type": "object",
                "required": ["hostname", "os", "kernel", "cpus", "memory", "disk", "uptime_seconds"],
            })),
            cfg.state_dir.clone(),
            |_, _, dir| async move {
                tokio::task::spawn_blocking(move || info::collect(&dir)).await.map_err(failed)?.map_err(failed)
            },
        )
}
