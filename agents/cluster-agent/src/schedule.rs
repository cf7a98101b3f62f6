//! The plans' schedules, run by the cluster agent itself: on this machine there is
//! no systemd, and on a server one scheduler gives the same times everywhere (NS8 makes
//! transient systemd timers per plan instead; the elapses are the same, from the same
//! `OnCalendar=` expressions, `calendar.rs`).
//!
//! Every few seconds each enabled plan's next elapse after its last scheduled run
//! (`scheduled_at`, Unix seconds, in the plan's hash) is computed; when it has passed,
//! a `run-backup` task goes on the agent's own queue, a task like any other (its user
//! `cluster`). A run missed while the agent was down runs once at its start, as
//! systemd's `Persistent=true`. A plan seen for the first time starts from now.

use std::time::Duration;

use agent_runtime::ActionContext;
use bus::fred::prelude::*;
use jiff::Timestamp;
use protocol::AgentId;
use protocol::actions::Action;
use protocol::actions::backup::{PlanId, RunBackup, RunDrill};
use protocol::keys;

use crate::calendar::Calendar;

/// How often the plans are looked at: a schedule's elapse runs at most this late.
const TICK: Duration = Duration::from_secs(2);
const SCHEDULED_AT: &str = "scheduled_at";
const DRILL_SCHEDULED_AT: &str = "drill_scheduled_at";

/// Start the scheduler beside the agent's work (from its start hook).
pub async fn start(ctx: ActionContext) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = tick(&ctx).await {
                tracing::warn!("backup schedules: {e}");
            }
            tokio::time::sleep(TICK).await;
        }
    });
}

async fn tick(ctx: &ActionContext) -> Result<(), Box<dyn std::error::Error>> {
    for plan in crate::plans::all(&ctx.redis).await.map_err(|e| format!("{e:?}"))? {
        if !plan.enabled {
            continue;
        }
        due(ctx, plan.id, &plan.schedule, SCHEDULED_AT, RunBackup::NAME).await?;
        if let Some(drill) = &plan.drill_schedule {
            due(ctx, plan.id, drill, DRILL_SCHEDULED_AT, RunDrill::NAME).await?;
        }
    }
    Ok(())
}

/// Queue `action` for plan `id` when `schedule` elapsed since the time in `field`.
async fn due(
    ctx: &ActionContext,
    id: u64,
    schedule: &str,
    field: &str,
    action: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let now = Timestamp::now();
    let Ok(calendar) = Calendar::parse(schedule) else { return Ok(()) };
    let key = keys::backup_plan(id);
    let since: Option<i64> = ctx.redis.hget(&key, field).await?;
    let Some(since) = since.and_then(|s| Timestamp::from_second(s).ok()) else {
        let _: () = ctx.redis.hset(&key, (field, now.as_second())).await?;
        return Ok(());
    };
    let Some(next) = calendar.next_after(since) else { return Ok(()) };
    if next > now {
        return Ok(());
    }
    // Recorded first: a crash after it skips this elapse rather than running it twice.
    let _: () = ctx.redis.hset(&key, (field, now.as_second())).await?;
    let data = serde_json::to_value(PlanId { id }).expect("a PlanId always serializes");
    let mut task = protocol::task::Task::new(action, data);
    task.user = AgentId::Cluster.to_string();
    bus::push_task(&ctx.redis, &AgentId::Cluster, &mut task).await?;
    tracing::info!("plan {id}: scheduled {action} queued as task {} (elapse {next})", task.id);
    Ok(())
}
