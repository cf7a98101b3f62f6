//! Installing, updating and removing modules (`add-module`, `update-module`,
//! `remove-module`): the cluster's half, which drives the node's and the module's
//! through sub-tasks (NS8 reference 10.2, 10.5 and 10.6).
//!
//! Beyond NS8, an install either completes or leaves nothing: every step that changed
//! something registers its undo, and a failure runs them in reverse before the task
//! ends with the cause; an install or update cut short by a crash of this agent is
//! journaled, and undone or rolled back at its next start.
//!
//! The order is NS8's: the image is checked before any node is touched; the node makes
//! the user and starts the agent, which connects once the cluster has created its
//! Redis user from the hash the node returned.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use bus::fred::types::{ClusterHash, CustomCommand};
use bus::{RedisConfig, TaskClient};
use protocol::task::Task;
use protocol::{AgentId, keys};
use serde_json::{Value, json};

use crate::image::{self, Consent, Requirements};

/// How long the new agent has to connect before the install gives up.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(60);

pub const MODULE_UUID: &str = "cluster/module_uuid";
/// Installs in progress: module id -> `{"node": "node/N", "task": id}`. An entry
/// outlives an install only when the cluster agent died during it; the next start
/// undoes it.
pub const INSTALLING: &str = "cluster/installing";
/// Updates in progress: module id -> `{"node": "node/N", "task": id}`; one left by a
/// crash is rolled back at the next start (the node still holds its snapshot).
pub const UPDATING: &str = "cluster/updating";

pub fn add_schema() -> Value {
    json!({
        "type": "object",
        "required": ["image", "node"],
        "properties": {
            "image": {"type": "string", "minLength": 1, "maxLength": 512},
            "node": {"type": "integer", "minimum": 1},
            "module_uuid": {"type": "string", "format": "uuid"},
            "accept": accept_schema()
        }
    })
}

/// What the administrator accepts of an image's requests (`list-modules` shows them as
/// each version's `consent`): `selector:role` grants on other agents, rootful mode.
fn accept_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "authorizations": {"type": "array", "items": {"type": "string", "minLength": 3, "maxLength": 128}},
            "rootfull": {"type": "boolean"}
        }
    })
}

/// Refuse, before anything changes, an image whose requests go beyond what was
/// accepted (`before`: what the module already has, for an update). The refusal
/// carries what it would have granted, for the portal to show.
fn check_consent(url: &str, req: &Requirements, before: &Consent, data: &Value) -> Result<(), ActionError> {
    let accepted: Consent = serde_json::from_value(data["accept"].clone()).unwrap_or_default();
    let missing = req.consent().beyond(before).beyond(&accepted);
    if missing.is_empty() {
        return Ok(());
    }
    tracing::warn!("{url} refused: it asks for {}, which \"accept\" does not list", missing.describe());
    Err(ActionError::invalid("accept", json!(missing), "consent_required"))
}

/// The installed modules as `(id, node, image name)`, for authorization selectors.
async fn installed_modules(redis: &Client) -> Result<Vec<(String, u32, String)>, bus::fred::error::Error> {
    let nodes: std::collections::HashMap<String, String> = redis.hgetall(keys::MODULE_NODE).await?;
    let mut installed = Vec::new();
    for (id, n) in nodes {
        let Ok(agent) = AgentId::module(&id) else { continue };
        let url: Option<String> = redis.hget(keys::environment(&agent), "IMAGE_URL").await?;
        let name = url.and_then(|u| protocol::image::parse_reference(&u).ok()).map(|(name, _)| name);
        installed.push((id, n.parse().unwrap_or(0), name.unwrap_or_default()));
    }
    Ok(installed)
}

/// Every role an authorization asks for must exist on the agents it names now (a
/// target installed later is checked by nobody: its roles are its own).
async fn check_roles(redis: &Client, node: u32, req: &Requirements) -> Result<(), ActionError> {
    let installed = installed_modules(redis).await?;
    // Not yet installed, so no instance is it.
    let me = AgentId::Module(String::new());
    for (selector, roles) in req.authorizations.iter().filter(|(s, _)| s != "self") {
        for target in selector_targets(selector, &me, node, &installed) {
            for role in roles {
                let defined: bool = redis.exists(keys::role(&target, role)).await?;
                if !defined {
                    return Err(failed(format!(
                        "label org.nethserver.authorizations asks for the role {role} on {target} ({selector}:{role}), \
                         which {target} does not define"
                    )));
                }
            }
        }
    }
    Ok(())
}

pub fn remove_schema() -> Value {
    json!({
        "type": "object",
        "required": ["module_id"],
        "properties": {
            "module_id": {"type": "string", "minLength": 1},
            "preserve_data": {"type": "boolean"},
            "force": {"type": "boolean"}
        }
    })
}

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}

/// How long a sub-task's agent may go without a live Redis connection before the
/// wait for it ends (a restart takes seconds; its queue keeps the task meanwhile).
const SUBTASK_AGENT_GONE: Duration = Duration::from_secs(30);

