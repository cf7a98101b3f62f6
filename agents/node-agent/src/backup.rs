//! The node's side of backup destinations: `validate-backup-destination` lists,
//! writes, reads back and deletes a probe there with rclone, and reads the free space
//! where the store reports it.
//!
//! rclone runs with an empty environment but for the remote's settings
//! (`RCLONE_CONFIG_DEST_*`): the credentials never show in a process's arguments, and
//! nothing of the agent's environment (a proxy, a CA bundle) changes what it does. A
//! local destination must be a directory that only root can change, reached through
//! no symlink: root writes there.
//!
//! Every backup action of the node refuses a module as its caller
//! (`ActionContext::core_only`): through the API with its Redis credentials, or with a
//! `node:reader` grant that matches `read-*`, a module could otherwise have root read
//! another module's repository with a password learnt from its own backups, or write
//! to any local path.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use hostcmd::Cmd;
use protocol::AgentId;
use protocol::actions::Action as _;
use protocol::actions::backup::{DestinationOnly, NodeReadRepositories, RepositoryFound};
use protocol::actions::backup::{
    DestinationRefusal, Location, MIN_FREE_BYTES, ModuleRun, ModuleToBackUp, NodeRunBackupReply, NodeRunBackupRequest,
    Parameters, Provider, ResticSummary, Retention, RunStatus, ValidateReply, ValidateRequest,
};
use protocol::actions::disaster::{UploadClusterBackup, UploadRequest};
use protocol::events::{self, BackupStatusChanged};
use protocol::keys;
use serde_json::Value;

use crate::blocking;
use crate::modules::{ModulePaths, NodeSetup};

/// The remote's name in rclone's environment configuration.
const REMOTE: &str = "dest";

/// A destination as rclone reaches it.
#[derive(Clone)]
pub struct Remote {
    pub(crate) env: Vec<(String, String)>,
    /// `dest:<path>`, the destination's root.
    pub(crate) root: String,
}

impl Remote {
    /// The remote, or the refusal that says why it cannot be.
    pub fn new(provider: Provider, url: &str, p: &Parameters) -> Result<Remote, (DestinationRefusal, String)> {
        let location = Location::parse(provider, url).map_err(|e| (DestinationRefusal::BadUrl, e.to_string()))?;
        let var = |k: &str, v: &str| (format!("RCLONE_CONFIG_{}_{k}", REMOTE.to_uppercase()), v.to_owned());
        match location {
            Location::Local { path } => {
                Ok(Remote { env: vec![var("TYPE", "local")], root: format!("{REMOTE}:{path}") })
            }
            Location::S3 { endpoint, bucket, prefix } => {
                let (Some(key), Some(secret)) = (p.aws_access_key_id.as_deref(), p.aws_secret_access_key.as_deref())
                else {
                    return Err((
                        DestinationRefusal::BadParameters,
                        "aws_access_key_id and aws_secret_access_key are required".into(),
                    ));
                };
                let mut env = vec![
                    var("TYPE", "s3"),
                    var("PROVIDER", if provider == Provider::Aws { "AWS" } else { "Other" }),
                    var("ENV_AUTH", "false"),
                    var("ACCESS_KEY_ID", key),
                    var("SECRET_ACCESS_KEY", secret),
                    var("REGION", p.aws_default_region.as_deref().filter(|r| !r.is_empty()).unwrap_or("us-east-1")),
                ];
                if provider == Provider::GenericS3 {
                    env.push(var("ENDPOINT", &endpoint));
                }
                let path = if prefix.is_empty() { bucket } else { format!("{bucket}/{prefix}") };
                Ok(Remote { env, root: format!("{REMOTE}:{path}") })
            }
        }
    }

    /// `rclone <args>` on this remote, short timeouts, one retry.
    fn rclone(&self, args: &[&str]) -> Cmd {
        self.rclone_under(&[], args)
    }

