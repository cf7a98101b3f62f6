//! One step as a child process (reference section 4.2): stdin is the task data, stdout
//! is collected, stderr and fd-3 commands are streamed back line by line.
//!
//! Steps are started with `posix_spawn`, not fork: forking an agent costs about
//! 0.4 ms more per step on a small VM (page tables and copy-on-write of the parent),
//! which is most of the agent's whole overhead budget. File actions map the pipes to
//! fds 0-3 and enter the state dir; the step gets its own process group so
//! `cancel-task` can signal everything it started. A [`Reaper`] collects exit statuses
//! on SIGCHLD.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use protocol::comfd::Command as ComCommand;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// How long to keep reading a step's pipes after it exited: a daemon it left behind
/// may hold them open, and must not hold the task hostage.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Lets `cancel-task` reach whatever step a task is running.
#[derive(Default)]
pub struct CancelHandle {
    pgid: AtomicI32,
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelHandle {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// SIGTERM to the running step's process group; later steps will not start.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.signal(Signal::SIGTERM);
    }

    /// Resolves once the task is cancelled (for native actions, which have no process).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    pub fn signal(&self, sig: Signal) {
        let pgid = self.pgid.load(Ordering::SeqCst);
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), sig);
        }
    }
}

/// Collects the exit status of the agent's step processes. Only the pids it spawned
/// are waited for (never `waitpid(-1)`), so it coexists with other child handling.
#[derive(Clone)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<i32, oneshot::Sender<i32>>>>,
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        // NS8 reports a step killed by a signal as -1 (Go's `ExitCode()`).
        WaitStatus::Signaled(..) => Some(protocol::exit::SIGNALED),
        _ => None,
    }
}

impl Reaper {
    /// Start listening to SIGCHLD on the current runtime.
    pub fn start() -> io::Result<Self> {
        let reaper = Reaper { waiting: Arc::default() };
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                r.reap();
            }
        });
        Ok(reaper)
    }

    fn reap(&self) {
        let mut waiting = self.waiting.lock().expect("reaper poisoned");
        let done: Vec<(i32, i32)> = waiting
            .keys()
            .filter_map(|&pid| match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => exit_code(status).map(|code| (pid, code)),
                // ECHILD: reaped elsewhere, its status is lost; report it as killed.
                Err(_) => Some((pid, protocol::exit::SIGNALED)),
            })
            .collect();
        for (pid, code) in done {
            if let Some(tx) = waiting.remove(&pid) {
                let _ = tx.send(code);
            }
        }
    }

    /// Register a freshly spawned pid; the receiver gets its exit code.
    fn watch(&self, pid: Pid) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().expect("reaper poisoned");
        // It may have exited before it was registered: check once now.
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) if exit_code(status).is_some() => {
                let _ = tx.send(exit_code(status).unwrap_or(protocol::exit::SIGNALED));
            }
            _ => {
                waiting.insert(pid.as_raw(), tx);
            }
        }
        rx
    }
}

/// A prepared `posix_spawn`: everything already converted, the child's fds (fd 3
/// is -1 when the step gets no command channel).
struct SpawnRequest {
    path: CString,
    cwd: CString,
    env: Vec<CString>,
    fds: [std::os::fd::RawFd; 4],
}

fn posix_spawn_step(r: &SpawnRequest) -> io::Result<Pid> {
    let mut actions = PosixSpawnFileActions::init()?;
    for (target, fd) in r.fds.iter().enumerate() {
        if *fd >= 0 {
            actions.add_dup2(*fd, target as i32)?;
        }
    }
    add_chdir(&mut actions, &r.cwd)?;
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_pgroup(Pid::from_raw(0))?;
    attr.set_sigmask(&SigSet::empty())?;
    // The agent ignores SIGPIPE (Rust does); ignored signals survive exec, and a
    // shell step must see the defaults.
    let mut defaults = SigSet::empty();
    for s in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
        Signal::SIGXFSZ,
    ] {
        defaults.add(s);
    }
    attr.set_sigdefault(&defaults)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    Ok(posix_spawn(r.path.as_c_str(), &actions, &attr, &[r.path.as_c_str()], &r.env)?)
}

/// At most this many `posix_spawn` calls at once (measured: 4 gives ~12% more step
/// throughput than calling it on the event loop; 1 gives less).
const PARALLEL_SPAWNS: usize = 4;

/// Runs `posix_spawn` off the event loop. Its vfork holds the calling thread until the
/// child has exec'd, and under load the child first waits for a CPU behind running
/// steps: on the agent's only thread that would stall everything. Spawns run on
/// tokio's blocking threads, which exist only while there is work (an idle agent
/// keeps one thread), a few at a time so those waits overlap.
#[derive(Clone)]
pub struct Spawner {
    slots: Arc<tokio::sync::Semaphore>,
}

