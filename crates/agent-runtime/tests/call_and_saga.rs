//! Typed sub-task calls and sagas on the real runtime and a real Redis: two agents in
//! this process, each on its own thread and runtime as an agent runs. A crash is the
//! caller's runtime dropped in the middle of a task: nothing of it runs on (no drain,
//! no cancel, no result), and its connections close, as with `kill -9`.

use std::time::Duration;

use agent_runtime::saga::{Sagas, Step, UndoError};
use agent_runtime::{ActionContext, ActionError, AgentConfig, CallError, NativeActions};
use bus::fred::prelude::*;
use bus::{Address, RedisConfig};
use protocol::AgentId;
use protocol::actions::node::{self, RemoveModuleRefusal};
use protocol::task::Task;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use testkit::RedisServer;
use tokio::sync::oneshot;

/// Where the test's undos leave their mark.
const UNDONE: &str = "cluster/test_undone";

struct Agent {
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(redis: &RedisServer, id: AgentId, natives: NativeActions) -> Agent {
        let password = redis.agent_user(&id).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            agent_id: id.clone(),
            action_dirs: vec![dir.path().join("actions")],
            events_dir: Some(dir.path().join("events")),
            install_dir: dir.path().to_owned(),
            state_dir: dir.path().join("state"),
            redis: RedisConfig {
                address: Address::Unix(redis.socket()),
                user: Some(id.to_string()),
                password: Some(password),
            },
            max_concurrency: 8,
            poll_interval: Duration::from_secs(1),
        };
        // true: stop gracefully; false: crash.
        let (stop, rx) = oneshot::channel::<bool>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let (graceful_tx, graceful_rx) = oneshot::channel::<()>();
                let run = agent_runtime::run(cfg, natives, async move {
                    let _ = graceful_rx.await;
                });
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => r.unwrap(),
                    how = rx => {
                        if how.unwrap_or(true) {
                            let _ = graceful_tx.send(());
                            run.await.unwrap();
                        }
                        // A crash: the loop and every task are dropped with the runtime.
                    }
                }
            });
        });
        Agent { stop: Some(stop), thread: Some(thread), _dir: dir }
    }

    fn crash(mut self) {
        let _ = self.stop.take().unwrap().send(false);
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A callee: `remove-module` refuses `person1` (not its own), fails `broken1` with a
/// log of two lines, answers anything else.
fn callee() -> NativeActions {
    NativeActions::new().typed::<node::RemoveModule, _, _>(|_, req| async move {
        match req.module_id.as_str() {
            "person1" => Err(ActionError::refuse(RemoveModuleRefusal::NotAModuleOfThisNode, json!(req.module_id))),
            "broken1" => Err(ActionError::failed("starting\ndisk on fire")),
            _ => Ok(node::RemoveModuleReply { removed: true, preserved: None }),
        }
    })
}

#[derive(Serialize, Deserialize)]
struct Mark {
    n: u64,
}

impl Step for Mark {
    const NAME: &'static str = "mark";
    async fn undo(self, ctx: &ActionContext) -> Result<(), UndoError> {
        let _: i64 = ctx.redis.rpush(UNDONE, self.n).await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error("step {0} failed")]
    Step(u64),
    #[error(transparent)]
    Saga(#[from] agent_runtime::saga::SagaError),
}

/// The caller: `call` asks node/1 to remove `data.id` and describes the outcome;
/// `saga` runs three steps, failing or hanging at the one its input names.
fn caller() -> NativeActions {
    let sagas = Sagas::new().step::<Mark>();
    let recovering = sagas.clone();
    NativeActions::new()
        .on_start(move |ctx| {
            let sagas = recovering.clone();
            async move {
                for j in sagas.pending(&ctx).await.unwrap() {
                    assert!(sagas.recover(&ctx, j).await.is_clean());
                }
            }
        })
        .add("call", None, None, |ctx, data| async move {
            let req =
                node::RemoveModuleRequest { module_id: data["id"].as_str().unwrap().into(), preserve_data: false };
            Ok(match ctx.call::<node::RemoveModule>(&AgentId::Node(1), &req).await {
                Ok(reply) => json!({"removed": reply.removed}),
                Err(e) => json!({"refusal": e.refusal().is_some(), "error": e.to_string(),
                    "failed": matches!(e, CallError::Failed { .. })}),
            })
        })
        .add_with("saga", None, None, sagas, |ctx, data, sagas: Sagas| async move {
            let (fail, hang) = (data["fail"].as_u64(), data["hang"].as_u64());
            let mut saga = sagas.begin(&ctx, "test", "thing1");
            for n in 1..=3 {
                let work = async move {
                    if Some(n) == hang {
                        std::future::pending::<()>().await;
                    }
                    if Some(n) == fail { Err(TestError::Step(n)) } else { Ok(()) }
                };
                if let Err(e) = saga.run(Mark { n }, (n * 30) as u8, work).await {
                    return Err(ActionError::failed(saga.fail(e).await.to_string()));
                }
            }
            saga.commit().await.map_err(|e| ActionError::failed(e.to_string()))?;
            Ok(Value::Null)
        })
}

/// The agent answers a builtin task.
async fn ready(client: &bus::TaskClient, agent: &AgentId) {
    let answered = async {
        loop {
            let mut task = Task::new("list-actions", Value::Null);
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), client.run(agent, &mut task, |_| {})).await
                && r.exit_code == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(testkit::agent::PATIENCE, answered).await.expect("the agent answers");
}

async fn undone(redis: &RedisServer) -> String {
    redis.cli(&["LRANGE", UNDONE, "0", "-1"]).unwrap().replace('\n', " ")
}

#[tokio::test]
async fn calls_decode_replies_refusals_and_failures() {
    let redis = RedisServer::start().unwrap();
    let client = testkit::agent::client(&redis).await;
    let cluster = Agent::start(&redis, AgentId::Cluster, caller());
    ready(&client, &AgentId::Cluster).await;
    let _node = Agent::start(&redis, AgentId::Node(1), callee());
    ready(&client, &AgentId::Node(1)).await;
    let run = |id: &str| {
        let client = &client;
        let data = json!({"id": id});
        async move { testkit::agent::run(client, &AgentId::Cluster, "call", data).await.0.output }
    };
    assert_eq!(run("hello1").await, json!({"removed": true}));
    let refused = run("person1").await;
    assert_eq!(refused["refusal"], true, "{refused}");
    assert_eq!(refused["error"], "node/1/remove-module refused \"person1\": module_id_not_a_module_of_this_node");
    let failed = run("broken1").await;
    assert_eq!(failed["failed"], true, "{failed}");
    let text = failed["error"].as_str().unwrap();
    assert!(
        text.starts_with("node/1/remove-module failed (exit code 1): disk on fire (whole log: task/node/1/"),
        "{text}"
    );
    drop(cluster);
}

#[tokio::test]
async fn a_saga_undoes_its_steps_in_reverse_on_failure_and_after_a_crash() {
    let redis = RedisServer::start().unwrap();
    let client = testkit::agent::client(&redis).await;
    let cluster = Agent::start(&redis, AgentId::Cluster, caller());
    ready(&client, &AgentId::Cluster).await;

    let r = testkit::agent::run(&client, &AgentId::Cluster, "saga", json!({"fail": 3})).await.0;
    assert_eq!(r.exit_code, 1);
    assert_eq!(r.error.trim_end(), "step 3 failed; nothing of it was left behind");
    assert_eq!(undone(&redis).await, "3 2 1");
    assert_eq!(redis.cli(&["HLEN", "cluster/sagas"]).unwrap(), "0");

    let r = testkit::agent::run(&client, &AgentId::Cluster, "saga", json!({})).await.0;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(undone(&redis).await, "3 2 1", "a committed saga is kept");

    // Step 2 under way when the agent dies: its next start undoes 2, then 1.
    redis.cli(&["DEL", UNDONE]).unwrap();
    client.push(&AgentId::Cluster, &mut Task::new("saga", json!({"hang": 2}))).await.unwrap();
    testkit::agent::eventually("step 2 journaled", || {
        redis.cli(&["HGET", "cluster/sagas", "test:thing1"]).unwrap().contains("\"n\":2")
    })
    .await;
    cluster.crash();
    assert_eq!(undone(&redis).await, "");
    let _cluster = Agent::start(&redis, AgentId::Cluster, caller());
    testkit::agent::eventually("the undo at restart", || {
        redis.cli(&["LRANGE", UNDONE, "0", "-1"]).unwrap().replace('\n', " ") == "2 1"
    })
    .await;
    assert_eq!(redis.cli(&["HLEN", "cluster/sagas"]).unwrap(), "0");
}
