//! The agent works as its own restricted Redis user (`protocol::acl::agent_rules`):
//! tasks, progress, results, events published by its steps and handled, while a step
//! cannot publish on another agent's channel or write another agent's keys.

mod common;

use common::*;
use protocol::AgentId;
use serde_json::json;
use testkit::{AgentTree, RedisServer};

#[tokio::test]
async fn runs_tasks_and_events_under_its_acl_user() {
    let redis = RedisServer::start().unwrap();
    let id = AgentId::Module("acl1".into());
    let mut args = vec!["ACL".to_owned(), "SETUSER".into(), id.to_string()];
    args.extend(protocol::acl::agent_rules(&id, ">acl1-secret-password"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(redis.cli(&args).unwrap(), "OK");

    let tree = AgentTree::new().unwrap();
    let cli = "redis-cli -s \"$REDIS_ADDRESS\" --user \"$REDIS_USER\" --pass \"$REDIS_PASSWORD\" --no-auth-warning";
    tree.step(
        "greet",
        "10greet",
        &format!(
            "#!/bin/bash\n{cli} PUBLISH module/acl1/event/greeted '{{\"who\":\"me\"}}' >/dev/null\n\
             echo \"foreign publish: $({cli} PUBLISH node/1/event/x '{{}}')\" >&2\n\
             echo \"foreign write: $({cli} SET node/1/x 1)\" >&2\n\
             echo '{{\"greeted\":true}}'\n"
        ),
    )
    .unwrap();
    tree.handler("greeted", "10mark", "#!/bin/bash\ncat > handled\n").unwrap();
    let agent = spawn(
        "module/acl1",
        &tree,
        &redis,
        &[("REDIS_USER", "module/acl1"), ("REDIS_PASSWORD", "acl1-secret-password")],
    );
    let client = client(&redis).await;
    wait_ready(&client, &id, &agent).await;

    let (r, progress) = run(&client, &id, "greet", json!({})).await;
    assert_eq!(r.exit_code, 0, "{r:?}\n{}", agent.log());
    assert_eq!(r.output, json!({"greeted": true}));
    assert!(progress.last().is_some_and(|p| p.progress == 100), "{progress:?}");
    assert!(r.error.contains("foreign publish: NOPERM"), "{}", r.error);
    assert!(r.error.contains("foreign write: NOPERM"), "{}", r.error);
    eventually("the handler of its own event to run", || tree.state().join("handled").exists()).await;
    assert_eq!(std::fs::read_to_string(tree.state().join("handled")).unwrap(), "{\"who\":\"me\"}");
    assert_eq!(redis.cli(&["XLEN", "module/acl1/events"]).unwrap(), "1");
    // The agent's own commands were all allowed (the step's refusals are in its log too).
    let log = agent.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("NOPERM") && !l.starts_with("foreign")).collect();
    assert!(refused.is_empty(), "{log}");
}
