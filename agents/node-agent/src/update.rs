//! The node's half of a module update that can be undone (beyond NS8, which only
//! warns when an update step fails).
//!
//! `update-module` stops the module's services, takes a snapshot of its install dir
//! (files and state) and of its Podman volumes, then swaps in the new image's
//! `imageroot/` and environment. The cluster then runs the module's own
//! `update-module` steps, and ends with `finish-update`: `commit` starts the enabled
//! services and drops the snapshot; `rollback` (or a commit whose services do not
//! start) puts the snapshot back and starts the previous version again. After a commit
//! the images no container uses any more are removed.
//!
//! Every change to the module's tree is made by its own hands ([`Hands`]): a rootless
//! module's snapshot lives in its home and is taken and put back by its uid, inside
//! its user namespace (its containers' files keep their owners). The phase is
//! recorded in the node's registry before each step, which is the lock (one
//! operation per module) and what [`recover`] reads after a crash: the module ends on
//! its old version or its new one, never half.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use agent_runtime::{ActionContext, ActionError};
use protocol::actions::node::{
    FinishUpdateRefusal, FinishUpdateReply, FinishUpdateRequest, UpdateModuleReply, UpdateModuleRequest, UpdateOutcome,
};
use serde_json::json;

use crate::blocking::{self, failpoint};
use crate::error::ModuleError;
use crate::extract;
use crate::hands::{Hands, HandsError};
use crate::modules::{ModulePaths, NodeSetup};
use crate::registry::{Operation, RegistryError, UpdatePhase};

/// Why an update did not go through; what the module runs afterwards is said too.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("cannot stop the services: {0}")]
    Stop(hostcmd::CmdError),
    #[error("cannot snapshot the module before updating it: {0}")]
    Snapshot(HandsError),
    #[error("cannot swap in the new image: {source}; {restored}")]
    Swap { source: ModuleError, restored: Restored },
    /// Nothing to put back: the update ended (or never began) before a snapshot.
    #[error("no snapshot of {0} to restore")]
    NoSnapshot(String),
    #[error("no update of {0} is in progress")]
    NoUpdate(String),
    #[error("the previous version does not start: {0}")]
    PreviousDoesNotStart(hostcmd::CmdError),
    #[error("the new version's services do not start: {source}; {restored}")]
    NewDoesNotStart { source: hostcmd::CmdError, restored: Restored },
    #[error("its services do not start: {0}")]
    DoNotStart(hostcmd::CmdError),
}

impl From<RegistryError> for UpdateError {
    fn from(e: RegistryError) -> Self {
        UpdateError::Module(e.into())
    }
}

impl From<HandsError> for UpdateError {
    fn from(e: HandsError) -> Self {
        UpdateError::Module(e.into())
    }
}

impl From<tokio::task::JoinError> for UpdateError {
    fn from(e: tokio::task::JoinError) -> Self {
        UpdateError::Module(e.into())
    }
}

/// How a rollback after a failure ended.
#[derive(Debug)]
pub struct Restored(Result<(), Box<UpdateError>>);

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(()) => f.write_str("the previous version was restored and started again"),
            Err(e) => write!(f, "restoring the previous version failed too: {e}"),
        }
    }
}

impl From<Result<(), UpdateError>> for Restored {
    fn from(r: Result<(), UpdateError>) -> Self {
        Restored(r.map_err(Box::new))
    }
}

fn failed(e: impl fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}

/// Where the snapshot is: in a rootless module's home (its own to keep), beside a
/// rootful module's root-only base dir.
fn snapshot_dir(p: &ModulePaths) -> PathBuf {
    if p.rootful {
        p.base.parent().unwrap_or(&p.base).join(format!(".{}-update-snapshot", p.id))
    } else {
        p.base.join(".ns8rs-update-snapshot")
    }
}

