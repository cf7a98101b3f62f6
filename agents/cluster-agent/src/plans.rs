//! Backup plans (NS8 reference 11.1): `add-`, `alter-`, `remove-backup` and
//! `list-backups`, in NS8's `cluster/backup/<id>` hashes, with the schedule checked by
//! [`crate::calendar`] before it is stored.

use std::collections::{BTreeSet, HashMap};

use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use protocol::AgentId;
use protocol::actions::backup::{
    AddBackupRequest, AlterBackupRequest, BackupPlan, BackupPlans, DrillReport, Instance, KeepRules, PlanId,
    PlanInstance, PlanRefusal, PlanSettings, RunStatus, UnconfiguredInstance, WebhookWhen,
};
use protocol::events::{self, SchedulesChanged};
use protocol::keys;
use serde_json::Value;

use crate::calendar::Calendar;

/// A plan's hash field beyond NS8's: the UUIDs of modules it named that are not
/// installed here yet (a restored cluster's, until `restore-module` brings them back
/// and re-links them). NS8 keeps `uinstances` in its dump only.
pub const UINSTANCES: &str = "uinstances";

fn refuse(r: PlanRefusal, why: impl Into<Value>) -> ActionError {
    ActionError::refuse(r, why.into())
}

/// A plan as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub id: u64,
    pub name: String,
    pub repository: String,
    pub schedule: String,
    pub schedule_hint: Option<Value>,
    pub retention: u32,
    pub keep: KeepRules,
    pub instances: Vec<String>,
    pub enabled: bool,
    pub webhook_url: Option<String>,
    pub webhook_when: WebhookWhen,
    pub drill_schedule: Option<String>,
}

impl Plan {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_default();
        vec![
            ("name", self.name.clone()),
            ("repository", self.repository.clone()),
            ("schedule", self.schedule.clone()),
            ("schedule_hint", self.schedule_hint.as_ref().map(Value::to_string).unwrap_or_default()),
            ("retention", self.retention.to_string()),
            ("keep_daily", opt(self.keep.keep_daily)),
            ("keep_weekly", opt(self.keep.keep_weekly)),
            ("keep_monthly", opt(self.keep.keep_monthly)),
            ("instances", self.instances.join(" ")),
            ("enabled", if self.enabled { "1".into() } else { String::new() }),
            ("webhook_url", self.webhook_url.clone().unwrap_or_default()),
            (
                "webhook_when",
                match self.webhook_when {
                    WebhookWhen::Always => "always".into(),
                    WebhookWhen::Failure => "failure".into(),
                },
            ),
            ("drill_schedule", self.drill_schedule.clone().unwrap_or_default()),
        ]
    }

    fn from_hash(id: u64, h: &HashMap<String, String>) -> Plan {
        let get = |f: &str| h.get(f).cloned().unwrap_or_default();
        let num = |f: &str| get(f).parse::<u32>().ok();
        Plan {
            id,
            name: get("name"),
            repository: get("repository"),
            schedule: get("schedule"),
            schedule_hint: serde_json::from_str(&get("schedule_hint")).ok(),
            retention: num("retention").unwrap_or(1).max(1),
            keep: KeepRules {
                keep_daily: num("keep_daily"),
                keep_weekly: num("keep_weekly"),
                keep_monthly: num("keep_monthly"),
            },
            instances: get("instances").split_whitespace().map(str::to_owned).collect(),
            enabled: get("enabled") == "1",
            webhook_url: Some(get("webhook_url")).filter(|u| !u.is_empty()),
            webhook_when: if get("webhook_when") == "failure" { WebhookWhen::Failure } else { WebhookWhen::Always },
            drill_schedule: Some(get("drill_schedule")).filter(|s| !s.is_empty()),
        }
    }
}

/// Plan `id`, if it exists.
pub async fn load(redis: &Client, id: u64) -> Result<Option<Plan>, ActionError> {
    let h: HashMap<String, String> = redis.hgetall(keys::backup_plan(id)).await?;
    Ok((!h.is_empty()).then(|| Plan::from_hash(id, &h)))
}

/// Every plan, by id.
pub async fn all(redis: &Client) -> Result<Vec<Plan>, ActionError> {
    let found: Vec<String> = bus::scan(redis, keys::BACKUP_PLAN_PATTERN, None).await?;
    let prefix = keys::backup_plan(0);
    let prefix = prefix.trim_end_matches('0');
    let mut ids: Vec<u64> = found.iter().filter_map(|k| k.strip_prefix(prefix)?.parse().ok()).collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        if let Some(p) = load(redis, id).await? {
            out.push(p);
        }
    }
    Ok(out)
}

/// The schedule, checked as systemd would read it.
fn check_schedule(schedule: &str) -> Result<Calendar, ActionError> {
    let c = Calendar::parse(schedule).map_err(|why| refuse(PlanRefusal::BadSchedule, why.to_string()))?;
    if c.next().is_none() {
        return Err(refuse(PlanRefusal::BadSchedule, "it never elapses"));
    }
    Ok(c)
}

