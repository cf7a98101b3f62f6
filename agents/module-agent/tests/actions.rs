//! Action execution against a real redis-server and the real agent binary: steps,
//! validation, progress, environment, exit codes, stored results.

mod common;

use common::*;
use protocol::AgentId;
use protocol::task::{Progress, TaskStatus};
use serde_json::json;
use testkit::{AgentTree, RedisServer};

fn m(id: &str) -> AgentId {
    AgentId::Module(id.into())
}

const NAME_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "port": {"type": "integer", "maximum": 65535}}
}"#;

#[tokio::test]
async fn multi_step_bash_action_validates_input_then_runs_in_order() {
    let Fixture { redis, tree, agent, client, id } = start("module/greeter1", &[]).await;
    tree.file("greet", "validate-input.json", NAME_SCHEMA).unwrap();
    tree.step("greet", "10read", "#!/bin/bash\nname=$(sed -n 's/.*\"name\":\"\\([^\"]*\\)\".*/\\1/p')\necho \"step 10 saw $name\" >&2\necho \"GREETED=$name\" >> environment\n").unwrap();
    tree.step(
        "greet",
        "20answer",
        "#!/bin/bash\necho \"{\\\"hello\\\": \\\"$GREETED\\\", \\\"task\\\": \\\"$AGENT_TASK_ACTION\\\"}\"\n",
    )
    .unwrap();
    // A non-executable file is skipped, as NS8 does with placeholder steps.
    tree.file("greet", "15placeholder", "not executable").unwrap();

    let (bad, progress) = run(&client, &id, "greet", json!({"port": 70000})).await;
    assert_eq!(bad.exit_code, 10, "{bad:?}");
    assert_eq!(bad.status_from_exit_code(), TaskStatus::ValidationFailed);
    let errors: Vec<_> =
        bad.output.as_array().unwrap().iter().map(|e| e["error"].as_str().unwrap().to_owned()).collect();
    assert!(errors.contains(&"name_required".to_owned()), "{errors:?}");
    assert!(errors.contains(&"port_number_lte".to_owned()), "{errors:?}");
    assert!(bad.error.starts_with("Validation errors: "), "{}", bad.error);
    assert_eq!(progress.last().unwrap().status, TaskStatus::ValidationFailed);
    assert!(!progress.iter().any(|p| p.status == TaskStatus::Running), "no step may run: {progress:?}");
    assert_eq!(tree.read_state("environment"), "", "a refused task must change nothing");

    let (ok, _) = run(&client, &id, "greet", json!({"name": "world"})).await;
    assert_eq!(ok.exit_code, 0, "{ok:?}\n{}", agent.log());
    assert_eq!(ok.output, json!({"hello": "world", "task": "greet"}));
    assert_eq!(ok.error, "step 10 saw world\n");
    // The environment written by a step is copied to Redis after the task.
    assert_eq!(redis.cli(&["HGET", "module/greeter1/environment", "GREETED"]).unwrap(), "world");
}

#[tokio::test]
async fn progress_follows_weights_and_steps() {
    let Fixture { redis: _redis, tree, agent, client, id } = start("module/prog1", &[]).await;
    tree.step("work", "10a", "#!/bin/bash\necho 'set-weight 20b 3' >&3\necho 'set-progress 50' >&3\n").unwrap();
    tree.step("work", "20b", "#!/bin/bash\necho 'set-progress 50' >&3\necho 'bogus-command x' >&3\n").unwrap();
    let (r, progress) = run(&client, &id, "work", json!({})).await;
    assert_eq!(r.exit_code, 0);
    let p = |status, progress| Progress { status, progress };
    use TaskStatus::*;
    assert_eq!(
        progress,
        // NS8 also sends `running 100` after the last step, right before the terminal
        // message that says the same; we don't.
        vec![p(Pending, 0), p(Running, 0), p(Running, 12), p(Running, 25), p(Running, 62), p(Completed, 100)]
    );
    assert!(agent.log().contains("bogus-command x"), "unknown commands are logged");
}

