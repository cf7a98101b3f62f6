//! Setting up a node's core before its programs first start: the agents' directories,
//! each core program's Redis identity and Redis's ACL file. `node-agent install` does it
//! for a production node (`deploy/install.sh` calls it); `cargo xtask up` does the same
//! under its own root.
//!
//! Each of the cluster agent, the node agent and the api-server connects as its own
//! Redis user, with a random password kept in a root-only (0600) environment file
//! (`REDIS_ADDRESS`, `REDIS_USER`, `REDIS_PASSWORD`) that systemd, the supervisor or
//! `api-cli`/`api-server` run as root read. Redis's ACL file holds only the passwords'
//! SHA-256. A password, once written, is never replaced: its program would be locked out.

use std::fmt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::AgentId;
use protocol::acl;

/// The node a fresh installation is: the first (and, until the cluster grows, only) one.
pub const FIRST_NODE: u32 = 1;
/// Redis as `deploy/redis.conf` runs it.
pub const REDIS_ADDRESS: &str = "127.0.0.1:6379";
/// Where the agents' directories and credentials are on a node (NS8's layout).
pub const AGENTS_BASE: &str = "var/lib/nethserver";
/// Redis's ACL file on a node (`aclfile` in `deploy/redis.conf`).
pub const ACL_FILE: &str = "etc/ns8rs/redis.acl";

const ENV_ADDRESS: &str = "REDIS_ADDRESS";
const ENV_USER: &str = "REDIS_USER";
const ENV_PASSWORD: &str = "REDIS_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} exists but holds no REDIS_PASSWORD: restore it from a backup, or remove it to make a new \
         password (the program that used the old one must then be restarted)"
    )]
    NoPassword { path: PathBuf },
    #[error("{path}: line {line} is not an ACL user line (\"user <name> <rules>\"): fix or remove it")]
    AclLine { path: PathBuf, line: usize },
    #[error(
        "this node is already installed ({path} exists). Nothing was changed. Run again with --force to \
         create what is missing and rewrite the core users' rules in the ACL file; existing passwords are \
         always kept"
    )]
    AlreadyInstalled { path: PathBuf },
    #[error("--node {0}: a node id is a number from 1")]
    BadNode(u32),
}

/// Where the core programs' credentials files are under an agents' base directory.
#[derive(Clone, Debug)]
pub struct CoreFiles {
    pub cluster: PathBuf,
    pub node: PathBuf,
    pub api_server: PathBuf,
}

impl CoreFiles {
    /// NS8's layout under `base` (`/var/lib/nethserver` on a node): `cluster/state/agent.env`,
    /// `node/state/agent.env`, `api-server/agent.env`.
    pub fn under(base: &Path) -> Self {
        CoreFiles {
            cluster: base.join("cluster/state/agent.env"),
            node: base.join("node/state/agent.env"),
            api_server: base.join("api-server/agent.env"),
        }
    }

    fn all(&self) -> [&Path; 3] {
        [&self.cluster, &self.node, &self.api_server]
    }
}

/// A core program's Redis identity.
pub struct Identity {
    pub user: String,
    password: String,
    /// Its environment file (mode 0600).
    pub file: PathBuf,
    /// Whether this run made the password (else it was in the file already).
    pub created: bool,
}

impl Identity {
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `(name, value)` pairs for a child process that connects as this user.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [(ENV_USER, self.user.clone()), (ENV_PASSWORD, self.password.clone())]
    }

    /// The ACL password rule: the SHA-256 only.
    pub fn password_rule(&self) -> String {
        format!("#{}", sha256_hex(&self.password))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("user", &self.user).field("file", &self.file).finish_non_exhaustive()
    }
}

/// The cluster agent's, one node agent's and the api-server's identities.
#[derive(Debug)]
pub struct Core {
    pub cluster: Identity,
    pub node: Identity,
    pub api_server: Identity,
    node_id: AgentId,
}

/// Directories every agent has (NS8's `actions/`, `events/`, `state/`), with the mode
/// each gets: `state/` holds the credentials.
const AGENT_DIRS: &[(&str, u32)] = &[
    ("cluster", 0o755),
    ("cluster/actions", 0o755),
    ("cluster/events", 0o755),
    ("cluster/state", 0o700),
    ("node", 0o755),
    ("node/actions", 0o755),
    ("node/events", 0o755),
    ("node/state", 0o700),
    ("api-server", 0o700),
];

/// Make (or tighten to their modes) the agents' directories under `base`.
pub fn agent_dirs(base: &Path) -> Result<(), InstallError> {
    for (dir, mode) in AGENT_DIRS {
        make_dir(&base.join(dir), *mode)?;
    }
    Ok(())
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), InstallError> {
    let write = |source| InstallError::Write { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(write)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(write)
}

/// The file's variables, `None` if it does not exist.
fn read_env(path: &Path) -> Result<Option<Vec<(String, String)>>, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(protocol::envfile::parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Read { path: path.to_owned(), source }),
    }
}

