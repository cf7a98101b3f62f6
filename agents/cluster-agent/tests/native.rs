//! The cluster agent's native actions, through the real binary and Redis.

use std::path::Path;

use bus::TaskClient;
use protocol::AgentId;
use protocol::task::TaskResult;
use serde_json::{Value, json};
use testkit::{AgentProcess, AgentTree, RedisServer};

async fn run(client: &TaskClient, action: &str, data: Value) -> TaskResult {
    testkit::agent::run(client, &AgentId::Cluster, action, data).await.0
}

#[tokio::test]
async fn get_and_set_the_cluster_name() {
    let redis = RedisServer::start().unwrap();
    let tree = AgentTree::new().unwrap();
    // No --agentid: the cluster agent's id defaults to "cluster".
    let _agent = AgentProcess::spawn_args(
        Path::new(env!("CARGO_BIN_EXE_cluster-agent")),
        &["--agentid=cluster".into()],
        &tree,
        &redis,
        &[],
    )
    .unwrap();
    let client = testkit::agent::client(&redis).await;

    let r = run(&client, "get-name", Value::Null).await;
    assert_eq!((r.exit_code, r.output), (0, json!({"name": "NethServer 8"})));

    let r = run(&client, "set-name", json!({"name": "  Acme HQ "})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(redis.cli(&["GET", "cluster/ui_name"]).unwrap(), "Acme HQ");
    assert_eq!(run(&client, "get-name", Value::Null).await.output, json!({"name": "Acme HQ"}));

    for bad in [json!({}), json!({"name": ""}), json!({"name": "   "}), json!({"name": 3}), json!({"name": "a\nb"})] {
        let r = run(&client, "set-name", bad.clone()).await;
        assert_eq!(r.exit_code, 10, "{bad}: {r:?}");
        assert!(r.output[0]["error"].as_str().unwrap().starts_with("name_"), "{r:?}");
        assert_eq!(redis.cli(&["GET", "cluster/ui_name"]).unwrap(), "Acme HQ", "a refused name changes nothing");
    }
    let r = run(&client, "list-actions", Value::Null).await;
    let names: Vec<String> = serde_json::from_value(r.output).unwrap();
    assert!(names.contains(&"get-name".to_owned()) && names.contains(&"set-name".to_owned()), "{names:?}");
}

#[test]
fn refuses_a_non_cluster_agent_id() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cluster-agent"))
        .arg("--agentid=node/1")
        .env("REDIS_ADDRESS", "/nonexistent.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs agents of the form cluster, not node/1"));
}
