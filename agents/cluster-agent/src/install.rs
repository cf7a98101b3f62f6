//! `add-module` (NS8 reference 10.2): the image checked before any node is touched,
//! then a saga of journaled steps (the module's records, its ports, the node's part:
//! user, files, credentials, agent), its Redis user and grants, and the module's own
//! `create-module`. Beyond NS8, an install either completes or leaves nothing, even
//! when this agent dies in the middle (see `agent_runtime::saga`).
//!
//! A Unix account of the new id on the node (a leftover of another cluster, a local
//! user) never blocks installs: the node refuses to take it over, and the install
//! takes the next id of the sequence.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_runtime::saga::{Saga, SagaError, Sagas, Step, UndoError};
use agent_runtime::{ActionContext, ActionError, CallError};
use bus::BusError;
use bus::fred::prelude::*;
use protocol::actions::cluster::{AddModuleReply, AddModuleRequest};
use protocol::actions::node::{self, AddModuleRefusal, RemoveModuleRefusal};
use protocol::actions::{Action, Never, PortProtocol, module};
use protocol::events::{self, ModuleEvent};
use protocol::{AgentId, keys};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::failure::failed;
use crate::image::{self, Consent, ModuleImage, Requirements};
use crate::records::running;
use crate::{consent, locks, records};

/// The saga's kind in the journal.
pub const KIND: &str = "add-module";
/// How long the new agent has to connect before the install gives up.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many ids an install tries when the node has Unix users of those names.
const MAX_ID_TRIES: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Call(#[from] CallError<Never>),
    #[error(transparent)]
    Saga(#[from] SagaError),
    #[error("redis error: {0}")]
    Redis(#[from] bus::fred::error::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot create the Redis user of {agent} (saved in the ACL file): {source}")]
    AgentUser { agent: AgentId, source: bus::fred::error::Error },
    #[error("{node}/add-module answered {hash:?} as redis_sha256, which is not a SHA-256 in hex")]
    BadHash { node: AgentId, hash: String },
    #[error("the agent of {id} did not connect within {} s; see its log", AGENT_START_TIMEOUT.as_secs())]
    AgentSilent { id: String },
    #[error("a Unix user named {id} exists on {node}, which never takes one over")]
    UnixUserExists { id: String, node: AgentId },
}

/// Step: the module's records in Redis (ports demand, node, uuid, flags, grants, its
/// ACL user). Undo: every trace of the module in Redis.
#[derive(Debug, Serialize, Deserialize)]
pub struct Records {
    pub module_id: String,
}

impl Step for Records {
    const NAME: &'static str = "module-records";
    async fn undo(self, ctx: &ActionContext) -> Result<(), UndoError> {
        let agent = AgentId::module(&self.module_id)?;
        records::forget(&ctx.redis, &agent, &self.module_id).await?;
        Ok(())
    }
}

/// Step: a range of ports allocated on the node. Undo: released.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ports {
    pub node: u32,
    pub module_id: String,
    pub protocol: PortProtocol,
}

impl Step for Ports {
    const NAME: &'static str = "node-ports";
    async fn undo(self, ctx: &ActionContext) -> Result<(), UndoError> {
        let node = running(ctx, self.node).await?;
        let req = node::DeallocatePortsRequest { module_id: self.module_id, protocol: self.protocol };
        ctx.call::<node::DeallocatePorts>(&node, &req).await?;
        Ok(())
    }
}

/// Step: the node's part of the module (user, files, credentials, agent). Undo: the
/// node removes it; an account the node did not make is never touched, and means
/// that nothing of this install is there.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeModule {
    pub node: u32,
    pub module_id: String,
}