    /// The same, run through `wrapper` (a gateway: `setpriv --pdeathsig KILL`, so that
    /// it dies with the node agent's thread that started it, a `kill -9` included).
    fn rclone_under(&self, wrapper: &[&str], args: &[&str]) -> Cmd {
        let cmd = match wrapper.split_first() {
            Some((program, rest)) => Cmd::new(program).args(rest.iter().copied()).arg("rclone"),
            None => Cmd::new("rclone"),
        };
        let cmd = cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        self.env
            .iter()
            .fold(cmd, |cmd, (k, v)| cmd.env(k, v))
            .args(["--config", "/dev/null", "--contimeout", "10s", "--timeout", "30s"])
            .args(["--retries", "1", "--low-level-retries", "2", "--quiet"])
            .args(args)
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.root)
    }
}

/// What a store's status in rclone's words means for the administrator.
fn hint(cause: &str) -> &'static str {
    if cause.contains("status code: 403") || cause.contains("InvalidAccessKeyId") || cause.contains("AccessDenied") {
        "; the destination refused the credentials: expired, revoked or not allowed to write there"
    } else if ["no space left", "remaining disk space", "QuotaExceeded"].iter().any(|s| cause.contains(s)) {
        "; the destination is full"
    } else {
        ""
    }
}

/// rclone's own words for a failure: its last logged line without the timestamp
/// (the lines after it are the HTTP details), else the last line.
fn reason(e: &hostcmd::CmdError) -> Value {
    let stamped = |l: &&str| l.len() > 20 && l.as_bytes()[4] == b'/' && l.as_bytes()[7] == b'/';
    let lines: Vec<&str> = e.stderr().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let text = match lines.iter().rposition(stamped) {
        // "2026/12/03 07:37:26 Failed to mkdir: ..." → "Failed to mkdir: ...", with the
        // "caused by: ..." lines that follow it.
        Some(i) => {
            let first = lines[i].splitn(3, ' ').nth(2).unwrap_or(lines[i]);
            let causes = lines[i + 1..].iter().filter(|l| l.starts_with("caused by:"));
            std::iter::once(first).chain(causes.copied()).collect::<Vec<_>>().join(": ")
        }
        None => lines.last().copied().unwrap_or("rclone failed").to_owned(),
    };
    Value::from(text.chars().take(400).collect::<String>())
}

pub async fn validate(ctx: ActionContext, req: ValidateRequest) -> Result<ValidateReply, ActionError> {
    ctx.core_only("validate-backup-destination")?;
    let AgentId::Node(node_id) = ctx.agent else {
        return Err(ActionError::failed("validate-backup-destination runs on a node agent"));
    };
    let probe = format!(".ns8rs-check-{}", ctx.task_id);
    let free = blocking::run(move || check(&req, &probe).map_err(Failed)).await.map_err(|Failed(e)| e)?;
    Ok(ValidateReply { node_id, free_bytes: free })
}

/// `upload-cluster-backup`: the cluster's encrypted dump, written to the
/// destination's root (what `retrieve-cluster-backup` reads back after a disaster).
/// rclone writes it under a temporary name and moves it, so a run cut short never
/// leaves a half copy where the last good one was.
pub async fn upload_cluster_backup(ctx: ActionContext, req: UploadRequest) -> Result<(), ActionError> {
    use base64::Engine as _;
    ctx.core_only(UploadClusterBackup::NAME)?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(req.data.as_bytes())
        .map_err(|e| ActionError::failed(format!("the dump is not base64: {e}")))?;
    let d = req.destination;
    blocking::run(move || {
        let remote = Remote::new(d.provider, &d.url, &d.parameters)
            .map_err(|(r, why)| Failed(ActionError::refuse(r, why.into())))?;
        let (partial, target) = (remote.path(&format!(".{}.partial", req.name)), remote.path(&req.name));
        let failed = |what: &str, e: hostcmd::CmdError| {
            Failed(ActionError::failed(format!("cannot {what} {} in destination {}: {}", req.name, d.id, reason(&e))))
        };
        remote.rclone(&["rcat", &partial]).stdin(data).run().map_err(|e| failed("write", e))?;
        remote.rclone(&["moveto", &partial, &target]).run().map_err(|e| failed("rename", e))?;
        Ok::<_, Failed>(())
    })
    .await
    .map_err(|Failed(e)| e)
}

