//! The node's half of a module update that can be undone (beyond NS8, which only
//! warns when an update step fails).
//!
//! `update-module` stops the module's services, takes a snapshot of its install dir
//! (files and state) and of its Podman volumes beside the install dir, then
//! swaps in the new image's `imageroot/` and environment. The cluster then runs the
//! module's own `update-module` steps, and ends with `finish-update`: `commit` starts
//! the enabled services and drops the snapshot; `rollback` (or a commit whose
//! services do not start) puts the snapshot back and starts the previous version
//! again. After a commit the images no container uses any more are removed. Only one update of a module runs at a time: the snapshot is the lock.

use std::path::{Path, PathBuf};

use agent_runtime::{ActionContext, ActionError};
use serde_json::{Value, json};

use crate::extract;
use crate::modules::{ModulePaths, NodeSetup, chown_tree, cp_a, remove_path};

pub fn update_schema() -> Value {
    json!({
        "type": "object",
        "required": ["module_id", "image_url", "environment"],
        "properties": {
            "module_id": {"type": "string", "minLength": 1},
            "image_url": {"type": "string", "minLength": 1},
            "environment": {"type": "object", "additionalProperties": {"type": "string"}}
        }
    })
}

pub fn finish_schema() -> Value {
    json!({
        "type": "object",
        "required": ["module_id", "outcome"],
        "properties": {
            "module_id": {"type": "string", "minLength": 1},
            "outcome": {"enum": ["commit", "rollback"]}
        }
    })
}

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}

/// Beside the install dir, never in it: `~/` for a rootless module, the rootful base
/// dir otherwise.
fn work_dir(p: &ModulePaths) -> PathBuf {
    p.install_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| p.base.clone())
}

fn snapshot_dir(p: &ModulePaths) -> PathBuf {
    work_dir(p).join(format!(".{}-update-snapshot", p.id))
}

