//! What Podman needs on this host, found out rather than assumed.
//!
//! Two host traits break Podman's defaults:
//! * hybrid cgroups (v1 controllers plus a v2 `unified` mount, as in many containers
//!   and older systemd setups): crun refuses them, runc works;
//! * no `CAP_SYS_RESOURCE` (an unprivileged container as the node): the runtime cannot
//!   raise a container's `nofile`/`nproc` limits to Podman's defaults, so they must not
//!   ask for more than the current hard limits.
//!
//! The node writes a `containers.conf` with exactly the settings its host needs (none
//! on a plain server) and gives it to the Podman services of its modules through
//! `CONTAINERS_CONF`, without touching `/etc/containers`.

use std::path::Path;

use std::path::PathBuf;

use serde_json::{Value, json};

/// Why this host cannot run the modules' containers as it is.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error(
        "cgroups are hybrid (v1 controllers plus a v2 unified mount), which crun refuses, \
         and runc is not installed: install the runc package"
    )]
    NoRunc,
    #[error("{} is missing: rootless containers need it for their network (modprobe tun)", .0.display())]
    NoTun(PathBuf),
    #[error("{} has mode {mode:o}, which rootless containers cannot use, and: {source}", path.display())]
    TunMode { path: PathBuf, mode: u32, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where `configure-podman` writes the node's containers.conf, in its state dir.
pub const CONTAINERS_CONF: &str = "containers.conf";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cgroups {
    V1,
    V2,
    /// v1 controllers with a v2 hierarchy at `/sys/fs/cgroup/unified`.
    Hybrid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub cgroups: Cgroups,
    pub cap_sys_resource: bool,
    pub nofile_hard: u64,
    /// The hard process limit, or `kernel.pid_max` when lower.
    pub nproc_hard: u64,
    pub runc: bool,
}

/// Podman's own default limits for containers (containers.conf `default_ulimits` when
/// unset): what the runtime tries to set.
const PODMAN_NOFILE: u64 = 1_048_576;
const PODMAN_NPROC: u64 = 4_194_304;
const CAP_SYS_RESOURCE: u32 = 24;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `engine.runtime`, when the default one cannot work here.
    pub runtime: Option<&'static str>,
    /// `containers.default_ulimits`.
    pub ulimits: Vec<String>,
}

pub fn probe() -> HostFacts {
    use nix::sys::resource::{Resource, getrlimit};
    let fs_type = |p: &str| nix::sys::statfs::statfs(p).ok().map(|s| s.filesystem_type());
    let cgroups = if fs_type("/sys/fs/cgroup") == Some(nix::sys::statfs::CGROUP2_SUPER_MAGIC) {
        Cgroups::V2
    } else if fs_type("/sys/fs/cgroup/unified") == Some(nix::sys::statfs::CGROUP2_SUPER_MAGIC) {
        Cgroups::Hybrid
    } else {
        Cgroups::V1
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hard = |r| getrlimit(r).map(|(_, hard)| hard).unwrap_or(u64::MAX);
    // Podman lowers its own (so conmon's and the runtime's) process limit to pid_max,
    // measured: a container asking for more is refused.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(u64::MAX);
    HostFacts {
        cgroups,
        cap_sys_resource: has_capability(&status, CAP_SYS_RESOURCE),
        nofile_hard: hard(Resource::RLIMIT_NOFILE),
        nproc_hard: hard(Resource::RLIMIT_NPROC).min(pid_max),
        runc: on_path("runc"),
    }
}

/// Whether `CapEff` in a `/proc/<pid>/status` text holds capability `bit`.
fn has_capability(status: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(cmd).is_file()))
}

/// The settings this host needs, or why containers cannot run here.
pub fn settings(f: &HostFacts) -> Result<Settings, PodmanError> {
    let mut s = Settings::default();
    if f.cgroups == Cgroups::Hybrid {
        if !f.runc {
            return Err(PodmanError::NoRunc);
        }
        s.runtime = Some("runc");
    }
    if !f.cap_sys_resource {
        let nofile = f.nofile_hard.min(PODMAN_NOFILE);
        let nproc = f.nproc_hard.min(PODMAN_NPROC);
        s.ulimits = vec![format!("nofile={nofile}:{nofile}"), format!("nproc={nproc}:{nproc}")];
    }
    Ok(s)
}

