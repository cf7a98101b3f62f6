//! `remove-module`: nothing of the module stays on the node, except its state and
//! volumes when `preserve_data` asks; and, at the node agent's start, the removals a
//! crash cut short.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use agent_runtime::{ActionContext, ActionError};
use hostcmd::Cmd;
use protocol::actions::node::{RemoveModuleRefusal, RemoveModuleReply, RemoveModuleRequest};
use serde_json::json;

use super::paths::{ModulePaths, RUNTIME_BASE};
use super::setup::{ACCOUNTS, NodeSetup};
use crate::blocking::{self, failpoint};
use crate::error::ModuleError;
use crate::files::{cp_a, io, remove_path};
use crate::launcher::Launcher;
use crate::registry::Operation;
use crate::users;

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}

/// `node/remove-module`. Only a module this node made is touched; the removal is
/// recorded first, so that a crash in the middle is finished at the next start of the
/// node agent.
pub async fn remove(
    ctx: ActionContext,
    req: RemoveModuleRequest,
    setup: NodeSetup,
) -> Result<RemoveModuleReply, ActionError> {
    let id = req.module_id;
    protocol::validate_module_id(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    let found = ModulePaths::find(&setup, &id).map_err(failed)?;
    // An account of that name that the node did not make is never touched.
    if found.is_none()
        && (nix::unistd::User::from_name(&id).ok().flatten().is_some() || setup.rootful_base.join(&id).exists())
    {
        return Err(ActionError::refuse(RemoveModuleRefusal::NotAModuleOfThisNode, json!(id)));
    }
    let launcher = Launcher::detect().map_err(failed)?;
    let Some(paths) = found else {
        // Nothing of it here (a removal a restart finished already): forget its agent.
        blocking::run(move || launcher.stop(&id).map_err(ModuleError::from)).await.map_err(failed)?;
        return Ok(RemoveModuleReply { removed: false, preserved: None });
    };
    let registry = setup.registry();
    if let Some(op) = registry.operation(&id).map_err(failed)?
        && op.task() != ctx.task_id
        && !matches!(op, Operation::Remove { .. })
    {
        return Err(failed(ModuleError::Busy {
            id,
            task: op.task().to_owned(),
            operation: op.name(),
            hint: "; try again later",
        }));
    }
    let preserve = req.preserve_data;
    registry.set_operation(&id, &Operation::Remove { task: ctx.task_id.clone(), preserve }).map_err(failed)?;
    ctx.set_progress(10);
    let _guard = ACCOUNTS.lock().await;
    let preserved = blocking::run(move || cleanup(&paths, &setup, &launcher, preserve)).await.map_err(failed)?;
    Ok(RemoveModuleReply { removed: true, preserved: preserved.map(|p| p.display().to_string()) })
}

/// Stop the agent and the services, then remove every file, process and account of
/// the module, and its record last. With `preserve`, its state and volumes are copied
/// aside first; their new place is returned. Blocking; the caller holds [`ACCOUNTS`].
pub fn cleanup(
    paths: &ModulePaths,
    setup: &NodeSetup,
    launcher: &Launcher,
    preserve: bool,
) -> Result<Option<PathBuf>, ModuleError> {
    let mut errors = Vec::new();
    if let Err(e) = launcher.stop(&paths.id) {
        errors.push(e.into());
    }
    // Data to keep is stopped gracefully first; otherwise killing every process of
    // the user below is enough, as everything it wrote goes with its home. A rootful
    // module's containers run as root: they are always stopped through its Podman.
    if (preserve || paths.rootful)
        && paths.hands().is_ok()
        && let Err(e) = paths.module_service(setup, &["down"])
    {
        tracing::warn!("module {}: stopping its services: {e}", paths.id);
    }
    stop_processes(paths);
    failpoint("remove:stopped");
    let preserved = if preserve {
        match preserve_data(paths, setup) {
            Ok(kept) => Some(kept),
            Err(e) => {
                // Nothing removed: the module runs again as it was (its agent brings its
                // services up), and no removal is pending.
                let again = paths.start_agent(setup, launcher).err().map(|a| Box::new(a.into()));
                let _ = setup.registry().clear_operation(&paths.id);
                return Err(ModuleError::NotRemoved { source: Box::new(e), again });
            }
        }
    } else {
        None
    };
    if let Err(e) = remove_files(paths) {
        errors.push(e);
    }
    if errors.is_empty() {
        setup.registry().remove(&paths.id)?;
        Ok(preserved)
    } else {
        Err(ModuleError::Several(errors))
    }
}

/// Remove every process, file and account of a module whose services are stopped: a
/// rootless module's user with everything it owns; a rootful module's Podman service,
/// mounts, storage, runtime and base dirs. Blocking.
pub fn remove_files(p: &ModulePaths) -> Result<(), ModuleError> {
    if !p.rootful {
        users::remove(&p.id, Path::new(RUNTIME_BASE))?;
        // A home the account no longer names (an install cut short before useradd
        // finished, or after userdel): nobody runs as it, Rust's removal follows no link.
        return Ok(remove_path(&p.base)?);
    }
    stop_processes(p);
    let storage = p.rootful_storage();
    for dir in [&storage, &p.runtime_dir] {
        unmount_under(dir);
    }
    let errors: Vec<ModuleError> =
        [&p.runtime_dir, &storage, &p.base].into_iter().filter_map(|d| remove_path(d).err()).map(Into::into).collect();
    if errors.is_empty() { Ok(()) } else { Err(ModuleError::Several(errors)) }
}

/// Kill what the module still runs once its services are down: every process of a
/// rootless module's user and of its containers (its subordinate ids); a rootful
/// module's Podman service (found by its socket's path; it would exit by itself after
/// its idle time). Blocking.
pub fn stop_processes(p: &ModulePaths) {
    if let Some(u) = &p.user {
        users::kill_all_of(u);
        return;
    }
    if !p.rootful {
        return;
    }
    let marker = p.runtime_dir.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Lazily unmount whatever is mounted at or below `dir` (a storage driver's mounts),
/// deepest first, so the directory can be removed.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).map(PathBuf::from).filter(|m| m.starts_with(dir)).collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in points {
        if let Err(e) = Cmd::new("umount").arg("-l").arg(&m).run() {
            tracing::warn!("{e}");
        }
    }
}

/// Whether every component of `rel` below `base` (and `base` itself) is a real
/// directory, not a symlink: checked once nothing of the module runs any more, so
/// nothing can change it afterwards.
fn real_dirs(base: &Path, rel: &Path) -> bool {
    let mut at = base.to_path_buf();
    let real = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_dir());
    if !real(&at) {
        return false;
    }
    for c in rel.components() {
        at.push(c);
        if !real(&at) {
            return false;
        }
    }
    true
}

