//! `update-module` (NS8 reference 10.5): each instance in turn moves to the new image.
//! Beyond NS8, an instance whose update fails anywhere (its own update steps included)
//! is rolled back by the node to the snapshot taken before, and runs its previous
//! version again; the task then fails, saying so. An update cut short by a crash of
//! this agent is rolled back at its next start (the saga's journal).

use std::collections::BTreeMap;

use agent_runtime::saga::{Cleanup, SagaError, Sagas, Step, UndoError};
use agent_runtime::{ActionContext, ActionError, CallError};
use bus::fred::prelude::*;
use protocol::actions::cluster::{UpdateModuleReply, UpdateModuleRequest, UpdatedInstance};
use protocol::actions::node::{self, FinishUpdateRefusal, UpdateOutcome};
use protocol::actions::{Action, Never, PortProtocol, module};
use protocol::{AgentId, keys};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::failure::failed;
use crate::image::{self, Consent, ModuleImage, Requirements};
use crate::records::running;
use crate::{consent, locks, records};

/// The saga's kind in the journal.
pub const KIND: &str = "update-module";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot update {id} to {url}: {source}")]
    Node { id: String, url: String, source: CallError<Never> },
    #[error("the update of {id} to {url} failed: {cause}; rolled back to {previous}, which runs again")]
    RolledBack { id: String, url: String, cause: CallError<Never>, previous: String },
    #[error("the update of {id} to {url} failed: {cause}; and the rollback failed: {}", .cleanup.problems.join("; "))]
    RollbackFailed { id: String, url: String, cause: CallError<Never>, cleanup: Cleanup },
    #[error("the update of {id} to {url} failed: {source}")]
    Commit { id: String, url: String, source: CallError<Never> },
    #[error(transparent)]
    Saga(#[from] SagaError),
    #[error("redis error: {0}")]
    Redis(#[from] bus::fred::error::Error),
}

/// Step: the node's update of the module (a snapshot, then the new image's files).
/// Undo: the node puts the snapshot back; nothing to roll back when it has none (the
/// crash came before the snapshot, or after the commit).
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeUpdate {
    pub node: u32,
    pub module_id: String,
}

impl Step for NodeUpdate {
    const NAME: &'static str = "node-update";
    async fn undo(self, ctx: &ActionContext) -> Result<(), UndoError> {
        let node = running(ctx, self.node).await?;
        roll_back(ctx, &node, &self.module_id).await?;
        Ok(())
    }
}

/// The steps this file's saga journals.
pub fn steps(sagas: Sagas) -> Sagas {
    sagas.step::<NodeUpdate>()
}

/// Roll module `id` back to its snapshot and copy the environment it has again;
/// whether there was anything to roll back.
async fn roll_back(ctx: &ActionContext, node: &AgentId, id: &str) -> Result<bool, UndoError> {
    let agent = AgentId::module(id)?;
    let req = node::FinishUpdateRequest { module_id: id.to_owned(), outcome: UpdateOutcome::Rollback };
    match ctx.call::<node::FinishUpdate>(node, &req).await {
        Ok(reply) => {
            records::copy_environment(&ctx.redis, &agent, &reply.environment).await?;
            Ok(true)
        }
        Err(e) if e.refusal() == Some(FinishUpdateRefusal::NoUpdateInProgress) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub async fn update(
    ctx: ActionContext,
    req: UpdateModuleRequest,
    sagas: Sagas,
) -> Result<UpdateModuleReply, ActionError> {
    let url = crate::repository::resolve(&ctx, &req.module_url).await?;
    let img = image::inspect(&url).await.map_err(failed)?;
    let needs = image::requirements(&img.labels).map_err(failed)?;
    let mut targets = Vec::new();
    for instance in &req.instances {
        let id = instance.0.as_str();
        let agent = AgentId::module(id).map_err(|e| ActionError::invalid("instances", json!(id), &e.to_string()))?;
        let Some(node) = records::node_of(&ctx.redis, id).await? else {
            return Err(ActionError::invalid("instances", json!(id), "not_installed"));
        };
        // As NS8: every instance must answer before any is touched.
        for a in [&agent, &AgentId::Node(node)] {
            if !bus::agent_is_alive(&ctx.redis, a, 30).await.map_err(failed)? {
                return Err(failed(format!("{a} is not running: no instance was updated")));
            }
        }
        let rootfull: bool = ctx.redis.sismember(keys::module_flags(&agent), "rootfull").await?;
        if rootfull != needs.rootfull {
            return Err(failed(format!(
                "{url} is {}, but {id} is not: an update cannot change that",
                if needs.rootfull { "rootful" } else { "rootless" }
            )));
        }
        // Only what the module was not granted before needs consent now.
        let granted: Vec<String> = ctx.redis.smembers(keys::module_authorizations(&agent)).await?;
        consent::check(&url, &needs, &Consent { authorizations: granted, rootfull }, req.accept.as_ref())?;
        consent::check_roles(&ctx.redis, node, &needs).await.map_err(failed)?;
        targets.push((id.to_owned(), agent, node));
    }
    // Every instance is taken before any is touched.
    for (i, (id, _, _)) in targets.iter().enumerate() {
        if let Err(e) = locks::lock(&ctx, id, "update").await {
            for (taken, _, _) in &targets[..i] {
                locks::unlock(&ctx, taken).await;
            }
            return Err(failed(e));
        }
    }
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for (i, (id, agent, node)) in targets.iter().enumerate() {
        match update_one(&ctx, &sagas, id, agent, *node, &img, &needs).await {
            Ok(v) => done.push(v),
            Err(e) => errors.push(e.to_string()),
        }
        ctx.set_progress((((i + 1) * 100) / targets.len()).min(99) as u8);
    }
    // An update whose rollback failed stays journaled for the next start to settle; the
    // node's own lock still guards the module meanwhile, and a later update takes the
    // journal entry over.
    for (id, _, _) in &targets {
        locks::unlock(&ctx, id).await;
    }
    if errors.is_empty() {
        Ok(UpdateModuleReply { image_url: url, instances: done })
    } else {
        Err(failed(errors.join("; ")))
    }
}

async fn update_one(
    ctx: &ActionContext,
    sagas: &Sagas,
    id: &str,
    agent: &AgentId,
    node_id: u32,
    img: &ModuleImage,
    needs: &Requirements,
) -> Result<UpdatedInstance, UpdateError> {
    let node = AgentId::Node(node_id);
    let url = img.url.clone();
    let previous: Option<String> = ctx.redis.hget(keys::environment(agent), "IMAGE_URL").await?;
    let previous = previous.unwrap_or_default();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("IMAGE_URL".into(), img.url.clone());
    env.insert("IMAGE_REOPODIGEST".into(), records::repo_digest(&img.url, &img.digest));
    for i in &needs.images {
        env.insert(records::image_variable(i), i.clone());
    }
    for (proto, demand) in [(PortProtocol::Tcp, needs.tcp_ports), (PortProtocol::Udp, needs.udp_ports)] {
        let _: i64 = ctx.redis.hset(keys::ports_demand(proto.as_str()), (id, demand.to_string())).await?;
    }

    let mut saga = sagas.begin(ctx, KIND, id);
    let req = node::UpdateModuleRequest { module_id: id.to_owned(), image_url: img.url.clone(), environment: env };
    let step = NodeUpdate { node: node_id, module_id: id.to_owned() };
    let updated = saga
        .run(step, 0, async {
            ctx.call::<node::UpdateModule>(&node, &req).await.map_err(|source| UpdateError::Node {
                id: id.to_owned(),
                url: url.clone(),
                source,
            })
        })
        .await;
    if let Err(e) = updated {
        // The node put back what it had changed.
        saga.forget_last().await?;
        return Err(e);
    }
    // The module's own steps, from the new image.
    let steps = async {
        if ctx.has_action(agent, module::UpdateModule::NAME).await? {
            ctx.call::<module::UpdateModule>(agent, &module::UpdateModuleRequest { module_url: img.url.clone() })
                .await?;
        }
        Ok::<(), CallError<Never>>(())
    }
    .await;
    if let Err(cause) = steps {
        let cleanup = saga.abort().await;
        return Err(if cleanup.is_clean() {
            UpdateError::RolledBack { id: id.to_owned(), url, cause, previous }
        } else {
            UpdateError::RollbackFailed { id: id.to_owned(), url, cause, cleanup }
        });
    }
    let commit = node::FinishUpdateRequest { module_id: id.to_owned(), outcome: UpdateOutcome::Commit };
    // A commit that fails stays journaled: the next start rolls it back.
    let finished = ctx.call::<node::FinishUpdate>(&node, &commit).await.map_err(|e| UpdateError::Commit {
        id: id.to_owned(),
        url: url.clone(),
        source: e.untyped(),
    })?;
    saga.commit().await?;
    records::copy_environment(&ctx.redis, agent, &finished.environment).await?;
    // The new version's accepted requests.
    consent::apply_authorizations(&ctx.redis, agent, node_id, &needs.authorizations).await?;
    let event = json!({"module": id, "node": node_id, "image_url": img.url}).to_string();
    let _: i64 = ctx.redis.publish(keys::event_channel(&AgentId::Cluster, "module-updated"), event).await?;
    Ok(UpdatedInstance { module_id: id.to_owned(), image_url: img.url.clone(), previous_image_url: previous })
}