impl Step for NodeModule {
    const NAME: &'static str = "node-module";
    async fn undo(self, ctx: &ActionContext) -> Result<(), UndoError> {
        let node = running(ctx, self.node).await?;
        let req = node::RemoveModuleRequest { module_id: self.module_id, preserve_data: false };
        match ctx.call::<node::RemoveModule>(&node, &req).await {
            Ok(_) => Ok(()),
            Err(e) if e.refusal() == Some(RemoveModuleRefusal::NotAModuleOfThisNode) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The steps this file's saga journals.
pub fn steps(sagas: Sagas) -> Sagas {
    sagas.step::<Records>().step::<Ports>().step::<NodeModule>()
}

pub async fn add(ctx: ActionContext, req: AddModuleRequest, sagas: Sagas) -> Result<AddModuleReply, ActionError> {
    let node_id = req.node;
    let node = AgentId::Node(node_id);
    let url = crate::repository::resolve(&ctx, &req.image).await?;
    if !bus::agent_is_alive(&ctx.redis, &node, 30).await.map_err(failed)? {
        return Err(ActionError::invalid("node", json!(req.node), "not_alive"));
    }
    // 1. The image and its labels, before anything changes anywhere.
    let img = image::inspect(&url).await.map_err(failed)?;
    let needs = image::requirements(&img.labels).map_err(failed)?;
    // Labels are requests: what goes beyond the module's own agent needs consent.
    consent::check(&url, &needs, &Consent::default(), req.accept.as_ref())?;
    if !needs.never_granted.is_empty() {
        tracing::warn!("{url} asks for {}: never granted to a module", needs.never_granted.join(", "));
    }
    consent::check_roles(&ctx.redis, node_id, &needs).await.map_err(failed)?;
    ctx.set_progress(10);

    let uuid = req.module_uuid.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut skipped = Vec::new();
    for _ in 0..MAX_ID_TRIES {
        // 2. The instance id; sequences only grow, so an id is never reused.
        let seq: u64 = ctx.redis.incr(keys::module_sequence(&img.name)).await?;
        let id = format!("{}{seq}", img.name);
        protocol::validate_module_id(&id).map_err(|e| failed(format!("image name {:?}: {e}", img.name)))?;
        let agent = AgentId::module(&id).map_err(failed)?;
        locks::lock(&ctx, &id, "install").await.map_err(failed)?;
        let mut saga = sagas.begin(&ctx, KIND, &id);
        let target = Target { node_id, id: &id, agent: &agent, uuid: &uuid };
        let mut outcome = install(&ctx, &mut saga, &target, &img, &needs).await;
        if outcome.is_ok()
            && let Err(e) = saga.commit().await
        {
            outcome = Err(e.into());
        }
        let e = match outcome {
            Ok(reply) => {
                locks::unlock(&ctx, &id).await;
                let event = ModuleEvent { module: id.clone(), node: node_id };
                let event = serde_json::to_string(&event).expect("a ModuleEvent always serializes");
                let published: Result<i64, _> =
                    ctx.redis.publish(keys::event_channel(&AgentId::Cluster, events::MODULE_ADDED), event).await;
                if let Err(e) = published {
                    tracing::warn!("{id} is installed, but module-added was not published: {e}");
                }
                return Ok(reply);
            }
            Err(e) => e,
        };
        let user_taken = matches!(e, InstallError::UnixUserExists { .. });
        let failure = saga.fail(e).await;
        if failure.cleanup.is_clean() {
            locks::unlock(&ctx, &id).await;
        }
        if user_taken && failure.cleanup.is_clean() {
            tracing::warn!("{id} skipped: {}; trying the next id", failure.cause);
            skipped.push(id);
            continue;
        }
        return Err(failed(format!("cannot install {id} from {url}: {failure}")));
    }
    Err(failed(format!(
        "cannot install {url}: {node} has Unix users named as each of the {MAX_ID_TRIES} ids tried ({}), \
         which it never takes over; remove those accounts if nothing uses them",
        skipped.join(", ")
    )))
}

/// Where and as what a module is installed.
struct Target<'a> {
    node_id: u32,
    id: &'a str,
    agent: &'a AgentId,
    uuid: &'a str,
}

async fn install(
    ctx: &ActionContext,
    saga: &mut Saga,
    t: &Target<'_>,
    img: &ModuleImage,
    needs: &Requirements,
) -> Result<AddModuleReply, InstallError> {
    let (id, agent) = (t.id, t.agent);
    let node = AgentId::Node(t.node_id);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("MODULE_ID".into(), id.to_owned());
    env.insert("MODULE_UUID".into(), t.uuid.to_owned());
    env.insert("NODE_ID".into(), t.node_id.to_string());
    env.insert("IMAGE_URL".into(), img.url.clone());
    env.insert("IMAGE_DIGEST".into(), img.digest.clone());
    env.insert("IMAGE_REOPODIGEST".into(), records::repo_digest(&img.url, &img.digest));
    for i in &needs.images {
        env.insert(records::image_variable(i), i.clone());
    }

    // Journaled first: whatever follows leaves records to forget.
    saga.run(Records { module_id: id.to_owned() }, 10, async { Ok::<_, InstallError>(()) }).await?;

    // 3. Ports, each protocol in one allocation on the node.
    for (proto, demand) in [(PortProtocol::Tcp, needs.tcp_ports), (PortProtocol::Udp, needs.udp_ports)] {
        if demand == 0 {
            continue;
        }
        let _: i64 = ctx.redis.hset(keys::ports_demand(proto.as_str()), (id, demand.to_string())).await?;
        let req = node::AllocatePortsRequest {
            ports: demand,
            module_id: id.to_owned(),
            protocol: proto,
            keep_existing: false,
        };
        let step = Ports { node: t.node_id, module_id: id.to_owned(), protocol: proto };
        let range = saga
            .run(step, 20, async { Ok::<_, InstallError>(ctx.call::<node::AllocatePorts>(&node, &req).await?) })
            .await?;
        env.extend(records::port_variables(proto, range.0, range.1));
    }
    ctx.set_progress(20);

    // 4. The node: user, files, credentials, agent.
    let req = node::AddModuleRequest {
        module_id: id.to_owned(),
        image_url: img.url.clone(),
        is_rootfull: needs.rootfull,
        environment: env,
    };
    let added = async {
        ctx.call::<node::AddModule>(&node, &req).await.map_err(|e| {
            if e.refusal() == Some(AddModuleRefusal::UnixUserExists) {
                InstallError::UnixUserExists { id: id.to_owned(), node: node.clone() }
            } else {
                e.untyped().into()
            }
        })
    };
    let out = saga.run(NodeModule { node: t.node_id, module_id: id.to_owned() }, 60, added).await?;
    let hash = out.redis_sha256;
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(InstallError::BadHash { node, hash });
    }

    // 5. Its Redis user, records and grants (the first step's undo forgets them).
    records::create_agent_user(&ctx.redis, agent, &hash)
        .await
        .map_err(|source| InstallError::AgentUser { agent: agent.clone(), source })?;
    let _: i64 = ctx.redis.hset(keys::MODULE_NODE, (id, t.node_id.to_string())).await?;
    let _: i64 = ctx.redis.hset(keys::MODULE_UUID, (id, t.uuid)).await?;
    for key in [keys::node_default_instance(t.node_id, &img.name), keys::cluster_default_instance(&img.name)] {
        let _: Option<String> = ctx.redis.set(key, id, None, Some(SetOptions::NX), false).await?;
    }
    let mut flags: Vec<String> = needs.flags.clone();
    flags.push(if needs.rootfull { "rootfull" } else { "rootless" }.into());
    let _: i64 = ctx.redis.sadd(keys::module_flags(agent), flags).await?;
    bus::grants::extend_role(&ctx.redis, &AgentId::Cluster, agent, "owner").await?;
    let granted = consent::apply_authorizations(&ctx.redis, agent, t.node_id, &needs.authorizations).await?;
    if !granted.is_empty() {
        tracing::info!("{agent} granted {}", granted.join(", "));
    }

    // 6. The agent connects; then the module's own create-module.
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    while !bus::agent_is_alive(&ctx.redis, agent, 30).await? {
        if Instant::now() > deadline {
            return Err(InstallError::AgentSilent { id: id.to_owned() });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctx.set_progress(70);
    // NS8 modules inherit a base create-module; here a module without one needs none.
    if ctx.has_action(agent, module::CreateModule::NAME).await? {
        let req = module::CreateModuleRequest { images: needs.images.clone() };
        ctx.call::<module::CreateModule>(agent, &req).await?;
    }
    ctx.set_progress(95);
    Ok(AddModuleReply {
        module_id: id.to_owned(),
        module_uuid: t.uuid.to_owned(),
        image_name: img.name.clone(),
        image_url: img.url.clone(),
        not_granted: needs.never_granted.clone(),
    })
}
