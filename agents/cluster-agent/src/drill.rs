//! Restore drills (beyond NS8): the proof that a plan's backups restore. For each
//! module: its repository checked by its node (`restic check`, a share of the data
//! read back), its latest snapshot restored into a throw-away instance beside it
//! (`restore.rs`, its own user and ports, the original's consent and nothing more),
//! that instance's `check-health` run when the module has one, the instance removed,
//! and the report kept (`cluster/backup_drills/<id>`, the last 100) and published
//! (`backup-drill-finished`). `list-backups` shows each module's last good drill.

use agent_runtime::saga::Sagas;
use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use protocol::AgentId;
use protocol::actions::Action;
use protocol::actions::backup::{
    CheckBackupRepository, CheckRepositoryRequest, DrillReply, DrillReport, ModuleToBackUp, PlanId, PlanRefusal,
    RestoreModuleRequest,
};
use protocol::actions::cluster::{Accept, AuthorizationText, RemoveModuleRequest};
use protocol::actions::module;
use protocol::events;
use protocol::keys;
use serde_json::json;

use crate::plans::{self, Plan};

/// The share of a repository's data a drill reads back.
const READ_PERCENT: u8 = 10;
const DRILLS_KEPT: i64 = 100;

pub async fn drill(ctx: ActionContext, req: PlanId, sagas: Sagas) -> Result<DrillReply, ActionError> {
    let plan = plans::load(&ctx.redis, req.id)
        .await?
        .ok_or_else(|| ActionError::refuse(PlanRefusal::NotFound, req.id.into()))?;
    let destination = crate::backup::access(&ctx, &plan.repository)
        .await?
        .ok_or_else(|| ActionError::failed(format!("plan {}'s destination {} is gone", plan.id, plan.repository)))?;
    let mut reports = Vec::new();
    for (node, modules) in crate::runs::modules_by_node(&ctx, &plan).await? {
        for m in modules {
            let start = now();
            let mut report = DrillReport { module_id: m.module_id.clone(), start, ..DrillReport::default() };
            if let Err(e) = drill_one(&ctx, &plan, node, &destination, &m, &sagas, &mut report).await {
                report.error = Some(e);
            } else {
                report.success = true;
            }
            report.end = now();
            record(&ctx, &plan, &report).await?;
            reports.push(report);
        }
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.success)
        .map(|r| format!("{}: {}", r.module_id, r.error.as_deref().unwrap_or("failed")))
        .collect();
    if !failed.is_empty() {
        return Err(ActionError::failed(format!("the drill of plan {} failed: {}", plan.id, failed.join("; "))));
    }
    Ok(DrillReply { id: plan.id, modules: reports })
}

async fn drill_one(
    ctx: &ActionContext,
    plan: &Plan,
    node: u32,
    destination: &protocol::actions::backup::DestinationAccess,
    m: &ModuleToBackUp,
    sagas: &Sagas,
    report: &mut DrillReport,
) -> Result<(), String> {
    let path = format!("{}/{}", m.image, m.uuid);
    let check =
        CheckRepositoryRequest { destination: destination.clone(), path: path.clone(), read_percent: READ_PERCENT };
    let checked = ctx.call::<CheckBackupRepository>(&AgentId::Node(node), &check).await.map_err(|e| e.to_string())?;
    report.snapshot_id = Some(checked.latest.clone());
    report.repository_bytes = checked.repository_bytes;
    // The original's consent, nothing more.
    let original = AgentId::module(&m.module_id).map_err(|e| e.to_string())?;
    let granted: Vec<String> =
        ctx.redis.smembers(keys::module_authorizations(&original)).await.map_err(|e| e.to_string())?;
    let rootfull: bool =
        ctx.redis.sismember(keys::module_flags(&original), "rootfull").await.map_err(|e| e.to_string())?;
    let accept = Accept { authorizations: granted.into_iter().map(AuthorizationText).collect(), rootfull };
    let restore = RestoreModuleRequest {
        repository: plan.repository.clone(),
        path,
        snapshot: checked.latest,
        node,
        replace: false,
        accept: Some(accept),
    };
    let started = std::time::Instant::now();
    let added = crate::restore::restore(ctx.clone(), restore, sagas.clone()).await.map_err(|e| describe(&e))?;
    report.restore_seconds = started.elapsed().as_secs();
    report.instance = Some(added.module_id.clone());
    let instance = AgentId::module(&added.module_id).map_err(|e| e.to_string())?;
    let health = match ctx.has_action(&instance, module::CheckHealth::NAME).await {
        Ok(true) => ctx.call::<module::CheckHealth>(&instance, &json!({})).await.map(Some).map_err(|e| e.to_string()),
        Ok(false) => Ok(None),
        Err(e) => Err(e.to_string()),
    };
    // The throw-away instance goes, whatever its health.
    let removal = RemoveModuleRequest { module_id: added.module_id.clone(), preserve_data: false, force: true };
    let removed = crate::removal::remove(ctx.clone(), removal, sagas.clone()).await.map_err(|e| describe(&e));
    report.health = health?;
    removed.map_err(|e| format!("the drill's instance {} could not be removed: {e}", added.module_id))?;
    Ok(())
}

fn describe(e: &ActionError) -> String {
    match e {
        ActionError::Failed { message, .. } => message.clone(),
        ActionError::Validation(errors) => {
            errors.iter().map(|v| format!("{} ({})", v.error, v.value)).collect::<Vec<_>>().join(", ")
        }
    }
}

async fn record(ctx: &ActionContext, plan: &Plan, report: &DrillReport) -> Result<(), ActionError> {
    let text = serde_json::to_string(report).expect("a DrillReport always serializes");
    let key = keys::backup_drills(plan.id);
    let tx = ctx.redis.multi();
    let _: () = tx.lpush(&key, text).await?;
    let _: () = tx.ltrim(&key, 0, DRILLS_KEPT - 1).await?;
    let _: () = tx.exec(true).await?;
    let event = events::DrillFinished { backup_id: plan.id, report: report.clone() };
    let event = serde_json::to_string(&event).expect("a DrillFinished always serializes");
    let channel = keys::event_channel(&AgentId::Cluster, events::BACKUP_DRILL_FINISHED);
    if let Err(e) = ctx.redis.publish::<(), _, _>(channel, event).await {
        tracing::warn!("cannot publish {}: {e}", events::BACKUP_DRILL_FINISHED);
    }
    if report.success {
        tracing::info!("plan {}: the drill of {} passed", plan.id, report.module_id);
    } else {
        tracing::warn!(
            "plan {}: the drill of {} failed: {}",
            plan.id,
            report.module_id,
            report.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn now() -> u64 {
    protocol::time::unix_seconds()
}
