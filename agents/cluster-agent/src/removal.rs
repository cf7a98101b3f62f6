//! `remove-module` (NS8 reference 10.6): the module's `destroy-module` (if it has one),
//! the node's removal, its ports, then every Redis trace. With `force`, a failing
//! `destroy-module` or an unreachable node does not stop the removal. A removal cannot
//! be undone once the module's own cleanup ran, so one cut short by a crash of this
//! agent is finished at its next start (the saga's one step, whose "undo" completes).

use agent_runtime::saga::{SagaError, Sagas, Step, UndoError};
use agent_runtime::{ActionContext, ActionError, CallError};
use bus::fred::prelude::*;
use protocol::actions::cluster::{RemoveModuleReply, RemoveModuleRequest};
use protocol::actions::node::{self, RemoveModuleRefusal};
use protocol::actions::{Action, Never, PortProtocol, module};
use protocol::events::{self, ModuleEvent};
use protocol::{AgentId, keys};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::failure::failed;
use crate::records::running;
use crate::{locks, records};

/// The saga's kind in the journal.
pub const KIND: &str = "remove-module";

#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    #[error("{node} is not running: {id} was not touched (force removes it from the cluster anyway)")]
    NodeDown { node: AgentId, id: String },
    #[error("{0} (force removes it anyway)")]
    Destroy(CallError<Never>),
    #[error(transparent)]
    Node(CallError<Never>),
    #[error(transparent)]
    Saga(#[from] SagaError),
    #[error("redis error: {0}")]
    Redis(#[from] bus::fred::error::Error),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

/// Step: the removal has begun. "Undo": finish it (the node's removal, the ports,
/// the Redis traces), as it was asked.
#[derive(Debug, Serialize, Deserialize)]
pub struct Removal {
    pub node: u32,
    pub module_id: String,
    pub preserve_data: bool,
    pub force: bool,
}

impl Step for Removal {
    const NAME: &'static str = "module-removal";
    async fn undo(self, ctx: &ActionContext) -> Result<(), UndoError> {
        let agent = AgentId::module(&self.module_id)?;
        let node = match running(ctx, self.node).await {
            Ok(node) => Some(node),
            Err(_) if self.force => None,
            Err(e) => return Err(e),
        };
        if let Some(node) = &node {
            node_removal(ctx, node, &self.module_id, self.preserve_data).await?;
        }
        release_ports(ctx, node.as_ref(), self.node, &self.module_id).await?;
        records::forget(&ctx.redis, &agent, &self.module_id).await?;
        publish(ctx, &self.module_id, self.node).await;
        Ok(())
    }
}

/// The steps this file's saga journals.
pub fn steps(sagas: Sagas) -> Sagas {
    sagas.step::<Removal>()
}

/// The node removes the module; an account the node did not make is never touched,
/// and means that nothing of the module is there.
async fn node_removal(
    ctx: &ActionContext,
    node: &AgentId,
    id: &str,
    preserve_data: bool,
) -> Result<Option<String>, CallError<Never>> {
    let req = node::RemoveModuleRequest { module_id: id.to_owned(), preserve_data };
    match ctx.call::<node::RemoveModule>(node, &req).await {
        Ok(reply) => Ok(reply.preserved),
        Err(e) if e.refusal() == Some(RemoveModuleRefusal::NotAModuleOfThisNode) => {
            tracing::warn!("{node} has no module {id} of its own: nothing of it to remove there");
            Ok(None)
        }
        Err(e) => Err(e.untyped()),
    }
}

/// The module's ports, released by its node; a node that does not run has its port
/// table in Redis, released here.
async fn release_ports(
    ctx: &ActionContext,
    node: Option<&AgentId>,
    node_id: u32,
    id: &str,
) -> Result<(), bus::fred::error::Error> {
    for protocol in PortProtocol::ALL {
        match node {
            None => {
                let _: i64 = ctx.redis.hdel(keys::node_ports(node_id, protocol.as_str()), id).await?;
            }
            Some(node) => {
                let req = node::DeallocatePortsRequest { module_id: id.to_owned(), protocol };
                if let Err(e) = ctx.call::<node::DeallocatePorts>(node, &req).await {
                    tracing::warn!("{e}");
                }
            }
        }
    }
    Ok(())
}

async fn publish(ctx: &ActionContext, id: &str, node: u32) {
    let event = ModuleEvent { module: id.to_owned(), node };
    let event = serde_json::to_string(&event).expect("a ModuleEvent always serializes");
    let sent: Result<i64, _> =
        ctx.redis.publish(keys::event_channel(&AgentId::Cluster, events::MODULE_REMOVED), event).await;
    if let Err(e) = sent {
        tracing::warn!("{id} is removed, but module-removed was not published: {e}");
    }
}

pub async fn remove(
    ctx: ActionContext,
    req: RemoveModuleRequest,
    sagas: Sagas,
) -> Result<RemoveModuleReply, ActionError> {
    let id = req.module_id.clone();
    let agent = AgentId::module(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    let Some(node_id) = records::node_of(&ctx.redis, &id).await? else {
        return Err(ActionError::invalid("module_id", json!(id), "not_installed"));
    };
    locks::lock(&ctx, &id, "removal").await.map_err(failed)?;
    let result = removal(&ctx, &sagas, &req, &agent, node_id).await;
    locks::unlock(&ctx, &id).await;
    result.map_err(failed)
}

async fn removal(
    ctx: &ActionContext,
    sagas: &Sagas,
    req: &RemoveModuleRequest,
    agent: &AgentId,
    node_id: u32,
) -> Result<RemoveModuleReply, RemovalError> {
    let id = req.module_id.as_str();
    let node = AgentId::Node(node_id);
    // Checked first: a removal that cannot reach the node must not begin.
    let node_alive = bus::agent_is_alive(&ctx.redis, &node, 30).await?;
    if !node_alive && !req.force {
        return Err(RemovalError::NodeDown { node, id: id.to_owned() });
    }
    let mut saga = sagas.begin(ctx, KIND, id);
    let step = Removal { node: node_id, module_id: id.to_owned(), preserve_data: req.preserve_data, force: req.force };
    saga.run(step, 10, async { Ok::<_, RemovalError>(()) }).await?;
    let outcome = async {
        if bus::agent_is_alive(&ctx.redis, agent, 30).await? {
            let destroyed = async {
                if ctx.has_action(agent, module::DestroyModule::NAME).await? {
                    ctx.call::<module::DestroyModule>(agent, &module::DestroyModuleRequest {}).await?;
                }
                Ok::<_, CallError<Never>>(())
            };
            if let Err(e) = destroyed.await {
                if !req.force {
                    return Err(RemovalError::Destroy(e));
                }
                tracing::warn!("removing {id} anyway: {e}");
            }
        }
        ctx.set_progress(30);
        let preserved = if node_alive {
            match node_removal(ctx, &node, id, req.preserve_data).await {
                Ok(p) => p,
                Err(e) if req.force => {
                    tracing::warn!("removing {id} from Redis anyway: {e}");
                    None
                }
                Err(e) => return Err(RemovalError::Node(e)),
            }
        } else {
            tracing::warn!("removing {id} from Redis anyway: {node} is not running");
            None
        };
        ctx.set_progress(70);
        release_ports(ctx, node_alive.then_some(&node), node_id, id).await?;
        records::forget(&ctx.redis, agent, id).await?;
        Ok(preserved)
    }
    .await;
    match outcome {
        Ok(preserved) => {
            saga.commit().await?;
            publish(ctx, id, node_id).await;
            Ok(RemoveModuleReply { module_id: id.to_owned(), preserved })
        }
        Err(e) => {
            // Refused before anything was removed, or by the node: the module stays as
            // it is, for another try (or `force`); nothing is left to finish.
            saga.forget_last().await?;
            Err(e)
        }
    }
}
