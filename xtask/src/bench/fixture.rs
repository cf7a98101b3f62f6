//! What a benchmark run starts and cleans up: processes killed on drop, a private
//! Redis, a scratch directory, unique task ids.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::resp::Conn;

pub(super) struct Proc(pub(super) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private redis-server on a free loopback port, as the baseline ran it (no
/// persistence), once it answers.
pub(super) fn start_redis() -> Result<(Proc, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let redis = Proc(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Conn::connect(port).and_then(|mut c| c.cmd(&[b"PING"])).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server on port {port} did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the cluster agent does at its start: agents may only FCALL these.
    Conn::connect(port)?.cmd(&[b"FUNCTION", b"LOAD", b"REPLACE", protocol::functions::LIBRARY.as_bytes()])?;
    Ok((redis, port))
}

pub(super) fn unique_id() -> String {
    // Unique is enough here; the format only has to be a valid task id.
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("bench-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub(super) fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ns8rs-bench-{}-{}", std::process::id(), unique_id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes the run's directory, whatever happens.
pub(super) struct TempDir(pub(super) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
