//! `run-backup`: a plan's modules backed up now, each by its node (NS8 reference
//! 11.3), one run of a plan at a time; every module's run recorded (the last 100 per
//! plan, in `cluster/backup_runs/<id>`) and reported to the plan's webhook, success
//! included.

use std::collections::BTreeMap;
use std::time::Duration;

use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use bus::fred::types::{Expiration, SetOptions};
use protocol::AgentId;
use protocol::actions::backup::{
    ClusterCopy, ModuleRun, ModuleToBackUp, NodeRunBackup, NodeRunBackupRequest, PlanId, PlanRefusal, Retention,
    RunBackupReply, RunRecord, RunReport, RunStatus, WebhookWhen,
};
use protocol::actions::module;
use protocol::actions::{Action, backup::DestinationAccess};
use protocol::keys;
use serde_json::{Value, json};

use crate::plans::{self, Plan};

/// The runs kept per plan.
pub const RUNS_KEPT: i64 = 100;
/// A run's lock outlives any run; a crash's is taken over once its task is gone.
const LOCK_SECS: i64 = 24 * 3600;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse(r: PlanRefusal, why: impl Into<Value>) -> ActionError {
    ActionError::refuse(r, why.into())
}

/// Whether task `id` is one the cluster agent has taken and not finished.
async fn in_flight(ctx: &ActionContext, id: &str) -> Result<bool, ActionError> {
    let tasks: Vec<String> = ctx.redis.lrange(keys::inflight(&AgentId::Cluster), 0, -1).await?;
    Ok(tasks.iter().any(|t| serde_json::from_str::<Value>(t).is_ok_and(|v| v["id"] == id)))
}

/// Take plan `id`'s run lock for this task, or say which run holds it. A lock whose
/// task is no longer in flight (the agent crashed under it) is taken over.
async fn lock(ctx: &ActionContext, id: u64) -> Result<(), ActionError> {
    let key = keys::backup_lock(id);
    let expire = Some(Expiration::EX(LOCK_SECS));
    let taken: Option<String> =
        ctx.redis.set(&key, ctx.task_id.as_str(), expire.clone(), Some(SetOptions::NX), false).await?;
    if taken.is_some() {
        return Ok(());
    }
    let holder: Option<String> = ctx.redis.get(&key).await?;
    let Some(holder) = holder else {
        return Box::pin(lock(ctx, id)).await;
    };
    if in_flight(ctx, &holder).await? {
        return Err(refuse(PlanRefusal::Running, format!("plan {id} is running already, as task {holder}")));
    }
    // Stale: replace it only if it is still that one (another run may take it first).
    let old: Option<String> = ctx.redis.set(&key, ctx.task_id.as_str(), expire, None, true).await?;
    if old.as_deref() != Some(holder.as_str()) {
        return Err(refuse(PlanRefusal::Running, format!("plan {id} was just started by another task")));
    }
    tracing::warn!("plan {id}: took over the run lock of task {holder}, which no longer runs");
    Ok(())
}

async fn unlock(ctx: &ActionContext, id: u64) {
    let key = keys::backup_lock(id);
    let holder: Result<Option<String>, _> = ctx.redis.get(&key).await;
    if matches!(holder, Ok(Some(h)) if h == ctx.task_id) {
        let _: Result<i64, _> = ctx.redis.del(&key).await;
    }
}

/// The plan's installed modules, by node.
pub async fn modules_by_node(
    ctx: &ActionContext,
    plan: &Plan,
) -> Result<BTreeMap<u32, Vec<ModuleToBackUp>>, ActionError> {
    let mut out: BTreeMap<u32, Vec<ModuleToBackUp>> = BTreeMap::new();
    for m in &plan.instances {
        let w = plans::whereabouts(&ctx.redis, m).await?;
        // A module of the plan removed since: nothing to back up.
        let Some(node) = w.node else { continue };
        let (Some(uuid), Some(image)) = (w.uuid, w.image) else {
            return Err(ActionError::failed(format!("module {m} has no MODULE_UUID or IMAGE_URL recorded")));
        };
        out.entry(node).or_default().push(ModuleToBackUp { module_id: m.clone(), uuid, image });
    }
    Ok(out)
}

pub async fn run(ctx: ActionContext, req: PlanId) -> Result<RunBackupReply, ActionError> {
    let plan = plans::load(&ctx.redis, req.id).await?.ok_or_else(|| refuse(PlanRefusal::NotFound, req.id))?;
    lock(&ctx, req.id).await?;
    let result = run_locked(&ctx, &plan).await;
    unlock(&ctx, req.id).await;
    result
}

