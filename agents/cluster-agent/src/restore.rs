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
    NodeReadSnapshots, NodeSnapshotsRequest, ReadBackupEnvironment, ReadSnapshotsRequest, RestoreDataRequest,
    RestoreModuleData, RestoreModuleRequest, RestoreRefusal, Snapshot, SnapshotRef,
};
use protocol::actions::cluster::{AddModuleReply, AddModuleRequest, RemoveModuleRequest};
use protocol::keys;
use serde::{Deserialize, Serialize};

use crate::plans;

pub const KIND: &str = "restore";

/// The node that reads repositories for the cluster.
pub(crate) const READING_NODE: u32 = 1;

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

/// A snapshot's `state/environment`, read by node `node`; a path that holds no module
/// backup is refused.
pub(crate) async fn environment_of(
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
