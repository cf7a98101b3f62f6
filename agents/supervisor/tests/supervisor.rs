//! End-to-end tests of the `supervisor` binary: real processes, programs written as
//! `/bin/sh -c` scripts that leave traces (pids, counters) in a temporary directory.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(10);

/// A program file for `/bin/sh -c script`; `extra` fields are merged in.
fn sh(name: &str, script: &str, extra: Value) -> Value {
    let mut v = json!({"name": name, "command": ["/bin/sh", "-c", script], "stop_timeout_secs": 2});
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

/// Whether `pid` is a live process (a zombie left to an init that does not reap counts
/// as dead).
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A running supervisor on its own temporary directory; stopped (then killed) on drop,
/// so that a failing test leaves nothing behind.
struct Supervisor {
    child: Child,
    tmp: TempDir,
}

impl Supervisor {
    /// A temporary directory with an empty `conf/`, for `write` before `start`.
    fn dir() -> TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("conf")).unwrap();
        tmp
    }

    fn start(tmp: TempDir) -> Self {
        let log = File::create(tmp.path().join("supervisor.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_supervisor"))
            .arg("--config-dir")
            .arg(tmp.path().join("conf"))
            .arg("--pidfile")
            .arg(tmp.path().join("supervisor.pid"))
            .env("RUST_LOG", "info")
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Supervisor { child, tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("supervisor.log")).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Poll `cond` until it holds; fail with the supervisor's log after [`DEADLINE`].
    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + DEADLINE;
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}; supervisor log:\n{}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `pid` is gone: SIGKILL is delivered asynchronously, so a process of a
    /// killed group may outlive the supervisor's exit by a moment.
    fn wait_gone(&self, pid: i32, what: &str) {
        self.wait_until(&format!("the end of pid {pid} ({what})"), || !alive(pid));
    }

    fn wait_log(&self, needle: &str) {
        self.wait_until(&format!("{needle:?} in the log"), || self.log().contains(needle));
    }

    /// Wait until the file holds whitespace-separated pids, and return them.
    fn pids(&self, file: &str) -> Vec<i32> {
        let read = || {
            let text = std::fs::read_to_string(self.path(file)).ok()?;
            text.ends_with('\n').then(|| text.split_whitespace().map(|p| p.parse().unwrap()).collect::<Vec<i32>>())
        };
        self.wait_until(&format!("pids in {file}"), || read().is_some());
        read().unwrap()
    }

    fn lines(&self, file: &str) -> usize {
        std::fs::read_to_string(self.path(file)).map(|t| t.lines().count()).unwrap_or(0)
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "supervisor still running; log:\n{}", self.log());
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(tmp: &TempDir, file: &str, program: &Value) {
    std::fs::write(tmp.path().join("conf").join(file), serde_json::to_string_pretty(program).unwrap()).unwrap();
}

#[test]
fn crashing_program_is_restarted_with_backoff() {
    let tmp = Supervisor::dir();
    write(&tmp, "crash.json", &sh("crash", "echo x >> count; exit 1", json!({})));
    let sup = Supervisor::start(tmp);
    sup.wait_until("three starts", || sup.lines("count") >= 3);
    let log = sup.log();
    assert!(log.contains("crash: restarting in 200 ms"), "{log}");
    assert!(log.contains("crash: restarting in 400 ms"), "{log}");
    assert!(log.contains("exited: exit code 1"), "{log}");
}

#[test]
fn restart_policies() {
    let tmp = Supervisor::dir();
    write(&tmp, "a.json", &sh("never", "echo x >> never.count; exit 1", json!({"restart": "never"})));
    write(&tmp, "b.json", &sh("clean", "echo x >> clean.count; exit 0", json!({"restart": "on-failure"})));
    write(&tmp, "c.json", &sh("dirty", "echo x >> dirty.count; exit 2", json!({"restart": "on-failure"})));
    let sup = Supervisor::start(tmp);
    sup.wait_log("never: not restarting (restart: never)");
    sup.wait_log("clean: not restarting (restart: on-failure)");
    sup.wait_until("a restart of the failing on-failure program", || sup.lines("dirty.count") >= 2);
    assert_eq!(sup.lines("never.count"), 1);
    assert_eq!(sup.lines("clean.count"), 1);
}