/// Asks `agent` to cancel the sub-task if the wait for it is dropped (its parent task
/// was cancelled) before it ended.
struct CancelOnDrop {
    redis: Client,
    agent: AgentId,
    task: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut cancel = Task::new("cancel-task", json!({"task": self.task}));
        cancel.id = uuid::Uuid::new_v4().to_string();
        cancel.queue = keys::tasks(&self.agent);
        let (redis, queue) = (self.redis.clone(), keys::tasks(&self.agent));
        let json = serde_json::to_string(&cancel).expect("a Task always serializes");
        tokio::spawn(async move {
            let _: Result<i64, _> = redis.lpush(queue, json).await;
        });
    }
}

/// Run `action` on `agent` as a sub-task of the running task and return its output,
/// or its error as text. The wait is bounded: it ends when the agent has no live
/// connection for [`SUBTASK_AGENT_GONE`] (a task still queued is taken back first, so
/// it never runs late); and cancellable: dropping it asks the agent to cancel.
pub async fn subtask(
    tc: &TaskClient,
    ctx: &ActionContext,
    agent: &AgentId,
    action: &str,
    data: Value,
) -> Result<Value, String> {
    let mut task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        action: action.to_owned(),
        data,
        extra: json!({}),
        parent: ctx.task_id.clone(),
        queue: String::new(),
        user: ctx.agent.to_string(),
        timestamp: None,
    };
    let mut guard = CancelOnDrop { redis: ctx.redis.clone(), agent: agent.clone(), task: task.id.clone(), armed: true };
    let pushed = task.clone();
    let watchdog = async {
        let mut gone_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if bus::agent_is_alive(&ctx.redis, agent, 8).await.unwrap_or(true) {
                gone_since = None;
                continue;
            }
            let since = *gone_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SUBTASK_AGENT_GONE {
                return since;
            }
        }
    };
    let r = tokio::select! {
        r = tc.run(agent, &mut task, |_| {}) => r.map_err(|e| format!("{agent}/{action}: {e}"))?,
        since = watchdog => {
            guard.armed = false;
            // Still queued: take it back, so that it does not run after this failure.
            let json = serde_json::to_string(&pushed).expect("a Task always serializes, as TaskClient::push did");
            let withdrawn: i64 = ctx.redis.lrem(keys::tasks(agent), 1, json).await.unwrap_or(0);
            let fate = if withdrawn == 1 { "it was taken back from its queue, never run" } else { "it may still end later" };
            return Err(format!(
                "{agent} has not been running for {} s while {action} (task {}) waited for it: {fate}",
                since.elapsed().as_secs(),
                pushed.id
            ));
        }
    };
    guard.armed = false;
    if r.exit_code == 0 {
        return Ok(r.output);
    }
    // A step's stderr is its whole log; the last line is the cause, as a rule.
    let lines: Vec<&str> = r.error.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let why = match lines.last() {
        Some(last) if lines.len() > 1 => format!("{last} (whole log: {})", keys::task_error(agent, &task.id)),
        Some(last) => (*last).to_owned(),
        None => r.output.to_string(),
    };
    Err(format!("{agent}/{action} failed (exit code {}): {why}", r.exit_code))
}

/// `<NAME>_IMAGE` for a service image, as NS8 names it.
pub fn image_variable(image: &str) -> String {
    let name = protocol::image::parse_reference(image).map(|(n, _)| n).unwrap_or_default();
    let mut v: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if v.starts_with(|c: char| c.is_ascii_digit()) {
        v.insert(0, 'I');
    }
    v + "_IMAGE"
}

/// The ports variables NS8 sets for an allocated range.
fn port_variables(proto: &str, start: u64, end: u64) -> Vec<(String, String)> {
    let p = proto.to_ascii_uppercase();
    let mut v = vec![(format!("{p}_PORT"), start.to_string())];
    if end > start {
        v.push((format!("{p}_PORTS_RANGE"), format!("{start}-{end}")));
    }
    if end - start < 8 {
        v.push((format!("{p}_PORTS"), (start..=end).map(|x| x.to_string()).collect::<Vec<_>>().join(",")));
    }
    v
}

/// What an interrupted install must undo, in reverse order.
enum Undo {
    Ports { node: AgentId, protocol: &'static str },
    Node { node: AgentId },
    Keys,
}

struct Install<'a> {
    ctx: &'a ActionContext,
    tc: &'a TaskClient,
    id: String,
    agent: AgentId,
    undo: Vec<Undo>,
}

impl Install<'_> {
    async fn rollback(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        while let Some(step) = self.undo.pop() {
            let r = match step {
                Undo::Ports { node, protocol } => {
                    let data = json!({"module_id": self.id, "protocol": protocol});
                    subtask(self.tc, self.ctx, &node, "deallocate-ports", data).await.map(|_| ())
                }
                Undo::Node { node } => {
                    subtask(self.tc, self.ctx, &node, "remove-module", json!({"module_id": self.id})).await.map(|_| ())
                }
                Undo::Keys => forget(&self.ctx.redis, &self.agent, &self.id).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = r {
                problems.push(e);
            }
        }
        problems
    }
}