async fn run_locked(ctx: &ActionContext, plan: &Plan) -> Result<RunBackupReply, ActionError> {
    let destination = crate::backup::access(ctx, &plan.repository)
        .await?
        .ok_or_else(|| ActionError::failed(format!("plan {}'s destination {} is gone", plan.id, plan.repository)))?;
    let retention = Retention { keep_last: plan.retention, keep: plan.keep.clone() };
    let started = now();
    // The configuration first: a run whose modules fail still leaves it restorable.
    let cluster_backup = crate::disaster::upload_copy(ctx, &destination).await;
    if let Some(ClusterCopy { error: Some(error), .. }) = &cluster_backup {
        tracing::warn!("plan {}: the cluster backup was not copied: {error}", plan.id);
    }
    let mut runs = Vec::new();
    for (node, modules) in modules_by_node(ctx, plan).await? {
        for m in modules {
            let status = match back_up(ctx, plan, node, &destination, &retention, &m).await {
                Ok(run) => run.status,
                Err(error) => {
                    RunStatus { start: now(), end: now(), errors: 1, error: Some(error), ..RunStatus::default() }
                }
            };
            runs.push(ModuleRun { module_id: m.module_id, node_id: node, status });
        }
    }
    let report = RunReport {
        backup_id: plan.id,
        name: plan.name.clone(),
        destination: plan.repository.clone(),
        task: ctx.task_id.clone(),
        start: started,
        end: now(),
        success: runs.iter().all(|r| r.status.success) && cluster_backup.as_ref().is_none_or(|c| c.success),
        modules: runs.clone(),
        cluster_backup: cluster_backup.clone(),
    };
    record(ctx, plan.id, &runs).await?;
    webhook(plan, &report).await;
    let failures: Vec<String> = runs
        .iter()
        .filter(|r| !r.status.success)
        .map(|r| format!("{}: {}", r.module_id, r.status.error.as_deref().unwrap_or("failed")))
        .collect();
    if !failures.is_empty() {
        return Err(ActionError::failed(format!(
            "{} of {} modules of plan {} failed: {}",
            failures.len(),
            runs.len(),
            plan.id,
            failures.join("; ")
        )));
    }
    if let Some(ClusterCopy { error: Some(error), .. }) = &cluster_backup {
        return Err(ActionError::failed(format!("plan {}: the cluster backup was not copied: {error}", plan.id)));
    }
    Ok(RunBackupReply { id: plan.id, modules: runs, cluster_backup })
}

/// One module: its own dump step if it has one (NS8's `module-dump-state`), its node's
/// backup of it, its cleanup step. A failure before the node's run is the module's
/// error; the node's own failures come back as its status.
async fn back_up(
    ctx: &ActionContext,
    plan: &Plan,
    node: u32,
    destination: &DestinationAccess,
    retention: &Retention,
    m: &ModuleToBackUp,
) -> Result<ModuleRun, String> {
    let agent = AgentId::module(&m.module_id).map_err(|e| e.to_string())?;
    let has =
        async |action: &'static str| ctx.has_action(&agent, action).await.map_err(|e| format!("{}: {e}", m.module_id));
    if has(module::DumpState::NAME).await? {
        ctx.call::<module::DumpState>(&agent, &json!({})).await.map_err(|e| e.to_string())?;
    }
    let call = NodeRunBackupRequest {
        id: plan.id,
        destination: destination.clone(),
        retention: retention.clone(),
        modules: vec![m.clone()],
    };
    let reply = ctx.call::<NodeRunBackup>(&AgentId::Node(node), &call).await.map_err(|e| format!("node {node}: {e}"));
    if has(module::CleanupState::NAME).await? {
        ctx.call::<module::CleanupState>(&agent, &json!({})).await.map_err(|e| e.to_string())?;
    }
    reply?.modules.into_iter().next().ok_or_else(|| format!("node {node} answered no run of {}", m.module_id))
}

fn now() -> u64 {
    protocol::time::unix_seconds()
}

/// Each module's run on the plan's history, newest first, the last [`RUNS_KEPT`].
async fn record(ctx: &ActionContext, id: u64, runs: &[ModuleRun]) -> Result<(), ActionError> {
    if runs.is_empty() {
        return Ok(());
    }
    let key = keys::backup_runs(id);
    let lines: Vec<String> = runs
        .iter()
        .map(|r| {
            let record = RunRecord { task: ctx.task_id.clone(), run: r.clone() };
            serde_json::to_string(&record).expect("a RunRecord always serializes")
        })
        .collect();
    let tx = ctx.redis.multi();
    let _: () = tx.lpush(&key, lines).await?;
    let _: () = tx.ltrim(&key, 0, RUNS_KEPT - 1).await?;
    let _: () = tx.exec(true).await?;
    Ok(())
}

/// POST the run's report to the plan's webhook, if it has one and wants this run. A
/// webhook that fails is logged: the backup's own result stands.
async fn webhook(plan: &Plan, report: &RunReport) {
    let Some(url) = plan.webhook_url.clone() else { return };
    if plan.webhook_when == WebhookWhen::Failure && report.success {
        return;
    }
    let body = serde_json::to_string(report).expect("a RunReport always serializes");
    let sent = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(WEBHOOK_TIMEOUT)).build().into();
        agent.post(&url).header("Content-Type", "application/json").send(body.as_bytes()).map(|_| ())
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("plan {}: the webhook failed: {e}", plan.id),
        Err(e) => tracing::warn!("plan {}: the webhook's thread was lost: {e}", plan.id),
    }
}