#[test]
fn sighup_adds_removes_and_restarts_changed_programs() {
    let daemon = |name: &str| sh(name, &format!("echo $$ > {name}.pid; exec sleep 1000"), json!({}));
    let tmp = Supervisor::dir();
    write(&tmp, "keep.json", &daemon("keep"));
    write(&tmp, "gone.json", &daemon("gone"));
    write(&tmp, "edit.json", &daemon("edit"));
    let sup = Supervisor::start(tmp);
    let (keep, gone, edit) = (sup.pids("keep.pid")[0], sup.pids("gone.pid")[0], sup.pids("edit.pid")[0]);

    let conf = sup.path("conf");
    std::fs::remove_file(conf.join("gone.json")).unwrap();
    std::fs::remove_file(sup.path("edit.pid")).unwrap();
    let mut edited = daemon("edit");
    edited["env"] = json!({"EDITED": "1"});
    std::fs::write(conf.join("edit.json"), edited.to_string()).unwrap();
    // Same content, other layout: not a change.
    std::fs::write(conf.join("keep.json"), daemon("keep").to_string()).unwrap();
    std::fs::write(conf.join("new.json"), daemon("new").to_string()).unwrap();
    sup.signal(Signal::SIGHUP);
    sup.wait_log("reload done: 3 programs");

    let new = sup.pids("new.pid")[0];
    let edit2 = sup.pids("edit.pid")[0];
    assert!(alive(new) && alive(edit2) && alive(keep));
    assert_ne!(edit, edit2);
    sup.wait_gone(edit, "the old version of a changed program");
    sup.wait_gone(gone, "a removed program");
    assert_eq!(sup.pids("keep.pid")[0], keep, "an unchanged program is left alone");
    let log = sup.log();
    assert!(
        log.contains("gone.json removed: stopping gone") && log.contains("edit.json changed: stopping edit"),
        "{log}"
    );
    assert!(!log.contains("stopping keep"), "{log}");
}

#[test]
fn sigterm_stops_everything_in_reverse_order() {
    // Each program leaves a background child in its process group, which must go too.
    let program = |name: &str| {
        let script = format!("trap 'echo {name} >> order; exit 0' TERM; sleep 1000 & echo $$ $! > {name}.pids; wait");
        sh(name, &script, json!({}))
    };
    let tmp = Supervisor::dir();
    for (file, name) in [("10-a.json", "a"), ("20-b.json", "b"), ("30-c.json", "c")] {
        write(&tmp, file, &program(name));
    }
    let mut sup = Supervisor::start(tmp);
    let pids: Vec<i32> = ["a", "b", "c"].iter().flat_map(|n| sup.pids(&format!("{n}.pids"))).collect();
    assert_eq!(pids.len(), 6);
    let pidfile = std::fs::read_to_string(sup.path("supervisor.pid")).unwrap();
    assert_eq!(pidfile.trim(), sup.child.id().to_string());

    sup.signal(Signal::SIGTERM);
    assert!(sup.wait_exit().success(), "{}", sup.log());
    assert_eq!(std::fs::read_to_string(sup.path("order")).unwrap(), "c\nb\na\n");
    for pid in pids {
        sup.wait_gone(pid, "a program or its background child");
    }
    assert!(!sup.path("supervisor.pid").exists(), "the pidfile is removed at exit");
    let log = sup.log();
    let started = |n: &str| log.find(&format!("{n}: started")).unwrap();
    assert!(started("a") < started("b") && started("b") < started("c"), "started in file-name order:\n{log}");
}

#[test]
fn program_ignoring_its_stop_signal_is_killed_after_the_timeout() {
    let script = "trap '' TERM; sleep 1000 & echo $$ $! > stubborn.pids; wait";
    let tmp = Supervisor::dir();
    write(&tmp, "stubborn.json", &sh("stubborn", script, json!({"stop_timeout_secs": 1})));
    let mut sup = Supervisor::start(tmp);
    let pids = sup.pids("stubborn.pids");
    let asked = Instant::now();
    sup.signal(Signal::SIGTERM);
    assert!(sup.wait_exit().success());
    assert!(asked.elapsed() >= Duration::from_secs(1), "the stop timeout is honoured");
    for pid in pids {
        sup.wait_gone(pid, "the stubborn program or its background child");
    }
    let log = sup.log();
    assert!(log.contains("still running after 1 s: killing its process group"), "{log}");
    assert!(log.contains("stopped: signal SIGKILL"), "{log}");
}

