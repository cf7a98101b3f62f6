//! The Unix user of a rootless module: its account, home, subordinate id range and
//! runtime directory, created as a unit and removed leaving nothing behind.
//!
//! `useradd` gives the account its own `/etc/subuid` and `/etc/subgid` ranges (Debian's
//! `SUB_UID_COUNT`, 65536 ids), which rootless Podman maps into the containers. Without
//! logind there is no `/run/user/<uid>`, so the node makes it (mode 0700), as Podman
//! needs an `XDG_RUNTIME_DIR` of the user's own.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hostcmd::{Cmd, CmdError};

/// `useradd`'s exit status when the name is taken (shadow-utils' E_NAME_IN_USE).
const USERADD_NAME_IN_USE: i32 = 9;

/// Why a module's account was not made or removed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Id(#[from] protocol::IdError),
    /// Never taken over: the cluster may take the next module id.
    #[error("a Unix user named {0} already exists: refusing to take it over")]
    Exists(String),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("user {0} missing right after useradd")]
    Missing(String),
    #[error(
        "useradd gave {name} no range in {file}: rootless containers need one (check SUB_UID_COUNT in /etc/login.defs)"
    )]
    NoSubordinateRange { name: String, file: &'static str },
    #[error("cannot {doing} {}: {source}", path.display())]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot give {} to {name}: {source}", path.display())]
    Chown { path: PathBuf, name: String, source: nix::errno::Errno },
}

fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> UserError + 'a {
    move |source| UserError::Io { doing, path: path.to_owned(), source }
}

/// What a module's agent and services run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
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
pub fn create(name: &str, home_base: &Path, runtime_base: &Path) -> Result<ModuleUser, UserError> {
    protocol::validate_module_id(name)?;
    if nix::unistd::User::from_name(name).ok().flatten().is_some() {
        return Err(UserError::Exists(name.to_owned()));
    }
    let home = home_base.join(name);
    Cmd::new("useradd")
        .args(["--create-home", "--shell", "/bin/bash", "--comment"])
        .arg(account_comment(name))
        .arg("--home-dir")
        .arg(&home)
        .arg(name)
        .run()
        .map_err(|e| useradd_failed(name, e))?;
    let finish = || -> Result<ModuleUser, UserError> {
        let user = lookup(name, runtime_base).ok_or_else(|| UserError::Missing(name.to_owned()))?;
        for file in ["/etc/subuid", "/etc/subgid"] {
            if !has_subordinate_range(Path::new(file), name) {
                return Err(UserError::NoSubordinateRange { name: name.to_owned(), file });
            }
        }
        std::fs::create_dir_all(&user.runtime_dir).map_err(io("create", &user.runtime_dir))?;
        std::fs::set_permissions(&user.runtime_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", &user.runtime_dir))?;
        nix::unistd::chown(
            &user.runtime_dir,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .map_err(|source| UserError::Chown {
            path: user.runtime_dir.clone(),
            name: name.to_owned(),
            source,
        })?;
        Ok(user)
    };
    finish().inspect_err(|_| {
        let _ = remove(name, runtime_base);
    })
}

/// A name taken between the check and useradd's own is still not ours to take.
fn useradd_failed(name: &str, e: CmdError) -> UserError {
    match e.exit_code() {
        Some(USERADD_NAME_IN_USE) => UserError::Exists(name.to_owned()),
        _ => UserError::Cmd(e),
    }
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

/// Wait (at most `limit`) until no `podman` or `conmon` process of `uid` is left.
/// A stopped container's conmon runs `podman container cleanup` after `podman stop`
/// has returned, and that podman writes into the user's `~/.config`: a snapshot taken
/// or put back meanwhile races it. Returns whether it went quiet.
pub fn wait_podman_quiet(uid: u32, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let busy = live_processes_in(uid, 1).into_iter().any(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            matches!(comm.trim_end(), "podman" | "conmon")
        });
        if !busy {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
pub fn remove(name: &str, runtime_base: &Path) -> Result<(), UserError> {
    let Some(user) = lookup(name, runtime_base) else { return Ok(()) };
    // Processes keep userdel from working and would outlive the module.
    kill_all_of(&user);
    if user.runtime_dir.exists() {
        std::fs::remove_dir_all(&user.runtime_dir).map_err(io("remove", &user.runtime_dir))?;
    }
    match Cmd::new("userdel").arg("--remove").arg(name).run() {
        // No mail spool to remove is not a failure to remove the user.
        Err(e) if !e.stderr().contains("mail spool") => return Err(e.into()),
        _ => {}
    }
    // One more sweep, by uid: a process that was still switching to the user during the
    // first one is the user's now.
    kill_all(user.uid);
    // userdel leaves a home outside the standard base alone when it is not the user's.
    if user.home.exists() {
        std::fs::remove_dir_all(&user.home).map_err(io("remove", &user.home))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn useradd_losing_the_race_for_the_name_is_an_existing_account() {
        let in_use = Cmd::new("sh").args(["-c", "echo \"useradd: user 'web1' already exists\" >&2; exit 9"]);
        let e = useradd_failed("web1", in_use.run().unwrap_err());
        assert!(matches!(&e, UserError::Exists(n) if n == "web1"), "{e:?}");
        assert_eq!(e.to_string(), "a Unix user named web1 already exists: refusing to take it over");
        let other = useradd_failed("web1", Cmd::new("sh").args(["-c", "exit 1"]).run().unwrap_err());
        assert!(matches!(other, UserError::Cmd(_)), "{other:?}");
    }
}
