//! The node's side of restores: a module repository's snapshots, a snapshot's
//! `state/environment`, and a snapshot's data put back into an installed module.
//!
//! Reading runs as root on the repository only (restic's `rclone:` backend). Putting
//! back runs as the module's hands, like the backup (`backup.rs`): restic inside the
//! module's user namespace with `state/` and the volumes bound under `/srv`, so files
//! get back the owners the containers gave them; the module's services are stopped
//! meanwhile and started again after. `state/environment` is not restored: the
//! installed module's (its id, ports, image) stays, as in NS8.

use std::collections::BTreeMap;

use agent_runtime::{ActionContext, ActionError};
use protocol::actions::backup::{
    CheckRepositoryReply, CheckRepositoryRequest, DestinationAccess, NodeSnapshotsRequest, RestoreDataReply,
    RestoreDataRequest, Snapshot, SnapshotRef,
};
use serde_json::Value;

use crate::backup::{Remote, restic, restic_error};
use crate::modules::{ModulePaths, NodeSetup};

fn remote(d: &DestinationAccess) -> Result<Remote, ActionError> {
    Remote::new(d.provider, &d.url, &d.parameters).map_err(|(_, why)| ActionError::failed(why))
}

/// restic as root on `path` of the destination, its stdout; its last error line else.
async fn read(
    ctx: &ActionContext,
    d: &DestinationAccess,
    path: &str,
    args: Vec<String>,
) -> Result<String, ActionError> {
    let (remote, path, password) = (remote(d)?, path.to_owned(), d.password.clone());
    let cache = ctx.state_dir.join("restic-cache");
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        restic(&remote, &path, &password, &cache, &args).stdout().map_err(|e| restic_error(&e))
    })
    .await
    .map_err(|e| ActionError::failed(format!("restic's thread was lost: {e}")))?
    .map_err(ActionError::failed)
}

pub async fn snapshots(ctx: ActionContext, req: NodeSnapshotsRequest) -> Result<Vec<Snapshot>, ActionError> {
    ctx.core_only("read-backup-snapshots")?;
    let out = read(&ctx, &req.destination, &req.path, vec!["snapshots".into(), "--json".into()]).await?;
    let list: Vec<Value> =
        serde_json::from_str(&out).map_err(|e| ActionError::failed(format!("restic snapshots: {e}")))?;
    Ok(list
        .iter()
        .map(|s| {
            let time = s["time"].as_str().unwrap_or_default();
            let timestamp = time.parse::<jiff::Timestamp>().map(|t| t.as_second()).unwrap_or(0);
            Snapshot {
                id: s["id"].as_str().unwrap_or_default().to_owned(),
                timestamp,
                total_bytes: -1,
                backup_start: time.to_owned(),
                backup_end: String::new(),
            }
        })
        .collect())
}

/// A snapshot's `state/environment` (the module wrote it: hostile), its variables
/// whose names are plain.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    protocol::envfile::parse(text)
        .into_iter()
        .filter(|(k, _)| k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect()
}

pub async fn environment(ctx: ActionContext, req: SnapshotRef) -> Result<BTreeMap<String, String>, ActionError> {
    ctx.core_only("read-backup-environment")?;
    let args = vec!["dump".into(), req.snapshot.clone(), "/state/environment".into()];
    let out = read(&ctx, &req.destination, &req.path, args).await?;
    Ok(parse_env(&out))
}

/// Put a snapshot back as the module's hands: `$1` state, `$2` volumes dir, `$3`
/// install dir, then the volume names; the volumes exist (made before).
const RESTORE_SCRIPT: &str = r#"set -eu
state="$1"; volumes="$2"; install="$3"; shift 3
mount -t tmpfs -o mode=0755 ns8rs-restore /srv
mkdir /srv/state /srv/volumes
mount --bind "$state" /srv/state
for name in "$@"; do
  [ -d "$volumes/$name/_data" ] || { echo "volume $name was not made" >&2; exit 1; }
  mkdir "/srv/volumes/$name"
  mount --bind "$volumes/$name/_data" "/srv/volumes/$name"
done
export RESTIC_CACHE_DIR="${HOME:-$install}/.cache/restic"
exec restic restore "$NS8RS_SNAPSHOT" --target /srv --exclude /state/environment
"#;

/// Makes each volume named in `$@` (as the module: in its own storage).
const MAKE_VOLUMES: &str = r#"set -eu
for name in "$@"; do podman volume exists "$name" || podman volume create "$name" >/dev/null; done
"#;

fn volume_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

const RESTORE_LIMIT: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