fn find(setup: &NodeSetup, id: &str) -> Result<ModulePaths, ActionError> {
    protocol::validate_module_id(id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    ModulePaths::find(setup, id)
        .map_err(failed)?
        .ok_or_else(|| ActionError::invalid("module_id", json!(id), "not_on_this_node"))
}

/// The module's `state/environment`, read by its own hands.
fn read_env(p: &ModulePaths) -> Result<Vec<(String, String)>, ModuleError> {
    let text = p.hands()?.read(&p.state_dir.join("environment"))?;
    Ok(protocol::envfile::parse(&text.unwrap_or_default()))
}

fn env_map(p: &ModulePaths) -> BTreeMap<String, String> {
    read_env(p).unwrap_or_default().into_iter().collect()
}

/// Record the update's phase (the lock, and what a restart reads).
fn phase(setup: &NodeSetup, p: &ModulePaths, task: &str, phase: UpdatePhase) -> Result<(), RegistryError> {
    let op = Operation::Update { task: task.to_owned(), phase };
    setup.registry().set_operation(&p.id, &op)
}

fn done(setup: &NodeSetup, p: &ModulePaths) -> Result<(), RegistryError> {
    setup.registry().clear_operation(&p.id)
}

/// Copy the install dir and the volumes into the snapshot; `complete` marks it whole.
fn take_snapshot(p: &ModulePaths, hands: Hands) -> Result<(), HandsError> {
    let snap = snapshot_dir(p);
    let script = r#"set -e
rm -rf -- "$1"; mkdir -p -- "$1/volumes"; chmod 700 -- "$1"
cp -a -- "$2" "$1/install"
if [ -d "$3" ]; then for v in "$3"/* ; do [ -e "$v" ] || continue; cp -a -- "$v" "$1/volumes/"; done; fi
touch -- "$1/complete""#;
    let vols = p.volumes_dir();
    let args = [snap.as_os_str(), p.install_dir.as_os_str(), vols.as_os_str()];
    hands.sh_unshared(&format!("taking the snapshot of {}", p.id), script, &args).map(|_| ())
}

/// After `down`: the stopped containers' cleanup done, so nothing of Podman writes
/// into the tree while it is copied.
fn settle(p: &ModulePaths) {
    if let Some(u) = &p.user
        && !crate::users::wait_podman_quiet(u.uid, std::time::Duration::from_secs(10))
    {
        tracing::warn!("module {}: Podman processes still running 10 s after its services stopped", p.id);
    }
}

/// Put the snapshot back (install dir; the volumes it holds); the snapshot stays.
fn put_back(p: &ModulePaths, hands: Hands) -> Result<(), HandsError> {
    let snap = snapshot_dir(p);
    let script = r#"set -e
[ -f "$1/complete" ] || { echo "no snapshot of the module to restore" >&2; exit 3; }
rm -rf -- "$2"; mkdir -- "$2"; cp -a -- "$1/install/." "$2/"
mkdir -p -- "$3"
for v in "$1"/volumes/* ; do [ -e "$v" ] || continue; n=${v##*/}; rm -rf -- "$3/$n"; cp -a -- "$v" "$3/$n"; done"#;
    let vols = p.volumes_dir();
    let args = [snap.as_os_str(), p.install_dir.as_os_str(), vols.as_os_str()];
    hands.sh_unshared(&format!("restoring the snapshot of {}", p.id), script, &args).map(|_| ())
}

fn has_snapshot(p: &ModulePaths, hands: Hands) -> Result<bool, HandsError> {
    let complete = snapshot_dir(p).join("complete");
    let out = hands.sh(
        "checking the snapshot",
        std::time::Duration::from_secs(30),
        r#"[ -f "$1" ] && echo y || echo n"#,
        &[complete.as_os_str()],
        None,
    )?;
    Ok(out.starts_with(b"y"))
}