/// Copy the module's state and Podman volumes to `<node state>/preserved/<id>-<time>`,
/// before they are removed with the module. Nothing of the module runs by then (its
/// user's and containers' processes are killed), and a source reached through a
/// symlink is refused: `cp -a` itself copies links as links.
fn preserve_data(paths: &ModulePaths, setup: &NodeSetup) -> Result<PathBuf, ModuleError> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dest = setup.state_dir.join("preserved").join(format!("{}-{stamp}", paths.id));
    std::fs::create_dir_all(&dest).map_err(io("create", &dest))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o700)).map_err(io("set the mode of", &dest))?;
    let volumes = paths.volumes_dir();
    let copy = |from: &Path, to: PathBuf| {
        cp_a(from, &to).map_err(|e| ModuleError::Preserve { path: from.to_owned(), source: Box::new(e.into()) })
    };
    for (from, name) in [(&paths.state_dir, "state"), (&volumes, "volumes")] {
        let Ok(rel) = from.strip_prefix(&paths.base) else {
            // A rootful module's storage is root's, beside its base.
            if from.exists() {
                copy(from, dest.join(name))?;
            }
            continue;
        };
        if from.symlink_metadata().is_err() {
            continue;
        }
        if !real_dirs(&paths.base, rel) {
            return Err(ModuleError::NotRealDir(from.clone()));
        }
        copy(from, dest.join(name))?;
    }
    Ok(dest)
}

/// At the node agent's start: finish the removals a crash cut short (the module was
/// recorded as being removed), with what they asked for.
pub async fn recover_removals(setup: &NodeSetup) {
    let registry = setup.registry();
    for id in registry.ids() {
        let Ok(Some(Operation::Remove { preserve, .. })) = registry.operation(&id) else { continue };
        let paths = match ModulePaths::find(setup, &id) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("module {id}: a removal was cut short, and {e}");
                continue;
            }
        };
        let launcher = match Launcher::detect() {
            Ok(l) => l,
            Err(e) => return tracing::error!("cannot finish the removals cut short: {e}"),
        };
        let _guard = ACCOUNTS.lock().await;
        let s = setup.clone();
        match blocking::run(move || cleanup(&paths, &s, &launcher, preserve)).await {
            Ok(kept) => tracing::warn!("module {id}: finished the removal a restart cut short (kept: {kept:?})"),
            Err(e) => tracing::error!("module {id}: finishing the removal a restart cut short failed: {e}"),
        }
    }
}
