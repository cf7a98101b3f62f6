//! The one seam through which the agents run host programs (`useradd`, `skopeo`,
//! `systemctl`, `podman`, `cp`, `chown`...). A failure carries the command line, the
//! exit status and the tail of stderr, so an error names what ran and why it failed;
//! the async variants run the program on tokio's blocking pool, never on the agent's
//! one thread.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// How much of stderr an error keeps: the cause is at the end, as a rule.
const STDERR_TAIL: usize = 2000;

/// A host command to run: program, arguments, environment, working directory, stdin.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    clear_env: bool,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    /// The uid and gid it runs as (supplementary groups dropped), when not the caller's.
    ids: Option<(u32, u32)>,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// It could not be started (not installed, not executable...).
    #[error("cannot run {argv}: {source}")]
    Spawn { argv: String, source: std::io::Error },
    /// It ran and exited unsuccessfully.
    #[error("{argv} failed ({status}){}", tail_suffix(.stderr))]
    Failed { argv: String, status: ExitStatus, stderr: String },
    /// The blocking pool went away (the runtime is shutting down).
    #[error("{argv}: its thread was lost: {why}")]
    Lost { argv: String, why: String },
}

fn tail_suffix(stderr: &str) -> String {
    if stderr.is_empty() { String::new() } else { format!(": {stderr}") }
}

