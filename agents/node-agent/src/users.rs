//! The Unix user of a rootless module: its account, home, subordinate id range and
//! runtime directory, created as a unit and removed leaving nothing behind.
//!
//! `useradd` gives the account its own `/etc/subuid` and `/etc/subgid` ranges (Debian's
//! `SUB_UID_COUNT`, 65536 ids), which rootless Podman maps into the containers. Without
//! logind there is no `/run/user/<uid>`, so the node makes it (mode 0700), as Podman
//! needs an `XDG_RUNTIME_DIR` of the user's own.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a module's agent and services run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The account `name`, if it exists.
pub fn lookup(name: &str, runtime_base: &Path) -> Option<ModuleUser> {
    let user = nix::unistd::User::from_name(name).ok()??;
    Some(ModuleUser {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        runtime_dir: runtime_base.join(user.uid.as_raw().to_string()),
    })
}

/// The comment `useradd` gives a module's account: with the node's record, what
/// makes an account a module's (and not a person's or the system's).
fn account_comment(name: &str) -> String {
    format!("ns8rs module {name}")
}

/// Whether the account `name` is one the node made for a module.
pub fn is_module_account(name: &str) -> bool {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .is_some_and(|u| u.gecos.to_str().is_ok_and(|g| g == account_comment(name)))
}

/// `name`'s first subordinate id and count in `file` (`/etc/subuid`).
fn subordinate_range(file: &Path, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Whether `name` has a range in `file` (`/etc/subuid` or `/etc/subgid`).
pub fn has_subordinate_range(file: &Path, name: &str) -> bool {
    std::fs::read_to_string(file).map(|t| t.lines().any(|l| l.split(':').next() == Some(name))).unwrap_or(false)
}

/// Create the user of module `name` with its home under `home_base` and its runtime
/// directory under `runtime_base` (`/run/user` on a server). An existing account is an
/// error, left untouched; a failure half-way removes what was made.
pub fn create(name: &str, home_base: &Path, runtime_base: &Path) -> Result<ModuleUser, String> {
    protocol::validate_module_id(name).map_err(|e| e.to_string())?;
    if nix::unistd::User::from_name(name).ok().flatten().is_some() {
        return Err(format!("a Unix user named {name} already exists: refusing to take it over"));
    }
    let home = home_base.join(name);
    run(Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/bash", "--comment"])
        .arg(account_comment(name))
        .arg("--home-dir")
        .arg(&home)
        .arg(name))?;
    let finish = || -> Result<ModuleUser, String> {
        let user = lookup(name, runtime_base).ok_or_else(|| format!("user {name} missing right after useradd"))?;
        for file in ["/etc/subuid", "/etc/subgid"] {
            if !has_subordinate_range(Path::new(file), name) {
                return Err(format!(
                    "useradd gave {name} no range in {file}: rootless containers need one (check SUB_UID_COUNT in /etc/login.defs)"
                ));
            }
        }
        std::fs::create_dir_all(&user.runtime_dir)
            .map_err(|e| format!("cannot create {}: {e}", user.runtime_dir.display()))?;
        std::fs::set_permissions(&user.runtime_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot set the mode of {}: {e}", user.runtime_dir.display()))?;
        nix::unistd::chown(
            &user.runtime_dir,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .map_err(|e| format!("cannot give {} to {name}: {e}", user.runtime_dir.display()))?;
        Ok(user)
    };
    finish().inspect_err(|_| {
        let _ = remove(name, runtime_base);
    })
}

/// The processes whose real uid is `uid`, zombies excepted (they are already dead,
/// waiting for a parent that may not be the module's to reap them).
pub fn live_processes(uid: u32) -> Vec<i32> {
    live_processes_in(uid, 1)
}

/// Like [`live_processes`] for the uids `first..first + count`.
fn live_processes_in(first: u32, count: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
        let real_uid = field("Uid:").split_whitespace().next().and_then(|u| u.parse::<u32>().ok());
        if real_uid.is_some_and(|u| u >= first && u - first < count) && !field("State:").starts_with('Z') {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILL every process of `uid` until none is left (at most about a second).
pub fn kill_all(uid: u32) {
    kill_all_in(uid, 1);
}

/// SIGKILL every process of the module's user and of its containers (the uids of its
/// subordinate range), until none is left: nothing of it may change its files while
/// root copies or removes them.
pub fn kill_all_of(user: &ModuleUser) {
    kill_all(user.uid);
    if let Some((first, count)) = subordinate_range(Path::new("/etc/subuid"), &user.name) {
        kill_all_in(first, count);
    }
}

fn kill_all_in(first: u32, count: u32) {
    use nix::sys::signal::{Signal, kill};
    for _ in 0..50 {
        let pids = live_processes_in(first, count);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Stop every process of the user, then remove the account, its home, its mail spool,
/// its subordinate ranges (userdel does) and its runtime directory. Removing a user
/// that does not exist is not an error.
pub fn remove(name: &str, runtime_base: &Path) -> Result<(), String> {
    let Some(user) = lookup(name, runtime_base) else { return Ok(()) };
    // Processes keep userdel from working and would outlive the module.
    kill_all_of(&user);
    if user.runtime_dir.exists() {
        std::fs::remove_dir_all(&user.runtime_dir)
            .map_err(|e| format!("cannot remove {}: {e}", user.runtime_dir.display()))?;
    }
    run(Command::new("userdel").args(["--remove"]).arg(name))
        .or_else(|e| if e.contains("mail spool") { Ok(String::new()) } else { Err(e) })?;
    // One more sweep, by uid: a process that was still switching to the user during the
    // first one is the user's now.
    kill_all(user.uid);
    // userdel leaves a home outside the standard base alone when it is not the user's.
    if user.home.exists() {
        std::fs::remove_dir_all(&user.home).map_err(|e| format!("cannot remove {}: {e}", user.home.display()))?;
    }
    Ok(())
}
