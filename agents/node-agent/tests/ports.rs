//! `allocate-ports` / `deallocate-ports` through the real node agent: first fit, no
//! port given twice under concurrent requests, owners and demands enforced, a clear
//! error when the range is exhausted.

use std::path::Path;

use protocol::AgentId;
use protocol::task::TaskResult;
use serde_json::json;
use testkit::agent::Fixture;

async fn start() -> Fixture {
    Fixture::start(Path::new(env!("CARGO_BIN_EXE_node-agent")), "node/1", &[]).await
}

async fn alloc(n: &Fixture, module: &str, ports: u64) -> TaskResult {
    n.run("allocate-ports", json!({"ports": ports, "module_id": module, "protocol": "tcp"})).await
}

#[tokio::test]
async fn first_fit_release_and_reuse() {
    let n = start().await;
    assert_eq!(alloc(&n, "app1", 3).await.output, json!([20000, 20002]));
    assert_eq!(alloc(&n, "app2", 2).await.output, json!([20003, 20004]));
    let udp = n.run_as("allocate-ports", json!({"ports": 1, "module_id": "app1", "protocol": "udp"}), "").await;
    assert_eq!(udp.output, json!([20000, 20000]), "protocols are separate");
    let r = n.run_as("deallocate-ports", json!({"module_id": "app1", "protocol": "tcp"}), "").await;
    assert_eq!(r.output, json!({"released": true}));
    // The freed hole is reused; a second request of app2 replaces its range unless
    // asked to keep it.
    assert_eq!(alloc(&n, "app3", 2).await.output, json!([20000, 20001]));
    assert_eq!(alloc(&n, "app2", 1).await.output, json!([20002, 20002]));
    let r = n
        .run_as(
            "allocate-ports",
            json!({"ports": 2, "module_id": "app2", "protocol": "tcp", "keep_existing": true}),
            "",
        )
        .await;
    assert_eq!(r.output, json!([20003, 20004]));
    assert_eq!(n.redis.cli(&["HGET", "node/1/tcp_ports", "app2"]).unwrap(), "20002-20002 20003-20004");

    // Bad input is refused by the schema, with nothing stored.
    let r = n.run_as("allocate-ports", json!({"ports": 0, "module_id": "app4", "protocol": "sctp"}), "").await;
    assert_eq!(r.exit_code, 10, "{r:?}");
    assert_eq!(n.redis.cli(&["HEXISTS", "node/1/tcp_ports", "app4"]).unwrap(), "0");
}

#[tokio::test]
async fn concurrent_requests_never_share_a_port() {
    let n = start().await;
    let client = std::sync::Arc::new(n.client);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..24u64 {
        let client = client.clone();
        set.spawn(async move {
            let data = json!({"ports": 1 + i % 3, "module_id": format!("app{i}"), "protocol": "tcp"});
            testkit::agent::run(&client, &AgentId::Node(1), "allocate-ports", data).await.0
        });
    }
    let mut ranges = Vec::new();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
        ranges.push((r.output[0].as_u64().unwrap(), r.output[1].as_u64().unwrap()));
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "overlap: {pair:?}");
    }
    let total: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(total, (0..24).map(|i| 1 + i % 3).sum::<u64>());
}

#[tokio::test]
async fn modules_keep_to_their_own_ports_and_demand() {
    let n = start().await;
    n.redis.cli(&["HSET", "cluster/tcp_ports_demand", "app9", "2"]).unwrap();
    let ask = |module: &str, ports: u64| json!({"ports": ports, "module_id": module, "protocol": "tcp"});
    let r = n.run_as("allocate-ports", ask("app1", 1), "module/app9").await;
    assert_eq!(r.exit_code, 32, "{r:?}");
    assert!(r.error.contains("module app9 may not change the ports of module app1"), "{r:?}");
    let r = n.run_as("allocate-ports", ask("app9", 3), "module/app9").await;
    assert_eq!(r.exit_code, 33, "{r:?}");
    assert!(r.error.contains("beyond its demand of 2"), "{r:?}");
    let r = n.run_as("allocate-ports", ask("app9", 2), "module/app9").await;
    assert_eq!(r.output, json!([20000, 20001]), "{r:?}");
    let r = n.run_as("deallocate-ports", json!({"module_id": "app9", "protocol": "tcp"}), "module/app1").await;
    assert_eq!(r.exit_code, 32, "{r:?}");
    assert_eq!(n.redis.cli(&["HGET", "node/1/tcp_ports", "app9"]).unwrap(), "20000-20001");
}

#[tokio::test]
async fn exhaustion_is_a_clear_error() {
    let n = start().await;
    for i in 0..25 {
        let r = alloc(&n, &format!("big{i}"), 1000).await;
        assert_eq!(r.exit_code, 0, "{r:?}");
    }
    // 20000..=44999 taken; one port (45000) is left.
    assert_eq!(alloc(&n, "last", 1).await.output, json!([45000, 45000]));
    let r = alloc(&n, "late", 2).await;
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert!(r.error.contains("ports are exhausted"), "{r:?}");
    assert_eq!(n.redis.cli(&["HEXISTS", "node/1/tcp_ports", "late"]).unwrap(), "0");
}
