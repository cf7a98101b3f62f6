//! Running programs: spawn, restart with back-off, stop, reload on SIGHUP.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, User, getgrouplist, setgid, setgroups, setuid};
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tracing::{error, info, warn};

use crate::config::{Entry, Program, Restart, load_dir};

/// First restart delay; it doubles after each quick exit, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A program that stayed up this long restarts after [`BACKOFF_START`] again.
const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// Why the supervisor could not run.
#[derive(Debug)]
pub enum Fatal {
    /// The configuration directory cannot be read.
    Config(String),
    /// Signal handlers cannot be installed.
    Runtime(String),
}

/// Start the programs of `dir`, supervise them until SIGTERM or SIGINT, then stop them
/// in reverse file-name order. SIGHUP re-reads `dir`.
pub async fn run(dir: &Path) -> Result<(), Fatal> {
    // Handlers first: a signal sent as soon as a program is seen running must not kill us.
    let install = |kind| signal(kind).map_err(|e| Fatal::Runtime(format!("cannot install a signal handler: {e}")));
    let (mut term, mut int, mut hup) =
        (install(SignalKind::terminate())?, install(SignalKind::interrupt())?, install(SignalKind::hangup())?);
    let found = load_dir(dir).map_err(|e| Fatal::Config(format!("cannot read {}: {e}", dir.display())))?;
    let mut running = BTreeMap::new();
    for (file, entry) in found {
        if let Entry::Valid(program) = entry {
            running.insert(file, Supervised::start(program));
        }
    }
    info!("supervising {} programs from {}", running.len(), dir.display());
    loop {
        tokio::select! {
            _ = hup.recv() => reload(dir, &mut running).await,
            _ = term.recv() => { info!("SIGTERM received: stopping all programs"); break }
            _ = int.recv() => { info!("SIGINT received: stopping all programs"); break }
        }
    }
    while let Some((_, program)) = running.pop_last() {
        program.stop().await;
    }
    info!("all programs stopped");
    Ok(())
}

/// Apply the directory's current content: stop removed and changed programs (reverse
/// file-name order), then start new and changed ones (file-name order). A file that
/// became invalid leaves its program running as it was.
async fn reload(dir: &Path, running: &mut BTreeMap<String, Supervised>) {
    info!("SIGHUP received: reloading {}", dir.display());
    let found = match load_dir(dir) {
        Ok(f) => f,
        Err(e) => {
            error!("cannot read {}: {e}; programs left as they are", dir.display());
            return;
        }
    };
    let outdated: Vec<String> = running
        .iter()
        .rev()
        .filter(|(file, s)| match found.get(*file) {
            None => true,
            Some(Entry::Valid(p)) => *p != s.program,
            Some(Entry::Invalid) => false,
        })
        .map(|(file, _)| file.clone())
        .collect();
    for file in outdated {
        let Some(s) = running.remove(&file) else {
            continue;
        };
        let why = if found.contains_key(&file) { "changed" } else { "removed" };
        info!("{file} {why}: stopping {}", s.program.name);
        s.stop().await;
    }
    for (file, entry) in found {
        match entry {
            Entry::Valid(program) if !running.contains_key(&file) => {
                running.insert(file, Supervised::start(program));
            }
            Entry::Invalid if running.contains_key(&file) => {
                warn!(
                    "{file} is invalid: {} keeps running with its previous configuration",
                    running[&file].program.name
                );
            }
            _ => {}
        }
    }
    info!("reload done: {} programs", running.len());
}

/// A program and the task that keeps it running.
struct Supervised {
    program: Program,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Spawn the program now (so that programs start in the caller's order) and
    /// supervise it in a task.
    fn start(program: Program) -> Self {
        let first = spawn(&program);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(program.clone(), first, stop_rx));
        Supervised { program, stop, task }
    }

    /// Stop the program (if running) and wait until it is gone.
    async fn stop(self) {
        // Fails when the task has ended (a program not to restart): nothing to stop.
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            error!("{}: supervision task failed: {e}", self.program.name);
        }
    }
}

