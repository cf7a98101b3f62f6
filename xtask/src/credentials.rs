//! The local cluster's Redis users: one per program, each with a random password in a
//! root-only environment file that its program (and `api-cli` run as root) reads, and
//! only its SHA-256 in Redis's ACL file. `default` is NS8's anonymous public reader.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use protocol::AgentId;

/// A core program's Redis identity.
pub struct Identity {
    pub user: String,
    pub password: String,
    /// Its `REDIS_*` environment file (mode 0600, root's).
    pub file: PathBuf,
}

impl Identity {
    /// `(name, value)` pairs for a child process that connects as this user.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [("REDIS_USER", self.user.clone()), ("REDIS_PASSWORD", self.password.clone())]
    }
}

/// The three core identities of the local cluster.
pub struct Core {
    pub cluster: Identity,
    pub node: Identity,
    pub api_server: Identity,
}

/// Read `file`'s password, or make one and write the file (0600) if there is none.
fn ensure(file: &Path, user: &str, redis_address: &str) -> Result<Identity> {
    let existing = std::fs::read_to_string(file).ok().and_then(|text| {
        protocol::envfile::parse(&text).into_iter().find(|(k, _)| k == "REDIS_PASSWORD").map(|(_, v)| v)
    });
    let password = match existing.filter(|p| p.len() >= 32) {
        Some(p) => p,
        None => format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()),
    };
    let vars = vec![
        ("REDIS_ADDRESS".to_owned(), redis_address.to_owned()),
        ("REDIS_USER".to_owned(), user.to_owned()),
        ("REDIS_PASSWORD".to_owned(), password.clone()),
    ];
    write_private(file, &protocol::envfile::render(&vars))?;
    Ok(Identity { user: user.to_owned(), password, file: file.to_owned() })
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The credentials of the cluster agent, node 1's agent and the api-server under
/// `root`, made at the first `up` and kept after.
pub fn core(root: &Path, redis_address: &str) -> Result<Core> {
    Ok(Core {
        cluster: ensure(&cluster_file(root), "cluster", redis_address)?,
        node: ensure(&root.join("node/state/agent.env"), "node/1", redis_address)?,
        api_server: ensure(&root.join("api-server/agent.env"), protocol::acl::API_SERVER_USER, redis_address)?,
    })
}

/// Where the cluster agent's credentials are (`api-cli` run as root finds them there).
pub fn cluster_file(root: &Path) -> PathBuf {
    root.join("cluster/state/agent.env")
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Rewrite the ACL file with the core users' current rules and password hashes,
/// keeping every other user in it (the modules', saved by the cluster with `ACL SAVE`).
/// Redis reads it at its start.
pub fn write_aclfile(path: &Path, core: &Core) -> Result<()> {
    let hash = |i: &Identity| format!("#{}", sha256_hex(&i.password));
    let node: AgentId = core.node.user.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lines = vec![
        format!("user {} {}", protocol::acl::DEFAULT_USER, protocol::acl::public_rules().join(" ")),
        format!("user {} {}", core.cluster.user, protocol::acl::cluster_rules(&hash(&core.cluster)).join(" ")),
        format!("user {} {}", core.node.user, protocol::acl::agent_rules(&node, &hash(&core.node)).join(" ")),
        format!("user {} {}", core.api_server.user, protocol::acl::api_server_rules(&hash(&core.api_server)).join(" ")),
    ];
    let ours = [protocol::acl::DEFAULT_USER, &core.cluster.user, &core.node.user, &core.api_server.user];
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    for line in existing.lines().filter(|l| !l.trim().is_empty()) {
        let Some(name) = line.strip_prefix("user ").and_then(|l| l.split(' ').next()) else {
            bail!("{}: line {line:?} is not an ACL user line", path.display());
        };
        if !ours.contains(&name) {
            lines.push(line.to_owned());
        }
    }
    write_private(path, &(lines.join("\n") + "\n"))
}
