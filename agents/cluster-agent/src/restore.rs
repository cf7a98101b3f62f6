//! Restores (NS8 reference 11.4): `read-backup-snapshots`, and `restore-module`: a
//! module installed from the image its snapshot names, its data put back by its
//! node, the modules it replaces removed, the plans that named them re-linked.
//!
//! A saga: once the new instance exists, a failure (or a crash) of the rest removes
//! it, and the module it would replace stays untouched until the restored one runs.

use std::collections::HashMap;

use agent_runtime::saga::{Sagas, Step, UndoError};
use agent_runtime::{ActionContext, ActionError, CallError};
use bus::fred::prelude::*;
use protocol::AgentId;
use protocol::actions::backup::{
    DestinationOnly, Eligibility, EligibilityRequest, FoundRepository, InstallDestination, InstalledInstance,
    NodeReadRepositories, NodeReadSnapshots, NodeSnapshotsRequest, ReadBackupEnvironment, ReadSnapshotsRequest,
    RestoreDataRequest, RestoreModuleData, RestoreModuleRequest, RestoreRefusal, Snapshot, SnapshotRef,
};
use protocol::actions::cluster::{AddModuleReply, AddModuleRequest, RemoveModuleRequest};
use protocol::keys;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plans;

pub const KIND: &str = "restore";

/// The node that reads repositories for the cluster.
const READING_NODE: u32 = 1;

fn failed(what: &str, e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(format!("{what}: {e}"))
}