fn find(setup: &NodeSetup, data: &Value) -> Result<ModulePaths, ActionError> {
    let id = data["module_id"].as_str().unwrap_or_default();
    protocol::validate_module_id(id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    ModulePaths::find(setup, id).ok_or_else(|| ActionError::invalid("module_id", json!(id), "not_on_this_node"))
}

fn read_env(p: &ModulePaths) -> Vec<(String, String)> {
    std::fs::read_to_string(p.state_dir.join("environment")).map(|t| protocol::envfile::parse(&t)).unwrap_or_default()
}

pub async fn update(ctx: ActionContext, data: Value, setup: NodeSetup) -> Result<Value, ActionError> {
    let paths = find(&setup, &data)?;
    let image = data["image_url"].as_str().unwrap_or_default().to_owned();
    protocol::image::parse_reference(&image).map_err(|e| failed(format!("image_url: {e}")))?;
    let snap = snapshot_dir(&paths);
    if snap.exists() {
        return Err(failed(format!(
            "an update of {} is already in progress (or was interrupted: {} exists; finish-update rolls it back)",
            paths.id,
            snap.display()
        )));
    }
    let new_vars: Vec<(String, String)> = data["environment"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default();
    let s = setup.clone();
    tokio::task::spawn_blocking(move || -> Result<Value, String> {
        // 1. The new files first, before anything of the module is touched, in a
        //    root-only staging dir: the module's home is the module's to change.
        let staging = extract::staging_dir(&s.state_dir).map_err(|e| e.to_string())?;
        let fresh = extract::imageroot(&image, staging.path()).map_err(|e| e.to_string())?;
        let digest = fresh.digest.clone();
        // What the old image put there; checked before anything is stopped.
        let old_top = extract::read_imageroot_list(&paths.install_dir).map_err(|e| e.to_string())?;
        // 2. Services stopped, so the snapshot is consistent.
        paths.module_service(&s, &["down"]).map_err(|e| format!("cannot stop the services: {e}"))?;
        std::fs::create_dir(&snap).map_err(|e| format!("cannot create {}: {e}", snap.display()))?;
        let taken = (|| {
            cp_a(&paths.install_dir, &snap.join("install"))?;
            std::fs::create_dir(snap.join("volumes")).map_err(|e| e.to_string())?;
            for e in std::fs::read_dir(paths.volumes_dir()).into_iter().flatten().flatten() {
                cp_a(&e.path(), &snap.join("volumes").join(e.file_name()))?;
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = taken {
            let _ = remove_path(&snap);
            let _ = paths.module_service(&s, &["up"]);
            return Err(format!("cannot snapshot the module before updating it: {e}"));
        }
        // 3. Swap: what the old imageroot put there goes, the new one comes; state/
        //    and the node's containers/ stay.
        let swapped = (|| {
            for name in old_top.iter().filter(|n| *n != "state") {
                let p = paths.install_dir.join(name);
                if p.is_dir() {
                    remove_path(&p)?
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
            let top: Vec<String> = fresh.top.iter().filter(|n| *n != "state").cloned().collect();
            for name in &top {
                remove_path(&paths.install_dir.join(name))?;
                cp_a(&fresh.tree.join(name), &paths.install_dir.join(name))?;
            }
            extract::write_imageroot_list(&paths.install_dir, &top).map_err(|e| e.to_string())?;
            let mut env = read_env(&paths);
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
            std::fs::write(paths.state_dir.join("environment"), text).map_err(|e| e.to_string())?;
            if let Some(u) = &paths.user {
                chown_tree(&paths.install_dir, u)?;
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = swapped {
            let restored = restore(&paths, &s);
            return Err(format!("cannot swap in the new image: {e}; {}", describe(restored)));
        }
        Ok(json!({"snapshot": snap, "image_digest": digest}))
    })
    .await
    .map_err(failed)?
    .map_err(failed)
    .inspect(|_| ctx.set_progress(100))
}

fn describe(restored: Result<(), String>) -> String {
    match restored {
        Ok(()) => "the previous version was restored and started again".to_owned(),
        Err(e) => format!("restoring the previous version failed too: {e}"),
    }
}

/// Put the snapshot back and start the services again.
fn restore(paths: &ModulePaths, setup: &NodeSetup) -> Result<(), String> {
    let snap = snapshot_dir(paths);
    if !snap.join("install").is_dir() {
        return Err(format!("no snapshot of {} to restore", paths.id));
    }
    if let Err(e) = paths.module_service(setup, &["down"]) {
        tracing::warn!("module {}: stopping its services before the rollback: {e}", paths.id);
    }
    remove_path(&paths.install_dir)?;
    cp_a(&snap.join("install"), &paths.install_dir)?;
    let vdir = paths.volumes_dir();
    for e in std::fs::read_dir(&vdir).into_iter().flatten().flatten() {
        if snap.join("volumes").join(e.file_name()).exists() {
            remove_path(&e.path())?;
        }
    }
    for e in std::fs::read_dir(snap.join("volumes")).map_err(|e| e.to_string())?.flatten() {
        cp_a(&e.path(), &vdir.join(e.file_name()))?;
    }
    paths.module_service(setup, &["up"]).map_err(|e| format!("the previous version does not start: {e}"))?;
    remove_path(&snap)
}

pub async fn finish(_ctx: ActionContext, data: Value, setup: NodeSetup) -> Result<Value, ActionError> {
    let paths = find(&setup, &data)?;
    let commit = data["outcome"] == "commit";
    tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let snap = snapshot_dir(&paths);
        if commit {
            if !snap.exists() {
                return Err(format!("no update of {} is in progress", paths.id));
            }
            match paths.module_service(&setup, &["up"]) {
                Ok(_) => {
                    remove_path(&snap)?;
                    // The previous version's images are no longer needed for a rollback.
                    if let Err(e) = paths.module_service(&setup, &["prune"]) {
                        tracing::warn!("module {}: removing the previous images: {e}", paths.id);
                    }
                    return Ok(json!({"rolled_back": false, "environment": env_map(&paths)}));
                }
                Err(e) => {
                    let restored = restore(&paths, &setup);
                    return Err(format!("the new version's services do not start: {e}; {}", describe(restored)));
                }
            }
        }
        restore(&paths, &setup)?;
        Ok(json!({"rolled_back": true, "environment": env_map(&paths)}))
    })
    .await
    .map_err(failed)?
    .map_err(failed)
}

fn env_map(p: &ModulePaths) -> Value {
    Value::Object(read_env(p).into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}
