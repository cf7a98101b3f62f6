//! Debian packages the project needs, installed with apt-get when missing.

use std::process::Command;

use anyhow::{Result, bail};

pub struct Package {
    /// The Debian package.
    pub name: &'static str,
    /// A command it provides: present means installed.
    pub provides: &'static str,
}

pub const REDIS: Package = Package { name: "redis-server", provides: "redis-server" };

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