/// The password in `path`, or a new one when there is no file; an existing file without
/// one is an error (never silently replaced).
fn password_of(path: &Path, vars: &Option<Vec<(String, String)>>) -> Result<(String, bool), InstallError> {
    match vars {
        None => Ok((new_password(), true)),
        Some(vars) => match vars.iter().find(|(k, v)| k == ENV_PASSWORD && !v.is_empty()) {
            Some((_, v)) => Ok((v.clone(), false)),
            None => Err(InstallError::NoPassword { path: path.to_owned() }),
        },
    }
}

/// 256 random bits (two v4 UUIDs, 244 of them random), hex: no character a shell, an
/// environment file or `redis-cli` would treat specially.
fn new_password() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The credentials files as read and checked, not yet written.
struct Planned {
    node_id: AgentId,
    entries: Vec<Entry>,
}

/// One program's credentials file.
struct Entry {
    path: PathBuf,
    user: String,
    /// Variables to set beyond the `REDIS_*` ones.
    extra: Vec<(String, String)>,
    /// What the file holds now.
    vars: Vec<(String, String)>,
    password: String,
    created: bool,
}

fn read_core(files: &CoreFiles, node: u32) -> Result<Planned, InstallError> {
    if node == 0 {
        return Err(InstallError::BadNode(node));
    }
    let node_id = AgentId::Node(node);
    let plan = [
        (&files.cluster, AgentId::Cluster.to_string(), vec![]),
        (
            &files.node,
            node_id.to_string(),
            // The node agent reads its id from here (deploy/systemd/node-agent.service).
            vec![("AGENT_ID".to_owned(), node_id.to_string()), ("NODE_ID".to_owned(), node.to_string())],
        ),
        (&files.api_server, acl::API_SERVER_USER.to_owned(), vec![]),
    ];
    let mut entries = Vec::new();
    for (path, user, extra) in plan {
        let vars = read_env(path)?;
        let (password, created) = password_of(path, &vars)?;
        entries.push(Entry { path: path.clone(), user, extra, vars: vars.unwrap_or_default(), password, created });
    }
    Ok(Planned { node_id, entries })
}

fn write_core(planned: Planned, redis_address: &str) -> Result<Core, InstallError> {
    let mut ids = Vec::new();
    for Entry { path, user, extra, mut vars, password, created } in planned.entries {
        let set = [(ENV_ADDRESS, redis_address.to_owned()), (ENV_USER, user.clone()), (ENV_PASSWORD, password.clone())];
        for (k, v) in set.into_iter().map(|(k, v)| (k.to_owned(), v)).chain(extra) {
            match vars.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => vars.push((k, v)),
            }
        }
        write_private(&path, &protocol::envfile::render(&vars))?;
        ids.push(Identity { user, password, file: path, created });
    }
    let [cluster, node, api_server]: [Identity; 3] = ids.try_into().expect("three identities");
    Ok(Core { cluster, node, api_server, node_id: planned.node_id })
}

/// Read each program's password from its file, or make one where there is no file, and
/// (re)write the files with `redis_address` and the user names, keeping any other
/// variable in them. Every file is checked before any is written.
pub fn core(files: &CoreFiles, node: u32, redis_address: &str) -> Result<Core, InstallError> {
    write_core(read_core(files, node)?, redis_address)
}

/// Write `text` to `path` as a new 0600 file renamed over the old one, so no reader
/// ever sees half of it and it is never readable by others, whatever it was before.
pub fn write_private(path: &Path, text: &str) -> Result<(), InstallError> {
    use std::io::Write;
    let write = |source| InstallError::Write { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| InstallError::Write { path: dir.to_owned(), source })?;
    }
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| InstallError::Write { path: tmp.clone(), source })?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(write)?;
    std::fs::rename(&tmp, path).map_err(write)
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`write_aclfile`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct AclReport {
    /// Users of the file other than the core ones, kept as they were (the modules',
    /// saved there by the cluster with `ACL SAVE`).
    pub kept: usize,
}

/// The lines of users other than `ours` in the ACL file (none if there is no file).
fn other_acl_users(path: &Path, ours: &[&str]) -> Result<Vec<String>, InstallError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(InstallError::Read { path: path.to_owned(), source }),
    };
    let mut others = Vec::new();
    for (n, line) in existing.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let Some(name) = line.strip_prefix("user ").and_then(|l| l.split(' ').next()).filter(|n| !n.is_empty()) else {
            // The line number only: the line may hold a password.
            return Err(InstallError::AclLine { path: path.to_owned(), line: n + 1 });
        };
        if !ours.contains(&name) {
            others.push(line.to_owned());
        }
    }
    Ok(others)
}