pub async fn snapshots(ctx: ActionContext, req: ReadSnapshotsRequest) -> Result<Vec<Snapshot>, ActionError> {
    let destination = crate::backup::access(&ctx, &req.repository).await?.ok_or_else(|| {
        ActionError::refuse(protocol::actions::backup::DestinationRefusal::NotFound, req.repository.clone().into())
    })?;
    let call = NodeSnapshotsRequest { destination, path: req.path };
    ctx.call::<NodeReadSnapshots>(&AgentId::Node(READING_NODE), &call)
        .await
        .map_err(|e| failed("cannot read the snapshots", e))
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

/// A snapshot's `state/environment`, read by node `node`; a path that holds no module
/// backup is refused.
async fn environment_of(
    ctx: &ActionContext,
    node: u32,
    from: &SnapshotRef,
) -> Result<std::collections::BTreeMap<String, String>, ActionError> {
    match ctx.call::<ReadBackupEnvironment>(&AgentId::Node(node), from).await {
        Ok(env) => Ok(env),
        Err(CallError::Failed { cause, .. }) => {
            Err(ActionError::refuse(RestoreRefusal::NotAModule, format!("{}: {cause}", from.path).into()))
        }
        Err(e) => Err(failed("cannot read the snapshot", e)),
    }
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

/// The restored instance: removed again if the restore does not complete.
#[derive(Serialize, Deserialize)]
struct RestoredInstance {
    module_id: String,
}

impl Step for RestoredInstance {
    const NAME: &'static str = "restore-instance";
    async fn undo(self, ctx: &ActionContext) -> Result<(), UndoError> {
        let req = RemoveModuleRequest { module_id: self.module_id, preserve_data: false, force: true };
        crate::removal::remove(ctx.clone(), req, crate::sagas()).await.map(|_| ()).map_err(|e| format!("{e:?}").into())
    }
}

pub fn steps(sagas: Sagas) -> Sagas {
    sagas.step::<RestoredInstance>()
}

pub async fn restore(
    ctx: ActionContext,
    req: RestoreModuleRequest,
    sagas: Sagas,
) -> Result<AddModuleReply, ActionError> {
    let destination = crate::backup::access(&ctx, &req.repository)
        .await?
        .ok_or_else(|| ActionError::refuse(RestoreRefusal::RepositoryNotFound, req.repository.clone().into()))?;
    let snapshot = if req.snapshot.is_empty() { "latest".to_owned() } else { req.snapshot.clone() };
    let from = SnapshotRef { destination, path: req.path.clone(), snapshot };
    let node = AgentId::Node(req.node);
    let env = environment_of(&ctx, req.node, &from).await?;
    let Some(image) = env.get("IMAGE_URL").filter(|u| !u.is_empty()).cloned() else {
        return Err(ActionError::refuse(RestoreRefusal::NotAModule, format!("{}: no IMAGE_URL", req.path).into()));
    };
    let source_uuid = env.get("MODULE_UUID").cloned().unwrap_or_default();
    let uuids: HashMap<String, String> = ctx.redis.hgetall(keys::MODULE_UUID).await?;
    let holders: Vec<String> =
        uuids.iter().filter(|(_, u)| !source_uuid.is_empty() && **u == source_uuid).map(|(m, _)| m.clone()).collect();
    // The source's UUID when it replaces its holders or nobody holds it (a lost
    // module); else a new one (a copy beside the original).
    let module_uuid = (!source_uuid.is_empty() && (req.replace || holders.is_empty())).then(|| source_uuid.clone());
    let add = AddModuleRequest { image, node: req.node, module_uuid: module_uuid.clone(), accept: req.accept.clone() };
    let added = crate::install::add(ctx.clone(), add, sagas.clone()).await?;
    let id = added.module_id.clone();
    let mut saga = sagas.begin(&ctx, KIND, &id);
    saga.run(RestoredInstance { module_id: id.clone() }, 60, async { Ok::<_, agent_runtime::saga::SagaError>(()) })
        .await
        .map_err(|e| failed("cannot journal the restore", e))?;
    let data = RestoreDataRequest { module_id: id.clone(), from };
    if let Err(e) = ctx.call::<RestoreModuleData>(&node, &data).await {
        let cleanup = saga.abort().await;
        let left = if cleanup.is_clean() {
            format!("the new instance {id} was removed")
        } else {
            format!("removing the new instance {id} failed too: {}", cleanup.problems.join("; "))
        };
        return Err(ActionError::failed(format!("the restore of {} failed: {e}; {left}", req.path)));
    }
    saga.commit().await.map_err(|e| failed("cannot close the restore's journal", e))?;
    if let Some(uuid) = &module_uuid {
        relink_pending(&ctx, uuid, &id).await?;
    }
    if req.replace {
        let mut problems = Vec::new();
        for old in holders.iter().filter(|h| **h != id) {
            let r = RemoveModuleRequest { module_id: old.clone(), preserve_data: false, force: false };
            if let Err(e) = crate::removal::remove(ctx.clone(), r, sagas.clone()).await {
                problems.push(format!("{old}: {e:?}"));
            }
        }
        relink(&ctx, &holders, &id).await?;
        if !problems.is_empty() {
            return Err(ActionError::failed(format!(
                "{id} is restored and runs, but removing what it replaces failed: {}",
                problems.join("; ")
            )));
        }
    }
    Ok(added)
}

/// The plans of a restored cluster that named the module by its UUID name it by its
/// new id.
async fn relink_pending(ctx: &ActionContext, uuid: &str, id: &str) -> Result<(), ActionError> {
    let mut changed = Vec::new();
    for plan in plans::all(&ctx.redis).await? {
        let key = keys::backup_plan(plan.id);
        let pending: Option<String> = ctx.redis.hget(&key, plans::UINSTANCES).await?;
        let pending: Vec<&str> = pending.as_deref().unwrap_or("").split_whitespace().collect();
        if !pending.contains(&uuid) {
            continue;
        }
        let rest: Vec<&str> = pending.into_iter().filter(|u| *u != uuid).collect();
        let mut instances = plan.instances.clone();
        if !instances.iter().any(|m| m == id) {
            instances.push(id.to_owned());
        }
        let tx = ctx.redis.multi();
        let _: () = tx.hset(&key, [("instances", instances.join(" ")), (plans::UINSTANCES, rest.join(" "))]).await?;
        let _: () = tx.exec(true).await?;
        changed.push(plan.id);
    }
    if !changed.is_empty() {
        plans::publish_changed(ctx, &changed).await;
    }
    Ok(())
}

/// The plans that named a replaced module name the restored one instead.
async fn relink(ctx: &ActionContext, replaced: &[String], new: &str) -> Result<(), ActionError> {
    let mut changed = Vec::new();
    for plan in plans::all(&ctx.redis).await? {
        if !plan.instances.iter().any(|m| replaced.contains(m)) {
            continue;
        }
        let mut instances: Vec<String> = plan.instances.iter().filter(|m| !replaced.contains(m)).cloned().collect();
        if !instances.iter().any(|m| m == new) {
            instances.push(new.to_owned());
        }
        let _: () = ctx.redis.hset(keys::backup_plan(plan.id), ("instances", instances.join(" "))).await?;
        changed.push(plan.id);
    }
    if !changed.is_empty() {
        plans::publish_changed(ctx, &changed).await;
    }
    Ok(())
}