fn drop_snapshot(p: &ModulePaths, hands: Hands) -> Result<(), HandsError> {
    // Volumes' files belong to the containers' sub-uids: removed inside the namespace.
    let snap = snapshot_dir(p);
    hands
        .sh_unshared(&format!("removing the snapshot of {}", p.id), r#"rm -rf -- "$1""#, &[snap.as_os_str()])
        .map(|_| ())
}

/// `node/update-module`: the new files in place, the old ones in a snapshot.
pub async fn update(
    ctx: ActionContext,
    req: UpdateModuleRequest,
    setup: NodeSetup,
) -> Result<UpdateModuleReply, ActionError> {
    let paths = find(&setup, &req.module_id)?;
    let image = req.image_url;
    protocol::image::parse_reference(&image).map_err(|e| failed(format!("image_url: {e}")))?;
    if let Some(op) = setup.registry().operation(&paths.id).map_err(failed)? {
        return Err(failed(ModuleError::Busy {
            id: paths.id.clone(),
            task: op.task().to_owned(),
            operation: op.name(),
            hint: "; finish-update ends an update in progress",
        }));
    }
    let new_vars: Vec<(String, String)> = req.environment.into_iter().collect();
    let task = ctx.task_id.clone();
    let reply = blocking::run(move || swap_in(&paths, &setup, &task, &image, &new_vars)).await.map_err(failed)?;
    ctx.set_progress(100);
    Ok(reply)
}

/// Stop, snapshot, swap. Blocking.
fn swap_in(
    paths: &ModulePaths,
    s: &NodeSetup,
    task: &str,
    image: &str,
    new_vars: &[(String, String)],
) -> Result<UpdateModuleReply, UpdateError> {
    let hands = paths.hands()?;
    // 1. The new files first, before anything of the module is touched, in a
    //    root-only staging dir: the module's home is the module's to change.
    let staging = extract::staging_dir(&s.state_dir).map_err(ModuleError::from)?;
    let fresh = extract::imageroot(image, staging.path()).map_err(ModuleError::from)?;
    let digest = fresh.digest.clone();
    // What the old image put there; checked before anything is stopped.
    let old_top = paths.read_list()?;
    // 2. Services stopped, so the snapshot is consistent.
    phase(s, paths, task, UpdatePhase::Stopping)?;
    failpoint("update:stopping");
    if let Err(e) = paths.module_service(s, &["down"]) {
        let _ = paths.module_service(s, &["up"]);
        done(s, paths)?;
        return Err(UpdateError::Stop(e));
    }
    settle(paths);
    phase(s, paths, task, UpdatePhase::Snapshot)?;
    failpoint("update:snapshot");
    if let Err(e) = take_snapshot(paths, hands) {
        let _ = drop_snapshot(paths, hands);
        let _ = paths.module_service(s, &["up"]);
        done(s, paths)?;
        return Err(UpdateError::Snapshot(e));
    }
    // 3. Swap: what the old imageroot put there goes, the new one comes; state/
    //    and the node's containers/ stay.
    phase(s, paths, task, UpdatePhase::Swap)?;
    let swapped = (|| -> Result<(), ModuleError> {
        // state/ is the module's, containers/ the node's: neither comes from the image.
        let top: Vec<String> = fresh.top.iter().filter(|n| *n != "state" && *n != "containers").cloned().collect();
        for name in old_top.iter().chain(&top).filter(|n| *n != "state" && *n != "containers") {
            hands.remove(&paths.install_dir.join(name))?;
        }
        // Half swapped: the old files gone, the new ones not there yet.
        failpoint("update:swap");
        hands.deliver(&fresh.tree, &top, &paths.install_dir)?;
        paths.write_list(&top)?;
        let mut env = read_env(paths)?;
        let old = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let mut prev: Vec<(String, String)> = Vec::new();
        for k in ["IMAGE_URL", "IMAGE_DIGEST"] {
            if let Some(v) = old(k) {
                prev.push((format!("PREV_{k}"), v));
            }
        }
        for (k, _) in new_vars.iter().filter(|(k, _)| k.ends_with("_IMAGE")) {
            if let Some(v) = old(k) {
                prev.push((format!("PREV_{k}"), v));
            }
        }
        let digest_var = ("IMAGE_DIGEST".to_owned(), digest.clone());
        for (k, v) in prev.into_iter().chain(new_vars.iter().cloned()).chain([digest_var]) {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let text = protocol::envfile::render(&env);
        Ok(hands.write(&paths.state_dir.join("environment"), text.as_bytes(), 0o600)?)
    })();
    if let Err(e) = swapped {
        let restored = rollback(paths, s, task).into();
        return Err(UpdateError::Swap { source: e, restored });
    }
    phase(s, paths, task, UpdatePhase::Swapped)?;
    Ok(UpdateModuleReply { snapshot: snapshot_dir(paths).display().to_string(), image_digest: digest })
}

/// Put the snapshot back, start the services again, drop the snapshot and the lock.
fn rollback(paths: &ModulePaths, setup: &NodeSetup, task: &str) -> Result<(), UpdateError> {
    let hands = paths.hands()?;
    if !has_snapshot(paths, hands)? {
        return Err(UpdateError::NoSnapshot(paths.id.clone()));
    }
    phase(setup, paths, task, UpdatePhase::Rollback)?;
    failpoint("update:rollback");
    if let Err(e) = paths.module_service(setup, &["down"]) {
        tracing::warn!("module {}: stopping its services before the rollback: {e}", paths.id);
    }
    settle(paths);
    put_back(paths, hands)?;
    paths.module_service(setup, &["up"]).map_err(UpdateError::PreviousDoesNotStart)?;
    drop_snapshot(paths, hands)?;
    Ok(done(setup, paths)?)
}

/// Start the new version; if it does not start, roll back.
fn commit(paths: &ModulePaths, setup: &NodeSetup, task: &str) -> Result<FinishUpdateReply, UpdateError> {
    let hands = paths.hands()?;
    phase(setup, paths, task, UpdatePhase::Commit)?;
    failpoint("update:commit");
    match paths.module_service(setup, &["up"]) {
        Ok(_) => {
            drop_snapshot(paths, hands)?;
            done(setup, paths)?;
            // The previous version's images are no longer needed for a rollback.
            if let Err(e) = paths.module_service(setup, &["prune"]) {
                tracing::warn!("module {}: removing the previous images: {e}", paths.id);
            }
            Ok(FinishUpdateReply { rolled_back: false, environment: env_map(paths) })
        }
        Err(e) => {
            let restored = rollback(paths, setup, task).into();
            Err(UpdateError::NewDoesNotStart { source: e, restored })
        }
    }
}

/// `node/finish-update`: commit, or put the snapshot back. With no update of the
/// module in progress, or nothing to put back, the refusal
/// [`FinishUpdateRefusal::NoUpdateInProgress`]: the crash came before the snapshot, or
/// after the commit, and there is nothing to finish.
pub async fn finish(
    ctx: ActionContext,
    req: FinishUpdateRequest,
    setup: NodeSetup,
) -> Result<FinishUpdateReply, ActionError> {
    let paths = find(&setup, &req.module_id)?;
    let (task, outcome, id) = (ctx.task_id.clone(), req.outcome, paths.id.clone());
    let finished = blocking::run(move || -> Result<FinishUpdateReply, UpdateError> {
        match setup.registry().operation(&paths.id)? {
            Some(Operation::Update { .. }) => {}
            Some(op) => {
                return Err(ModuleError::Busy {
                    id: paths.id.clone(),
                    task: op.task().to_owned(),
                    operation: op.name(),
                    hint: "",
                }
                .into());
            }
            None => return Err(UpdateError::NoUpdate(paths.id.clone())),
        }
        match outcome {
            UpdateOutcome::Commit => commit(&paths, &setup, &task),
            UpdateOutcome::Rollback => {
                rollback(&paths, &setup, &task)?;
                Ok(FinishUpdateReply { rolled_back: true, environment: env_map(&paths) })
            }
        }
    })
    .await;
    match finished {
        Err(UpdateError::NoUpdate(_) | UpdateError::NoSnapshot(_)) => {
            Err(ActionError::refuse(FinishUpdateRefusal::NoUpdateInProgress, json!(id)))
        }
        r => r.map_err(failed),
    }
}

/// At the node agent's start: the updates a crash cut short end on a version that
/// runs. Before the swap: the module is started again as it was; during the swap or a
/// rollback: the snapshot goes back; during a commit: the commit is done again (and
/// rolled back if the new version does not start). A module swapped and waiting for
/// the cluster's `finish-update` stays so.
pub async fn recover(setup: &NodeSetup) {
    let registry = setup.registry();
    for id in registry.ids() {
        let Ok(Some(Operation::Update { task, phase })) = registry.operation(&id) else { continue };
        let paths = match ModulePaths::find(setup, &id) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("module {id}: an update was cut short, and {e}");
                continue;
            }
        };
        let s = setup.clone();
        let outcome = blocking::run(move || -> Result<&'static str, UpdateError> {
            let hands = paths.hands()?;
            match phase {
                UpdatePhase::Swapped => Ok("left swapped, for the cluster's finish-update"),
                UpdatePhase::Stopping | UpdatePhase::Snapshot => {
                    drop_snapshot(&paths, hands)?;
                    paths.module_service(&s, &["up"]).map_err(UpdateError::DoNotStart)?;
                    done(&s, &paths)?;
                    Ok("started again as it was (nothing had changed)")
                }
                UpdatePhase::Swap | UpdatePhase::Rollback => {
                    rollback(&paths, &s, &task)?;
                    Ok("rolled back to its previous version")
                }
                UpdatePhase::Commit => commit(&paths, &s, &task).map(|_| "committed"),
            }
        })
        .await;
        match outcome {
            Ok(what) => tracing::warn!("module {id}: an update cut short by a restart: {what}"),
            Err(e) => tracing::error!("module {id}: finishing an update cut short by a restart failed: {e}"),
        }
    }
}
