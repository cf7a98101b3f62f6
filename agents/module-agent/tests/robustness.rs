//! What NS8 gets wrong and we must not: rejected bursts, tasks lost with a crashed
//! agent, events missed while an agent is down. Plus cancel, drain and Redis restarts.

mod common;

use std::time::Duration;

use common::*;
use protocol::AgentId;
use protocol::task::{Task, TaskStatus};
use serde_json::json;
use testkit::{AgentTree, RedisServer, process_exists};

fn m(id: &str) -> AgentId {
    AgentId::Module(id.into())
}

/// Largest number of intervals open at once, from `<ns> start|end` lines.
fn max_overlap(log: &str) -> usize {
    let mut marks: Vec<(u128, i32)> = log
        .lines()
        .filter_map(|l| {
            let (t, what) = l.split_once(' ')?;
            Some((t.parse().ok()?, if what == "start" { 1 } else { -1 }))
        })
        .collect();
    // Ends before starts at the same instant: touching intervals do not overlap.
    marks.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in marks {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test]
async fn a_burst_beyond_32_waits_in_the_queue_and_nothing_is_rejected() {
    let Fixture { redis, tree, agent: _agent, client, id } = start("module/burst1", &[]).await;
    tree.step(
        "slow",
        "10slow",
        "#!/bin/bash\necho \"$(date +%s%N) start\" >> spans\nsleep 0.4\necho \"$(date +%s%N) end\" >> spans\n",
    )
    .unwrap();

    let total = 80;
    let mut ids = Vec::new();
    for i in 0..total {
        let mut task = Task::new("slow", json!({"i": i}));
        client.push(&id, &mut task).await.unwrap();
        ids.push(task.id);
    }
    for task_id in &ids {
        let result = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(r) = client.result(&id, task_id).await.unwrap() {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("every task of the burst finishes");
        assert_eq!(result.exit_code, 0, "no task is rejected: {result:?}");
    }
    let spans = tree.read_state("spans");
    assert_eq!(spans.lines().filter(|l| l.ends_with("start")).count(), total);
    let overlap = max_overlap(&spans);
    assert!(overlap <= 32, "at most 32 tasks run at once, saw {overlap}");
    assert!(overlap >= 8, "tasks do run concurrently, saw only {overlap}");
    assert_eq!(redis.cli(&["LLEN", "task/module/burst1/inflight"]).unwrap(), "0");
}

#[tokio::test]
async fn cancel_task_stops_the_running_step() {
    let Fixture { redis, tree, agent: _agent, client, id } = start("module/cancel1", &[]).await;
    tree.step("long", "10pid", "#!/bin/bash\necho $$ > long.pid\nsleep 60\n").unwrap();
    tree.step("long", "20never", "#!/bin/bash\ntouch never-ran\n").unwrap();
    tree.step(
        "stubborn",
        "10ignore",
        "#!/bin/bash\ntrap '' TERM\necho $$ > stubborn.pid\nwhile true; do sleep 0.1; done\n",
    )
    .unwrap();

    let mut long = Task::new("long", json!({}));
    let long_id = uuid_like();
    long.id = long_id.clone();
    let (waiter_client, waiter_id) = (common::client(&redis).await, id.clone());
    let waiter = tokio::spawn(async move {
        let mut progress = Vec::new();
        let r = waiter_client.run(&waiter_id, &mut long, |p| progress.push(p)).await.unwrap();
        (r, progress)
    });
    eventually("the long step to start", || tree.state().join("long.pid").exists()).await;
    let (c, _) = run(&client, &id, "cancel-task", json!({"task": long_id})).await;
    assert_eq!(c.exit_code, 0, "{c:?}");
    let (r, progress) = tokio::time::timeout(PATIENCE, waiter).await.unwrap().unwrap();
    assert_eq!(
        (r.exit_code, r.status_from_exit_code()),
        (-1, TaskStatus::Aborted),
        "a step killed by a signal reports -1 like NS8"
    );
    assert_eq!(progress.last().unwrap().status, TaskStatus::Aborted);
    assert!(!tree.state().join("never-ran").exists());

    let (r, progress) = run(&client, &id, "cancel-task", json!({"task": "no-such-task"})).await;
    assert_eq!((r.exit_code, progress.last().unwrap().status), (2, TaskStatus::ValidationFailed));
    assert!(r.error.contains("task ID not found"));
    let (r, _) = run(&client, &id, "cancel-task", json!({"timeout": "x"})).await;
    assert_eq!((r.exit_code, r.status_from_exit_code()), (10, TaskStatus::ValidationFailed));

    // A step that ignores SIGTERM gets SIGKILL once `timeout` seconds have passed.
    let mut stubborn = Task::new("stubborn", json!({}));
    stubborn.id = uuid_like();
    let stubborn_id = stubborn.id.clone();
    client.push(&id, &mut stubborn).await.unwrap();
    eventually("the stubborn step to start", || tree.state().join("stubborn.pid").exists()).await;
    let (c, _) = run(&client, &id, "cancel-task", json!({"task": stubborn_id, "timeout": 1})).await;
    assert_eq!(c.exit_code, 0);
    let r = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(r) = client.result(&id, &stubborn_id).await.unwrap() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(r.exit_code, -1);
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

#[tokio::test]
async fn kill_9_mid_step_ends_the_task_after_restart() {
    let Fixture { redis, tree, mut agent, client, id } = start("module/crash1", &[]).await;
    // The step's child (sleep) must be found and stopped too, not just the step.
    tree.step("long", "10pid", "#!/bin/bash\nsleep 60 &\necho $! > child.pid\necho $$ > step.pid\nwait\n").unwrap();

    // A client waits for the task, NS8-style, across the crash.
    let mut task = Task::new("long", json!({"secret_key": "s"}));
    task.id = uuid_like();
    let task_id = task.id.clone();
    let (waiter_client, waiter_id) = (common::client(&redis).await, id.clone());
    let waiter = tokio::spawn(async move { waiter_client.run(&waiter_id, &mut task, |_| {}).await.unwrap() });
    eventually("the step to start", || tree.state().join("step.pid").exists()).await;
    let step_pid: i32 = tree.read_state("step.pid").trim().parse().unwrap();
    let child_pid: i32 = tree.read_state("child.pid").trim().parse().unwrap();
    // Submitted while the agent is dead: must run later.
    agent.kill9();
    assert!(process_exists(step_pid), "without systemd the orphaned step outlives its agent...");
    let mut later = Task::new("list-actions", json!(null));
    client.push(&id, &mut later).await.unwrap();
    assert_eq!(
        redis.cli(&["LLEN", "task/module/crash1/inflight"]).unwrap(),
        "1",
        "the interrupted task is still recorded"
    );

    let agent = spawn("module/crash1", &tree, &redis, &[]);
    let r = tokio::time::timeout(PATIENCE, waiter).await.expect("the waiting client gets an answer").unwrap();
    // ...until the restarted agent stops it, before storing the result.
    assert!(
        !process_exists(step_pid) && !process_exists(child_pid),
        "leftover step processes are stopped\n{}",
        agent.log()
    );
    assert_eq!((r.exit_code, r.status_from_exit_code()), (12, TaskStatus::Aborted), "{r:?}\n{}", agent.log());
    assert!(r.error.contains("agent module/crash1 stopped while running it and was restarted"), "{}", r.error);
    assert_eq!(client.result(&id, &task_id).await.unwrap().unwrap().exit_code, 12);
    wait_ready(&client, &id, &agent).await;
    let r = client.result(&id, &later.id).await.unwrap().expect("the task queued during the outage ran");
    assert_eq!(r.exit_code, 0);
    assert_eq!(redis.cli(&["LLEN", "task/module/crash1/inflight"]).unwrap(), "0");
}

#[tokio::test]
async fn sigusr1_drains_running_tasks_and_leaves_the_queue_alone() {
    let Fixture { redis, tree, mut agent, client, id } = start("module/drain1", &[]).await;
    tree.step("work", "10work", "#!/bin/bash\ntouch started\nsleep 1\necho '\"done\"'\n").unwrap();
    let mut running = Task::new("work", json!({}));
    client.push(&id, &mut running).await.unwrap();
    eventually("the step to start", || tree.state().join("started").exists()).await;
    // NS8's graceful stop (SIGTERM takes the same path; the events test uses it).
    agent.signal("USR1").unwrap();
    // Give the agent a moment to stop popping, then queue another task.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut queued = Task::new("work", json!({}));
    client.push(&id, &mut queued).await.unwrap();
    assert_eq!(agent.wait_exit(PATIENCE).unwrap(), Some(0), "{}", agent.log());
    let r = client.result(&id, &running.id).await.unwrap().expect("the running task finished before exit");
    assert_eq!(r.output, json!("done"));
    assert!(client.result(&id, &queued.id).await.unwrap().is_none());
    assert_eq!(redis.cli(&["LLEN", "module/drain1/tasks"]).unwrap(), "1", "the queued task waits for the next start");
}

#[tokio::test]
async fn sigterm_stops_the_agent_while_redis_is_down() {
    let Fixture { mut redis, tree: _tree, mut agent, client, id: _ } = start("module/down1", &[]).await;
    client.quit().await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.signal("TERM").unwrap();
    // Nothing runs, so nothing needs Redis to finish: it exits without waiting for it.
    assert_eq!(agent.wait_exit(Duration::from_secs(10)).unwrap(), Some(0), "{}", agent.log());
}

#[tokio::test]
async fn agents_reconnect_after_a_redis_restart() {
    let mut redis = RedisServer::start_persistent().unwrap();
    let tree = AgentTree::new().unwrap();
    tree.step("ping", "10pong", "#!/bin/bash\necho '\"pong\"'\n").unwrap();
    let agent = spawn("module/reconn1", &tree, &redis, &[]);
    let id = m("reconn1");
    {
        let client = client(&redis).await;
        wait_ready(&client, &id, &agent).await;
        client.quit().await;
    }
    redis.restart().unwrap();
    let client = client(&redis).await;
    // The agent's connections come back, named again (the liveness check needs it).
    wait_ready(&client, &id, &agent).await;
    let (r, _) = run(&client, &id, "ping", json!({})).await;
    assert_eq!(r.output, json!("pong"));
    let names = redis.cli(&["CLIENT", "LIST"]).unwrap();
    assert!(names.matches("name=module/reconn1 ").count() >= 2, "{names}");
}

#[tokio::test]
async fn events_missed_while_down_are_handled_once_when_back() {
    let redis = RedisServer::start().unwrap();
    let publisher = AgentTree::new().unwrap();
    let subscriber = AgentTree::new().unwrap();
    publisher
        .step("emit", "10publish", "#!/bin/bash\nredis-cli -s \"$REDIS_ADDRESS\" PUBLISH module/pub1/event/thing-happened \"$(cat)\" >/dev/null\n")
        .unwrap();
    subscriber
        .handler(
            "thing-happened",
            "10record",
            "#!/bin/bash\necho \"$AGENT_EVENT_SOURCE $AGENT_EVENT_NAME $(cat)\" >> seen\n",
        )
        .unwrap();
    let publisher_agent = spawn("module/pub1", &publisher, &redis, &[]);
    let client = client(&redis).await;
    let (pub_id, sub_id) = (m("pub1"), m("sub1"));
    wait_ready(&client, &pub_id, &publisher_agent).await;

    // Before the subscriber ever existed: not its business.
    let (r, _) = run(&client, &pub_id, "emit", json!({"n": 0})).await;
    assert_eq!(r.exit_code, 0);
    eventually("event 0 to be recorded", || redis.cli(&["XLEN", "module/pub1/events"]).unwrap() == "1").await;

    let mut sub_agent = spawn("module/sub1", &subscriber, &redis, &[]);
    wait_ready(&client, &sub_id, &sub_agent).await;
    run(&client, &pub_id, "emit", json!({"n": 1})).await;
    eventually("the live event to be handled", || subscriber.read_state("seen").lines().count() == 1).await;

    sub_agent.signal("TERM").unwrap();
    sub_agent.wait_exit(PATIENCE).unwrap();
    run(&client, &pub_id, "emit", json!({"n": 2})).await;
    run(&client, &pub_id, "emit", json!({"n": 3})).await;
    eventually("the missed events to be recorded", || redis.cli(&["XLEN", "module/pub1/events"]).unwrap() == "4").await;

    let sub_agent = spawn("module/sub1", &subscriber, &redis, &[]);
    eventually("the missed events to be handled", || subscriber.read_state("seen").lines().count() == 3).await;
    wait_ready(&client, &sub_id, &sub_agent).await;
    drop(sub_agent);
    // Killed and back once more: nothing is handled twice.
    let sub_agent = spawn("module/sub1", &subscriber, &redis, &[]);
    wait_ready(&client, &sub_id, &sub_agent).await;
    run(&client, &pub_id, "emit", json!({"n": 4})).await;
    eventually("the last event", || subscriber.read_state("seen").lines().count() == 4).await;
    assert_eq!(
        subscriber.read_state("seen"),
        "module/pub1 thing-happened {\"n\":1}\nmodule/pub1 thing-happened {\"n\":2}\nmodule/pub1 thing-happened {\"n\":3}\nmodule/pub1 thing-happened {\"n\":4}\n",
        "{}",
        sub_agent.log()
    );
}

/// An idle agent's blocking pop runs out every polling interval; that is the normal
/// empty answer, not an error to log and sleep on, so a task arriving after any idle
/// time is taken at once.
#[tokio::test]
async fn an_idle_agent_takes_a_task_at_once_and_logs_no_warning() {
    let f = start("module/idle1", &[("AGENT_POLLING_INTERVAL", "1s")]).await;
    f.tree.step("ping", "10pong", "#!/bin/bash\necho '\"pong\"'\n").unwrap();
    let logged_before = f.agent.log().len();
    for action in ["list-actions", "ping", "list-actions"] {
        // Longer than the interval: the pop has run out at least once.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t0 = std::time::Instant::now();
        let r = f.run(action, json!({})).await;
        let took = t0.elapsed();
        assert_eq!(r.exit_code, 0, "{r:?}");
        // Loose on a noisy machine, but a second-long sleep after a pop error cannot meet it.
        assert!(took < Duration::from_millis(100), "{action} after 1.5 s idle took {took:?}");
    }
    let log = f.agent.log();
    let idle_log = &log[logged_before..];
    assert!(
        !idle_log.lines().any(|l| l.contains("WARN") || l.contains("ERROR")),
        "nothing is wrong, yet the idle agent logged:\n{idle_log}"
    );
}