/// The agents an `org.nethserver.authorizations` selector names, for a module being
/// installed on `node` (NS8 reference 8): `cluster`, `node` (its node), `self`,
/// `<image>@node` (instances of that image on its node), `<image>@cluster` or
/// `<image>` (every instance of that image). `installed` is (id, node, image name).
pub fn selector_targets(selector: &str, me: &AgentId, node: u32, installed: &[(String, u32, String)]) -> Vec<AgentId> {
    match selector {
        "cluster" => vec![AgentId::Cluster],
        "node" => vec![AgentId::Node(node)],
        "self" => vec![me.clone()],
        _ => {
            let (image, scope) = selector.split_once('@').unwrap_or((selector, "cluster"));
            installed
                .iter()
                .filter(|(_, n, name)| name == image && (scope != "node" || *n == node))
                .filter_map(|(id, _, _)| AgentId::module(id).ok())
                .filter(|a| a != me)
                .collect()
        }
    }
}

/// Grant the module the roles its label asks for on the agents its selectors name;
/// the grants made, as `role@agent`.
async fn apply_authorizations(
    redis: &Client,
    me: &AgentId,
    node: u32,
    authorizations: &[(String, Vec<String>)],
) -> Result<Vec<String>, bus::fred::error::Error> {
    if authorizations.is_empty() {
        return Ok(Vec::new());
    }
    let installed = installed_modules(redis).await?;
    let mut made = Vec::new();
    for (selector, roles) in authorizations {
        for target in selector_targets(selector, me, node, &installed) {
            for role in roles {
                bus::grants::set_grant(redis, &me.to_string(), &target, role, true).await?;
                made.push(format!("{role}@{target}"));
            }
        }
        // What was granted, as NS8 keeps it (reference 2.4); an update asks consent only
        // for what is not here.
        let entries: Vec<String> = roles.iter().map(|r| format!("{selector}:{r}")).collect();
        let _: i64 = redis.sadd(keys::module_authorizations(me), entries).await?;
    }
    Ok(made)
}

/// Take module `id` for `operation` (`install`, `update`, `removal`): one operation
/// per module at a time. A second caller is refused with the task holding it.
async fn lock(ctx: &ActionContext, id: &str, operation: &str) -> Result<(), ActionError> {
    let entry = json!({"task": ctx.task_id, "operation": operation}).to_string();
    let taken: bool = ctx.redis.hsetnx(keys::MODULE_LOCKS, id, entry).await?;
    if taken {
        return Ok(());
    }
    let holder: Option<String> = ctx.redis.hget(keys::MODULE_LOCKS, id).await?;
    let holder: Value = holder.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default();
    Err(failed(format!(
        "module {id} is busy with task {} (its {}): try again when it has ended",
        holder["task"].as_str().unwrap_or("?"),
        holder["operation"].as_str().unwrap_or("operation")
    )))
}

/// Give module `id` back, if this task holds it.
async fn unlock(ctx: &ActionContext, id: &str) {
    let holder: Result<Option<String>, _> = ctx.redis.hget(keys::MODULE_LOCKS, id).await;
    let mine = holder
        .ok()
        .flatten()
        .and_then(|h| serde_json::from_str::<Value>(&h).ok())
        .is_some_and(|h| h["task"] == ctx.task_id.as_str());
    if mine {
        let _: Result<i64, _> = ctx.redis.hdel(keys::MODULE_LOCKS, id).await;
    }
}

/// Record in `journal` ([`INSTALLING`] or [`UPDATING`]) that work on module `id` has
/// begun on `node`; [`recover`] finishes it if this agent dies before the entry goes.
async fn journal(ctx: &ActionContext, journal: &str, id: &str, node: &AgentId) -> Result<(), bus::fred::error::Error> {
    let entry = json!({"node": node.to_string(), "task": ctx.task_id}).to_string();
    ctx.redis.hset(journal, (id, entry)).await
}

