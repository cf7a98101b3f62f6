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
mod registry;
pub use outcome::Outcome;
pub use registry::Registry;

pub struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
}

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
        let mut server = RedisServer { dir, child: None, persistent };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let sock = self.socket();
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--unixsocketperm", "700", "--save", ""])
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--dir"])
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
        Ok(())
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

    /// `redis-cli` against this server, returning stdout (trimmed).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .context("cannot run redis-cli")?;
        if !out.status.success() {
            bail!("redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    pub fn stop(&mut self) {
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

    /// Like [`spawn`](Self::spawn) with the whole command line given.
    pub fn spawn_args(
        bin: &Path,
        args: &[String],
        tree: &AgentTree,
        redis: &RedisServer,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(tree.log())?;
        let child = Command::new(bin)
            .args(args)
            .env("REDIS_ADDRESS", redis.address())
            .env("AGENT_INSTALL_DIR", tree.root())
            .env("AGENT_STATE_DIR", tree.state())
            .env("RUST_LOG", "info")
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
