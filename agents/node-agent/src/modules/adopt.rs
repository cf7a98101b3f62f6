//! At the node agent's start: take into the registry the modules an earlier version
//! of the node made before it kept one (their credentials were in the module's own
//! `state/agent.env`, read by root at each start of the agent).

use std::path::Path;

use super::paths::{ModulePaths, RUNTIME_BASE};
use super::setup::NodeSetup;
use crate::blocking;
use crate::error::ModuleError;
use crate::launcher::Launcher;
use crate::registry::Record;
use crate::users;

/// A module is adopted only when the cluster places it on this node (`placed`: module
/// id -> node id) and its account carries the node's marker (or its rootful dir
/// exists); its credentials move, and its agent restarts reading them from the
/// registry.
pub async fn adopt_unrecorded(setup: &NodeSetup, node: u32, placed: Vec<(String, String)>) {
    let registry = setup.registry();
    for (id, on) in placed {
        if on != node.to_string() || protocol::validate_module_id(&id).is_err() {
            continue;
        }
        if !matches!(registry.record(&id), Ok(None)) {
            continue;
        }
        let rootful = setup.rootful_base.join(&id).join("state").is_dir() && !users::is_module_account(&id);
        let paths = if rootful {
            ModulePaths::rootful(setup, &id)
        } else if users::is_module_account(&id) {
            match users::lookup(&id, Path::new(RUNTIME_BASE)) {
                Some(u) => ModulePaths::rootless(u),
                None => continue,
            }
        } else {
            continue;
        };
        let s = setup.clone();
        match blocking::run(move || adopt(&paths, &s)).await {
            Ok(()) => tracing::warn!("module {id}: recorded by the node, its credentials moved out of its home"),
            Err(e) => tracing::error!("module {id}: cannot record it: {e}"),
        }
    }
}

/// Record one module, move its credentials, restart its agent. Blocking.
fn adopt(p: &ModulePaths, s: &NodeSetup) -> Result<(), ModuleError> {
    let hands = p.hands()?;
    let old = p.state_dir.join("agent.env");
    let text = hands.read(&old)?.unwrap_or_default();
    let password = protocol::envfile::parse(&text)
        .into_iter()
        .find(|(k, _)| k == "REDIS_PASSWORD")
        .map(|(_, v)| v)
        .ok_or_else(|| ModuleError::NoPassword(old.clone()))?;
    let registry = s.registry();
    registry.create(&Record { id: p.id.clone(), rootful: p.rootful, uid: p.user.as_ref().map(|u| u.uid) })?;
    registry.write_credentials(&p.id, &protocol::envfile::render(&p.agent_env(s, &password)))?;
    hands.remove(&old)?;
    let launcher = Launcher::detect()?;
    Ok(p.start_agent(s, &launcher)?)
}