/// A drill's schedule, when given, checked like the plan's.
fn check_drill_schedule(schedule: Option<&str>) -> Result<(), ActionError> {
    let Some(s) = schedule else { return Ok(()) };
    Calendar::parse(s).map_err(|why| refuse(PlanRefusal::BadSchedule, format!("drill_schedule: {why}")))?;
    Ok(())
}

/// The installed modules among `instances`, deduplicated; an unknown one refused.
async fn check_instances(redis: &Client, instances: &[Instance]) -> Result<Vec<String>, ActionError> {
    let placed: HashMap<String, String> = redis.hgetall(keys::MODULE_NODE).await?;
    let mut seen = BTreeSet::new();
    for Instance(id) in instances {
        if !placed.contains_key(id) {
            return Err(refuse(PlanRefusal::ModuleNotFound, id.as_str()));
        }
        seen.insert(id.clone());
    }
    Ok(seen.into_iter().collect())
}

pub async fn publish_changed(ctx: &ActionContext, ids: &[u64]) {
    let payload = SchedulesChanged { backup_ids: ids.iter().map(u64::to_string).collect() };
    let payload = serde_json::to_string(&payload).expect("a SchedulesChanged always serializes");
    let channel = keys::event_channel(&AgentId::Cluster, events::BACKUP_SCHEDULE_CHANGED);
    if let Err(e) = ctx.redis.publish::<(), _, _>(channel, payload).await {
        tracing::warn!("cannot publish {}: {e}", events::BACKUP_SCHEDULE_CHANGED);
    }
}

/// `settings` checked (the schedules as systemd reads them, the modules installed):
/// the modules, deduplicated.
async fn check_settings(redis: &Client, settings: &PlanSettings) -> Result<Vec<String>, ActionError> {
    check_schedule(&settings.schedule)?;
    check_drill_schedule(settings.drill_schedule.as_deref())?;
    check_instances(redis, &settings.instances).await
}

impl Plan {
    fn new(id: u64, name: String, repository: String, s: PlanSettings, instances: Vec<String>) -> Plan {
        Plan {
            id,
            name,
            repository,
            schedule: s.schedule.trim().to_owned(),
            schedule_hint: s.schedule_hint,
            retention: s.retention,
            keep: s.keep,
            instances,
            enabled: s.enabled,
            webhook_url: s.webhook_url,
            webhook_when: s.webhook_when,
            drill_schedule: s.drill_schedule.map(|d| d.trim().to_owned()),
        }
    }
}

pub async fn add(ctx: ActionContext, req: AddBackupRequest) -> Result<u64, ActionError> {
    if !ctx.redis.exists::<bool, _>(keys::backup_repository(&req.repository)).await? {
        return Err(refuse(PlanRefusal::RepositoryNotFound, req.repository));
    }
    let instances = check_settings(&ctx.redis, &req.settings).await?;
    let id: u64 = ctx.redis.incr(keys::BACKUP_SEQUENCE).await?;
    let name = if req.name.trim().is_empty() { format!("Backup {id}") } else { req.name.trim().to_owned() };
    let plan = Plan::new(id, name, req.repository, req.settings, instances);
    let _: () = ctx.redis.hset(keys::backup_plan(id), plan.fields()).await?;
    publish_changed(&ctx, &[id]).await;
    Ok(id)
}

/// Everything but the destination changes; the schedule's last run (`scheduled_at`) is
/// dropped with the rest: a changed schedule counts from now.
pub async fn alter(ctx: ActionContext, req: AlterBackupRequest) -> Result<(), ActionError> {
    let Some(old) = load(&ctx.redis, req.id).await? else {
        return Err(refuse(PlanRefusal::ObjectNotFound, req.id));
    };
    let instances = check_settings(&ctx.redis, &req.settings).await?;
    let plan = Plan::new(req.id, req.name.trim().to_owned(), old.repository, req.settings, instances);
    let key = keys::backup_plan(req.id);
    let pending: Option<String> = ctx.redis.hget(&key, UINSTANCES).await?;
    let tx = ctx.redis.multi();
    let _: () = tx.del(&key).await?;
    let _: () = tx.hset(&key, plan.fields()).await?;
    if let Some(pending) = pending.filter(|p| !p.is_empty()) {
        let _: () = tx.hset(&key, (UINSTANCES, pending)).await?;
    }
    let _: () = tx.exec(true).await?;
    publish_changed(&ctx, &[req.id]).await;
    Ok(())
}

pub async fn remove(ctx: ActionContext, req: PlanId) -> Result<(), ActionError> {
    let removed: i64 = ctx.redis.del(keys::backup_plan(req.id)).await?;
    if removed == 0 {
        return Err(refuse(PlanRefusal::NotFound, req.id));
    }
    publish_changed(&ctx, &[req.id]).await;
    Ok(())
}

