//! The agent's main loop: recover, pop, run, drain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::fred::prelude::*;
use protocol::keys;
use tokio::sync::{Semaphore, watch};

use crate::config::AgentConfig;
use crate::events;
use crate::native::NativeActions;
use crate::redis_ops;
use crate::runner::{Outcome, Shared, finish, run_task};
use crate::step::{Reaper, Spawner};
use crate::validate::SchemaCache;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen to SIGCHLD: {0}")]
    Signals(std::io::Error),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
}

/// How long a stopping agent waits for Redis to answer what it already sent.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Back-off between pops after a Redis error.
const POP_BACKOFF_MIN: Duration = Duration::from_millis(100);
const POP_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Run an agent until `shutdown` resolves, then stop taking tasks, let the running ones
/// finish, and return.
///
/// Tasks are taken with `BLMOVE <agent>/tasks -> task/<agent>/inflight` only when one of
/// the `max_concurrency` slots is free: a burst waits in the queue instead of being
/// rejected (NS8 rejects it with exit code 11). The result transaction removes the task
/// from the in-flight list, so whatever is left there at start-up was interrupted by a
/// crash: it is closed with exit code 12 (see [`Outcome::interrupted`]).
pub async fn run(
    cfg: AgentConfig,
    natives: NativeActions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|source| AgentError::StateDir { path: cfg.state_dir.display().to_string(), source })?;
    let name = cfg.agent_id.to_string();
    let redis = bus::connect_retrying(&cfg.redis, &name).await;
    if cfg.agent_id == protocol::AgentId::Cluster {
        // Every agent's task path calls these; only the cluster may load them.
        bus::retry("cannot load the Redis functions", || bus::functions::load(&redis)).await;
    }
    let pop = bus::connect_blocking_retrying(&cfg.redis, &name, cfg.poll_interval).await;
    let definitions = cfg.install_dir.join("validator-definitions.json");
    let reaper = Reaper::start().map_err(AgentError::Signals)?;
    let sh = Arc::new(Shared {
        reaper,
        spawner: Spawner::new(),
        base_env: std::env::vars_os().collect(),
        schemas: SchemaCache::new(definitions),
        calls: Arc::new(crate::native::Calls::new(cfg.redis.clone())),
        cfg,
        redis,
        natives,
        running: Mutex::new(HashMap::new()),
        held: Mutex::new(HashMap::new()),
    });

    define_builtin_roles(&sh).await;
    close_interrupted(&sh).await;
    if let Some(hook) = sh.natives.start_hook() {
        let ctx = crate::ActionContext {
            agent: sh.cfg.agent_id.clone(),
            task_id: "startup".to_owned(),
            user: sh.cfg.agent_id.to_string(),
            state_dir: sh.cfg.state_dir.clone(),
            redis: sh.redis.clone(),
            calls: sh.calls.clone(),
        };
        hook(ctx).await;
    }

    let (stop_events_tx, stop_events) = watch::channel(false);
    let events = events::start(sh.clone(), stop_events).await;

    let (stop_tx, mut stop) = watch::channel(false);
    let queue = keys::tasks(&sh.cfg.agent_id);
    let inflight = keys::inflight(&sh.cfg.agent_id);
    // Wake the blocking pop at a stop rather than at its timeout, with an item only it
    // takes: `CLIENT UNBLOCK` is an admin command that agents' users do not have.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let marker = format!("{}{}-{}", protocol::task::WAKE_MARKER_PREFIX, std::process::id(), started.as_nanos());
    let (waker, wake_queue, wake_marker) = (sh.redis.clone(), queue.clone(), marker.clone());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = waker.lpush::<i64, _, _>(wake_queue.as_str(), wake_marker.as_str()).await;
    });
    tracing::info!("agent {name} started");

    let slots = Arc::new(Semaphore::new(sh.cfg.max_concurrency));
    let block = sh.cfg.poll_interval;
    // A real Redis failure is logged once (until it changes or clears) and retried with
    // back-off; an idle pop is not a failure and logs nothing.
    let mut last_error = String::new();
    let mut backoff = POP_BACKOFF_MIN;
    let mut reconcile = false;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        if *stop.borrow() {
            break;
        }
        // Under load, take as many queued tasks as there are free slots in one command;
        // block only when the queue is empty.
        let mut permits = vec![permit];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        // Redis may be away: a queued command then waits for the reconnection, so the
        // stop is watched too. With Redis up, the unblock sent at stop makes the pop
        // answer at once, and a task it took is still run; with Redis down it never
        // answers, and there is nothing to take.
        let stopping = stop.clone();
        let want = permits.len();
        let pop_once = async {
            match redis_ops::take(&sh.redis, &sh.cfg.agent_id, want).await {
                Ok(items) if !items.is_empty() => Ok(items),
                // The stop may have come during the take, its wake-up already spent.
                Ok(_) if *stopping.borrow() => Ok(Vec::new()),
                // An idle block that runs out answers `None`: the normal empty answer.
                Ok(_) => {
                    bus::blocking_move(&pop, &queue, &inflight, block).await.map(|item| item.into_iter().collect())
                }
                Err(e) => Err(e),
            }
        };
        tokio::pin!(pop_once);
        let batch = tokio::select! {
            r = &mut pop_once => r,
            _ = stop.wait_for(|s| *s) => match tokio::time::timeout(STOP_GRACE, &mut pop_once).await {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        if matches!(&batch, Ok(items) if items.is_empty()) && *stop.borrow() {
            break;
        }
        match batch {
            Ok(items) => {
                if !last_error.is_empty() {
                    tracing::info!("popping from {queue} again");
                    last_error.clear();
                }
                backoff = POP_BACKOFF_MIN;
                if items.is_empty() && reconcile {
                    reconcile = !adopt_orphans(&sh, &slots).await;
                }
                for (raw, permit) in items.into_iter().zip(permits) {
                    if protocol::task::is_wake_marker(&raw) {
                        let _ = sh.redis.lrem::<i64, _, _>(inflight.as_str(), 1, raw.as_str()).await;
                        continue;
                    }
                    sh.hold(&raw);
                    let sh = sh.clone();
                    tokio::spawn(async move {
                        run_task(sh, raw).await;
                        drop(permit);
                    });
                }
            }
            Err(_) if *stop.borrow() => break,
            Err(e) => {
                drop(permits);
                // A reply lost with the connection may have moved a task nobody runs.
                reconcile = true;
                let msg = e.to_string();
                if msg != last_error {
                    tracing::warn!("cannot pop from {queue}: {msg}; retrying");
                    last_error = msg;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(POP_BACKOFF_MAX);
            }
        }
    }

    let running = sh.cfg.max_concurrency - slots.available_permits();
    if running > 0 {
        tracing::info!("stopping: waiting for {running} running task(s)");
    }
    let _all = slots.acquire_many(sh.cfg.max_concurrency as u32).await;
    // A task that came just before the wake marker was taken instead; the marker stays.
    let _ = tokio::time::timeout(STOP_GRACE, sh.redis.lrem::<i64, _, _>(queue.as_str(), 0, marker.as_str())).await;
    let _ = stop_events_tx.send(true);
    // Bounded: with Redis gone, these would wait for it.
    let _ = tokio::time::timeout(STOP_GRACE, events.stop()).await;
    let _ = tokio::time::timeout(STOP_GRACE, pop.quit()).await;
    let _ = tokio::time::timeout(STOP_GRACE, sh.redis.quit()).await;
    tracing::info!("agent {name} stopped");
    Ok(())
}

async fn inflight_items(sh: &Shared) -> Option<Vec<String>> {
    match sh.redis.lrange(keys::inflight(&sh.cfg.agent_id), 0, -1).await {
        Ok(items) => Some(items),
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", keys::inflight(&sh.cfg.agent_id));
            None
        }
    }
}

