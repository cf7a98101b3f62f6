//! Test fixtures: a private `redis-server` per test, on a Unix socket in a temp dir.
//!
//! No TCP port is opened, so parallel tests never clash, and the server is killed on
//! `Drop` even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod agent;
mod outcome;
mod pebble;
mod registry;
mod s3;
pub use outcome::Outcome;
pub use pebble::Pebble;
pub use registry::{Registry, oci_digest, push_oci};
pub use s3::S3Server;

pub struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
    /// Set by [`lock_down`](Self::lock_down): the user [`cli`](Self::cli) runs as.
    admin: Option<(String, String)>,
}

/// The test administrator [`RedisServer::lock_down`] creates.
pub const ADMIN_USER: &str = "test-admin";

impl RedisServer {
    /// A throw-away server without persistence.
    pub fn start() -> Result<Self> {
        Self::spawn(tempfile::tempdir()?, false)
    }

    /// A server that writes an append-only file, so [`restart`](Self::restart) keeps data.
    pub fn start_persistent() -> Result<Self> {
        Self::spawn(tempfile::tempdir()?, true)
    }

    fn spawn(dir: tempfile::TempDir, persistent: bool) -> Result<Self> {
        let mut server = RedisServer { dir, child: None, persistent, admin: None };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let sock = self.socket();
        let _ = std::fs::remove_file(&sock);
        // Users made by the tests survive a restart only in an ACL file, as in production.
        let aclfile = self.dir.path().join("users.acl");
        if !aclfile.exists() {
            std::fs::write(&aclfile, "")?;
        }
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .arg("--aclfile")
            .arg(&aclfile)
            .args(["--unixsocketperm", "700"]);
        if self.admin.is_some() {
            cmd.args(["--appendonly", "no", "--save", "1 1"]);
        } else {
            cmd.args(["--save", "", "--appendonly", if self.persistent { "yes" } else { "no" }]);
        }
        cmd.args(["--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .args(["--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().context("cannot start redis-server: is the redis-server package installed?")?;
        self.child = Some(child);
        // Ready means answering PING, not just a socket file: a server loading its
        // append-only file answers LOADING until it is done.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(sock.exists() && self.cli(&["PING"]).is_ok_and(|r| r == "PONG")) {
            if Instant::now() > deadline {
                bail!("redis-server on {} did not answer PING within 10 s", sock.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // What the cluster agent does at its start: agents may only FCALL these.
        let loaded = self.cli(&["FUNCTION", "LOAD", "REPLACE", protocol::functions::LIBRARY])?;
        if loaded != protocol::functions::LIBRARY_NAME {
            bail!("FUNCTION LOAD answered {loaded:?}");
        }
        Ok(())
    }

    /// Create (or reset) the ACL user of `agent` with its real rules
    /// ([`protocol::acl::agent_rules`]) and a fresh password, saved to the ACL file;
    /// returns the password. Agents started by [`AgentProcess`] get one by themselves.
    pub fn agent_user(&self, agent: &protocol::AgentId) -> Result<String> {
        let password = format!("test-{}-{}", std::process::id(), unique());
        let mut args = vec!["ACL".to_owned(), "SETUSER".into(), agent.to_string()];
        args.extend(protocol::acl::agent_rules(agent, &format!(">{password}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let set = self.cli(&args)?;
        if set != "OK" {
            bail!("ACL SETUSER {agent} answered {set:?}");
        }
        let saved = self.cli(&["ACL", "SAVE"])?;
        if saved != "OK" {
            bail!("ACL SAVE answered {saved:?}");
        }
        Ok(password)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// Value for `REDIS_ADDRESS`: a socket path is accepted there.
    pub fn address(&self) -> String {
        self.socket().display().to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Configure this server as a cluster's is: `default` becomes the anonymous public
    /// reader ([`protocol::acl::public_rules`]), snapshots replace the append-only file
    /// (see deploy/redis.conf), and [`cli`](Self::cli) runs as [`ADMIN_USER`] from now
    /// on. The admin's password is returned.
    pub fn lock_down(&mut self) -> Result<String> {
        let password = format!("admin-{}-{}", std::process::id(), unique());
        let set =
            self.cli(&["ACL", "SETUSER", ADMIN_USER, "reset", "on", &format!(">{password}"), "~*", "&*", "+@all"])?;
        if set != "OK" {
            bail!("ACL SETUSER {ADMIN_USER} answered {set:?}");
        }
        self.admin = Some((ADMIN_USER.to_owned(), password.clone()));
        let mut args = vec!["ACL".to_owned(), "SETUSER".into(), protocol::acl::DEFAULT_USER.into()];
        args.extend(protocol::acl::public_rules());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for cmd in
            [&args[..], &["CONFIG", "SET", "appendonly", "no"], &["CONFIG", "SET", "save", "1 1"], &["ACL", "SAVE"]]
        {
            let r = self.cli(cmd)?;
            if r != "OK" {
                bail!("{cmd:?} answered {r:?}");
            }
        }
        Ok(password)
    }

    /// `redis-cli` against this server, returning stdout (trimmed).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-s").arg(self.socket());
        if let Some((user, password)) = &self.admin {
            cmd.args(["--user", user]).env("REDISCLI_AUTH", password);
        }
        let out = cmd.args(args).output().context("cannot run redis-cli")?;
        if !out.status.success() {
            bail!("redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    pub fn stop(&mut self) {
        if self.admin.is_some() && self.child.is_some() {
            // A locked-down server keeps its data in snapshots: the one written at a
            // clean shutdown (an append-only file would survive a kill).
            let _ = self.cli(&["SHUTDOWN", "SAVE"]);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill and start again on the same socket (data survives only when persistent).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` until it returns `Some`, or fail after `timeout` with `what` in the message.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write an executable step (mode 0755) at `root/<action>/<step>`.
pub fn write_step(root: &Path, action: &str, step: &str, body: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join(action);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(step);
    std::fs::write(&path, body)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// An agent's install dir on disk: `actions/`, `events/`, `state/`, and its log.
pub struct AgentTree {
    dir: tempfile::TempDir,
}

impl AgentTree {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        for sub in ["actions", "events", "state"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        Ok(AgentTree { dir })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn actions(&self) -> PathBuf {
        self.root().join("actions")
    }

    pub fn events(&self) -> PathBuf {
        self.root().join("events")
    }

    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.root().join("agent.log")
    }

    /// Add an executable step to an action.
    pub fn step(&self, action: &str, step: &str, body: &str) -> Result<PathBuf> {
        write_step(&self.actions(), action, step, body)
    }

    /// Add a file (schema, non-executable placeholder) to an action.
    pub fn file(&self, action: &str, name: &str, body: &str) -> Result<PathBuf> {
        let dir = self.actions().join(action);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, body)?;
        Ok(path)
    }

    /// Add an executable step to an event handler.
    pub fn handler(&self, event: &str, step: &str, body: &str) -> Result<PathBuf> {
        write_step(&self.events(), event, step, body)
    }

    pub fn read_state(&self, name: &str) -> String {
        std::fs::read_to_string(self.state().join(name)).unwrap_or_default()
    }
}

/// An agent binary running as a child process; killed (SIGKILL) on drop.
pub struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProcess {
    /// Start `bin --agentid <id>` on `tree`, talking to `redis`. Output goes to the
    /// tree's `agent.log` (appended, so restarts keep the history).
    pub fn spawn(
        bin: &Path,
        agent_id: &str,
        tree: &AgentTree,
        redis: &RedisServer,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::spawn_args(bin, &[format!("--agentid={agent_id}")], tree, redis, env)
    }

    /// Like [`spawn`](Self::spawn) with the whole command line given. An agent named by
    /// `--agentid=<id>` connects as its own ACL user, made here, unless `env` names a
    /// `REDIS_USER`; anything else connects as the test server's open `default` user.
    pub fn spawn_args(
        bin: &Path,
        args: &[String],
        tree: &AgentTree,
        redis: &RedisServer,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut credentials = Vec::new();
        let agent = args.iter().find_map(|a| a.strip_prefix("--agentid=")).and_then(|id| id.parse().ok());
        if let Some(agent) = agent
            && !env.iter().any(|(k, _)| *k == "REDIS_USER")
        {
            let password = redis.agent_user(&agent)?;
            credentials.push(("REDIS_USER".to_owned(), agent.to_string()));
            credentials.push(("REDIS_PASSWORD".to_owned(), password));
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(tree.log())?;
        let child = Command::new(bin)
            .args(args)
            .env("REDIS_ADDRESS", redis.address())
            .env("AGENT_INSTALL_DIR", tree.root())
            .env("AGENT_STATE_DIR", tree.state())
            .env("RUST_LOG", "info")
            .envs(credentials)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(AgentProcess { child: Some(child), log: tree.log() })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// What the agent logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send a signal by name (`TERM`, `USR1`, ...).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let sig: nix::sys::signal::Signal =
            format!("SIG{signal}").parse().with_context(|| format!("unknown signal {signal}"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .with_context(|| format!("kill -{signal} {}", self.pid()))
    }

    /// Wait for the process to exit on its own; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child.as_mut().context("agent already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("agent did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether a process exists (`kill -0`).
pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true)
}

/// A number no other call in this process returns.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_starts_answers_and_restarts_with_data() {
        let mut r = RedisServer::start_persistent().unwrap();
        assert_eq!(r.cli(&["SET", "k", "v"]).unwrap(), "OK");
        r.restart().unwrap();
        assert_eq!(r.cli(&["GET", "k"]).unwrap(), "v");
    }
}