/// The plans using destination `repository`, removed (the destination goes).
pub async fn remove_of_destination(ctx: &ActionContext, repository: &str) -> Result<Vec<u64>, ActionError> {
    let ids: Vec<u64> =
        all(&ctx.redis).await?.into_iter().filter(|p| p.repository == repository).map(|p| p.id).collect();
    if !ids.is_empty() {
        let _: i64 = ctx.redis.del(ids.iter().map(|id| keys::backup_plan(*id)).collect::<Vec<_>>()).await?;
        publish_changed(ctx, &ids).await;
    }
    Ok(ids)
}

/// Where an installed module's backups are: its node, and its repository
/// `<image name>/<MODULE_UUID>` in a destination (what the cluster recorded at its
/// install); `None` for what is not recorded.
pub struct Whereabouts {
    pub node: Option<u32>,
    pub image: Option<String>,
    pub uuid: Option<String>,
}

pub async fn whereabouts(redis: &Client, module: &str) -> Result<Whereabouts, ActionError> {
    let agent = AgentId::module(module).map_err(|e| ActionError::failed(e.to_string()))?;
    let node: Option<String> = redis.hget(keys::MODULE_NODE, module).await?;
    let uuid: Option<String> = redis.hget(keys::MODULE_UUID, module).await?;
    let image: Option<String> = redis.hget(keys::environment(&agent), "IMAGE_URL").await?;
    Ok(Whereabouts {
        node: node.and_then(|n| n.parse().ok()),
        image: image.and_then(|u| protocol::image::parse_reference(&u).ok()).map(|(n, _)| n),
        uuid,
    })
}

pub async fn list(ctx: ActionContext, _: Value) -> Result<BackupPlans, ActionError> {
    let plans = all(&ctx.redis).await?;
    let placed: HashMap<String, String> = ctx.redis.hgetall(keys::MODULE_NODE).await?;
    let mut configured = BTreeSet::new();
    let mut backups = Vec::new();
    for p in plans {
        let mut instances = Vec::new();
        let drills: Vec<String> = ctx.redis.lrange(keys::backup_drills(p.id), 0, -1).await?;
        let drills: Vec<DrillReport> = drills.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
        for m in &p.instances {
            if !placed.contains_key(m) {
                continue;
            }
            configured.insert(m.clone());
            let w = whereabouts(&ctx.redis, m).await?;
            let repository_path = format!("{}/{}", w.image.unwrap_or_default(), w.uuid.unwrap_or_default());
            let agent = AgentId::module(m).map_err(|e| ActionError::failed(e.to_string()))?;
            let ui_name: Option<String> = ctx.redis.get(keys::ui_name(&agent)).await?;
            let (ui_name, node) = (ui_name.unwrap_or_default(), w.node.unwrap_or(1));
            let status: Option<String> = ctx.redis.hget(keys::backup_status(node, p.id), m.as_str()).await?;
            let status = status.and_then(|s| serde_json::from_str::<RunStatus>(&s).ok());
            let of_module = drills.iter().filter(|d| d.module_id == *m);
            let last_drill = of_module.clone().next().cloned();
            let last_good_drill = of_module.clone().find(|d| d.success).cloned();
            instances.push(PlanInstance {
                module_id: m.clone(),
                ui_name,
                repository_path,
                status,
                last_drill,
                last_good_drill,
            });
        }
        let next_run = if p.enabled {
            Calendar::parse(&p.schedule).ok().and_then(|c| c.next()).map(|z| z.timestamp().to_string())
        } else {
            None
        };
        backups.push(BackupPlan {
            id: p.id,
            name: p.name,
            repository: p.repository,
            schedule: p.schedule,
            schedule_hint: p.schedule_hint,
            retention: p.retention,
            keep: p.keep,
            enabled: p.enabled,
            instances,
            webhook_url: p.webhook_url,
            webhook_when: p.webhook_when,
            next_run,
            drill_schedule: p.drill_schedule,
        });
    }
    let mut unconfigured = Vec::new();
    let mut modules: Vec<&String> = placed.keys().collect();
    modules.sort();
    for m in modules {
        if configured.contains(m) {
            continue;
        }
        let agent = AgentId::module(m).map_err(|e| ActionError::failed(e.to_string()))?;
        let flags: Vec<String> = ctx.redis.smembers(keys::module_flags(&agent)).await.unwrap_or_default();
        if flags.iter().any(|f| f == "no_data_backup") {
            continue;
        }
        let ui_name: Option<String> = ctx.redis.get(keys::ui_name(&agent)).await?;
        unconfigured.push(UnconfiguredInstance { id: m.clone(), ui_name: ui_name.unwrap_or_default() });
    }
    Ok(BackupPlans { backups, unconfigured_instances: unconfigured })
}