fn core_user_names(node_id: &AgentId) -> [String; 4] {
    [acl::DEFAULT_USER.to_owned(), AgentId::Cluster.to_string(), node_id.to_string(), acl::API_SERVER_USER.to_owned()]
}

/// Rewrite the ACL file with `default` (the public reader) and the core users' current
/// rules and password hashes, keeping every other user's line. Redis reads it at start.
/// A line that is not a user line is an error and nothing is written.
pub fn write_aclfile(path: &Path, core: &Core) -> Result<AclReport, InstallError> {
    let names = core_user_names(&core.node_id);
    let others = other_acl_users(path, &names.each_ref().map(String::as_str))?;
    let mut lines = vec![
        format!("user {} {}", acl::DEFAULT_USER, acl::public_rules().join(" ")),
        format!("user {} {}", core.cluster.user, acl::cluster_rules(&core.cluster.password_rule()).join(" ")),
        format!("user {} {}", core.node.user, acl::agent_rules(&core.node_id, &core.node.password_rule()).join(" ")),
        format!("user {} {}", core.api_server.user, acl::api_server_rules(&core.api_server.password_rule()).join(" ")),
    ];
    let kept = others.len();
    lines.extend(others);
    write_private(path, &(lines.join("\n") + "\n"))?;
    Ok(AclReport { kept })
}

/// The agents' directories, the core credentials and the ACL file (in a directory of
/// mode 0700: Redis's `ACL SAVE` writes it with Redis's umask): everything the core
/// programs need before their first start, for agents under `base`. Every file is read
/// and checked before anything is written.
pub fn setup(base: &Path, acl_file: &Path, node: u32, redis_address: &str) -> Result<(Core, AclReport), InstallError> {
    let planned = read_core(&CoreFiles::under(base), node)?;
    other_acl_users(acl_file, &core_user_names(&planned.node_id).each_ref().map(String::as_str))?;
    agent_dirs(base)?;
    if let Some(dir) = acl_file.parent() {
        make_dir(dir, 0o700)?;
    }
    let core = write_core(planned, redis_address)?;
    let report = write_aclfile(acl_file, &core)?;
    Ok((core, report))
}

/// `node-agent install`'s choices.
#[derive(Clone, Debug)]
pub struct Options {
    /// The file system root the node's paths are under: `/` but in tests.
    pub root: PathBuf,
    pub node: u32,
    pub redis_address: String,
    /// Go on when the node is installed already.
    pub force: bool,
}

/// What an installation made and kept, for the caller to show (no secret in it).
#[derive(Debug)]
pub struct Report {
    pub core: Core,
    pub acl_file: PathBuf,
    pub acl: AclReport,
}

