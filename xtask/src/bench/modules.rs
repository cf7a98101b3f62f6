//! `cargo xtask bench --only modules`: installing modules on a real local cluster
//! (release binaries, rootless Podman, the local registry), and the module agents'
//! memory.
//!
//! Per run and module: the wall time of `add-module` until the module's page answers
//! 200 (everything: image check, user, extraction, agent start, create-module, the
//! service image pulled into the new user's storage, container start), the part of it
//! spent pulling the service image (each module user has its own image store, so every
//! install pulls; `module-service` logs the pull's duration), and the difference: the
//! install once the image is pulled. Then each installed module agent's resident
//! memory after 3 s idle.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::{AgentId, keys};
use serde_json::Value;

use super::measure::median;

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A local cluster under a scratch root, brought down and purged on drop (whatever
/// happened, errors included).
pub(super) struct Cluster {
    pub(super) root: PathBuf,
    redis: String,
}

/// This xtask, to run `up` and `down` with: the running executable even when a build
/// has replaced target/debug/xtask since it started (`current_exe` would then name a
/// deleted file, and the cluster would be left up).
fn xtask() -> Command {
    Command::new("/proc/self/exe")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = xtask().args(["down", "--purge", "--root"]).arg(&self.root).output();
    }
}

impl Cluster {
    /// `xtask up` with the release binaries, `modules` built into its repository, free
    /// loopback ports and the `extra` arguments.
    pub(super) fn up(release: &Path, modules: &str, extra: &[String]) -> Result<Cluster> {
        let root = super::fixture::tempfile_dir()?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        }
        let (redis_port, registry_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let up = xtask()
            .args(["up", "--root"])
            .arg(&root)
            .arg("--bin-dir")
            .arg(release)
            .args(["--redis-port", &redis_port.to_string(), "--registry-port", &registry_port.to_string()])
            .args(["--api-port", &api_port.to_string(), "--modules", modules])
            .args(extra)
            .output()
            .context("cannot run xtask up")?;
        let c = Cluster { root, redis: format!("127.0.0.1:{redis_port}") };
        if !up.status.success() {
            bail!("xtask up: {}", String::from_utf8_lossy(&up.stderr));
        }
        Ok(c)
    }

    pub(super) fn api_cli_command(&self) -> Command {
        let mut cmd = Command::new(self.root.join("bin/api-cli"));
        cmd.env("REDIS_ADDRESS", &self.redis);
        cmd
    }

    pub(super) fn api_cli(&self, args: &[&str]) -> Result<Value> {
        let out = self.api_cli_command().args(args).output().context("cannot run api-cli")?;
        if !out.status.success() {
            bail!("api-cli {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }

    /// `redis-cli` as the cluster agent's user (its credentials file is root's); stdout.
    pub(super) fn redis_cli(&self, args: &[&str]) -> String {
        let (host, port) = self.redis.split_once(':').expect("host:port");
        let creds = std::fs::read_to_string(self.root.join("cluster/state/agent.env")).unwrap_or_default();
        let creds = protocol::envfile::parse(&creds);
        let var = |k: &str| creds.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let out = Command::new("redis-cli")
            .args(["-h", host, "-p", port, "--user", &var("REDIS_USER")])
            .env("REDISCLI_AUTH", var("REDIS_PASSWORD"))
            .args(args)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
    }

    /// The loopback port the node gave module `id` (`TCP_PORT`).
    pub(super) fn module_port(&self, id: &str) -> Result<u16> {
        let environment = keys::environment(&AgentId::Module(id.to_owned()));
        let port = self.redis_cli(&["HGET", &environment, "TCP_PORT"]);
        port.parse().with_context(|| format!("module {id} has no TCP_PORT: {port:?}"))
    }
}

fn answers_200(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    s.read(&mut head).is_ok_and(|n| String::from_utf8_lossy(&head[..n]).contains(" 200"))
}

/// Seconds from the install request until `path` answers 200, and the module id.
pub(super) fn install(c: &Cluster, image: &str, path: &str) -> Result<(f64, String)> {
    let start = Instant::now();
    // What the benchmarked images ask for (hello: node:reader), accepted.
    let data =
        serde_json::json!({"image": image, "node": 1, "accept": {"authorizations": ["node:reader"]}}).to_string();
    let out = c.api_cli(&["run", "add-module", "--data", &data])?;
    let id = out["module_id"].as_str().context("add-module answered no module_id")?.to_owned();
    let port = c.module_port(&id)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !answers_200(port, path) {
        if Instant::now() > deadline {
            bail!("{id} does not serve {path} on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((start.elapsed().as_secs_f64(), id))
}

/// Seconds the install of `id` spent pulling service images, from the module's log.
fn pull_time(root: &Path, id: &str) -> Result<f64> {
    let log = std::fs::read_to_string(root.join(format!("log/module-{id}.log")))
        .with_context(|| format!("no log of module {id}"))?;
    let secs: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("module-service: pulled ").nth(1))
        .filter_map(|rest| rest.rsplit(" in ").next()?.trim_end_matches(" s").trim().parse().ok())
        .collect();
    if secs.is_empty() {
        bail!("module {id}'s log records no pull");
    }
    Ok(secs.iter().sum())
}

fn agent_rss_kb(id: &str) -> u64 {
    let needle = AgentId::Module(id.to_owned()).to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("module-agent") && c.contains(&needle)
            })
        })
        .map(|pid| super::measure::status_kb(pid, "VmRSS"))
        .unwrap_or(0)
}

pub fn bench(release: &Path, runs: usize) -> Result<()> {
    let mut figures: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut rss = Vec::new();
    for (module, path, n) in [("hello", "/", runs), ("dokuwiki", "/doku.php", runs.min(2))] {
        let mut totals = Vec::new();
        let mut pulls = Vec::new();
        for i in 0..n {
            eprintln!("xtask: {module}: run {}/{n}", i + 1);
            let c = Cluster::up(release, module, &[])?;
            let (secs, id) = install(&c, module, path)?;
            totals.push(secs);
            pulls.push(pull_time(&c.root, &id)?);
            std::thread::sleep(Duration::from_secs(3));
            rss.push(agent_rss_kb(&id) as f64);
        }
        figures.push((module, totals, pulls));
    }
    println!("\n## Module installs (local registry, rootless Podman, release build)\n");
    println!("| module | runs | install to serving (median) | of which pulling the service image | without the pull |");
    println!("| --- | --- | --- | --- | --- |");
    for (module, totals, pulls) in &figures {
        let (t, p) = (median(totals.clone()), median(pulls.clone()));
        println!("| {module} | {} | {t:.2} s | {p:.2} s | {:.2} s |", totals.len(), (t - p).max(0.0));
    }
    let max = rss.iter().cloned().fold(0.0, f64::max);
    println!(
        "\nModule agent idle RSS (3 s after install, {} agents): median {:.1} MB, max {:.1} MB (target < 8 MB)",
        rss.len(),
        median(rss.clone()) / 1024.0,
        max / 1024.0
    );
    Ok(())
}