/// The `containers.conf` text for `s` (comments only when nothing is needed).
pub fn containers_conf(s: &Settings) -> String {
    let mut out = String::from("# Written by the node agent for this host's Podman services; see its log.\n");
    if !s.ulimits.is_empty() {
        let list: Vec<String> = s.ulimits.iter().map(|u| format!("\"{u}\"")).collect();
        out.push_str(&format!("[containers]\ndefault_ulimits = [{}]\n", list.join(", ")));
    }
    if let Some(rt) = s.runtime {
        out.push_str(&format!("[engine]\nruntime = \"{rt}\"\n"));
    }
    out
}

/// The TUN device rootless networking (slirp4netns) opens as the module's user.
const TUN: &str = "/dev/net/tun";

/// Make the TUN device usable by every user, as the kernel creates it (0666): some
/// container hosts give it 0600, and then no rootless container gets a network.
/// Returns what was changed, if anything.
fn ensure_tun(path: &Path) -> Result<Option<String>, PodmanError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Err(PodmanError::NoTun(path.to_owned()));
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o666 == 0o666 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|source| PodmanError::TunMode {
        path: path.to_owned(),
        mode,
        source,
    })?;
    let what =
        format!("{} had mode {mode:o}; set to 666 (the kernel's default) for rootless containers", path.display());
    tracing::warn!("{what}");
    Ok(Some(what))
}

/// Probe the host, write `path` (atomically, only when it changes), fix what rootless
/// containers need from the host, and describe what was found and done. Blocking
/// (files, /proc, statfs): run it off the agent's thread.
pub fn configure(path: &Path) -> Result<Value, PodmanError> {
    let tun = ensure_tun(Path::new(TUN))?;
    let facts = probe();
    let s = settings(&facts)?;
    let text = containers_conf(&s);
    if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
        let tmp = path.with_extension("conf.new");
        std::fs::write(&tmp, &text).map_err(|source| PodmanError::Write { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, path).map_err(|source| PodmanError::Write { path: path.to_owned(), source })?;
    }
    Ok(json!({
        "path": path,
        "cgroups": format!("{:?}", facts.cgroups).to_lowercase(),
        "cap_sys_resource": facts.cap_sys_resource,
        "runtime": s.runtime,
        "default_ulimits": s.ulimits,
        "tun_fixed": tun,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cgroups: Cgroups, cap: bool) -> HostFacts {
        HostFacts { cgroups, cap_sys_resource: cap, nofile_hard: 20_000, nproc_hard: u64::MAX, runc: true }
    }

    #[test]
    fn a_plain_server_needs_nothing() {
        let s = settings(&facts(Cgroups::V2, true)).unwrap();
        assert_eq!(s, Settings::default());
        assert!(!containers_conf(&s).contains('['));
    }

    #[test]
    fn hybrid_cgroups_and_no_cap_sys_resource() {
        let s = settings(&facts(Cgroups::Hybrid, false)).unwrap();
        assert_eq!(s.runtime, Some("runc"));
        assert_eq!(s.ulimits, ["nofile=20000:20000", "nproc=4194304:4194304"]);
        let conf = containers_conf(&s);
        assert!(conf.contains("[engine]\nruntime = \"runc\"\n"), "{conf}");
        assert!(conf.contains("default_ulimits = [\"nofile=20000:20000\", \"nproc=4194304:4194304\"]"), "{conf}");
        let no_runc = HostFacts { runc: false, ..facts(Cgroups::Hybrid, true) };
        assert!(settings(&no_runc).unwrap_err().to_string().contains("install the runc package"));
    }

    #[test]
    fn tun_mode_is_opened_to_all() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tun");
        std::fs::write(&f, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ensure_tun(&f).unwrap().unwrap().contains("had mode 600"));
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o666);
        assert_eq!(ensure_tun(&f).unwrap(), None);
        assert!(ensure_tun(&dir.path().join("none")).unwrap_err().to_string().contains("modprobe tun"));
    }

    #[test]
    fn capability_bits() {
        assert!(!has_capability("CapEff:\t000001fffeffffff\n", CAP_SYS_RESOURCE));
        assert!(has_capability("CapEff:\t000001ffffffffff\n", CAP_SYS_RESOURCE));
        assert!(!has_capability("no such line", CAP_SYS_RESOURCE));
    }
}
