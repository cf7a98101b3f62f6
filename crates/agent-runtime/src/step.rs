//! One step as a child process (reference section 4.2): stdin is the task data, stdout
//! is collected, stderr and fd-3 commands are streamed back line by line.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use protocol::comfd::Command as ComCommand;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

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

/// What to run and how.
pub struct StepSpec<'a> {
    pub path: &'a Path,
    pub cwd: &'a Path,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// Give the step the fd-3 command channel (actions) or not (event handlers).
    pub comfd: bool,
}

pub enum StepEvent {
    Stderr(Vec<u8>),
    Command(ComCommand),
    /// The step ended: its exit code (NS8: -1 when killed by a signal) and stdout.
    Exited { code: i32, stdout: Vec<u8> },
}

pub struct StepProcess {
    child: Child,
    stderr: Option<LineReader>,
    comfd: Option<LineReader>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    status: Option<ExitStatus>,
    cancel: Arc<CancelHandle>,
}

type LineReader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;

async fn next_line(reader: &mut Option<LineReader>) -> Option<Vec<u8>> {
    let r = reader.as_mut()?;
    let mut buf = Vec::new();
    match r.read_until(b'\n', &mut buf).await {
        Ok(0) | Err(_) => {
            *reader = None;
            None
        }
        Ok(_) => Some(buf),
    }
}

pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or(protocol::exit::SIGNALED)
}

impl StepProcess {
    /// Start the step in its own process group. An error here means it could not be
    /// executed at all (not executable, bad interpreter): NS8 skips such a step.
    pub fn spawn(spec: StepSpec<'_>, cancel: Arc<CancelHandle>) -> io::Result<Self> {
        let mut cmd = Command::new(spec.path);
        cmd.current_dir(spec.cwd)
            .envs(spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let mut comfd_reader = None;
        if spec.comfd {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            cmd.fd_mappings(vec![FdMapping { parent_fd: write, child_fd: 3 }])
                .map_err(io::Error::other)?;
            comfd_reader = Some(read);
        }
        set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn()?;
        // The command still holds the pipe's write end: drop it so EOF comes when the
        // child (and whatever it spawned) closes fd 3.
        drop(cmd);
        if let Some(pid) = child.id() {
            cancel.pgid.store(pid as i32, Ordering::SeqCst);
            // A cancel that raced with the spawn still reaches this step.
            if cancel.is_cancelled() {
                cancel.signal(Signal::SIGTERM);
            }
        }
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let data = spec.stdin;
        tokio::spawn(async move {
            // A step that never reads stdin closes it early: that is not an error.
            let _ = stdin.write_all(&data).await;
        });
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stdout_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf).await;
            buf
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr: Box<dyn AsyncRead + Send + Unpin> = Box::new(stderr);
        let comfd = match comfd_reader {
            Some(fd) => {
                let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(fd))?;
                let rx: Box<dyn AsyncRead + Send + Unpin> = Box::new(rx);
                Some(BufReader::new(rx))
            }
            None => None,
        };
        Ok(StepProcess {
            child,
            stderr: Some(BufReader::new(stderr)),
            comfd,
            stdout: Some(stdout_task),
            status: None,
            cancel,
        })
    }

    /// The next thing that happened. After `Exited`, do not call again.
    pub async fn next(&mut self) -> StepEvent {
        loop {
            if let Some(status) = self.status {
                // Exited: drain what is left in the pipes, bounded by the grace period.
                let drained = tokio::time::timeout(PIPE_GRACE, async {
                    if let Some(line) = next_line(&mut self.comfd).await {
                        return Some(StepEvent::Command(ComCommand::parse(&String::from_utf8_lossy(&line))));
                    }
                    if let Some(line) = next_line(&mut self.stderr).await {
                        return Some(StepEvent::Stderr(line));
                    }
                    None
                })
                .await;
                match drained {
                    Ok(Some(ev)) => return ev,
                    Ok(None) | Err(_) => {
                        self.stderr = None;
                        self.comfd = None;
                        let stdout = match self.stdout.take() {
                            Some(task) => {
                                let abort = task.abort_handle();
                                match tokio::time::timeout(PIPE_GRACE, task).await {
                                    Ok(Ok(buf)) => buf,
                                    _ => {
                                        abort.abort();
                                        Vec::new()
                                    }
                                }
                            }
                            None => Vec::new(),
                        };
                        self.cancel.pgid.store(0, Ordering::SeqCst);
                        return StepEvent::Exited { code: exit_code(status), stdout };
                    }
                }
            }
            tokio::select! {
                Some(line) = next_line(&mut self.comfd), if self.comfd.is_some() => {
                    return StepEvent::Command(ComCommand::parse(&String::from_utf8_lossy(&line)));
                }
                Some(line) = next_line(&mut self.stderr), if self.stderr.is_some() => {
                    return StepEvent::Stderr(line);
                }
                status = self.child.wait() => {
                    self.status = Some(status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(1 << 8)));
                }
            }
        }
    }
}

/// Ask the kernel to SIGTERM the step if the agent dies (crash, `kill -9`): the
/// restarted agent reports the task as interrupted, so its step must not live on.
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)
        });
    }
}