/// At start: undo the installs and roll back the updates that a crash of this agent
/// cut short (their tasks were just closed as aborted), as their own failure would
/// have. Work on a node that is not running stays journaled, for a later start.
pub async fn recover(ctx: ActionContext, redis_cfg: RedisConfig) {
    let mut pending = Vec::new();
    for key in [INSTALLING, UPDATING] {
        let entries: std::collections::HashMap<String, String> = match ctx.redis.hgetall(key).await {
            Ok(e) => e,
            Err(e) => return tracing::error!("cannot read {key}: {e}"),
        };
        for (id, entry) in entries {
            let node = serde_json::from_str::<Value>(&entry)
                .ok()
                .and_then(|j| j["node"].as_str().and_then(|n| n.parse::<AgentId>().ok()));
            match (node, AgentId::module(&id)) {
                (Some(node), Ok(agent)) => pending.push((key, id, agent, node)),
                _ => tracing::error!("{key}: entry {id:?} = {entry:?} names no module and node: left alone"),
            }
        }
    }
    // Every lock was held by a task of the previous run, now closed; the work a crash
    // cut short holds its module until it is finished, here or at a later start.
    let _: Result<i64, _> = ctx.redis.del(keys::MODULE_LOCKS).await;
    for (key, id, _, _) in &pending {
        let entry: Option<String> = ctx.redis.hget(*key, id.as_str()).await.ok().flatten();
        let task = entry.and_then(|e| serde_json::from_str::<Value>(&e).ok()).map(|e| e["task"].clone());
        let held = json!({"task": task, "operation": "recovery after a restart"}).to_string();
        let _: Result<i64, _> = ctx.redis.hset(keys::MODULE_LOCKS, (id.as_str(), held)).await;
    }
    if pending.is_empty() {
        return;
    }
    let Ok(tc) = TaskClient::connect(&redis_cfg, &ctx.agent.to_string()).await else {
        return tracing::error!("cannot connect to finish the work a restart cut short");
    };
    for (key, id, agent, node) in pending {
        if !bus::agent_is_alive(&ctx.redis, &node, 30).await.unwrap_or(false) {
            tracing::warn!("{key}: {id} was cut short by a restart; {node} is not running: finished at a later start");
            continue;
        }
        let finished = if key == INSTALLING {
            let undo = vec![
                Undo::Keys,
                Undo::Ports { node: node.clone(), protocol: "tcp" },
                Undo::Ports { node: node.clone(), protocol: "udp" },
                Undo::Node { node },
            ];
            let mut inst = Install { ctx: &ctx, tc: &tc, id: id.clone(), agent, undo };
            let problems = inst.rollback().await;
            if problems.is_empty() { Ok("undone, nothing of it is left") } else { Err(problems.join("; ")) }
        } else {
            match subtask(&tc, &ctx, &node, "finish-update", json!({"module_id": id, "outcome": "rollback"})).await {
                Ok(out) => copy_environment(&ctx.redis, &agent, &out["environment"])
                    .await
                    .map(|_| "rolled back to its previous version")
                    .map_err(|e| e.to_string()),
                // No snapshot: the crash came before the node took one, or after the commit.
                Err(e) if e.contains("module_id_no_update_in_progress") => Ok("nothing to roll back"),
                Err(e) => Err(e),
            }
        };
        match finished {
            Ok(what) => {
                let _: Result<i64, _> = ctx.redis.hdel(key, &id).await;
                let _: Result<i64, _> = ctx.redis.hdel(keys::MODULE_LOCKS, &id).await;
                tracing::warn!("{key}: {id} was cut short by a restart of this agent: {what}");
            }
            Err(e) => {
                tracing::error!("{key}: {id} was cut short by a restart of this agent, and finishing it failed: {e}")
            }
        }
    }
    tc.quit().await;
}

/// `ACL SAVE`: Redis users made at runtime survive a restart only in the ACL file.
/// A Redis without one (a test's) is told about in the log, not refused.
pub async fn save_acls(redis: &Client) -> Result<(), bus::fred::error::Error> {
    let saved: Result<String, _> =
        redis.custom(CustomCommand::new_static("ACL", ClusterHash::FirstKey, false), vec!["SAVE"]).await;
    match saved {
        Err(e) if e.details().contains("not configured to use an ACL file") => {
            tracing::warn!("Redis has no aclfile: module users will not survive a Redis restart");
            Ok(())
        }
        r => r.map(|_| ()),
    }
}

/// Every trace of module `id` in Redis: its keys, task results, grants, ACL user,
/// cluster records.
pub async fn forget(redis: &Client, agent: &AgentId, id: &str) -> Result<(), bus::fred::error::Error> {
    for pattern in [format!("{agent}/*"), format!("task/{agent}/*")] {
        let found = bus::scan(redis, &pattern, None).await?;
        for chunk in found.chunks(500) {
            let _: i64 = redis.del(chunk.to_vec()).await?;
        }
    }
    for key in [keys::MODULE_NODE, MODULE_UUID, keys::ports_demand("tcp").as_str(), keys::ports_demand("udp").as_str()]
    {
        let _: i64 = redis.hdel(key, id).await?;
    }
    let _: i64 = redis.del(keys::module_authorizations(agent)).await?;
    bus::grants::forget_agent(redis, agent).await?;
    // Deleting a user that does not exist answers 0, not an error.
    let _: i64 = redis
        .custom(
            CustomCommand::new_static("ACL", ClusterHash::FirstKey, false),
            vec!["DELUSER".to_owned(), agent.to_string()],
        )
        .await?;
    save_acls(redis).await
}

async fn node_of(redis: &Client, id: &str) -> Result<Option<u32>, ActionError> {
    let node: Option<String> = redis.hget(keys::MODULE_NODE, id).await?;
    Ok(node.and_then(|n| n.parse().ok()))
}

/// Resolve `image`: a URL when it holds a `/`, else the newest version of the module
/// of that name in the enabled repositories.
async fn resolve(ctx: &ActionContext, image: &str) -> Result<String, ActionError> {
    if image.contains('/') {
        protocol::image::parse_reference(image).map_err(|e| ActionError::invalid("image", json!(image), &e))?;
        return Ok(image.to_owned());
    }
    let modules = crate::repository::list_modules(ctx.clone(), Value::Null).await?;
    let found = modules.as_array().into_iter().flatten().find(|m| m["id"] == image || m["name"] == image);
    let Some(m) = found else {
        return Err(ActionError::invalid("image", json!(image), "not_in_repositories"));
    };
    let (Some(source), Some(tag)) = (m["source"].as_str(), m["versions"][0]["tag"].as_str()) else {
        return Err(failed(format!("module {image} has no installable version in the repositories")));
    };
    Ok(format!("{source}:{tag}"))
}