#[tokio::test]
async fn long_steps_send_heartbeats() {
    let Fixture { redis: _redis, tree, agent: _agent, client, id } =
        start("module/beat1", &[("AGENT_POLLING_INTERVAL", "200ms")]).await;
    tree.step("slow", "10sleep", "#!/bin/bash\nsleep 1\n").unwrap();
    let (r, progress) = run(&client, &id, "slow", json!({})).await;
    assert_eq!(r.exit_code, 0);
    let beats = progress.iter().filter(|p| p.status == TaskStatus::Running && p.progress == 0).count();
    assert!(beats >= 3, "expected the running status to be repeated while the step sleeps: {progress:?}");
}

#[tokio::test]
async fn failures_have_ns8_exit_codes() {
    let Fixture { redis: _redis, tree, agent: _agent, client, id } = start("module/codes1", &[]).await;
    tree.step("fail", "10ok", "#!/bin/bash\necho partial\n").unwrap();
    tree.step("fail", "20fail", "#!/bin/bash\necho 'it broke' >&2\nexit 3\n").unwrap();
    tree.step("fail", "30never", "#!/bin/bash\ntouch never-ran\n").unwrap();
    tree.step("reject", "10check", "#!/bin/bash\necho 'set-status validation-failed' >&3\necho '[{\"field\":\"x\",\"parameter\":\"x\",\"value\":1,\"error\":\"x_taken\"}]'\n").unwrap();
    tree.file(
        "badout",
        "validate-output.json",
        r#"{"type":"object","required":["ok"],"properties":{"ok":{"type":"boolean"}}}"#,
    )
    .unwrap();
    tree.step("badout", "10print", "#!/bin/bash\necho '{\"ok\": \"no\"}'\n").unwrap();
    tree.file("goodout", "validate-output.json", r#"{"type":"object","required":["ok"]}"#).unwrap();
    tree.step("goodout", "10print", "#!/bin/bash\necho '{\"ok\": true}'\n").unwrap();

    let (r, progress) = run(&client, &id, "fail", json!({})).await;
    assert_eq!((r.exit_code, r.status_from_exit_code()), (3, TaskStatus::Aborted));
    assert_eq!(r.output, json!("partial\n"));
    assert_eq!(r.error, "it broke\n");
    assert_eq!(progress.last().unwrap(), &Progress { status: TaskStatus::Aborted, progress: 33 });
    assert!(!tree.state().join("never-ran").exists(), "steps after a failure must not run");

    let (r, _) = run(&client, &id, "reject", json!({})).await;
    assert_eq!((r.exit_code, r.status_from_exit_code()), (10, TaskStatus::ValidationFailed));
    assert_eq!(r.output[0]["error"], "x_taken");

    let (r, _) = run(&client, &id, "badout", json!({})).await;
    assert_eq!((r.exit_code, r.status_from_exit_code()), (1, TaskStatus::Aborted));
    assert!(r.error.contains("Output validation failed"), "{}", r.error);
    assert!(r.error.contains("ok_invalid_type"), "{}", r.error);
    let (r, _) = run(&client, &id, "goodout", json!({})).await;
    assert_eq!(r.exit_code, 0);

    let (r, progress) = run(&client, &id, "no-such-action", json!({})).await;
    assert_eq!((r.exit_code, r.status_from_exit_code()), (8, TaskStatus::Aborted));
    assert_eq!(r.error, "Action no-such-action is not defined\n");
    assert_eq!(
        progress,
        vec![
            Progress { status: TaskStatus::Pending, progress: 0 },
            Progress { status: TaskStatus::Aborted, progress: 0 }
        ]
    );
}

#[tokio::test]
async fn step_environment_and_context() {
    let Fixture { redis, tree, agent, client, id } = start("module/env1", &[]).await;
    std::fs::write(tree.state().join("environment"), "MODULE_ID=env1\nCOUNT=1\n").unwrap();
    tree.step(
        "env",
        "10bump",
        "#!/bin/bash\nsed -i 's/^COUNT=1$/COUNT=2/' environment\necho 'ADDED=yes' >> environment\n",
    )
    .unwrap();
    tree.step("env", "20show", "#!/bin/bash\nprintf '{\"count\":\"%s\",\"added\":\"%s\",\"id\":\"%s\",\"user\":\"%s\",\"comfd\":\"%s\",\"agent\":\"%s\",\"cwd\":\"%s\",\"stdin\":%s}' \"$COUNT\" \"$ADDED\" \"$AGENT_TASK_ID\" \"$AGENT_TASK_USER\" \"$AGENT_COMFD\" \"$AGENT_ID\" \"$PWD\" \"$(cat)\"\n").unwrap();
    let mut task = protocol::task::Task::new("env", json!({"admin_password": "hunter2", "n": 1}));
    task.user = "admin".into();
    let r = tokio::time::timeout(PATIENCE, client.run(&id, &mut task, |_| {})).await.unwrap().unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.output["count"], "2", "a later step sees the environment an earlier step wrote");
    assert_eq!(r.output["added"], "yes");
    assert_eq!(r.output["id"], task.id.as_str());
    assert_eq!(r.output["user"], "admin");
    assert_eq!(r.output["comfd"], "3");
    assert_eq!(r.output["agent"], "module/env1");
    assert_eq!(r.output["cwd"], tree.state().display().to_string());
    assert_eq!(r.output["stdin"], json!({"admin_password": "hunter2", "n": 1}), "steps get the data in clear");
    let context = redis.cli(&["GET", &format!("task/module/env1/{}/context", task.id)]).unwrap();
    assert!(!context.contains("hunter2"), "secrets are masked in the context: {context}");
    assert!(context.contains(r#""admin_password":"XXX""#), "{context}");
    let ttl: i64 = redis.cli(&["TTL", &format!("task/module/env1/{}/output", task.id)]).unwrap().parse().unwrap();
    assert!(ttl > 8 * 3600 - 60 && ttl <= 8 * 3600, "results live 8 h: {ttl}");
    assert_eq!(redis.cli(&["HGET", "module/env1/environment", "COUNT"]).unwrap(), "2");
    assert!(!agent.log().contains("hunter2"), "no secret in the agent log");
}

/// Fields the input schema declares secret (`writeOnly`, `format: password`), whatever
/// their names, are masked in the context and in validation errors; steps still get them.
#[tokio::test]
async fn schema_declared_secrets_stay_out_of_context_and_errors() {
    let Fixture { redis, tree, agent, client, id } = start("module/sec1", &[]).await;
    let schema = r#"{
        "type": "object",
        "properties": {
            "login": {"type": "string", "writeOnly": true, "minLength": 12},
            "remote": {"type": "object", "properties": {"word": {"type": "string", "format": "password"}}},
            "name": {"type": "string"}
        }
    }"#;
    tree.file("store", "validate-input.json", schema).unwrap();
    tree.step("store", "10echo", "#!/bin/sh\ncat\n").unwrap();
    let data = json!({"login": "login-value-in-clear", "remote": {"word": "word-in-clear"}, "name": "shown"});
    let mut task = protocol::task::Task::new("store", data.clone());
    let r = tokio::time::timeout(PATIENCE, client.run(&id, &mut task, |_| {})).await.unwrap().unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}\n{}", agent.log());
    assert_eq!(r.output, data, "the step gets the data in clear");
    let context = redis.cli(&["GET", &format!("task/module/sec1/{}/context", task.id)]).unwrap();
    let context: serde_json::Value = serde_json::from_str(&context).unwrap();
    assert_eq!(context["data"], json!({"login": "XXX", "remote": {"word": "XXX"}, "name": "shown"}));

    // Too short: refused, and neither the errors nor the context repeat it.
    let mut task = protocol::task::Task::new("store", json!({"login": "short-login"}));
    let r = tokio::time::timeout(PATIENCE, client.run(&id, &mut task, |_| {})).await.unwrap().unwrap();
    assert_eq!(r.exit_code, 10, "{r:?}");
    assert!(r.output.to_string().contains("login_string_gte"), "{r:?}");
    let context = redis.cli(&["GET", &format!("task/module/sec1/{}/context", task.id)]).unwrap();
    for text in [r.output.to_string(), r.error.clone(), context, agent.log()] {
        assert!(!text.contains("short-login"), "the secret leaked: {text}");
        assert!(!text.contains("login-value-in-clear") && !text.contains("word-in-clear"), "{text}");
    }
}