/// NS8's built-in roles every agent has (reference section 8): `owner` may run
/// everything, `reader` the read-only actions. Adding set members is idempotent, and
/// the agent's own ACL user may write `<agent>/roles/*`.
async fn define_builtin_roles(sh: &Shared) {
    let agent = &sh.cfg.agent_id;
    for (role, patterns) in protocol::keys::BUILTIN_ROLES {
        let key = keys::role(agent, role);
        bus::retry(&format!("cannot define role {key}"), || sh.redis.sadd::<i64, _, _>(&key, patterns.to_vec())).await;
    }
}

/// At start-up, every in-flight task belonged to a previous run of this agent that
/// died before storing its result. Close each one with a terminal result.
async fn close_interrupted(sh: &Shared) {
    let agent = &sh.cfg.agent_id;
    let items: Vec<String> =
        bus::retry(&format!("cannot read {}", keys::inflight(agent)), || sh.redis.lrange(keys::inflight(agent), 0, -1))
            .await;
    let items: Vec<(String, Result<protocol::task::Task, _>)> =
        items.into_iter().map(|raw| (raw.clone(), protocol::task::Task::decode(&raw).map(|(t, _)| t))).collect();
    let task_ids: Vec<String> = items.iter().filter_map(|(_, t)| Some(t.as_ref().ok()?.id.clone())).collect();
    if !task_ids.is_empty() {
        stop_leftovers(agent, &task_ids).await;
    }
    for (raw, task) in items {
        if protocol::task::is_wake_marker(&raw) {
            // A stop's wake-up that a crash left behind: nothing ran.
            let _ = sh.redis.lrem::<i64, _, _>(keys::inflight(agent), 1, raw.as_str()).await;
            continue;
        }
        match task {
            Ok(task) => {
                tracing::warn!(
                    "task/{agent}/{}: action \"{}\" was interrupted by an agent restart",
                    task.id,
                    task.action
                );
                finish(sh, &task.id, &task.action, &raw, Outcome::interrupted(agent)).await;
            }
            Err(e) => {
                tracing::error!("{}: interrupted task ignored: {e}", keys::tasks(agent));
                let _ = sh.redis.lrem::<i64, _, _>(keys::inflight(agent), 1, raw.as_str()).await;
            }
        }
    }
}

