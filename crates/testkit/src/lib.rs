//! Test fixtures: a private `redis-server` per test, on a Unix socket in a temp dir.
//!
//! No TCP port is opened, so parallel tests never clash, and the server is killed on
//! `Drop` even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

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
        let child = cmd
            .spawn()
            .context("cannot start redis-server: is the redis-server package installed?")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("redis-server did not create {} within 10 s", sock.display());
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
