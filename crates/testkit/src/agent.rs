//! A real agent binary on a private Redis, and NS8-style clients for it: what the
//! agents' integration tests share.

use std::path::Path;
use std::time::Duration;

use bus::{Address, RedisConfig, TaskClient};
use protocol::AgentId;
use protocol::task::{Progress, Task, TaskResult};
use serde_json::Value;

use crate::{AgentProcess, AgentTree, RedisServer};

/// Generous: the machine is shared and noisy. Only failure cases wait this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub async fn client(redis: &RedisServer) -> TaskClient {
    TaskClient::connect(&RedisConfig::new(Address::Unix(redis.socket())), "test-client")
        .await
        .expect("connect test client")
}

/// Run a task as `user` (empty: pushed straight into Redis) and collect its progress
/// messages; fails the test after [`PATIENCE`].
pub async fn run_as(
    client: &TaskClient,
    agent: &AgentId,
    action: &str,
    data: Value,
    user: &str,
) -> (TaskResult, Vec<Progress>) {
    let mut task = Task::new(action, data);
    task.user = user.to_owned();
    let mut progress = Vec::new();
    let result = tokio::time::timeout(PATIENCE, client.run(agent, &mut task, |p| progress.push(p)))
        .await
        .unwrap_or_else(|_| panic!("task {action} on {agent} did not finish within {PATIENCE:?}"))
        .expect("task result");
    (result, progress)
}

pub async fn run(client: &TaskClient, agent: &AgentId, action: &str, data: Value) -> (TaskResult, Vec<Progress>) {
    run_as(client, agent, action, data, "").await
}

/// The agent answers a builtin task: its pop loop and event listener are up.
pub async fn wait_ready(client: &TaskClient, agent: &AgentId, process: &AgentProcess) {
    let ready = async {
        loop {
            if client.ensure_alive(agent, 8).await.is_ok() {
                let mut task = Task::new("list-actions", Value::Null);
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(5), client.run(agent, &mut task, |_| {})).await
                    && r.exit_code == 0
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(PATIENCE, ready).await.is_err() {
        panic!("agent {agent} not ready; log:\n{}", process.log());
    }
}

/// A redis-server, an agent tree and the agent `bin` running on it, ready for tasks.
/// Steps may be written after the start: an agent looks up an action's steps for each
/// task.
pub struct Fixture {
    pub redis: RedisServer,
    pub tree: AgentTree,
    pub agent: AgentProcess,
    pub client: TaskClient,
    pub id: AgentId,
}

impl Fixture {
    pub async fn start(bin: &Path, id: &str, env: &[(&str, &str)]) -> Fixture {
        let redis = RedisServer::start().expect("start redis-server");
        let tree = AgentTree::new().expect("create the agent tree");
        let agent = AgentProcess::spawn(bin, id, &tree, &redis, env).expect("spawn the agent");
        let client = client(&redis).await;
        let id: AgentId = id.parse().expect("valid agent id");
        wait_ready(&client, &id, &agent).await;
        Fixture { redis, tree, agent, client, id }
    }

    /// Run `action` pushed straight into Redis; its result.
    pub async fn run(&self, action: &str, data: Value) -> TaskResult {
        run(&self.client, &self.id, action, data).await.0
    }

    pub async fn run_as(&self, action: &str, data: Value, user: &str) -> TaskResult {
        run_as(&self.client, &self.id, action, data, user).await.0
    }
}

/// Poll until `f` holds; fails the test after [`PATIENCE`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
