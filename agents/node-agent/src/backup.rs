//! The node's side of backup destinations: `validate-backup-destination` lists,
//! writes, reads back and deletes a probe there with rclone, and reads the free space
//! where the store reports it.
//!
//! rclone runs with an empty environment but for the remote's settings
//! (`RCLONE_CONFIG_DEST_*`): the credentials never show in a process's arguments, and
//! nothing of the agent's environment (a proxy, a CA bundle) changes what it does. A
//! local destination must be a directory that only root can change, reached through
//! no symlink: root writes there.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agent_runtime::{ActionContext, ActionError};
use hostcmd::Cmd;
use protocol::AgentId;
use protocol::actions::backup::{
    DestinationRefusal, Location, MIN_FREE_BYTES, Parameters, Provider, ValidateReply, ValidateRequest,
};
use serde_json::Value;

use crate::blocking;

/// The remote's name in rclone's environment configuration.
const REMOTE: &str = "dest";

/// A destination as rclone reaches it.
pub struct Remote {
    env: Vec<(String, String)>,
    /// `dest:<path>`, the destination's root.
    root: String,
}

impl Remote {
    pub fn new(provider: Provider, url: &str, p: &Parameters) -> Result<Remote, ActionError> {
        let location = Location::parse(provider, url)
            .map_err(|e| ActionError::refuse(DestinationRefusal::BadUrl, e.to_string().into()))?;
        let var = |k: &str, v: &str| (format!("RCLONE_CONFIG_{}_{k}", REMOTE.to_uppercase()), v.to_owned());
        match location {
            Location::Local { path } => {
                Ok(Remote { env: vec![var("TYPE", "local")], root: format!("{REMOTE}:{path}") })
            }
            Location::S3 { endpoint, bucket, prefix } => {
                let (Some(key), Some(secret)) = (p.aws_access_key_id.as_deref(), p.aws_secret_access_key.as_deref())
                else {
                    return Err(ActionError::refuse(
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
        let cmd = Cmd::new("rclone").env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
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
    let AgentId::Node(node_id) = ctx.agent else {
        return Err(ActionError::failed("validate-backup-destination runs on a node agent"));
    };
    let probe = format!(".ns8rs-check-{}", ctx.task_id);
    let free = blocking::run(move || check(&req, &probe).map_err(Failed)).await.map_err(|Failed(e)| e)?;
    Ok(ValidateReply { node_id, free_bytes: free })
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
    let remote = Remote::new(req.provider, &req.url, &req.parameters)?;
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
