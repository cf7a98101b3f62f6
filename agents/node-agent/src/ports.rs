//! `allocate-ports` / `deallocate-ports` (NS8 10.4): contiguous ranges of TCP or UDP
//! ports for the node's modules, first fit in 20000-45000.
//!
//! NS8 keeps them in a SQLite file on the node, and its allocation is a read then a
//! write. Here the allocations are a hash per protocol in Redis (`node/<N>/tcp_ports`:
//! module id -> "start-end ..."), changed by one Redis Function
//! (`protocol::functions::PORTS_ALLOCATE`): concurrent installs can never be given the
//! same port.

use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use protocol::actions::node::{AllocatePortsReply, AllocatePortsRequest, DeallocatePortsReply, DeallocatePortsRequest};
use protocol::{AgentId, keys};

pub const FIRST_PORT: u16 = 20000;
pub const LAST_PORT: u16 = 45000;
/// NS8's exit codes: a module asking for another module's ports, or beyond its demand.
pub const EXIT_NOT_OWN: i32 = 32;
pub const EXIT_OVER_DEMAND: i32 = 33;

fn fail(exit_code: i32, message: String) -> ActionError {
    ActionError::Failed { exit_code, message }
}

/// A module may change only its own ports (NS8 exit 32); other callers (the cluster,
/// administrators, root) any module's.
fn check_owner(ctx: &ActionContext, module: &str) -> Result<(), ActionError> {
    match ctx.user.strip_prefix("module/") {
        Some(caller) if caller != module => {
            Err(fail(EXIT_NOT_OWN, format!("module {caller} may not change the ports of module {module}")))
        }
        _ => Ok(()),
    }
}

fn node_id(ctx: &ActionContext) -> u32 {
    match ctx.agent {
        AgentId::Node(n) => n,
        _ => 0,
    }
}

pub async fn allocate(ctx: ActionContext, req: AllocatePortsRequest) -> Result<AllocatePortsReply, ActionError> {
    let AllocatePortsRequest { module_id: module, protocol, ports: count, keep_existing: keep } = req;
    let protocol = protocol.as_str();
    check_owner(&ctx, &module)?;
    if ctx.user.starts_with("module/") {
        // A module asks for itself: never beyond the demand its image declared.
        let demand: Option<String> = ctx.redis.hget(keys::ports_demand(protocol), &module).await?;
        let demand: u16 = demand.and_then(|d| d.parse().ok()).unwrap_or(0);
        if count > demand {
            return Err(fail(
                EXIT_OVER_DEMAND,
                format!("module {module} asked for {count} {protocol} ports, beyond its demand of {demand}"),
            ));
        }
    }
    let key = keys::node_ports(node_id(&ctx), protocol);
    let args = vec![
        module.clone(),
        count.to_string(),
        FIRST_PORT.to_string(),
        LAST_PORT.to_string(),
        if keep { "1" } else { "0" }.to_owned(),
    ];
    let reply: Vec<i64> =
        bus::functions::fcall(&ctx.redis, protocol::functions::PORTS_ALLOCATE, vec![key], args).await?;
    let port = |p: i64| u16::try_from(p).map_err(|_| ActionError::failed(format!("the ports function answered {p}")));
    match reply.as_slice() {
        [start, end] => Ok(AllocatePortsReply(port(*start)?, port(*end)?)),
        _ => Err(ActionError::failed(format!(
            "no free range of {count} {protocol} ports between {FIRST_PORT} and {LAST_PORT} for module {module}: \
             the node's ports are exhausted"
        ))),
    }
}

pub async fn deallocate(ctx: ActionContext, req: DeallocatePortsRequest) -> Result<DeallocatePortsReply, ActionError> {
    let module = req.module_id;
    check_owner(&ctx, &module)?;
    let removed: i64 = ctx.redis.hdel(keys::node_ports(node_id(&ctx), req.protocol.as_str()), &module).await?;
    Ok(DeallocatePortsReply { released: removed == 1 })
}