impl CmdError {
    /// The exit code, when it ran and exited with one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CmdError::Failed { status, .. } => status.code(),
            _ => None,
        }
    }

    /// The tail of its stderr, trimmed, when it ran.
    pub fn stderr(&self) -> &str {
        match self {
            CmdError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            clear_env: false,
            cwd: None,
            stdin: None,
            ids: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Start from an empty environment (what `env` adds is kept).
    pub fn env_clear(mut self) -> Self {
        self.clear_env = true;
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Bytes for its stdin (else it reads /dev/null).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Run as `uid`:`gid` (the caller must be root): a module's own hands.
    pub fn uid_gid(mut self, uid: u32, gid: u32) -> Self {
        self.ids = Some((uid, gid));
        self
    }

    /// The command line, for messages.
    pub fn argv(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(char::is_whitespace) {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }

    /// The `std` command, for a caller that must spawn and supervise a long-running
    /// child itself (a program the supervisor keeps running).
    pub fn to_std(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.clear_env {
            c.env_clear();
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        if let Some((uid, gid)) = self.ids {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        c
    }

    /// Run to its end and capture its output, whatever its exit status: for a caller
    /// to which a failure is an answer (`id -u`, `systemctl is-active`).
    pub fn output(&self) -> Result<Output, CmdError> {
        let mut c = self.to_std();
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let spawn = |source| CmdError::Spawn { argv: self.argv(), source };
        let mut child = c.spawn().map_err(spawn)?;
        if let Some(bytes) = &self.stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            // A child that exits without reading is answered by its status below.
            let _ = pipe.write_all(bytes);
        }
        child.wait_with_output().map_err(spawn)
    }

    /// Run to its end; success or a [`CmdError::Failed`] with the tail of stderr.
    pub fn run(&self) -> Result<Output, CmdError> {
        let out = self.output()?;
        if out.status.success() {
            return Ok(out);
        }
        Err(CmdError::Failed { argv: self.argv(), status: out.status, stderr: tail(&out.stderr) })
    }

    /// [`run`](Self::run), and its stdout as text.
    pub fn stdout(&self) -> Result<String, CmdError> {
        self.run().map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Run `self` with its stdout streamed into `next`'s stdin (`self | next`), both to
    /// their end; `next`'s output when both succeed, else the failure of the consumer
    /// (its cause is usually the producer's, named in the producer's own error then).
    pub fn pipe_to(&self, next: &Cmd) -> Result<Output, CmdError> {
        let mut producer = self.to_std();
        producer.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut first = producer.spawn().map_err(|source| CmdError::Spawn { argv: self.argv(), source })?;
        let stream = first.stdout.take().expect("stdout was piped");
        let mut consumer = next.to_std();
        consumer.stdin(Stdio::from(stream)).stdout(Stdio::piped()).stderr(Stdio::piped());
        // The producer's stderr is drained meanwhile, so a chatty producer cannot block.
        let first = std::thread::spawn(move || first.wait_with_output());
        let second = consumer.spawn().and_then(|c| c.wait_with_output());
        let first = first
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the thread waiting for it panicked")))
            .map_err(|source| CmdError::Spawn { argv: self.argv(), source })?;
        let second = second.map_err(|source| CmdError::Spawn { argv: next.argv(), source })?;
        let failed = |cmd: &Cmd, out: &Output| CmdError::Failed {
            argv: cmd.argv(),
            status: out.status,
            stderr: tail(&out.stderr),
        };
        if !first.status.success() {
            return Err(failed(self, &first));
        }
        if !second.status.success() {
            return Err(failed(next, &second));
        }
        Ok(second)
    }

    /// [`output`](Self::output) on tokio's blocking pool.
    pub async fn output_async(self) -> Result<Output, CmdError> {
        let argv = self.argv();
        tokio::task::spawn_blocking(move || self.output())
            .await
            .unwrap_or_else(|e| Err(CmdError::Lost { argv, why: e.to_string() }))
    }

    /// [`run`](Self::run) on tokio's blocking pool.
    pub async fn run_async(self) -> Result<Output, CmdError> {
        let argv = self.argv();
        tokio::task::spawn_blocking(move || self.run())
            .await
            .unwrap_or_else(|e| Err(CmdError::Lost { argv, why: e.to_string() }))
    }
}

/// The last [`STDERR_TAIL`] bytes of `stderr`, trimmed, cut at a character boundary.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.len() <= STDERR_TAIL {
        return text.to_owned();
    }
    let mut start = text.len() - STDERR_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_command_its_status_and_stderr() {
        let err = Cmd::new("sh").args(["-c", "echo out; echo 'disk on fire' >&2; exit 3"]).run().unwrap_err();
        assert_eq!(err.exit_code(), Some(3));
        assert_eq!(err.stderr(), "disk on fire");
        let text = err.to_string();
        assert!(
            text.starts_with("sh -c \"echo out; echo 'disk on fire' >&2; exit 3\" failed (exit status: 3)"),
            "{text}"
        );
        assert!(text.ends_with(": disk on fire"), "{text}");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = Cmd::new("/nonexistent/ns8rs-nothing").run().unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot run /nonexistent/ns8rs-nothing: "), "{err}");
    }

    #[test]
    fn stdin_env_and_dir_reach_the_program() {
        let dir = std::env::temp_dir();
        let out = Cmd::new("sh")
            .args(["-c", "read x; echo \"$x $NS8RS_T $(pwd)\""])
            .env("NS8RS_T", "v")
            .current_dir(&dir)
            .stdin("line\n")
            .stdout()
            .unwrap();
        let want = format!("line v {}\n", dir.canonicalize().unwrap().display());
        assert_eq!(out, want);
        let out = Cmd::new("sh").args(["-c", "echo ${HOME:-none}"]).env_clear().stdout().unwrap();
        assert_eq!(out, "none\n");
    }

    #[test]
    fn only_the_tail_of_a_long_stderr_is_kept() {
        let long = "x".repeat(STDERR_TAIL * 3) + "the cause";
        let t = tail(long.as_bytes());
        assert!(t.starts_with("...") && t.ends_with("the cause") && t.len() == STDERR_TAIL + 3, "{}", t.len());
    }

    #[test]
    fn a_pipe_streams_and_names_the_side_that_failed() {
        let out = Cmd::new("printf").arg("a\\nb\\n").pipe_to(&Cmd::new("wc").arg("-l")).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
        let err = Cmd::new("sh").args(["-c", "echo gone >&2; exit 4"]).pipe_to(&Cmd::new("cat")).unwrap_err();
        assert_eq!((err.exit_code(), err.stderr()), (Some(4), "gone"));
        let err = Cmd::new("true").pipe_to(&Cmd::new("sh").args(["-c", "exit 5"])).unwrap_err();
        assert_eq!(err.exit_code(), Some(5));
    }

    #[test]
    fn uid_gid_switch_the_account() {
        if !nix_is_root() {
            return;
        }
        let out = Cmd::new("id").arg("-u").uid_gid(65534, 65534).stdout().unwrap();
        assert_eq!(out.trim(), "65534");
        // Root's supplementary groups (group 0 among them) are not carried over.
        let groups = Cmd::new("id").arg("-G").uid_gid(65534, 65534).stdout().unwrap();
        assert_eq!(groups.trim(), "65534");
    }

    fn nix_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0"))
            })
            .unwrap_or(false)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_async_variants_answer_as_the_blocking_ones() {
        assert!(Cmd::new("true").run_async().await.unwrap().status.success());
        let err = Cmd::new("false").run_async().await.unwrap_err();
        assert_eq!(err.exit_code(), Some(1));
        let out = Cmd::new("false").output_async().await.unwrap();
        assert_eq!(out.status.code(), Some(1));
    }
}