pub async fn add(ctx: ActionContext, data: Value, redis_cfg: RedisConfig) -> Result<Value, ActionError> {
    let node_id = data["node"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    let node = AgentId::Node(node_id);
    let url = resolve(&ctx, data["image"].as_str().unwrap_or_default()).await?;
    let tc = TaskClient::connect(&redis_cfg, &ctx.agent.to_string()).await.map_err(failed)?;
    if !bus::agent_is_alive(&ctx.redis, &node, 30).await.map_err(failed)? {
        return Err(ActionError::invalid("node", data["node"].clone(), "not_alive"));
    }
    // 1. The image and its labels, before anything changes anywhere.
    let u = url.clone();
    let img = tokio::task::spawn_blocking(move || image::inspect(&u)).await.map_err(failed)?.map_err(failed)?;
    let req: Requirements = image::requirements(&img.labels).map_err(failed)?;
    // Labels are requests: what goes beyond the module's own agent needs consent.
    check_consent(&url, &req, &Consent::default(), &data)?;
    if !req.never_granted.is_empty() {
        tracing::warn!("{url} asks for {}: never granted to a module", req.never_granted.join(", "));
    }
    check_roles(&ctx.redis, node_id, &req).await?;
    ctx.set_progress(10);

    // 2. The instance id; sequences only grow, so an id is never reused.
    let seq: u64 = ctx.redis.incr(keys::module_sequence(&img.name)).await?;
    let id = format!("{}{seq}", img.name);
    protocol::validate_module_id(&id).map_err(|e| failed(format!("image name {:?}: {e}", img.name)))?;
    let agent = AgentId::module(&id).map_err(failed)?;
    let uuid = data["module_uuid"].as_str().map(str::to_owned).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    lock(&ctx, &id, "install").await?;
    journal(&ctx, INSTALLING, &id, &node).await?;
    let mut inst = Install { ctx: &ctx, tc: &tc, id: id.clone(), agent: agent.clone(), undo: vec![Undo::Keys] };
    let outcome = install(&mut inst, &node, node_id, &img, &req, &uuid).await;
    let result = match outcome {
        Ok(v) => {
            unlock(&ctx, &id).await;
            Ok(v)
        }
        Err(e) => {
            let problems = inst.rollback().await;
            if problems.is_empty() {
                let _: Result<i64, _> = ctx.redis.hdel(INSTALLING, &id).await;
                unlock(&ctx, &id).await;
            }
            let tail = if problems.is_empty() {
                "; nothing of it was left behind".to_owned()
            } else {
                format!("; the cleanup also failed: {}", problems.join("; "))
            };
            Err(failed(format!("cannot install {id} from {url}: {e}{tail}")))
        }
    };
    tc.quit().await;
    result
}

async fn install(
    inst: &mut Install<'_>,
    node: &AgentId,
    node_id: u32,
    img: &image::ModuleImage,
    req: &Requirements,
    uuid: &str,
) -> Result<Value, String> {
    let ctx = inst.ctx;
    let (id, agent) = (inst.id.clone(), inst.agent.clone());
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("MODULE_ID".into(), id.clone());
    env.insert("MODULE_UUID".into(), uuid.to_owned());
    env.insert("NODE_ID".into(), node_id.to_string());
    env.insert("IMAGE_URL".into(), img.url.clone());
    env.insert("IMAGE_DIGEST".into(), img.digest.clone());
    // NS8's spelling, kept for scripts that read it.
    env.insert(
        "IMAGE_REOPODIGEST".into(),
        format!("{}@{}", img.url.rsplit_once(':').map_or(&*img.url, |x| x.0), img.digest),
    );
    for i in &req.images {
        env.insert(image_variable(i), i.clone());
    }

    // 3. Ports, each protocol in one allocation on the node.
    for (proto, demand) in [("tcp", req.tcp_ports), ("udp", req.udp_ports)] {
        if demand == 0 {
            continue;
        }
        let _: i64 = ctx
            .redis
            .hset(keys::ports_demand(proto), (id.as_str(), demand.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        inst.undo.push(Undo::Ports { node: node.clone(), protocol: proto });
        let data = json!({"module_id": id, "ports": demand, "protocol": proto});
        let range = subtask(inst.tc, ctx, node, "allocate-ports", data).await?;
        let (Some(start), Some(end)) = (range[0].as_u64(), range[1].as_u64()) else {
            return Err(format!("allocate-ports answered {range}, not [start, end]"));
        };
        env.extend(port_variables(proto, start, end));
    }
    ctx.set_progress(20);

    // 4. The node: user, files, credentials, agent.
    inst.undo.push(Undo::Node { node: node.clone() });
    let data = json!({"module_id": id, "image_url": img.url, "is_rootfull": req.rootfull, "environment": env});
    let out = subtask(inst.tc, ctx, node, "add-module", data).await?;
    let Some(hash) = out["redis_sha256"].as_str().filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
    else {
        return Err(format!("{node}/add-module answered no redis_sha256: {out}"));
    };
    ctx.set_progress(60);

    // 5. Its Redis user, records and grants.
    let mut args = vec!["SETUSER".to_owned(), agent.to_string()];
    args.extend(protocol::acl::agent_rules(&agent, &format!("#{hash}")));
    let _: String = ctx
        .redis
        .custom(CustomCommand::new_static("ACL", ClusterHash::FirstKey, false), args)
        .await
        .map_err(|e| e.to_string())?;
    save_acls(&ctx.redis).await.map_err(|e| format!("cannot save the ACL file: {e}"))?;
    let _: i64 =
        ctx.redis.hset(keys::MODULE_NODE, (id.as_str(), node_id.to_string())).await.map_err(|e| e.to_string())?;
    let _: i64 = ctx.redis.hset(MODULE_UUID, (id.as_str(), uuid)).await.map_err(|e| e.to_string())?;
    let mut flags: Vec<String> = req.flags.clone();
    flags.push(if req.rootfull { "rootfull" } else { "rootless" }.into());
    let _: i64 = ctx.redis.sadd(format!("{agent}/flags"), flags).await.map_err(|e| e.to_string())?;
    bus::grants::extend_role(&ctx.redis, &AgentId::Cluster, &agent, "owner").await.map_err(|e| e.to_string())?;
    let granted =
        apply_authorizations(&ctx.redis, &agent, node_id, &req.authorizations).await.map_err(|e| e.to_string())?;
    if !granted.is_empty() {
        tracing::info!("{agent} granted {}", granted.join(", "));
    }

    // 6. The agent connects; then the module's own create-module.
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    while !bus::agent_is_alive(&ctx.redis, &agent, 30).await.map_err(|e| e.to_string())? {
        if Instant::now() > deadline {
            return Err(format!(
                "the agent of {id} did not connect within {} s; see its log",
                AGENT_START_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctx.set_progress(70);
    // NS8 modules inherit a base create-module; here a module without one needs none.
    let actions = subtask(inst.tc, ctx, &agent, "list-actions", json!(null)).await?;
    if actions.as_array().is_some_and(|a| a.iter().any(|x| x == "create-module")) {
        subtask(inst.tc, ctx, &agent, "create-module", json!({"images": req.images})).await?;
    }
    ctx.set_progress(95);

    // The commit point: from here a restart keeps the module.
    let _: i64 = ctx.redis.hdel(INSTALLING, &id).await.map_err(|e| e.to_string())?;
    let event = json!({"module": id, "node": node_id}).to_string();
    let _: i64 = ctx
        .redis
        .publish(keys::event_channel(&AgentId::Cluster, "module-added"), event)
        .await
        .map_err(|e| e.to_string())?;
    inst.undo.clear();
    Ok(json!({
        "module_id": id, "module_uuid": uuid, "image_name": img.name, "image_url": img.url,
        "not_granted": req.never_granted,
    }))
}

/// `remove-module`: the module's `destroy-module` (if it has one), the node's removal,
/// then every Redis trace. With `force`, a failing `destroy-module` or an unreachable
/// node does not stop the removal.
pub async fn remove(ctx: ActionContext, data: Value, redis_cfg: RedisConfig) -> Result<Value, ActionError> {
    let id = data["module_id"].as_str().unwrap_or_default().to_owned();
    let agent = AgentId::module(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    let force = data["force"].as_bool().unwrap_or(false);
    let Some(node_id) = node_of(&ctx.redis, &id).await? else {
        return Err(ActionError::invalid("module_id", json!(id), "not_installed"));
    };
    let node = AgentId::Node(node_id);
    lock(&ctx, &id, "removal").await?;
    let tc = match TaskClient::connect(&redis_cfg, &ctx.agent.to_string()).await {
        Ok(tc) => tc,
        Err(e) => {
            unlock(&ctx, &id).await;
            return Err(failed(e));
        }
    };
    let result = async {
        // Checked first: a removal that cannot reach the node must not begin.
        let node_alive = bus::agent_is_alive(&ctx.redis, &node, 30).await.map_err(failed)?;
        if !node_alive && !force {
            return Err(failed(format!(
                "{node} is not running: {id} was not touched (force removes it from the cluster anyway)"
            )));
        }
        if bus::agent_is_alive(&ctx.redis, &agent, 30).await.map_err(failed)? {
            let actions = subtask(&tc, &ctx, &agent, "list-actions", json!(null)).await.map_err(failed)?;
            let has_destroy = actions.as_array().is_some_and(|a| a.iter().any(|x| x == "destroy-module"));
            if has_destroy && let Err(e) = subtask(&tc, &ctx, &agent, "destroy-module", json!({})).await {
                if !force {
                    return Err(failed(format!("{e} (force removes it anyway)")));
                }
                tracing::warn!("removing {id} anyway: {e}");
            }
        }
        ctx.set_progress(30);
        let data = json!({"module_id": id, "preserve_data": data["preserve_data"].as_bool().unwrap_or(false)});
        let removed = if node_alive {
            subtask(&tc, &ctx, &node, "remove-module", data).await
        } else {
            Err(format!("{node} is not running"))
        };
        let out = match removed {
            Ok(out) => out,
            Err(e) if force => {
                tracing::warn!("removing {id} from Redis anyway: {e}");
                json!({"preserved": null})
            }
            Err(e) => return Err(failed(e)),
        };
        ctx.set_progress(70);
        for proto in ["tcp", "udp"] {
            let data = json!({"module_id": id, "protocol": proto});
            if !node_alive {
                // The node's port table is in Redis: release them here.
                let _: i64 = ctx.redis.hdel(keys::node_ports(node_id, proto), &id).await?;
            } else if let Err(e) = subtask(&tc, &ctx, &node, "deallocate-ports", data).await {
                tracing::warn!("{e}");
            }
        }
        forget(&ctx.redis, &agent, &id).await?;
        let event = json!({"module": id, "node": node_id}).to_string();
        let _: i64 = ctx.redis.publish(keys::event_channel(&AgentId::Cluster, "module-removed"), event).await?;
        Ok(json!({"module_id": id, "preserved": out["preserved"]}))
    }
    .await;
    tc.quit().await;
    unlock(&ctx, &id).await;
    result
}

pub fn update_schema() -> Value {
    json!({
        "type": "object",
        "required": ["module_url", "instances"],
        "properties": {
            "module_url": {"type": "string", "minLength": 1, "maxLength": 512},
            "instances": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            "accept": accept_schema()
        }
    })
}

/// `update-module`: each instance in turn moves to the new image. Beyond NS8, an
/// instance whose update fails anywhere (its own update steps included) is rolled back
/// by the node to the snapshot taken before, and runs its previous version again; the
/// task then fails, saying so.
pub async fn update(ctx: ActionContext, data: Value, redis_cfg: RedisConfig) -> Result<Value, ActionError> {
    let url = resolve(&ctx, data["module_url"].as_str().unwrap_or_default()).await?;
    let u = url.clone();
    let img = tokio::task::spawn_blocking(move || image::inspect(&u)).await.map_err(failed)?.map_err(failed)?;
    let req = image::requirements(&img.labels).map_err(failed)?;
    let mut targets = Vec::new();
    for id in data["instances"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let agent = AgentId::module(id).map_err(|e| ActionError::invalid("instances", json!(id), &e.to_string()))?;
        let Some(node) = node_of(&ctx.redis, id).await? else {
            return Err(ActionError::invalid("instances", json!(id), "not_installed"));
        };
        // As NS8: every instance must answer before any is touched (a sub-task to a
        // dead agent would wait for ever).
        for a in [&agent, &AgentId::Node(node)] {
            if !bus::agent_is_alive(&ctx.redis, a, 30).await.map_err(failed)? {
                return Err(failed(format!("{a} is not running: no instance was updated")));
            }
        }
        let rootfull: bool = ctx.redis.sismember(format!("{agent}/flags"), "rootfull").await?;
        if rootfull != req.rootfull {
            return Err(failed(format!(
                "{url} is {}, but {id} is not: an update cannot change that",
                if req.rootfull { "rootful" } else { "rootless" }
            )));
        }
        // Only what the module was not granted before needs consent now.
        let granted: Vec<String> = ctx.redis.smembers(keys::module_authorizations(&agent)).await?;
        check_consent(&url, &req, &Consent { authorizations: granted, rootfull }, &data)?;
        check_roles(&ctx.redis, node, &req).await?;
        targets.push((id.to_owned(), agent, AgentId::Node(node)));
    }
    // Every instance is taken before any is touched.
    for (i, (id, _, _)) in targets.iter().enumerate() {
        if let Err(e) = lock(&ctx, id, "update").await {
            for (taken, _, _) in &targets[..i] {
                unlock(&ctx, taken).await;
            }
            return Err(e);
        }
    }
    let tc = match TaskClient::connect(&redis_cfg, &ctx.agent.to_string()).await {
        Ok(tc) => tc,
        Err(e) => {
            for (id, _, _) in &targets {
                unlock(&ctx, id).await;
            }
            return Err(failed(e));
        }
    };
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for (i, (id, agent, node)) in targets.iter().enumerate() {
        match update_one(&ctx, &tc, id, agent, node, &img, &req).await {
            Ok(v) => done.push(v),
            Err(e) => errors.push(e),
        }
        ctx.set_progress((((i + 1) * 100) / targets.len()).min(99) as u8);
    }
    tc.quit().await;
    // An update whose rollback failed stays journaled for the next start to settle; the
    // node's own lock still guards the module meanwhile, and a later update takes the
    // journal entry over.
    for (id, _, _) in &targets {
        unlock(&ctx, id).await;
    }
    if errors.is_empty() { Ok(json!({"image_url": url, "instances": done})) } else { Err(failed(errors.join("; "))) }
}

/// The module's environment as the node left it, for readers of Redis.
async fn copy_environment(redis: &Client, agent: &AgentId, environment: &Value) -> Result<(), bus::fred::error::Error> {
    let Some(map) = environment.as_object().filter(|m| !m.is_empty()) else { return Ok(()) };
    let pairs: Vec<(String, String)> =
        map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect();
    let key = keys::environment(agent);
    let tx = redis.multi();
    let _: () = tx.del(&key).await?;
    let _: () = tx.hset(&key, pairs).await?;
    tx.exec(true).await
}

async fn update_one(
    ctx: &ActionContext,
    tc: &TaskClient,
    id: &str,
    agent: &AgentId,
    node: &AgentId,
    img: &image::ModuleImage,
    req: &Requirements,
) -> Result<Value, String> {
    let previous: Option<String> =
        ctx.redis.hget(keys::environment(agent), "IMAGE_URL").await.map_err(|e| e.to_string())?;
    let previous = previous.unwrap_or_default();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("IMAGE_URL".into(), img.url.clone());
    env.insert(
        "IMAGE_REOPODIGEST".into(),
        format!("{}@{}", img.url.rsplit_once(':').map_or(&*img.url, |x| x.0), img.digest),
    );
    for i in &req.images {
        env.insert(image_variable(i), i.clone());
    }
    for (proto, demand) in [("tcp", req.tcp_ports), ("udp", req.udp_ports)] {
        let _: i64 =
            ctx.redis.hset(keys::ports_demand(proto), (id, demand.to_string())).await.map_err(|e| e.to_string())?;
    }
    journal(ctx, UPDATING, id, node).await.map_err(|e| e.to_string())?;
    let data = json!({"module_id": id, "image_url": img.url, "environment": env});
    if let Err(e) = subtask(tc, ctx, node, "update-module", data).await {
        // The node put back what it had changed.
        let _: Result<i64, _> = ctx.redis.hdel(UPDATING, id).await;
        return Err(format!("cannot update {id} to {}: {e}", img.url));
    }
    // The module's own steps, from the new image.
    let steps = async {
        let actions = subtask(tc, ctx, agent, "list-actions", json!(null)).await?;
        if actions.as_array().is_some_and(|a| a.iter().any(|x| x == "update-module")) {
            subtask(tc, ctx, agent, "update-module", json!({"module_url": img.url})).await?;
        }
        Ok::<(), String>(())
    }
    .await;
    let outcome = if steps.is_ok() { "commit" } else { "rollback" };
    let finished = subtask(tc, ctx, node, "finish-update", json!({"module_id": id, "outcome": outcome})).await;
    let (result, environment) = match (steps, finished) {
        (Ok(()), Ok(out)) => (
            Ok(json!({"module_id": id, "image_url": img.url, "previous_image_url": previous})),
            out["environment"].clone(),
        ),
        (Err(e), Ok(out)) => (
            Err(format!("the update of {id} to {} failed: {e}; rolled back to {previous}, which runs again", img.url)),
            out["environment"].clone(),
        ),
        (Ok(()), Err(e)) => (Err(format!("the update of {id} to {} failed: {e}", img.url)), Value::Null),
        (Err(e), Err(r)) => {
            (Err(format!("the update of {id} to {} failed: {e}; and the rollback failed: {r}", img.url)), Value::Null)
        }
    };
    if !environment.is_null() {
        // Finished either way; a failed rollback stays journaled, to be retried.
        let _: i64 = ctx.redis.hdel(UPDATING, id).await.map_err(|e| e.to_string())?;
    }
    copy_environment(&ctx.redis, agent, &environment).await.map_err(|e| e.to_string())?;
    if result.is_ok() {
        let node_id = match node {
            AgentId::Node(n) => *n,
            _ => 0,
        };
        // The new version's accepted requests.
        apply_authorizations(&ctx.redis, agent, node_id, &req.authorizations).await.map_err(|e| e.to_string())?;
        let event = json!({"module": id, "node": node_id, "image_url": img.url}).to_string();
        let _: i64 = ctx
            .redis
            .publish(keys::event_channel(&AgentId::Cluster, "module-updated"), event)
            .await
            .map_err(|e| e.to_string())?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_selectors() {
        let me = AgentId::module("mail1").unwrap();
        let installed = vec![
            ("traefik1".to_owned(), 1, "traefik".to_owned()),
            ("traefik2".to_owned(), 2, "traefik".to_owned()),
            ("mail1".to_owned(), 1, "mail".to_owned()),
        ];
        let t = |s: &str| selector_targets(s, &me, 1, &installed).iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(t("traefik@node"), ["module/traefik1"]);
        assert_eq!(t("traefik@cluster"), ["module/traefik1", "module/traefik2"]);
        assert_eq!(t("traefik"), t("traefik@cluster"));
        assert_eq!(t("node"), ["node/1"]);
        assert_eq!(t("cluster"), ["cluster"]);
        assert_eq!(t("self"), ["module/mail1"]);
        assert_eq!(t("mail@node"), Vec::<String>::new(), "never itself through its image name");
        assert_eq!(t("nothing"), Vec::<String>::new());
    }

    #[test]
    fn ns8_variable_names() {
        assert_eq!(image_variable("127.0.0.1:15000/ns8rs/hello-server:1.0.0"), "HELLO_SERVER_IMAGE");
        assert_eq!(image_variable("docker.io/library/3proxy.v2:1"), "I3PROXY_V2_IMAGE");
        assert_eq!(
            port_variables("tcp", 20000, 20000),
            [("TCP_PORT".into(), "20000".into()), ("TCP_PORTS".into(), "20000".into())]
        );
        let many = port_variables("udp", 20000, 20009);
        assert_eq!(many[1], ("UDP_PORTS_RANGE".into(), "20000-20009".into()));
        assert_eq!(many.len(), 2, "no list beyond 8 ports");
    }
}