impl Spawner {
    pub fn new() -> Self {
        Spawner { slots: Arc::new(tokio::sync::Semaphore::new(PARALLEL_SPAWNS)) }
    }

    async fn spawn(&self, request: SpawnRequest) -> io::Result<Pid> {
        let _slot = self.slots.acquire().await.map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || posix_spawn_step(&request)).await.map_err(io::Error::other)?
    }
}

/// What to run and how.
pub struct StepSpec<'a> {
    pub path: &'a Path,
    pub cwd: &'a Path,
    /// The complete environment of the step.
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// Give the step the fd-3 command channel (actions) or not (event handlers).
    pub comfd: bool,
}

pub enum StepEvent {
    Stderr(Vec<u8>),
    Command(ComCommand),
    /// The step ended: its exit code (NS8: -1 when killed by a signal) and stdout.
    Exited {
        code: i32,
        stdout: Vec<u8>,
    },
}

/// The agent's end of one of a step's output pipes, read without blocking.
struct Pipe {
    rx: pipe::Receiver,
    buf: Vec<u8>,
    eof: bool,
}

impl Pipe {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        // Made by `pipe_for_child`: already a non-blocking FIFO, so tokio's checks
        // (fstat, fcntl) are skipped.
        Ok(Pipe { rx: pipe::Receiver::from_owned_fd_unchecked(fd)?, buf: Vec::new(), eof: false })
    }

    /// Read whatever is there now.
    fn read_now(&mut self) {
        let mut chunk = [0u8; 8192];
        while !self.eof {
            match self.rx.try_read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.eof = true,
            }
        }
    }

    async fn fill(&mut self) {
        if self.eof {
            return std::future::pending().await;
        }
        if self.rx.readable().await.is_ok() {
            self.read_now();
        } else {
            self.eof = true;
        }
    }

    fn has_line(&self) -> bool {
        self.buf.contains(&b'\n') || (self.eof && !self.buf.is_empty())
    }

    /// A complete line, or at EOF what is left.
    fn line(&mut self) -> Option<Vec<u8>> {
        match self.buf.iter().position(|b| *b == b'\n') {
            Some(i) => Some(self.buf.drain(..=i).collect()),
            None if self.eof && !self.buf.is_empty() => Some(std::mem::take(&mut self.buf)),
            None => None,
        }
    }
}

async fn fill(pipe: &mut Option<Pipe>) {
    match pipe {
        Some(p) => p.fill().await,
        None => std::future::pending().await,
    }
}

pub struct StepProcess {
    exit: oneshot::Receiver<i32>,
    code: Option<i32>,
    /// Set when the step has exited: how long its pipes may still be read.
    grace: Option<tokio::time::Instant>,
    stdout: Pipe,
    stderr: Pipe,
    comfd: Option<Pipe>,
    cancel: Arc<CancelHandle>,
}

/// A pipe: the child's end blocking (a step expects ordinary stdio), the agent's end
/// non-blocking for tokio. The child's end is moved above the fds it will be mapped to
/// only when it sits on one of them, so its `dup2` is real (which clears close-on-exec).
fn pipe_for_child(child_reads: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let (child, parent) = if child_reads { (read, write) } else { (write, read) };
    fcntl(&child, FcntlArg::F_SETFL(OFlag::empty()))?;
    if child.as_raw_fd() > 3 {
        return Ok((child, parent));
    }
    let high = fcntl(&child, FcntlArg::F_DUPFD_CLOEXEC(10))?;
    drop(child);
    Ok((owned(high), parent))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a step argument or environment value"))
}

