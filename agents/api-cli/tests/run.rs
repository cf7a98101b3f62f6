//! `api-cli run` end to end: the real binary against a private redis-server and an
//! in-process agent (`module/test1`) with a few bash actions.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use protocol::AgentId;
use testkit::{Outcome, RedisServer, wait_for, write_step};
use tokio::sync::oneshot;

const AGENT: &str = "module/test1";

/// A Redis server and an agent running in a background thread. Dropping it stops the
/// agent (and waits for it), then Redis: also when a test fails.
struct Fixture {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
    redis: RedisServer,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The agent waits for running tasks before it stops: release a gated one.
        let _ = std::fs::write(self.dir.path().join("state/go"), "");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn actions(root: &Path) {
    // Echo the input back inside an object.
    write_step(root, "echo", "10echo", "#!/bin/bash\nprintf '{\"got\":%s}\\n' \"$(cat)\"\n").unwrap();
    write_step(root, "fail", "10fail", "#!/bin/bash\necho 'disk is full' >&2\nexit 3\n").unwrap();
    write_step(root, "killed", "10kill", "#!/bin/bash\nkill -KILL $$\n").unwrap();
    // Fixed JSON, to see that api-cli keeps the action's key order and number spelling.
    write_step(root, "ordered", "10ordered", "#!/bin/bash\necho '{ \"z\": 1.50, \"a\": [] }'\n").unwrap();
    // Runs until the test creates `$AGENT_STATE_DIR/go`.
    write_step(
        root,
        "gated",
        "10gated",
        "#!/bin/bash\nwhile [ ! -e \"$AGENT_STATE_DIR/go\" ]; do sleep 0.02; done\necho '{\"gate\":\"open\"}'\n",
    )
    .unwrap();
    write_step(root, "raw", "10raw", "#!/bin/bash\nprintf 'hello\\nworld\\n'\n").unwrap();
    write_step(root, "silent", "10silent", "#!/bin/bash\ntrue\n").unwrap();
    write_step(root, "slow", "10slow", "#!/bin/bash\nsleep 0.5\necho '{\"done\":true}'\n").unwrap();
}

fn start() -> Fixture {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    actions(&install.join("actions"));
    let cfg = agent_runtime::AgentConfig {
        agent_id: AGENT.parse().unwrap(),
        action_dirs: vec![install.join("actions")],
        events_dir: None,
        install_dir: install.clone(),
        state_dir: dir.path().join("state"),
        // Its own ACL user: the liveness check counts only connections of that user.
        redis: bus::RedisConfig {
            user: Some(AGENT.to_owned()),
            password: Some(redis.agent_user(&AGENT.parse().unwrap()).unwrap()),
            ..bus::RedisConfig::new(bus::Address::Unix(redis.socket()))
        },
        max_concurrency: 32,
        poll_interval: Duration::from_secs(1),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let shutdown = async {
            let _ = stopped.await;
        };
        runtime.block_on(agent_runtime::run(cfg, agent_runtime::NativeActions::new(), shutdown)).unwrap();
    });
    let fixture = Fixture { stop: Some(stop), thread: Some(thread), dir, redis };
    // api-cli's liveness check needs the agent's named connection.
    wait_for("the agent's Redis connection", Duration::from_secs(10), || {
        let list = fixture.redis.cli(&["CLIENT", "LIST"]).ok()?;
        list.contains(&format!("name={AGENT} ")).then_some(())
    })
    .unwrap();
    fixture
}

impl Fixture {
    fn api_cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_api-cli"));
        cmd.args(args)
            .env("REDIS_ADDRESS", self.redis.address())
            .env_remove("REDIS_USER")
            .env_remove("REDIS_PASSWORD")
            .env_remove("NODE_ID")
            .env_remove("AGENT_TASK_ID")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Outcome {
        Outcome(self.api_cli(args).output().unwrap())
    }

    fn llen(&self, key: &str) -> String {
        self.redis.cli(&["LLEN", key]).unwrap()
    }
}