pub async fn restore_data(
    ctx: ActionContext,
    req: RestoreDataRequest,
    setup: NodeSetup,
) -> Result<RestoreDataReply, ActionError> {
    ctx.core_only("restore-module-data")?;
    let from = &req.from;
    // The snapshot's volumes: the names under /volumes.
    let args = vec!["ls".into(), "--json".into(), from.snapshot.clone(), "/volumes".into()];
    let listing = read(&ctx, &from.destination, &from.path, args).await?;
    let mut volumes: Vec<String> = listing
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "dir")
        .filter_map(|v| v["path"].as_str()?.strip_prefix("/volumes/").map(str::to_owned))
        .filter(|name| !name.contains('/'))
        .collect();
    volumes.sort();
    volumes.dedup();
    if let Some(bad) = volumes.iter().find(|v| !volume_name_ok(v)) {
        return Err(ActionError::failed(format!(
            "the snapshot holds a volume named {bad:?}, which Podman never makes"
        )));
    }
    let (remote, password) = (remote(&from.destination)?, from.destination.password.clone());
    let (path, snapshot, module, restored_volumes) =
        (from.path.clone(), from.snapshot.clone(), req.module_id.clone(), volumes.clone());
    let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let paths = ModulePaths::find(&setup, &module)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("module {module} is not one this node made"))?;
        if paths.rootful {
            return Err(format!("module {module} is rootful: restoring a rootful module is not supported yet"));
        }
        let hands = paths.hands().map_err(|e| e.to_string())?;
        let names: Vec<&std::ffi::OsStr> = volumes.iter().map(std::ffi::OsStr::new).collect();
        hands
            .sh("making the volumes", std::time::Duration::from_secs(120), MAKE_VOLUMES, &names, None)
            .map_err(|e| e.to_string())?;
        paths.module_service(&setup, &["down"]).map_err(|e| format!("stopping its services: {e}"))?;
        let gateway = crate::backup::Gateway::start(&remote, &path).map_err(|e| e.to_string())?;
        let (state, vols, install) = (paths.state_dir.clone(), paths.volumes_dir(), paths.install_dir.clone());
        let mut args = vec![state.as_os_str(), vols.as_os_str(), install.as_os_str()];
        args.extend(names.iter().copied());
        let url = gateway.url_with_credentials();
        let env = [
            ("NS8RS_SCRIPT", RESTORE_SCRIPT),
            ("NS8RS_SNAPSHOT", snapshot.as_str()),
            ("RESTIC_REPOSITORY", url.as_str()),
            ("RESTIC_PASSWORD", password.as_str()),
        ];
        let restored = hands
            .unshared_command(RESTORE_LIMIT, crate::backup::IN_MOUNT_NAMESPACE, &args, &env)
            .run()
            .map_err(|e| format!("restic restore failed: {}", restic_error(&e)));
        drop(gateway);
        // Its services again, restored or not: the module as it was before is better
        // than a stopped one (the cluster removes a new instance whose restore failed).
        let up = paths.module_service(&setup, &["up"]).map_err(|e| format!("starting its services: {e}"));
        restored?;
        up.map(|_| ())
    })
    .await
    .map_err(|e| ActionError::failed(format!("the restore's thread was lost: {e}")))?;
    done.map_err(ActionError::failed)?;
    Ok(RestoreDataReply { volumes: restored_volumes })
}

pub async fn check(ctx: ActionContext, req: CheckRepositoryRequest) -> Result<CheckRepositoryReply, ActionError> {
    ctx.core_only("check-backup-repository")?;
    let d = &req.destination;
    let subset = format!("--read-data-subset={}%", req.read_percent);
    read(&ctx, d, &req.path, vec!["check".into(), subset]).await.map_err(|e| match e {
        ActionError::Failed { message, .. } => ActionError::failed(format!("the repository check failed: {message}")),
        other => other,
    })?;
    let latest =
        read(&ctx, d, &req.path, vec!["snapshots".into(), "--json".into(), "--latest".into(), "1".into()]).await?;
    let latest: Vec<Value> =
        serde_json::from_str(&latest).map_err(|e| ActionError::failed(format!("restic snapshots: {e}")))?;
    let latest = latest.last().and_then(|s| s["id"].as_str()).unwrap_or_default().to_owned();
    let stats =
        read(&ctx, d, &req.path, vec!["stats".into(), "--json".into(), "--mode".into(), "raw-data".into()]).await?;
    let stats: Value = serde_json::from_str(&stats).map_err(|e| ActionError::failed(format!("restic stats: {e}")))?;
    Ok(CheckRepositoryReply { latest, repository_bytes: stats["total_size"].as_u64().unwrap_or(0) })
}
