//! The node agent's native actions, through the real binary and Redis.

use std::path::Path;

use serde_json::Value;
use testkit::agent::Fixture;

#[tokio::test]
async fn get_info_describes_the_node() {
    let node = Fixture::start(Path::new(env!("CARGO_BIN_EXE_node-agent")), "node/1", &[]).await;
    let r = node.run("get-info", Value::Null).await;
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
