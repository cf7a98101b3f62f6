//! `get-info`: what the node is and how much room it has. NS8 answers
//! `{hostname, vpn_port}`; this is a superset a sysadmin can act on.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("cannot read {path}: {source}")]
    Read { path: &'static str, source: std::io::Error },
    #[error("cannot parse /proc/uptime")]
    Uptime,
    #[error("{call}: {source}")]
    Sys { call: &'static str, source: nix::errno::Errno },
    #[error("statvfs {}: {source}", path.display())]
    Statvfs { path: PathBuf, source: nix::errno::Errno },
}

fn read(path: &'static str) -> Result<String, InfoError> {
    std::fs::read_to_string(path).map_err(|source| InfoError::Read { path, source })
}

/// `KEY=value` or `KEY="value"` lines of /etc/os-release.
fn os_release(text: &str) -> Value {
    let get = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim().trim_matches('"').to_owned())
    };
    json!({
        "id": get("ID"),
        "name": get("PRETTY_NAME").or_else(|| get("NAME")),
        "version_id": get("VERSION_ID"),
    })
}

/// `MemTotal`, `MemAvailable` of /proc/meminfo, in bytes.
fn meminfo(text: &str) -> Value {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    json!({"total_bytes": kib("MemTotal"), "available_bytes": kib("MemAvailable")})
}

/// Blocking (statvfs, /proc): run it off the agent's thread.
pub fn collect(state_dir: &Path) -> Result<Value, InfoError> {
    let uname = nix::sys::utsname::uname().map_err(|source| InfoError::Sys { call: "uname", source })?;
    let hostname = nix::unistd::gethostname()
        .map_err(|source| InfoError::Sys { call: "gethostname", source })?
        .to_string_lossy()
        .into_owned();
    let os = std::fs::read_to_string("/etc/os-release").map(|t| os_release(&t)).unwrap_or(Value::Null);
    let uptime: f64 =
        read("/proc/uptime")?.split_whitespace().next().and_then(|s| s.parse().ok()).ok_or(InfoError::Uptime)?;
    let memory = meminfo(&read("/proc/meminfo")?);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // The disk that holds the agent's state is the one applications fill.
    let vfs = nix::sys::statvfs::statvfs(state_dir)
        .map_err(|source| InfoError::Statvfs { path: state_dir.to_owned(), source })?;
    let frag = vfs.fragment_size() as u64;
    let disk = json!({
        "path": state_dir.display().to_string(),
        "total_bytes": vfs.blocks() as u64 * frag,
        "available_bytes": vfs.blocks_available() as u64 * frag,
    });
    Ok(json!({
        "hostname": hostname,
        "os": os,
        "kernel": {
            "name": uname.sysname().to_string_lossy(),
            "release": uname.release().to_string_lossy(),
            "machine": uname.machine().to_string_lossy(),
        },
        "cpus": cpus,
        "memory": memory,
        "disk": disk,
        "uptime_seconds": uptime as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let os = os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        );
        assert_eq!(os, json!({"id": "debian", "name": "Debian GNU/Linux 12 (bookworm)", "version_id": "12"}));
        let mem = meminfo("MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   1000 kB\n");
        assert_eq!(mem, json!({"total_bytes": 24000000u64 * 1024, "available_bytes": 1024000}));
    }

    #[test]
    fn collects_real_figures() {
        let info = collect(Path::new("/")).unwrap();
        assert!(info["cpus"].as_u64().unwrap() >= 1);
        assert!(info["memory"]["total_bytes"].as_u64().unwrap() > 0);
        assert!(info["disk"]["total_bytes"].as_u64().unwrap() > 0);
        assert!(!info["hostname"].as_str().unwrap().is_empty());
    }
}