#[allow(unsafe_code)]
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by fcntl(F_DUPFD_CLOEXEC), is open, and nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[allow(unsafe_code)]
fn add_chdir(actions: &mut PosixSpawnFileActions, dir: &CStr) -> io::Result<()> {
    // SAFETY: `PosixSpawnFileActions` is `repr(transparent)` over the initialised
    // `posix_spawn_file_actions_t`, so the cast is a valid pointer to it for the call;
    // glibc copies `dir` (a valid NUL-terminated string) before returning.
    let rc = unsafe {
        libc::posix_spawn_file_actions_addchdir_np(
            (actions as *mut PosixSpawnFileActions).cast::<libc::posix_spawn_file_actions_t>(),
            dir.as_ptr(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

impl StepProcess {
    /// Start the step. An error means it could not be executed at all (not executable,
    /// missing interpreter): NS8 skips such a step.
    pub async fn spawn(
        spec: StepSpec<'_>,
        cancel: Arc<CancelHandle>,
        reaper: &Reaper,
        spawner: &Spawner,
    ) -> io::Result<Self> {
        let (stdin_child, stdin_parent) = pipe_for_child(true)?;
        let (stdout_child, stdout_parent) = pipe_for_child(false)?;
        let (stderr_child, stderr_parent) = pipe_for_child(false)?;
        let comfd = if spec.comfd { Some(pipe_for_child(false)?) } else { None };

        let request = SpawnRequest {
            path: cstring(spec.path.as_os_str().as_bytes())?,
            cwd: cstring(spec.cwd.as_os_str().as_bytes())?,
            env: spec
                .env
                .iter()
                .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
                .collect::<io::Result<_>>()?,
            fds: [
                stdin_child.as_raw_fd(),
                stdout_child.as_raw_fd(),
                stderr_child.as_raw_fd(),
                comfd.as_ref().map_or(-1, |(c, _)| c.as_raw_fd()),
            ],
        };
        let pid = spawner.spawn(request).await?;
        // The child has its copies; ours must close so EOF arrives when it exits.
        drop((stdin_child, stdout_child, stderr_child));
        let comfd_parent = comfd.map(|(child, parent)| {
            drop(child);
            parent
        });
        let exit = reaper.watch(pid);
        cancel.pgid.store(pid.as_raw(), Ordering::SeqCst);
        // A cancel that raced with the spawn still reaches this step.
        if cancel.is_cancelled() {
            cancel.signal(Signal::SIGTERM);
        }

        // Task data fits the pipe's buffer nearly always: write it now and close. A step
        // that never reads stdin closes it early, which is not an error.
        let data = spec.stdin;
        let written = match nix::unistd::write(&stdin_parent, &data) {
            Ok(n) => n,
            Err(_) => data.len(),
        };
        if written < data.len() {
            let mut stdin = pipe::Sender::from_owned_fd_unchecked(stdin_parent)?;
            tokio::spawn(async move {
                let _ = stdin.write_all(&data[written..]).await;
            });
        } else {
            drop(stdin_parent);
        }
        Ok(StepProcess {
            exit,
            code: None,
            grace: None,
            stdout: Pipe::new(stdout_parent)?,
            stderr: Pipe::new(stderr_parent)?,
            comfd: comfd_parent.map(Pipe::new).transpose()?,
            cancel,
        })
    }

    /// The next thing that happened. After `Exited`, do not call again.
    pub async fn next(&mut self) -> StepEvent {
        loop {
            if let Some(line) = self.comfd.as_mut().and_then(Pipe::line) {
                return StepEvent::Command(ComCommand::parse(&String::from_utf8_lossy(&line)));
            }
            if let Some(line) = self.stderr.line() {
                return StepEvent::Stderr(line);
            }
            if let Some(code) = self.code {
                // The step is gone: its pipes hold data or EOF, unless something it
                // started still holds them open; that may not keep the task waiting.
                self.stdout.read_now();
                self.stderr.read_now();
                if let Some(c) = self.comfd.as_mut() {
                    c.read_now();
                }
                if self.stderr.has_line() || self.comfd.as_ref().is_some_and(Pipe::has_line) {
                    continue;
                }
                let open = !self.stdout.eof || !self.stderr.eof || self.comfd.as_ref().is_some_and(|c| !c.eof);
                let deadline = *self.grace.get_or_insert_with(|| tokio::time::Instant::now() + PIPE_GRACE);
                if !open || tokio::time::Instant::now() >= deadline {
                    self.cancel.pgid.store(0, Ordering::SeqCst);
                    return StepEvent::Exited { code, stdout: std::mem::take(&mut self.stdout.buf) };
                }
                tokio::select! {
                    _ = self.stdout.fill() => {}
                    _ = self.stderr.fill() => {}
                    _ = fill(&mut self.comfd) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                continue;
            }
            tokio::select! {
                _ = self.stdout.fill() => {}
                _ = self.stderr.fill() => {}
                _ = fill(&mut self.comfd) => {}
                code = &mut self.exit => {
                    self.code = Some(code.unwrap_or(protocol::exit::SIGNALED));
                }
            }
        }
    }
}

/// Name-value pairs as a step environment: `base` then `overrides`, later values
/// winning, as `exec` with duplicate names would be ambiguous.
pub fn merge_env<'a>(
    base: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
    overrides: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let base = base.into_iter().filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v.to_str()?.to_owned())));
    for (k, v) in base.chain(overrides) {
        match index.get(&k) {
            Some(&i) => merged[i].1 = v,
            None => {
                index.insert(k.clone(), merged.len());
                merged.push((k, v));
            }
        }
    }
    merged
}