#[tokio::test]
async fn a_missing_environment_file_still_stores_the_result() {
    // NS8's agent loses the whole result in this case (its MULTI aborts).
    let Fixture { redis, tree, agent: _agent, client, id } = start("module/noenv1", &[]).await;
    tree.step("x", "10x", "#!/bin/bash\necho '{}'\n").unwrap();
    assert!(!tree.state().join("environment").exists());
    let (r, _) = run(&client, &id, "x", json!({})).await;
    assert_eq!(r.exit_code, 0);
    assert_eq!(redis.cli(&["EXISTS", "module/noenv1/environment"]).unwrap(), "0");
}

#[tokio::test]
async fn a_task_pushed_with_redis_cli_runs() {
    let Fixture { redis, tree, agent, client, id } = start("module/raw1", &[]).await;
    tree.step("echo", "10echo", "#!/bin/bash\ncat\n").unwrap();
    let raw = r#"{"id":"b1f3c5e2-0d4a-4c1e-9f00-000000000001","action":"echo","data":{"k":[1,2]},"extra":{"title":"t"},"parent":"","queue":"module/raw1/tasks","user":"admin","timestamp":"2026-11-26T16:14:49.695761Z","future_field":true}"#;
    redis.cli(&["LPUSH", "module/raw1/tasks", raw]).unwrap();
    // Not malformed, so it must not be dropped: wait for the exit code like NS8 clients do.
    let key = "task/module/raw1/b1f3c5e2-0d4a-4c1e-9f00-000000000001";
    eventually("the redis-cli task to finish", || redis.cli(&["GET", &format!("{key}/exit_code")]).unwrap() == "0")
        .await;
    assert_eq!(redis.cli(&["GET", &format!("{key}/output")]).unwrap(), r#"{"k":[1,2]}"#);
    // Garbage is dropped without a trace and does not stop the agent.
    redis.cli(&["LPUSH", "module/raw1/tasks", "not json"]).unwrap();
    let (r, _) = run(&client, &id, "echo", json!("still alive")).await;
    assert_eq!(r.output, json!("still alive"));
    assert_eq!(redis.cli(&["LLEN", "task/module/raw1/inflight"]).unwrap(), "0");
    assert!(agent.log().contains("task ignored"), "{}", agent.log());
}

#[tokio::test]
async fn list_actions_merges_roots() {
    let redis = RedisServer::start().unwrap();
    let base = AgentTree::new().unwrap();
    let own = AgentTree::new().unwrap();
    base.step("base-action", "10x", "#!/bin/bash\necho base\n").unwrap();
    base.step("shared", "10who", "#!/bin/bash\necho base\n").unwrap();
    own.step("shared", "10who", "#!/bin/bash\necho own\n").unwrap();
    own.step("own-action", "10x", "#!/bin/bash\n").unwrap();
    // NS8's flags: base actions first, the module's own second.
    let args = [
        "--agentid=module/roots1".to_owned(),
        format!("--actionsdir={}", base.actions().display()),
        format!("--actionsdir={}", own.actions().display()),
    ];
    let agent = testkit::AgentProcess::spawn_args(std::path::Path::new(BIN), &args, &own, &redis, &[]).unwrap();
    let client = client(&redis).await;
    let id = m("roots1");
    wait_ready(&client, &id, &agent).await;
    let (r, _) = run(&client, &id, "list-actions", json!(null)).await;
    let mut names: Vec<String> = serde_json::from_value(r.output).unwrap();
    names.sort();
    assert_eq!(names, ["base-action", "cancel-task", "list-actions", "own-action", "shared"]);
    let (r, _) = run(&client, &id, "shared", json!({})).await;
    assert_eq!(r.output, json!("own\n"), "the later root overrides a step of the same name");
}

#[tokio::test]
async fn a_daemon_left_holding_the_pipes_does_not_hold_the_task() {
    let Fixture { redis: _redis, tree, agent: _agent, client, id } = start("module/daemon1", &[]).await;
    // The background sleep inherits stdout and stderr and keeps them open for a minute.
    tree.step("start", "10daemon", "#!/bin/bash\nsleep 60 &\necho $! > daemon.pid\necho '{\"started\": true}'\n")
        .unwrap();
    let started = std::time::Instant::now();
    let (r, _) = run(&client, &id, "start", json!({})).await;
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.output, json!({"started": true}), "what the step wrote before exiting is kept");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "waited {:?}", started.elapsed());
    let pid: i32 = tree.read_state("daemon.pid").trim().parse().unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}