/// Keep one program running according to its restart policy, until `stop` fires.
async fn supervise(p: Program, first: io::Result<(Child, Pid)>, mut stop: oneshot::Receiver<()>) {
    let name = p.name.as_str();
    let mut attempt = Some(first);
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let failed = match attempt.take().unwrap_or_else(|| spawn(&p)) {
            Err(e) => {
                error!("{name}: cannot start: {e}");
                true
            }
            Ok((mut child, pid)) => {
                tokio::select! {
                    status = child.wait() => {
                        // Like systemd's KillMode=mixed: what the program left in its group goes too.
                        let _ = killpg(pid, Signal::SIGKILL);
                        match status {
                            Ok(status) => {
                                info!("{name}: pid {pid} exited: {}", describe(status));
                                !status.success()
                            }
                            Err(e) => {
                                error!("{name}: cannot wait for pid {pid}: {e}");
                                true
                            }
                        }
                    }
                    _ = &mut stop => return terminate(&p, child, pid).await,
                }
            }
        };
        let restart = match p.restart {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        };
        if !restart {
            let policy = if p.restart == Restart::Never { "never" } else { "on-failure" };
            info!("{name}: not restarting (restart: {policy})");
            return;
        }
        if started.elapsed() >= BACKOFF_RESET {
            backoff = BACKOFF_START;
        }
        info!("{name}: restarting in {} ms", backoff.as_millis());
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Send the stop signal to the main process only (it may drain its work), SIGKILL the
/// whole process group after the stop timeout, and in any case once the main process
/// has exited.
async fn terminate(p: &Program, mut child: Child, pid: Pid) {
    let name = p.name.as_str();
    info!("{name}: stopping pid {pid} with {}", p.stop_signal);
    let _ = kill(pid, p.stop_signal);
    let status = match timeout(p.stop_timeout, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!("{name}: pid {pid} still running after {} s: killing its process group", p.stop_timeout.as_secs());
            let _ = killpg(pid, Signal::SIGKILL);
            child.wait().await
        }
    };
    let _ = killpg(pid, Signal::SIGKILL);
    match status {
        Ok(status) => info!("{name}: pid {pid} stopped: {}", describe(status)),
        Err(e) => error!("{name}: cannot wait for pid {pid}: {e}"),
    }
}

/// `exit code 1` or `signal SIGKILL`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("signal {s}"),
            Err(_) => format!("signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Start the program in its own process group; logs the pid.
fn spawn(p: &Program) -> io::Result<(Child, Pid)> {
    // The one seam for host programs; this one is long-running, so supervised here.
    let mut cmd = hostcmd::Cmd::new(&p.command[0]).args(&p.command[1..]).to_std();
    cmd.stdin(Stdio::null()).process_group(0);
    if let Some(user) = &p.user {
        run_as(&mut cmd, user)?;
    }
    cmd.envs(&p.env);
    for f in &p.env_files {
        let (optional, path) = match f.strip_prefix('-') {
            Some(path) => (true, path),
            None => (false, f.as_str()),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                cmd.envs(protocol::envfile::parse(&text));
            }
            Err(e) if optional && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot read {path}: {e}"))),
        }
    }
    if let Some(cwd) = &p.cwd {
        cmd.current_dir(cwd);
    }
    if let Some(log) = &p.log {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", log.display())))?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    let child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", p.command[0])))?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32)).ok_or_else(|| io::Error::other("no pid"))?;
    info!("{}: started, pid {pid}", p.name);
    Ok((child, pid))
}

/// Make `cmd` run as `user`: its uid, primary group and supplementary groups, and its
/// `HOME`, `USER` and `LOGNAME` (the program's `env` may still override them).
fn run_as(cmd: &mut std::process::Command, user: &str) -> io::Result<()> {
    let u = User::from_name(user)?.ok_or_else(|| io::Error::other(format!("unknown user {user:?}")))?;
    let c_user = CString::new(user).map_err(|_| io::Error::other("user name contains a NUL byte"))?;
    let groups = getgrouplist(&c_user, u.gid)?;
    cmd.env("HOME", &u.dir).env("USER", user).env("LOGNAME", user);
    let (uid, gid) = (u.uid, u.gid);
    // std's `uid()`/`gid()` would drop the supplementary groups but cannot set the user's
    // (`CommandExt::groups` is unstable), and its setuid runs before `pre_exec` hooks, so
    // the three calls are made here, in the right order.
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the forked child before exec. It only makes the
    // async-signal-safe system calls setgroups(2), setgid(2) and setuid(2) on data
    // prepared before the fork: no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            setgroups(&groups)?;
            setgid(gid)?;
            setuid(uid)?;
            Ok(())
        });
    }
    Ok(())
}