/// `read-backup-repositories` of one destination: every `<image>/<uuid>` directory
/// that holds a restic repository, with the time of its newest snapshot (0: none yet).
/// What a destination lists is not trusted: only names of the repository path's shape
/// are returned.
pub async fn read_repositories(ctx: ActionContext, req: DestinationOnly) -> Result<Vec<RepositoryFound>, ActionError> {
    ctx.core_only(NodeReadRepositories::NAME)?;
    let d = req.destination;
    blocking::run(move || {
        let remote = Remote::new(d.provider, &d.url, &d.parameters)
            .map_err(|(r, why)| Failed(ActionError::refuse(r, why.into())))?;
        let args = ["lsjson", "-R", "--files-only", "--max-depth", "4", "--include", "/*/*/config"];
        let out = remote
            .rclone(&[&args[..], &["--include", "/*/*/snapshots/*", &remote.root]].concat())
            .stdout()
            .map_err(|e| Failed(ActionError::failed(format!("cannot list destination {}: {}", d.id, reason(&e)))))?;
        let entries: Vec<Value> = serde_json::from_str(&out)
            .map_err(|e| Failed(ActionError::failed(format!("rclone lsjson answered no list: {e}"))))?;
        Ok::<_, Failed>(found_repositories(&entries))
    })
    .await
    .map_err(|Failed(e)| e)
}