/// Install a node's core under `opts.root` in NS8's layout: agents in
/// `/var/lib/nethserver`, the ACL file in `/etc/ns8rs`. Refuses, changing nothing, when every
/// credentials file and the ACL file exist already, unless forced.
pub fn install(opts: &Options) -> Result<Report, InstallError> {
    let base = opts.root.join(AGENTS_BASE);
    let acl_file = opts.root.join(ACL_FILE);
    let files = CoreFiles::under(&base);
    if !opts.force && files.all().iter().all(|f| f.exists()) && acl_file.exists() {
        return Err(InstallError::AlreadyInstalled { path: files.cluster.clone() });
    }
    let (core, acl) = setup(&base, &acl_file, opts.node, &opts.redis_address)?;
    Ok(Report { core, acl_file, acl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn opts(root: &Path) -> Options {
        Options { root: root.to_owned(), node: 1, redis_address: REDIS_ADDRESS.to_owned(), force: false }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn installs_credentials_hashes_and_dirs_in_ns8s_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let report = install(&opts(tmp.path())).unwrap();
        let base = tmp.path().join(AGENTS_BASE);
        for d in ["cluster/actions", "cluster/events", "node/actions", "node/events"] {
            assert_eq!(mode(&base.join(d)), 0o755, "{d}");
        }
        for d in ["cluster/state", "node/state", "api-server"] {
            assert_eq!(mode(&base.join(d)), 0o700, "{d}");
        }
        assert_eq!(mode(&tmp.path().join("etc/ns8rs")), 0o700);
        let acl_text = std::fs::read_to_string(tmp.path().join(ACL_FILE)).unwrap();
        assert_eq!(mode(&tmp.path().join(ACL_FILE)), 0o600);
        for (id, user, file) in [
            (&report.core.cluster, "cluster", "cluster/state/agent.env"),
            (&report.core.node, "node/1", "node/state/agent.env"),
            (&report.core.api_server, "api-server", "api-server/agent.env"),
        ] {
            assert!(id.created);
            assert_eq!(id.user, user);
            assert_eq!(id.file, base.join(file));
            assert_eq!(mode(&id.file), 0o600, "{file}");
            assert_eq!(id.password().len(), 64);
            let vars = protocol::envfile::parse(&std::fs::read_to_string(&id.file).unwrap());
            let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(get("REDIS_ADDRESS"), Some(REDIS_ADDRESS));
            assert_eq!(get("REDIS_USER"), Some(user));
            assert_eq!(get("REDIS_PASSWORD"), Some(id.password()));
            assert!(!acl_text.contains(id.password()), "clear password of {user} in the ACL file");
            assert!(acl_text.contains(&format!("user {user} reset on #{} ", sha256_hex(id.password()))), "{acl_text}");
        }
        let node = protocol::envfile::parse(&std::fs::read_to_string(&report.core.node.file).unwrap());
        assert!(node.contains(&("AGENT_ID".into(), "node/1".into())) && node.contains(&("NODE_ID".into(), "1".into())));
        let lines: Vec<&str> = acl_text.lines().collect();
        assert_eq!(lines[0], format!("user default {}", acl::public_rules().join(" ")));
        assert_eq!(lines.len(), 4);
        assert!(format!("{report:?}").contains("cluster"));
        assert!(!format!("{report:?}").contains(report.core.cluster.password()), "Debug shows no password");
    }

    #[test]
    fn refuses_an_installed_node_and_force_keeps_passwords_and_other_users() {
        let tmp = tempfile::tempdir().unwrap();
        let first = install(&opts(tmp.path())).unwrap();
        let acl_path = tmp.path().join(ACL_FILE);
        // What the cluster's ACL SAVE adds: a module's user, in Redis's own format.
        let module = "user module/mail1 on #0123 ~module/mail1/* resetchannels -@all";
        let saved = std::fs::read_to_string(&acl_path).unwrap() + module + "\n";
        std::fs::write(&acl_path, &saved).unwrap();
        let env_before = std::fs::read_to_string(&first.core.node.file).unwrap();

        let err = install(&opts(tmp.path())).unwrap_err();
        assert!(matches!(err, InstallError::AlreadyInstalled { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&acl_path).unwrap(), saved, "a refusal changes nothing");

        // An operator's own setting survives too.
        std::fs::write(&first.core.node.file, env_before.clone() + "RUST_LOG=debug\n").unwrap();
        let again = install(&Options { force: true, ..opts(tmp.path()) }).unwrap();
        assert_eq!(again.acl, AclReport { kept: 1 });
        for (a, b) in [
            (&first.core.cluster, &again.core.cluster),
            (&first.core.node, &again.core.node),
            (&first.core.api_server, &again.core.api_server),
        ] {
            assert_eq!(a.password(), b.password(), "{} kept its password", a.user);
            assert!(!b.created);
        }
        let acl_text = std::fs::read_to_string(&acl_path).unwrap();
        assert!(acl_text.ends_with(&format!("{module}\n")), "{acl_text}");
        assert_eq!(acl_text.lines().count(), 5);
        let node = std::fs::read_to_string(&again.core.node.file).unwrap();
        assert!(node.contains("RUST_LOG=debug\n"), "{node}");
    }

    #[test]
    fn a_credentials_file_without_password_is_refused_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let files = CoreFiles::under(&tmp.path().join(AGENTS_BASE));
        std::fs::create_dir_all(files.node.parent().unwrap()).unwrap();
        std::fs::write(&files.node, "REDIS_USER=node/1\n").unwrap();
        let err = install(&opts(tmp.path())).unwrap_err();
        assert!(matches!(&err, InstallError::NoPassword { path } if *path == files.node), "{err}");
        assert!(!files.cluster.exists() && !files.api_server.exists(), "no credentials written");
        assert!(!tmp.path().join(ACL_FILE).exists(), "no ACL file written");
        assert!(!files.cluster.parent().unwrap().exists(), "no directories made");
        assert_eq!(std::fs::read_to_string(&files.node).unwrap(), "REDIS_USER=node/1\n");
    }

    #[test]
    fn a_foreign_acl_line_is_refused_without_showing_it() {
        let tmp = tempfile::tempdir().unwrap();
        let acl_path = tmp.path().join(ACL_FILE);
        std::fs::create_dir_all(acl_path.parent().unwrap()).unwrap();
        std::fs::write(&acl_path, "user default on nopass\nsecret-looking >hunter2\n").unwrap();
        let err = install(&opts(tmp.path())).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, InstallError::AclLine { line: 2, .. }), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(std::fs::read_to_string(&acl_path).unwrap(), "user default on nopass\nsecret-looking >hunter2\n");
        assert!(!tmp.path().join(AGENTS_BASE).exists(), "no credentials or directories written");
        let err = install(&Options { node: 0, ..opts(tmp.path()) }).unwrap_err();
        assert!(matches!(err, InstallError::BadNode(0)), "{err}");
    }
}