/// A spawned api-cli that must not outlive a failed test.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn success_prints_the_output_json_and_exits_0() {
    let f = start();
    let out = f.run(&["run", "echo", "--agent", AGENT, "--data", r#"{"a": [1, "x"]}"#]);
    assert_eq!(out.code(), 0, "{out:?}");
    // Not a terminal: compact JSON, and no progress bar: nothing on stderr.
    assert_eq!(out.stdout(), "{\"got\":{\"a\":[1,\"x\"]}}\n");
    assert_eq!(out.stderr(), "");

    // The output is re-spaced, not re-encoded.
    let out = f.run(&["run", "ordered", "--agent", AGENT]);
    assert_eq!((out.code(), out.stdout().as_str()), (0, "{\"z\":1.50,\"a\":[]}\n"), "{out:?}");

    // The short form of a module id, and the default `{}` data.
    let out = f.run(&["run", "echo", "--agent", "test1"]);
    assert_eq!((out.code(), out.stdout().as_str()), (0, "{\"got\":{}}\n"), "{out:?}");
}

#[test]
fn raw_and_empty_outputs() {
    let f = start();
    let out = f.run(&["run", "raw", "-a", "test1"]);
    assert_eq!((out.code(), out.stdout().as_str()), (0, "hello\nworld\n"), "{out:?}");
    let out = f.run(&["run", "silent", "-a", "test1", "--quiet"]);
    assert_eq!((out.code(), out.stdout().as_str(), out.stderr().as_str()), (0, "", ""), "{out:?}");
}

#[test]
fn a_failing_step_sets_the_exit_code_and_shows_its_error() {
    let f = start();
    let out = f.run(&["run", "fail", "--agent", AGENT]);
    assert_eq!(out.code(), 3, "{out:?}");
    assert_eq!(out.stdout(), "");
    let err = out.stderr();
    assert!(err.contains("disk is full"), "{err}");
    assert!(err.contains("action fail failed on module/test1 with exit code 3"), "{err}");

    // An undefined action: exit 8, said in words.
    let out = f.run(&["run", "nope", "--agent", AGENT]);
    assert_eq!(out.code(), 8, "{out:?}");
    assert!(out.stderr().contains("no such action"), "{out:?}");
}

#[test]
fn a_step_killed_by_a_signal_exits_1_and_names_the_real_code() {
    let f = start();
    let out = f.run(&["run", "killed", "--agent", AGENT]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr().contains("exit code -1: a step was killed by a signal"), "{out:?}");
}

#[test]
fn invalid_data_is_refused_before_anything_is_pushed() {
    let f = start();
    // A queue nobody pops, so a push would stay visible; the liveness check is off so
    // that only the data check can stop the push.
    let ghost = "module/ghost1/tasks";
    let out = f.run(&["run", "echo", "-a", "ghost1", "--check-idle", "0", "--data", "{\"a\":\n 1,"]);
    assert_eq!(out.code(), 2, "{out:?}");
    let err = out.stderr();
    assert!(err.contains("the --data value is not valid JSON"), "{err}");
    assert!(err.contains("at line 2 column 3"), "{err}");
    assert_eq!(f.llen(ghost), "0");

    let out = f.run(&["run", "echo", "-a", "ghost1", "--check-idle", "0", "--extra", "[1"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("the --extra value is not valid JSON"), "{out:?}");
    assert_eq!(f.llen(ghost), "0");

    // Control: the same command with valid data does push.
    let out = f.run(&["run", "echo", "-a", "ghost1", "--check-idle", "0", "--no-wait"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(f.llen(ghost), "1");
}

#[test]
fn an_agent_that_is_not_running_is_refused() {
    let f = start();
    let out = f.run(&["run", "echo", "--agent", "ghost1"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("agent module/ghost1 is not running"), "{out:?}");
    assert_eq!(f.llen("module/ghost1/tasks"), "0");

    // `node` is the local node, from NODE_ID.
    let out = Outcome(f.api_cli(&["run", "echo", "--agent", "node"]).env("NODE_ID", "7").output().unwrap());
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("agent node/7 is not running"), "{out:?}");
}

#[test]
fn invalid_agent_ids_are_refused() {
    let f = start();
    for (agent, message) in [
        ("foo/bar", "invalid agent id \"foo/bar\""),
        ("Mail1", "invalid module id \"Mail1\""),
        ("node/0", "invalid agent id \"node/0\""),
        ("node", "NODE_ID is not set"),
    ] {
        let out = f.run(&["run", "echo", "--agent", agent]);
        assert_eq!(out.code(), 2, "{agent}: {out:?}");
        assert!(out.stderr().contains(message), "{agent}: {out:?}");
    }
}

#[test]
fn no_wait_prints_the_id_and_the_task_completes_later() {
    let f = start();
    let out = f.run(&["run", "slow", "--agent", AGENT, "--no-wait", "--extra", r#"{"title":"t"}"#]);
    assert_eq!(out.code(), 0, "{out:?}");
    let stdout = out.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let id = lines[0];
    protocol::validate_task_id(id).unwrap();
    let agent: AgentId = AGENT.parse().unwrap();
    assert_eq!(lines[1], protocol::keys::task_prefix(&agent, id));

    let code = protocol::keys::task_exit_code(&agent, id);
    wait_for("the task's exit code", Duration::from_secs(10), || {
        f.redis.cli(&["GET", &code]).ok().filter(|c| !c.is_empty())
    })
    .map(|c| assert_eq!(c, "0"))
    .unwrap();
    let output = f.redis.cli(&["GET", &protocol::keys::task_output(&agent, id)]).unwrap();
    assert_eq!(output, "{\"done\":true}");

    // The task as the agent stored it: NS8's fields of a task pushed straight into Redis.
    let context = f.redis.cli(&["GET", &protocol::keys::task_context(&agent, id)]).unwrap();
    let task: serde_json::Value = serde_json::from_str(&context).unwrap();
    assert_eq!(task["id"], id);
    assert_eq!(task["action"], "slow");
    assert_eq!(task["data"], serde_json::json!({}));
    assert_eq!(task["extra"], serde_json::json!({"title": "t"}));
    assert_eq!(task["queue"], "module/test1/tasks");
    assert_eq!(task["user"], "");
    assert_eq!(task["parent"], "");
    let ts = task["timestamp"].as_str().unwrap();
    assert_eq!((ts.len(), &ts[4..5], &ts[10..11], &ts[26..]), (27, "-", "T", "Z"), "{ts}");
}

#[test]
fn data_from_a_file_and_from_stdin() {
    let f = start();
    let file = f.dir.path().join("data.json");
    std::fs::write(&file, "{\"from\": \"file\"}\n").unwrap();
    let at = format!("@{}", file.display());
    let out = f.run(&["run", "echo", "-a", AGENT, "--data", &at]);
    assert_eq!((out.code(), out.stdout().as_str()), (0, "{\"got\":{\"from\":\"file\"}}\n"), "{out:?}");

    let mut child = f
        .api_cli(&["run", "echo", "-a", AGENT, "--data", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"[\"from\", \"stdin\"]").unwrap();
    let out = Outcome(child.wait_with_output().unwrap());
    assert_eq!((out.code(), out.stdout().as_str()), (0, "{\"got\":[\"from\",\"stdin\"]}\n"), "{out:?}");

    let missing = format!("@{}", f.dir.path().join("missing.json").display());
    let out = f.run(&["run", "echo", "-a", AGENT, "--data", &missing]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("cannot read the --data file"), "{out:?}");
}

#[test]
fn the_parent_comes_from_agent_task_id() {
    let f = start();
    let out = Outcome(
        f.api_cli(&["run", "silent", "-a", AGENT, "--no-wait"]).env("AGENT_TASK_ID", "parent-1").output().unwrap(),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let id = out.stdout().lines().next().unwrap().to_owned();
    let agent: AgentId = AGENT.parse().unwrap();
    let key = protocol::keys::task_context(&agent, &id);
    let context = wait_for("the task context", Duration::from_secs(10), || {
        f.redis.cli(&["GET", &key]).ok().filter(|c| !c.is_empty())
    })
    .unwrap();
    let task: serde_json::Value = serde_json::from_str(&context).unwrap();
    assert_eq!(task["parent"], "parent-1");
}

#[test]
fn unreachable_redis_names_the_address_not_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = Outcome(
        Command::new(env!("CARGO_BIN_EXE_api-cli"))
            .args(["run", "echo"])
            .env("REDIS_ADDRESS", &socket)
            .env("REDIS_PASSWORD", "s3cret-value")
            .env_remove("REDIS_USER")
            .output()
            .unwrap(),
    );
    assert_eq!(out.code(), 2, "{out:?}");
    let err = out.stderr();
    assert!(err.contains(&format!("cannot connect to Redis at {}", socket.display())), "{err}");
    assert!(!err.contains("s3cret-value"), "{err}");
}

#[test]
fn ctrl_c_while_waiting_leaves_the_task_running() {
    let f = start();
    let mut child = KillOnDrop(Some(
        f.api_cli(&["run", "gated", "-a", AGENT]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    ));
    let pid = child.0.as_ref().unwrap().id().to_string();
    // The task is running, so api-cli is waiting (its Ctrl-C handler is installed
    // before the push).
    let agent: AgentId = AGENT.parse().unwrap();
    wait_for("the task to start", Duration::from_secs(10), || {
        let keys = f.redis.cli(&["KEYS", "task/module/test1/*/context"]).ok()?;
        (!keys.is_empty()).then_some(())
    })
    .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.parse().unwrap()), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = Outcome(child.0.take().unwrap().wait_with_output().unwrap());
    assert_eq!(out.code(), 130, "{out:?}");
    assert!(out.stderr().contains("interrupted: the task goes on"), "{out:?}");

    // It does go on, and ends normally.
    std::fs::write(f.dir.path().join("state/go"), "").unwrap();
    let keys = f.redis.cli(&["KEYS", "task/module/test1/*/context"]).unwrap();
    let id = keys.trim().split('/').nth(3).unwrap().to_owned();
    let code = protocol::keys::task_exit_code(&agent, &id);
    let code = wait_for("the task's exit code", Duration::from_secs(10), || {
        f.redis.cli(&["GET", &code]).ok().filter(|c| !c.is_empty())
    })
    .unwrap();
    assert_eq!(code, "0");
}
