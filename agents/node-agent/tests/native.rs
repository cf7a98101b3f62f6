//! The node agent's native actions, through the real binary and Redis.

use std::path::Path;
use std::time::Duration;

use bus::{Address, RedisConfig, TaskClient};
use protocol::AgentId;
use protocol::task::Task;
use serde_json::Value;
use testkit::{AgentProcess, AgentTree, RedisServer};

#[tokio::test]
async fn get_info_describes_the_node() {
    let redis = RedisServer::start().unwrap();
    let tree = AgentTree::new().unwrap();
    let _agent =
        AgentProcess::spawn(Path::new(env!("CARGO_BIN_EXE_node-agent")), "node/1", &tree, &redis, &[]).unwrap();
    let client = TaskClient::connect(&RedisConfig::new(Address::Unix(redis.socket())), "test").await.unwrap();
    let mut task = Task::new("get-info", Value::Null);
    let r = tokio::time::timeout(Duration::from_secs(30), client.run(&AgentId::Node(1), &mut task, |_| {}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(r.output["hostname"], hostname.trim());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(r.output["kernel"]["release"], release.trim());
    assert_eq!(r.output["cpus"].as_u64().unwrap() as usize, std::thread::available_parallelism().unwrap().get());
    assert!(
        r.output["memory"]["total_bytes"].as_u64().unwrap() > r.output["memory"]["available_bytes"].as_u64().unwrap()
    );
    assert!(r.output["disk"]["available_bytes"].as_u64().unwrap() <= r.output["disk"]["total_bytes"].as_u64().unwrap());
    assert!(r.output["uptime_seconds"].as_u64().is_some());
}