/// After a connection error: run in-flight tasks this process popped but never saw
/// (the pop's reply was lost). They never started, so running them is safe.
/// Returns `false` if the list could not be read (try again later).
async fn adopt_orphans(sh: &Arc<Shared>, slots: &Arc<Semaphore>) -> bool {
    let Some(items) = inflight_items(sh).await else {
        return false;
    };
    for raw in items {
        if sh.holds(&raw) {
            continue;
        }
        tracing::warn!("running a task whose pop reply was lost: {}", keys::inflight(&sh.cfg.agent_id));
        sh.hold(&raw);
        let permit = slots.clone().acquire_owned().await.expect("semaphore is never closed");
        let sh = sh.clone();
        tokio::spawn(async move {
            run_task(sh, raw).await;
            drop(permit);
        });
    }
    true
}

/// Stop what a crashed run of this agent left running for the interrupted tasks, before
/// their results say they ended. Steps and whatever they started carry `AGENT_ID` and
/// `AGENT_TASK_ID` in their environment, so they are found in /proc without any
/// bookkeeping on the task path. (Under systemd the unit's cgroup is cleaned anyway.)
async fn stop_leftovers(agent: &protocol::AgentId, task_ids: &[String]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let agent_var = format!("{}={agent}", protocol::stepenv::AGENT_ID);
    let task_vars: Vec<String> =
        task_ids.iter().map(|id| format!("{}={id}", protocol::stepenv::AGENT_TASK_ID)).collect();
    let me = std::process::id();
    let find = || -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != me)
            .filter(|pid| {
                let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                    return false;
                };
                let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
                vars.contains(&agent_var.as_bytes()) && task_vars.iter().any(|t| vars.contains(&t.as_bytes()))
            })
            .map(|pid| pid as i32)
            .collect()
    };
    let pids = find();
    if pids.is_empty() {
        return;
    }
    tracing::warn!("stopping {} process(es) left running by interrupted tasks: {pids:?}", pids.len());
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = find();
        if left.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