/// The repositories in an `rclone lsjson` listing of `*/*/config` and
/// `*/*/snapshots/*`.
fn found_repositories(entries: &[Value]) -> Vec<RepositoryFound> {
    let mut found: std::collections::BTreeMap<String, (bool, i64)> = std::collections::BTreeMap::new();
    for e in entries {
        let Some(path) = e["Path"].as_str() else { continue };
        let parts: Vec<&str> = path.split('/').collect();
        let (repo, is_config) = match parts.as_slice() {
            [image, uuid, "config"] => (format!("{image}/{uuid}"), true),
            [image, uuid, "snapshots", _] => (format!("{image}/{uuid}"), false),
            _ => continue,
        };
        if !repository_path_shaped(&repo) {
            continue;
        }
        let time = e["ModTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map_or(0, |t| t.as_second());
        let slot = found.entry(repo).or_insert((false, 0));
        if is_config {
            slot.0 = true;
        } else {
            slot.1 = slot.1.max(time);
        }
    }
    found
        .into_iter()
        .filter(|(_, (config, _))| *config)
        .map(|(path, (_, timestamp))| RepositoryFound { path, timestamp })
        .collect()
}

/// `<image>/<uuid>` as [`protocol::actions::backup::REPOSITORY_PATH_PATTERN`] has it.
fn repository_path_shaped(path: &str) -> bool {
    let Some((image, uuid)) = path.split_once('/') else { return false };
    let image_ok = (1..=128).contains(&image.len())
        && image.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && image.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    let uuid_ok = (1..=64).contains(&uuid.len()) && uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    image_ok && uuid_ok
}

/// An action's failure from the blocking pool.
struct Failed(ActionError);

impl From<tokio::task::JoinError> for Failed {
    fn from(e: tokio::task::JoinError) -> Self {
        Failed(ActionError::failed(format!("the check's thread was lost: {e}")))
    }
}

/// The checks, in NS8's order of blame: reach, write, read, delete; then the room.
fn check(req: &ValidateRequest, probe: &str) -> Result<Option<u64>, ActionError> {
    let remote =
        Remote::new(req.provider, &req.url, &req.parameters).map_err(|(r, why)| ActionError::refuse(r, why.into()))?;
    if let Ok(Location::Local { path }) = Location::parse(req.provider, &req.url) {
        root_owned_dir(Path::new(&path))?;
    }
    let refuse = |r: DestinationRefusal| move |e: hostcmd::CmdError| ActionError::refuse(r, reason(&e));
    remote.rclone(&["mkdir", &remote.root]).run().map_err(refuse(DestinationRefusal::NotAccessible))?;
    remote
        .rclone(&["lsf", "--max-depth", "1", &remote.root])
        .run()
        .map_err(refuse(DestinationRefusal::NotAccessible))?;
    let target = remote.path(probe);
    let content = format!("ns8rs destination check {probe}\n");
    remote.rclone(&["rcat", &target]).stdin(content.clone()).run().map_err(refuse(DestinationRefusal::NoWrite))?;
    let read = remote.rclone(&["cat", &target]).stdout().map_err(refuse(DestinationRefusal::NoRead));
    let read = match read {
        Ok(text) if text == content => Ok(()),
        Ok(_) => Err(ActionError::refuse(
            DestinationRefusal::NoRead,
            "the probe read back differs from what was written".into(),
        )),
        Err(e) => Err(e),
    };
    // Delete whatever the read found: a failed read leaves no probe behind either.
    let deleted = remote.rclone(&["deletefile", &target]).run().map_err(refuse(DestinationRefusal::NoDelete));
    read?;
    deleted?;
    let free = remote
        .rclone(&["about", "--json", &remote.root])
        .stdout()
        .ok()
        .and_then(|out| serde_json::from_str::<Value>(&out).ok())
        .and_then(|v| v["free"].as_u64());
    if let Some(free) = free.filter(|f| *f < MIN_FREE_BYTES) {
        return Err(ActionError::refuse(
            DestinationRefusal::NoSpace,
            format!("{free} bytes free, {MIN_FREE_BYTES} needed at least").into(),
        ));
    }
    Ok(free)
}

/// `path` is an existing directory reached through no symlink, and neither it nor an
/// ancestor may be changed by anyone but root (an ancestor may be a sticky,
/// world-writable directory such as `/tmp`: others cannot move root's entries there).
fn root_owned_dir(path: &Path) -> Result<(), ActionError> {
    let unsafe_path = |why: String| ActionError::refuse(DestinationRefusal::PathUnsafe, why.into());
    let mut at = PathBuf::from("/");
    let parts: Vec<_> = path.components().skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let last = i + 1 == parts.len();
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ActionError::refuse(
                    DestinationRefusal::PathNotFound,
                    format!("{} does not exist (is the disk mounted?)", at.display()).into(),
                ));
            }
            Err(e) => return Err(unsafe_path(format!("cannot inspect {}: {e}", at.display()))),
        };
        if meta.file_type().is_symlink() {
            return Err(unsafe_path(format!("{} is a symlink", at.display())));
        }
        if !meta.is_dir() {
            return Err(unsafe_path(format!("{} is not a directory", at.display())));
        }
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 {
            return Err(unsafe_path(format!("{} is owned by uid {}: only root may own it", at.display(), meta.uid())));
        }
        if writable_by_others && (last || !sticky) {
            return Err(unsafe_path(format!(
                "{} may be changed by others (mode {:o}): only root may write there",
                at.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// The node's restic gateway for one module's run: `rclone serve restic` on a free
/// loopback port, serving that module's repository alone (append-only: a module
/// cannot delete or rewrite its past snapshots), behind a user and password made for
/// this run. The destination's credentials stay in rclone's environment (root's);
/// the module gets only the gateway's URL and this run's password. Killed on drop.
pub(crate) struct Gateway {
    child: std::process::Child,
    port: u16,
    user: String,
    password: String,
    /// What rclone logs (errors only), drained as it comes so it never blocks.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no free loopback port for the backup gateway: {0}")]
    Port(std::io::Error),
    #[error("cannot run rclone serve restic: {0}")]
    Spawn(std::io::Error),
    #[error("rclone serve restic exited ({status}): {stderr}")]
    Exited { status: std::process::ExitStatus, stderr: String },
    #[error("rclone serve restic did not listen within 20 s")]
    Silent,
}

impl Gateway {
    pub(crate) fn start(remote: &Remote, path: &str) -> Result<Gateway, GatewayError> {
        // Hex: nothing a URL's user part needs escaped.
        let user = seal::random_hex(4);
        let password = seal::random_hex(16);
        let mut last = GatewayError::Silent;
        // The free port is found by binding and releasing it; another process may
        // take it in between, so try a few.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(GatewayError::Port)?
                .port();
            let mut cmd = remote
                .rclone_under(&["setpriv", "--pdeathsig", "KILL"], &["serve", "restic", "--append-only"])
                .args(["--addr", &format!("127.0.0.1:{port}")])
                .arg(format!("{}/{path}", remote.root))
                .env("RCLONE_USER", &user)
                .env("RCLONE_PASS", &password)
                .to_std();
            let mut child = cmd
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(GatewayError::Spawn)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
                    if let Some(stderr) = child.stderr.take() {
                        let log = log.clone();
                        std::thread::spawn(move || {
                            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                                if l.len() < 64 * 1024 {
                                    l.push_str(&line);
                                    l.push('\n');
                                }
                            }
                        });
                    }
                    return Ok(Gateway { child, port, user, password, log });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    last = GatewayError::Exited { status, stderr: err.trim().to_owned() };
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = GatewayError::Silent;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Err(last)
    }

    /// The last error rclone logged, if any.
    fn last_error(&self) -> Option<String> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.lines().rev().map(str::trim).find(|l| !l.is_empty()).map(str::to_owned)
    }

    /// `rest:http://<user>:<password>@127.0.0.1:<port>/`: given to the backup in its
    /// environment only.
    pub(crate) fn url_with_credentials(&self) -> String {
        format!("rest:http://{}:{}@127.0.0.1:{}/", self.user, self.password, self.port)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// restic as root on a module's repository, straight through rclone (never through
/// the module's files): retention, unlocking, statistics.
pub(crate) fn restic(remote: &Remote, path: &str, password: &str, cache: &Path, args: &[&str]) -> Cmd {
    let cmd = Cmd::new("restic").env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    remote
        .env
        .iter()
        .fold(cmd, |cmd, (k, v)| cmd.env(k, v))
        .env("RESTIC_REPOSITORY", format!("rclone:{}/{path}", remote.root))
        .env("RESTIC_PASSWORD", password)
        .env("RESTIC_CACHE_DIR", cache)
        .env("HOME", cache)
        .args(["-o", "rclone.args=serve restic --stdio --b2-hard-delete --config /dev/null"])
        .args(args)
}

/// restic's own words: its last two lines (a cause, then its `Fatal:` summary).
pub(crate) fn restic_error(e: &hostcmd::CmdError) -> String {
    let lines: Vec<&str> = e.stderr().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.len() {
        0 => "restic failed".to_owned(),
        n => lines[n.saturating_sub(2)..].join(" / "),
    }
}

fn now() -> u64 {
    protocol::time::unix_seconds()
}

pub async fn run_backup(
    ctx: ActionContext,
    req: NodeRunBackupRequest,
    setup: NodeSetup,
) -> Result<NodeRunBackupReply, ActionError> {
    ctx.core_only("run-backup")?;
    let AgentId::Node(node_id) = ctx.agent else {
        return Err(ActionError::failed("run-backup runs on a node agent"));
    };
    let cache = ctx.state_dir.join("restic-cache");
    let mut runs = Vec::new();
    let total = req.modules.len().max(1);
    for (i, m) in req.modules.iter().enumerate() {
        let start = now();
        let status = backup_module(&ctx, &setup, &req, m, &cache).await;
        let status = match status {
            Ok(mut s) => {
                s.start = start;
                s.end = now();
                s
            }
            Err(error) => RunStatus { start, end: now(), errors: 1, error: Some(error), ..RunStatus::default() },
        };
        let json = serde_json::to_string(&status).expect("a RunStatus always serializes");
        let _: () = ctx.redis.hset(keys::backup_status(node_id, req.id), (m.module_id.as_str(), json)).await?;
        let event = BackupStatusChanged { node_id, module_id: m.module_id.clone(), backup_id: req.id };
        let event = serde_json::to_string(&event).expect("an event always serializes");
        let channel = keys::event_channel(&ctx.agent, events::BACKUP_STATUS_CHANGED);
        if let Err(e) = ctx.redis.publish::<(), _, _>(channel, event).await {
            tracing::warn!("cannot publish {}: {e}", events::BACKUP_STATUS_CHANGED);
        }
        runs.push(ModuleRun { module_id: m.module_id.clone(), node_id, status });
        ctx.set_progress((((i + 1) * 100) / total) as u8);
    }
    Ok(NodeRunBackupReply { modules: runs })
}

/// The backup as the module's hands run it: in a mount namespace of their own
/// (inside the module's user namespace for a rootless module), `state/` and each
/// volume bound under a private `/srv`, so every snapshot has NS8's paths
/// (`/state/...`, `/volumes/<name>/...`) whatever the module's home, and files that
/// container users own are read, and recorded, with the owners the containers see.
/// `$1` the state dir, `$2` the volumes dir, `$3` the install dir.
const BACKUP_SCRIPT: &str = r#"set -eu
state="$1"; volumes="$2"; install="$3"
mount -t tmpfs -o mode=0755 ns8rs-backup /srv
mkdir /srv/state /srv/volumes
mount --bind "$state" /srv/state
targets=state
if [ -d "$volumes" ]; then
  for dir in "$volumes"/*/; do
    [ -d "${dir}_data" ] || continue
    name=$(basename "$dir")
    case "$name" in [!A-Za-z0-9]*|*[!A-Za-z0-9_.-]*) continue ;; esac
    mkdir "/srv/volumes/$name"
    mount --bind "${dir}_data" "/srv/volumes/$name"
    targets="$targets volumes/$name"
  done
fi
excludes=/srv/.ns8rs-excludes
: > "$excludes"
if [ -f "$install/etc/state-exclude.conf" ]; then
  grep -v '^[[:space:]]*\(#\|$\)' "$install/etc/state-exclude.conf" | sed 's|^/*|/srv/|' > "$excludes" || true
fi
export RESTIC_CACHE_DIR="${HOME:-$install}/.cache/restic"
cd /srv
# Init only a repository that is not there: one that opens with another password is an
# error of its own, never hidden behind a failed init. (restic also says "Is there a
# repository" when the store fails; init then fails with the store's words.)
if ! opened=$(restic cat config 2>&1 >/dev/null); then
  case "$opened" in
    *"unable to open config file"*|*"Is there a repository"*) restic init >/dev/null ;;
    *) printf 'cannot open the repository: %s\n' "$opened" >&2; exit 1 ;;
  esac
fi
exec restic backup --json --tag ns8rs --host "$NS8RS_MODULE_ID" --exclude-file "$excludes" $targets
"#;

/// Enters a private mount namespace and runs [`BACKUP_SCRIPT`] there.
pub(crate) const IN_MOUNT_NAMESPACE: &str =
    r#"exec unshare --mount --propagation private /bin/sh -c "$NS8RS_SCRIPT" sh "$@""#;

/// A backup runs at most this long.
const BACKUP_LIMIT: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Run the backup of `paths` into the gateway's repository; restic's progress goes to
/// `progress` (0-100).
fn module_restic_backup(
    paths: &ModulePaths,
    gateway_url: &str,
    restic_password: &str,
    progress: impl Fn(u8),
) -> Result<ResticSummary, String> {
    let hands = paths.hands().map_err(|e| e.to_string())?;
    let (state, volumes, install) = (paths.state_dir.clone(), paths.volumes_dir(), paths.install_dir.clone());
    let args = [state.as_os_str(), volumes.as_os_str(), install.as_os_str()];
    let env = [
        ("NS8RS_SCRIPT", BACKUP_SCRIPT),
        ("NS8RS_MODULE_ID", paths.id.as_str()),
        ("RESTIC_REPOSITORY", gateway_url),
        ("RESTIC_PASSWORD", restic_password),
    ];
    let mut cmd = hands.unshared_command(BACKUP_LIMIT, IN_MOUNT_NAMESPACE, &args, &env).to_std();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the backup: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut text);
        text
    });
    let mut summary = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped"))) {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        match v["message_type"].as_str() {
            Some("status") => progress((v["percent_done"].as_f64().unwrap_or(0.0) * 100.0) as u8),
            Some("summary") => summary = Some(v),
            _ => {}
        }
    }
    let status = child.wait().map_err(|e| format!("the backup was lost: {e}"))?;
    let errors = errors.join().unwrap_or_default();
    let Some(v) = summary.filter(|_| status.success()) else {
        let last: Vec<&str> = errors.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let last = last.iter().rev().take(2).rev().copied().collect::<Vec<_>>().join(" / ");
        return Err(format!("restic backup failed ({status}): {}", if last.is_empty() { "no message" } else { &last }));
    };
    let n = |f: &str| v[f].as_u64().unwrap_or(0);
    Ok(ResticSummary {
        snapshot_id: v["snapshot_id"].as_str().unwrap_or_default().to_owned(),
        files_new: n("files_new"),
        files_changed: n("files_changed"),
        data_added: n("data_added"),
        total_files_processed: n("total_files_processed"),
        total_bytes_processed: n("total_bytes_processed"),
    })
}

/// One module: the gateway to its repository, its backup by its own hands, then (as
/// root, on the repository only) the stale locks cleared, the retention applied and
/// the statistics read.
async fn backup_module(
    ctx: &ActionContext,
    setup: &NodeSetup,
    req: &NodeRunBackupRequest,
    m: &ModuleToBackUp,
    cache: &Path,
) -> Result<RunStatus, String> {
    let paths = ModulePaths::find(setup, &m.module_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("module {} is not one this node made", m.module_id))?;
    let d = req.destination.clone();
    let remote = Remote::new(d.provider, &d.url, &d.parameters).map_err(|(_, why)| why)?;
    let path = format!("{}/{}", m.image, m.uuid);
    // How many snapshots the repository kept after this node's last run: no `forget`
    // while the plan keeps them all (each restic that opens a repository pays its key
    // derivation, about half a second by design). The backup itself checks every time
    // that the repository exists: a destination can be wiped without the node knowing.
    let known = RepoRecord::path(cache, &d.id, &path);
    let record = RepoRecord::read(&known);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
    let work = {
        let (remote, path, password) = (remote.clone(), path.clone(), d.password.clone());
        tokio::task::spawn_blocking(move || {
            let gateway = Gateway::start(&remote, &path).map_err(|e| e.to_string())?;
            let done = module_restic_backup(&paths, &gateway.url_with_credentials(), &password, |p| {
                let _ = tx.send(p);
            });
            // The store's own words, when the gateway saw the failure.
            done.map_err(|e| match gateway.last_error() {
                Some(cause) => format!("{e} (the destination said: {cause}){}", hint(&cause)),
                None => e,
            })
        })
    };
    let mut shown = 0;
    while let Some(p) = rx.recv().await {
        if p >= shown + 5 {
            shown = p;
            ctx.set_progress(p.min(95));
        }
    }
    let summary = work.await.map_err(|e| format!("the backup's thread was lost: {e}"))?;
    // After a failure nothing is assumed: the next run checks the repository, forgets
    // and clears stale locks again.
    let summary = summary.inspect_err(|_| {
        let _ = std::fs::remove_file(&known);
    })?;
    let expected = record.map(|r| r.snapshots + 1);
    let snapshots_count = match expected {
        Some(n) if n <= u64::from(req.retention.keep_last) => n,
        _ => {
            let (password, retention, cache) = (d.password.clone(), req.retention.clone(), cache.to_owned());
            tokio::task::spawn_blocking(move || after_backup(&remote, &path, &password, &retention, &cache))
                .await
                .map_err(|e| format!("the retention's thread was lost: {e}"))??
        }
    };
    RepoRecord { snapshots: snapshots_count }.write(&known);
    Ok(RunStatus {
        success: true,
        snapshot_id: Some(summary.snapshot_id),
        data_added: summary.data_added,
        // What the snapshot holds, as restic's summary counts it.
        total_size: summary.total_bytes_processed,
        total_file_count: summary.total_files_processed,
        snapshots_count,
        ..RunStatus::default()
    })
}

/// What the node remembers of a module repository it backed up, in its own state
/// (`restic-cache/known/<destination>/<image>/<uuid>`, root's): the snapshots it keeps.
#[derive(serde::Serialize, serde::Deserialize)]
struct RepoRecord {
    snapshots: u64,
}

impl RepoRecord {
    fn path(cache: &Path, destination: &str, repo: &str) -> PathBuf {
        cache.join("known").join(destination).join(repo)
    }

    fn read(path: &Path) -> Option<RepoRecord> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Best effort: without it, the next run checks and forgets again.
    fn write(&self, path: &Path) {
        let text = serde_json::to_vec(self).expect("a RepoRecord always serializes");
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(path, text));
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// The plan's rules applied: `forget` (all of the module's snapshots as one group,
/// whatever volumes each has), and `prune` only when it removed some (a prune reads and
/// rewrites the repository's index: most runs remove nothing). A lock in the way is
/// cleared with `unlock`, which removes stale locks only (a crashed run of ours; a live
/// or foreign one stays, and the run fails naming it). The snapshots kept, counted.
fn after_backup(
    remote: &Remote,
    path: &str,
    password: &str,
    retention: &Retention,
    cache: &Path,
) -> Result<u64, String> {
    std::fs::create_dir_all(cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let run = |args: &[&str]| restic(remote, path, password, cache, args).stdout().map_err(|e| restic_error(&e));
    let mut forget =
        vec!["forget".to_owned(), "--json".into(), "--group-by".into(), "host".into(), "--keep-last".into()];
    forget.push(retention.keep_last.to_string());
    for (flag, v) in [
        ("--keep-daily", retention.keep.keep_daily),
        ("--keep-weekly", retention.keep.keep_weekly),
        ("--keep-monthly", retention.keep.keep_monthly),
    ] {
        if let Some(n) = v {
            forget.push(flag.into());
            forget.push(n.to_string());
        }
    }
    let forget: Vec<&str> = forget.iter().map(String::as_str).collect();
    let out = match run(&forget) {
        Err(e) if e.contains("locked") => {
            run(&["unlock"])?;
            run(&forget)?
        }
        other => other?,
    };
    let groups: Value = serde_json::from_str(&out).map_err(|e| format!("restic forget: {e}"))?;
    let count = |field: &str| -> u64 {
        groups
            .as_array()
            .map(|g| g.iter().map(|x| x[field].as_array().map_or(0, |a| a.len() as u64)).sum())
            .unwrap_or(0)
    };
    if count("remove") > 0 {
        run(&["prune"])?;
    }
    Ok(count("keep"))
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    #[test]
    fn repositories_found_in_a_listing() {
        let entries: Vec<Value> = serde_json::from_value(serde_json::json!([
            {"Path": "dokuwiki/u-1/config", "ModTime": "2026-12-01T10:00:00Z"},
            {"Path": "dokuwiki/u-1/snapshots/aa", "ModTime": "2026-12-02T10:00:00Z"},
            {"Path": "dokuwiki/u-1/snapshots/bb", "ModTime": "2026-12-03T10:00:00Z"},
            {"Path": "dokuwiki/u-2/config", "ModTime": "2026-12-01T10:00:00Z"},
            {"Path": "orphan/u-3/snapshots/cc", "ModTime": "2026-12-01T10:00:00Z"},
            {"Path": "Bad Name/u-4/config", "ModTime": "2026-12-01T10:00:00Z"},
            {"Path": "cluster-backup-x.json.gz.age"},
        ]))
        .unwrap();
        let found = found_repositories(&entries);
        let paths: Vec<(&str, i64)> = found.iter().map(|r| (r.path.as_str(), r.timestamp)).collect();
        assert_eq!(paths, [("dokuwiki/u-1", 1796292000), ("dokuwiki/u-2", 0)]);
    }
}
