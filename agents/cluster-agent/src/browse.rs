//! Browsing the destinations before a restore (NS8 reference 11.4):
//! `read-backup-repositories` and `determine-restore-eligibility`.

use std::collections::HashMap;

use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use protocol::AgentId;
use protocol::actions::backup::{
    DestinationOnly, Eligibility, EligibilityRequest, FoundRepository, InstallDestination, InstalledInstance,
    NodeReadRepositories, RestoreRefusal, SnapshotRef,
};
use protocol::keys;
use serde_json::Value;

use crate::plans;
use crate::restore::{READING_NODE, environment_of};

fn failed(what: &str, e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(format!("{what}: {e}"))
}

/// `read-backup-repositories`: each destination's module repositories, named by the
/// module that holds the UUID now, else by the one a retrieved cluster backup names.
/// A destination that cannot be read is logged and skipped: the others still list.
pub async fn repositories(ctx: ActionContext, _: Value) -> Result<Vec<FoundRepository>, ActionError> {
    let uuids: HashMap<String, String> = ctx.redis.hgetall(keys::MODULE_UUID).await?;
    let holder = |uuid: &str| uuids.iter().find(|(_, u)| *u == uuid).map(|(m, _)| m.clone());
    let dumped = crate::disaster::retrieved_modules(&ctx).await;
    let mut out = Vec::new();
    for id in crate::backup::ids(&ctx).await? {
        let Some(destination) = crate::backup::access(&ctx, &id).await? else { continue };
        let name = crate::backup::name(&ctx, &id).await?;
        let (provider, url) = (destination.provider, destination.url.clone());
        let call = DestinationOnly { destination };
        let found = match ctx.call::<NodeReadRepositories>(&AgentId::Node(READING_NODE), &call).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("cannot read backup destination {id}: {e}");
                continue;
            }
        };
        for r in found {
            let (image, uuid) = r.path.split_once('/').unwrap_or((&r.path, ""));
            let installed = holder(uuid);
            let instance = installed
                .clone()
                .or_else(|| dumped.iter().find(|m| m.uuid == uuid).map(|m| m.module_id.clone()))
                .unwrap_or_default();
            out.push(FoundRepository {
                name: image.to_owned(),
                path: r.path.clone(),
                instance,
                uuid: uuid.to_owned(),
                timestamp: r.timestamp,
                repository_id: id.clone(),
                repository_name: name.clone(),
                repository_provider: provider,
                repository_url: url.clone(),
                installed_instance: installed.unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// `determine-restore-eligibility`: the snapshot's image, the nodes that may take it
/// (a rootful module is not restored: refused on every node), and the instances of
/// the same image installed now.
pub async fn eligibility(ctx: ActionContext, req: EligibilityRequest) -> Result<Eligibility, ActionError> {
    let destination = crate::backup::access(&ctx, &req.repository)
        .await?
        .ok_or_else(|| ActionError::refuse(RestoreRefusal::RepositoryNotFound, req.repository.clone().into()))?;
    let snapshot = if req.snapshot.is_empty() { "latest".to_owned() } else { req.snapshot.clone() };
    let from = SnapshotRef { destination, path: req.path.clone(), snapshot };
    let env = environment_of(&ctx, READING_NODE, &from).await?;
    let image_url = env.get("IMAGE_URL").cloned().unwrap_or_default();
    let Ok((name, _)) = protocol::image::parse_reference(&image_url) else {
        return Err(ActionError::refuse(RestoreRefusal::NotAModule, format!("{}: no IMAGE_URL", req.path).into()));
    };
    let placed: HashMap<String, String> = ctx.redis.hgetall(keys::MODULE_NODE).await?;
    let mut installed = Vec::new();
    let mut per_node: std::collections::BTreeMap<u32, u32> = [(READING_NODE, 0)].into();
    for (m, node) in &placed {
        per_node.entry(node.parse().unwrap_or(READING_NODE)).or_default();
        let w = plans::whereabouts(&ctx.redis, m).await?;
        if w.image.as_deref() != Some(name.as_str()) {
            continue;
        }
        *per_node.entry(w.node.unwrap_or(READING_NODE)).or_default() += 1;
        let agent = AgentId::module(m).map_err(|e| failed("a module id", e))?;
        let env: HashMap<String, String> = ctx.redis.hgetall(keys::environment(&agent)).await?;
        let url = env.get("IMAGE_URL").cloned().unwrap_or_default();
        let (source, version) = match url.rsplit_once(':') {
            Some((s, v)) if !v.contains('/') => (s.to_owned(), v.to_owned()),
            _ => (url.clone(), String::new()),
        };
        let mut flags: Vec<String> = ctx.redis.smembers(keys::module_flags(&agent)).await?;
        flags.sort();
        let ui_name: Option<String> = ctx.redis.get(keys::ui_name(&agent)).await?;
        installed.push(InstalledInstance {
            id: m.clone(),
            module: name.clone(),
            node: node.clone(),
            node_ui_name: String::new(),
            source,
            digest: env.get("IMAGE_DIGEST").cloned().unwrap_or_default(),
            flags,
            ui_name: ui_name.unwrap_or_default(),
            version,
            logo: String::new(),
        });
    }
    installed.sort_by(|a, b| a.id.cmp(&b.id));
    let install_destinations = per_node
        .into_iter()
        .map(|(node_id, instances)| InstallDestination { node_id, instances, eligible: true, reject_reason: None })
        .collect();
    Ok(Eligibility { image_url, install_destinations, installed })
}