#[test]
fn invalid_files_are_reported_and_skipped() {
    let tmp = Supervisor::dir();
    write(&tmp, "bad.json", &sh("bad", "exit 0", json!({"colour": "red"})));
    std::fs::write(tmp.path().join("conf/broken.json"), "{not json").unwrap();
    write(&tmp, "good.json", &sh("good", "echo $$ > good.pid; exec sleep 1000", json!({})));
    std::fs::write(tmp.path().join("conf/notes.txt"), "not a program").unwrap();
    let sup = Supervisor::start(tmp);
    sup.pids("good.pid");
    sup.wait_log("supervising 1 programs");
    let log = sup.log();
    assert!(log.contains("bad.json: skipped: unknown field `colour`"), "{log}");
    assert!(log.contains("broken.json: skipped:"), "{log}");
    assert!(!log.contains("bad: started"), "{log}");
}

#[test]
fn log_env_cwd_and_user() {
    let tmp = Supervisor::dir();
    std::fs::create_dir(tmp.path().join("work")).unwrap();
    std::fs::write(tmp.path().join("secret.env"), "SECRET=s3cret\nFOO=from-file\n").unwrap();
    let script = "echo foo=$FOO; echo secret=$SECRET; echo cwd=$(pwd); echo oops >&2";
    let missing = format!("-{}", tmp.path().join("missing.env").display());
    let extra = json!({"env": {"FOO": "bar"}, "cwd": tmp.path().join("work"), "log": tmp.path().join("env.log"),
                       "restart": "never", "env_files": [tmp.path().join("secret.env"), missing]});
    write(&tmp, "env.json", &sh("env", script, extra));
    let nobody = nix::unistd::User::from_name("nobody").unwrap();
    let as_root = nix::unistd::geteuid().is_root() && nobody.is_some();
    if as_root {
        let script = "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER";
        let extra = json!({"user": "nobody", "log": tmp.path().join("user.log"), "restart": "never"});
        write(&tmp, "user.json", &sh("user", script, extra));
    } else {
        eprintln!("not root or no user nobody: \"user\" not tested");
    }
    let mut sup = Supervisor::start(tmp);
    sup.wait_log("env: not restarting");
    let out = std::fs::read_to_string(sup.path("env.log")).unwrap();
    let work = sup.path("work").canonicalize().unwrap();
    // The file comes after `env`, as systemd's EnvironmentFile= after Environment=.
    assert!(out.contains("foo=from-file\n") && out.contains("secret=s3cret\n") && out.contains("oops\n"), "{out}");
    assert!(out.contains(&format!("cwd={}\n", work.display())), "{out}");
    if let (true, Some(nobody)) = (as_root, nobody) {
        sup.wait_log("user: not restarting");
        let out = std::fs::read_to_string(sup.path("user.log")).unwrap();
        let fields: std::collections::BTreeMap<&str, &str> =
            out.trim_end().split(' ').filter_map(|f| f.split_once('=')).collect();
        assert_eq!(fields["uid"], nobody.uid.to_string(), "{out}");
        assert_eq!(fields["gid"], nobody.gid.to_string(), "{out}");
        assert_eq!(fields["home"], nobody.dir.to_str().unwrap(), "{out}");
        assert_eq!(fields["user"], "nobody", "{out}");
        // `id -G` prints one group per word, so "groups=" holds only the first: compare
        // the whole list from the output's tail instead.
        let c_name = std::ffi::CString::new("nobody").unwrap();
        let mut want: Vec<String> =
            nix::unistd::getgrouplist(&c_name, nobody.gid).unwrap().iter().map(|g| g.to_string()).collect();
        let listed = out.split("groups=").nth(1).and_then(|r| r.split(" home=").next()).unwrap();
        let mut got: Vec<String> = listed.split_whitespace().map(str::to_owned).collect();
        want.sort();
        want.dedup();
        got.sort();
        assert_eq!(got, want, "{out}");
    }
    sup.signal(Signal::SIGINT);
    assert!(sup.wait_exit().success());
}
