//! The cluster's `add-module`, `update-module` and `remove-module`, step by step, fast
//! and without root: the real cluster agent drives a scripted node agent and scripted
//! module agents (native actions on the real runtime, implementing the `node::*` and
//! `module::*` contracts, that record every call and fail or hang on demand) over a
//! real Redis. The cluster runs as its binary, so that a crash is a real `kill -9`
//! (nothing of it runs on: no drop, no cancel); the scripted agents each run on their
//! own thread and runtime, as an agent does. The images are label-only, pushed with
//! skopeo to a private registry from which the cluster reads them with skopeo.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_runtime::{ActionError, AgentConfig, NativeActions};
use bus::fred::prelude::*;
use bus::{Address, RedisConfig, TaskClient};
use protocol::AgentId;
use protocol::actions::node::{AddModuleRefusal, FinishUpdateRefusal, RemoveModuleRefusal, UpdateOutcome};
use protocol::actions::{module, node};
use protocol::task::{Task, TaskResult};
use serde_json::{Value, json};
use testkit::{AgentProcess, AgentTree, RedisServer, Registry};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------
// Scripted agents

/// What a scripted call does instead of its work.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Fail,
    /// Never answers (until its agent stops): the caller can be killed meanwhile.
    Hang,
}

/// What the node made of a module.
struct Made {
    env: BTreeMap<String, String>,
    snapshot: Option<BTreeMap<String, String>>,
    agent: Option<Agent>,
}

/// The scripted agents' shared record and orders.
struct Script {
    redis: Address,
    calls: Mutex<Vec<String>>,
    faults: Mutex<HashMap<String, Fault>>,
    /// Unix accounts on the node that it did not make.
    unix_users: Mutex<HashSet<String>>,
    made: Mutex<HashMap<String, Made>>,
}

impl Script {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn fault(&self, call: &str, f: Option<Fault>) {
        let mut faults = self.faults.lock().unwrap();
        match f {
            Some(f) => faults.insert(call.to_owned(), f),
            None => faults.remove(call),
        };
    }

    /// Record `call`, then do what the script says for it.
    async fn enter(&self, call: String, stop: &watch::Receiver<bool>) -> Result<(), ActionError> {
        self.calls.lock().unwrap().push(call.clone());
        let fault = self.faults.lock().unwrap().get(&call).copied();
        match fault {
            None => Ok(()),
            Some(Fault::Fail) => Err(ActionError::failed(format!("a log line\nscripted failure of {call}"))),
            Some(Fault::Hang) => {
                let _ = stop.clone().wait_for(|s| *s).await;
                Err(ActionError::failed("stopped"))
            }
        }
    }
}

/// An agent on its own thread and runtime; stopped (and its runtime dropped, so its
/// connections close) on drop.
struct Agent {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// `env`: its first `state/environment`, as a node writes it.
    fn start(
        id: AgentId,
        redis: RedisConfig,
        env: &BTreeMap<String, String>,
        natives: impl FnOnce(watch::Receiver<bool>) -> NativeActions,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        std::fs::write(dir.path().join("state/environment"), protocol::envfile::render(&vars)).unwrap();
        let cfg = AgentConfig {
            agent_id: id,
            action_dirs: vec![dir.path().join("actions")],
            events_dir: Some(dir.path().join("events")),
            install_dir: dir.path().to_owned(),
            state_dir: dir.path().join("state"),
            redis,
            max_concurrency: 32,
            poll_interval: Duration::from_secs(1),
        };
        let (stop, rx) = watch::channel(false);
        let natives = natives(rx.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut rx = rx;
                agent_runtime::run(cfg, natives, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
            });
        });
        Agent { stop, thread: Some(thread), _dir: dir }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type State = (Arc<Script>, watch::Receiver<bool>);

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn node_natives(n: u32, script: Arc<Script>, stop: watch::Receiver<bool>) -> NativeActions {
    let st: State = (script, stop);
    NativeActions::new()
        .typed_with::<node::AddModule, _, _, _>(st.clone(), move |_ctx, req, (s, stop): State| async move {
            let id = req.module_id.clone();
            s.enter(format!("add-module {id}"), &stop).await?;
            if s.unix_users.lock().unwrap().contains(&id) {
                return Err(ActionError::refuse(AddModuleRefusal::UnixUserExists, json!(id)));
            }
            let password = uuid::Uuid::new_v4().to_string();
            let agent_id = AgentId::module(&id).unwrap();
            let cfg = RedisConfig {
                address: s.redis.clone(),
                user: Some(agent_id.to_string()),
                password: Some(password.clone()),
            };
            let (s2, mid) = (s.clone(), id.clone());
            let agent = Agent::start(agent_id, cfg, &req.environment, move |stop| module_natives(mid, s2, stop));
            s.made.lock().unwrap().insert(id, Made { env: req.environment, snapshot: None, agent: Some(agent) });
            Ok(node::AddModuleReply { redis_sha256: sha256_hex(&password), install_dir: "/nowhere".into() })
        })
        .typed_with::<node::RemoveModule, _, _, _>(st.clone(), move |_ctx, req, (s, stop): State| async move {
            let id = req.module_id.clone();
            s.enter(format!("remove-module {id}"), &stop).await?;
            if s.unix_users.lock().unwrap().contains(&id) {
                return Err(ActionError::refuse(RemoveModuleRefusal::NotAModuleOfThisNode, json!(id)));
            }
            let made = s.made.lock().unwrap().remove(&id);
            let removed = made.is_some();
            // Stopping an agent joins its thread: not on this agent's one.
            tokio::task::spawn_blocking(move || drop(made)).await.unwrap();
            Ok(node::RemoveModuleReply { removed, preserved: None })
        })
        .typed_with::<node::AllocatePorts, _, _, _>(st.clone(), move |ctx, req, (s, stop): State| async move {
            s.enter(format!("allocate-ports {} {}", req.module_id, req.protocol), &stop).await?;
            let start = if req.protocol == protocol::actions::PortProtocol::Tcp { 20000 } else { 30000 };
            let end = start + req.ports - 1;
            let key = protocol::keys::node_ports(n, req.protocol.as_str());
            let _: i64 = ctx.redis.hset(key, (req.module_id.as_str(), format!("{start}-{end}"))).await?;
            Ok(node::AllocatePortsReply(start, end))
        })
        .typed_with::<node::DeallocatePorts, _, _, _>(st.clone(), move |ctx, req, (s, stop): State| async move {
            s.enter(format!("deallocate-ports {} {}", req.module_id, req.protocol), &stop).await?;
            let key = protocol::keys::node_ports(n, req.protocol.as_str());
            let released: i64 = ctx.redis.hdel(key, req.module_id.as_str()).await?;
            Ok(node::DeallocatePortsReply { released: released == 1 })
        })
        .typed_with::<node::UpdateModule, _, _, _>(st.clone(), move |_ctx, req, (s, stop): State| async move {
            // A hang or failure comes before the snapshot.
            s.enter(format!("update-module {}", req.module_id), &stop).await?;
            let mut made = s.made.lock().unwrap();
            let m = made.get_mut(&req.module_id).ok_or_else(|| ActionError::failed("no such module"))?;
            m.snapshot = Some(m.env.clone());
            m.env.extend(req.environment);
            Ok(node::UpdateModuleReply { snapshot: "snapshot".into(), image_digest: String::new() })
        })
        .typed_with::<node::FinishUpdate, _, _, _>(st, move |_ctx, req, (s, stop): State| async move {
            let outcome = if req.outcome == UpdateOutcome::Commit { "commit" } else { "rollback" };
            s.enter(format!("finish-update {} {outcome}", req.module_id), &stop).await?;
            let mut made = s.made.lock().unwrap();
            let m = made.get_mut(&req.module_id).ok_or_else(|| ActionError::failed("no such module"))?;
            let Some(snapshot) = m.snapshot.take() else {
                return Err(ActionError::refuse(FinishUpdateRefusal::NoUpdateInProgress, json!(req.module_id)));
            };
            let rolled_back = req.outcome == UpdateOutcome::Rollback;
            if rolled_back {
                m.env = snapshot;
            }
            Ok(node::FinishUpdateReply { rolled_back, environment: m.env.clone() })
        })
}

fn module_natives(id: String, script: Arc<Script>, stop: watch::Receiver<bool>) -> NativeActions {
    let st = (script, stop, id);
    type M = (Arc<Script>, watch::Receiver<bool>, String);
    NativeActions::new()
        .typed_with::<module::CreateModule, _, _, _>(st.clone(), |_, _, (s, stop, id): M| async move {
            s.enter(format!("{id}: create-module"), &stop).await.map(|_| Value::Null)
        })
        .typed_with::<module::UpdateModule, _, _, _>(st.clone(), |_, _, (s, stop, id): M| async move {
            s.enter(format!("{id}: update-module"), &stop).await.map(|_| Value::Null)
        })
        .typed_with::<module::DestroyModule, _, _, _>(st, |_, _, (s, stop, id): M| async move {
            s.enter(format!("{id}: destroy-module"), &stop).await.map(|_| Value::Null)
        })
}

// ---------------------------------------------------------------------------------
// Images

/// Push a label-only module image (one empty layer) as `ns8rs/<name>:<tag>`; its URL.
fn push_image(registry: &Registry, work: &Path, name: &str, tag: &str, labels: Value) -> String {
    // An empty tar archive: two zero blocks.
    let layer = vec![0u8; 1024];
    testkit::push_oci(&registry.host(), work, name, tag, &labels, &[layer]).unwrap().0
}

// ---------------------------------------------------------------------------------
// The cluster

struct Cluster {
    // Dropped first: the agents, while Redis still runs.
    nodes: HashMap<u32, Agent>,
    script: Arc<Script>,
    cluster: AgentProcess,
    client: TaskClient,
    tree: AgentTree,
    v1: String,
    v2: String,
    _work: tempfile::TempDir,
    _registry: Registry,
    redis: RedisServer,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The modules first (their threads), then the nodes.
        let made: Vec<Made> = self.script.made.lock().unwrap().drain().map(|(_, m)| m).collect();
        drop(made);
        self.nodes.clear();
    }
}

const PATIENCE: Duration = Duration::from_secs(20);

impl Cluster {
    async fn start() -> Cluster {
        let redis = RedisServer::start().unwrap();
        let registry = Registry::start().unwrap();
        let work = tempfile::tempdir().unwrap();
        let labels = json!({
            "org.nethserver.images": format!("{}/ns8rs/hello-server:1.0.0", registry.host()),
            "org.nethserver.tcp-ports-demand": "2",
            "org.nethserver.udp-ports-demand": "1",
        });
        let v1 = push_image(&registry, work.path(), "hello", "1.0.0", labels.clone());
        let v2 = push_image(&registry, work.path(), "hello", "2.0.0", labels);
        let tree = AgentTree::new().unwrap();
        let cluster =
            AgentProcess::spawn(Path::new(env!("CARGO_BIN_EXE_cluster-agent")), "cluster", &tree, &redis, &[]).unwrap();
        let client = testkit::agent::client(&redis).await;
        testkit::agent::wait_ready(&client, &AgentId::Cluster, &cluster).await;
        let script = Arc::new(Script {
            redis: Address::Unix(redis.socket()),
            calls: Mutex::default(),
            faults: Mutex::default(),
            unix_users: Mutex::default(),
            made: Mutex::default(),
        });
        let mut c = Cluster {
            nodes: HashMap::new(),
            script,
            cluster,
            client,
            tree,
            v1,
            v2,
            _work: work,
            _registry: registry,
            redis,
        };
        c.start_node(1).await;
        c
    }

    async fn start_node(&mut self, n: u32) {
        let id = AgentId::Node(n);
        let password = self.redis.agent_user(&id).unwrap();
        let cfg =
            RedisConfig { address: self.script.redis.clone(), user: Some(id.to_string()), password: Some(password) };
        let script = self.script.clone();
        self.nodes
            .insert(n, Agent::start(id.clone(), cfg, &BTreeMap::new(), move |stop| node_natives(n, script, stop)));
        let cluster = &self.cluster;
        testkit::agent::wait_ready(&self.client, &id, cluster).await;
    }

    /// The node stops, and its Redis user goes: it is gone for good.
    fn kill_node(&mut self, n: u32) {
        self.nodes.remove(&n);
        self.redis.cli(&["ACL", "DELUSER", &format!("node/{n}")]).unwrap();
    }

    /// `kill -9` of the cluster agent, and its start again (which recovers).
    async fn crash_and_restart(&mut self) {
        self.cluster.kill9();
        self.cluster = AgentProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_cluster-agent")),
            "cluster",
            &self.tree,
            &self.redis,
            &[],
        )
        .unwrap();
        testkit::agent::wait_ready(&self.client, &AgentId::Cluster, &self.cluster).await;
    }

    async fn run(&self, action: &str, data: Value) -> TaskResult {
        testkit::agent::run(&self.client, &AgentId::Cluster, action, data).await.0
    }

    /// Push a task without waiting for it.
    async fn push(&self, action: &str, data: Value) {
        self.client.push(&AgentId::Cluster, &mut Task::new(action, data)).await.unwrap();
    }

    async fn install(&self) -> String {
        let r = self.run("add-module", json!({"image": self.v1, "node": 1})).await;
        assert_eq!(r.exit_code, 0, "{r:?}\n{}", self.cluster.log());
        r.output["module_id"].as_str().unwrap().to_owned()
    }

    /// The calls recorded from index `from` on, once `last` is among them.
    async fn calls_until(&self, from: usize, last: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let calls = self.script.calls()[from..].to_vec();
            if calls.iter().any(|c| c == last) {
                return calls;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no call {last:?} among {calls:?}\n{}", self.cluster.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until nothing of module `id` is left in Redis nor on the node, the journal
    /// empty and the module free; what is left if it does not happen.
    async fn assert_nothing_left(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = self.traces(id);
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("left of {id}: {left:?}\n{}", self.cluster.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn traces(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let cli = |args: &[&str]| self.redis.cli(args).unwrap();
        for (key, field) in [
            ("cluster/module_node", id),
            ("cluster/module_uuid", id),
            ("cluster/module_locks", id),
            ("cluster/tcp_ports_demand", id),
            ("node/1/tcp_ports", id),
            ("node/1/udp_ports", id),
        ] {
            if cli(&["HEXISTS", key, field]) == "1" {
                left.push(format!("{key} {field}"));
            }
        }
        let keys = cli(&["KEYS", &format!("module/{id}/*")]);
        if !keys.is_empty() {
            left.push(keys);
        }
        if cli(&["ACL", "USERS"]).lines().any(|u| u == format!("module/{id}")) {
            left.push("its ACL user".into());
        }
        if cli(&["HLEN", "cluster/sagas"]) != "0" {
            left.push(format!("journal {}", cli(&["HGETALL", "cluster/sagas"])));
        }
        if self.script.made.lock().unwrap().contains_key(id) {
            left.push("the node's module".into());
        }
        left
    }

    fn installed(&self, id: &str) -> bool {
        self.redis.cli(&["HEXISTS", "cluster/module_node", id]).unwrap() == "1"
            && self.script.made.lock().unwrap().contains_key(id)
    }

    fn env(&self, id: &str, var: &str) -> String {
        self.redis.cli(&["HGET", &format!("module/{id}/environment"), var]).unwrap()
    }

    fn free(&self, id: &str) -> bool {
        self.redis.cli(&["HEXISTS", "cluster/module_locks", id]).unwrap() == "0"
            && self.redis.cli(&["HLEN", "cluster/sagas"]).unwrap() == "0"
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An install's calls, in order, for module `id`.
fn install_calls(id: &str) -> Vec<String> {
    vec![
        format!("allocate-ports {id} tcp"),
        format!("allocate-ports {id} udp"),
        format!("add-module {id}"),
        format!("{id}: create-module"),
    ]
}

/// The undo of the first `k` install calls, last first.
fn install_undo(id: &str, k: usize) -> Vec<String> {
    let undo = [
        format!("deallocate-ports {id} tcp"),
        format!("deallocate-ports {id} udp"),
        format!("remove-module {id}"),
        // create-module is undone by the node's removal.
        String::new(),
    ];
    undo[..k].iter().rev().filter(|u| !u.is_empty()).cloned().collect()
}

// ---------------------------------------------------------------------------------
// add-module

#[tokio::test]
async fn an_install_that_fails_at_any_step_undoes_the_steps_before_in_reverse() {
    let c = Cluster::start().await;
    for k in 1..=4 {
        let id = format!("hello{k}");
        let calls = install_calls(&id);
        c.script.fault(&calls[k - 1], Some(Fault::Fail));
        let from = c.script.calls().len();
        let r = c.run("add-module", json!({"image": c.v1, "node": 1})).await;
        assert_eq!(r.exit_code, 1, "step {k}: {r:?}");
        assert!(r.error.contains(&format!("cannot install {id} from {}", c.v1)), "step {k}: {}", r.error);
        assert!(r.error.contains(&format!("scripted failure of {}", calls[k - 1])), "{}", r.error);
        assert!(r.error.contains("(whole log: task/"), "the callee's log is named: {}", r.error);
        assert!(r.error.trim_end().ends_with("nothing of it was left behind"), "{}", r.error);
        let mut want = calls[..k].to_vec();
        want.extend(install_undo(&id, k));
        assert_eq!(c.script.calls()[from..], want, "step {k}");
        c.assert_nothing_left(&id).await;
        c.script.fault(&calls[k - 1], None);
    }
    // And with no fault, it installs, environment and records included.
    let id = c.install().await;
    assert_eq!(id, "hello5");
    assert!(c.installed(&id));
    assert_eq!(c.env(&id, "TCP_PORTS_RANGE"), "20000-20001");
    assert_eq!(c.env(&id, "UDP_PORT"), "30000");
    assert_eq!(c.env(&id, "IMAGE_URL"), c.v1);
    assert!(c.free(&id));
}

#[tokio::test]
async fn an_install_cut_short_by_a_crash_after_any_step_is_undone_at_restart() {
    let mut c = Cluster::start().await;
    for k in 1..=4 {
        let id = format!("hello{k}");
        let calls = install_calls(&id);
        c.script.fault(&calls[k - 1], Some(Fault::Hang));
        let from = c.script.calls().len();
        c.push("add-module", json!({"image": c.v1, "node": 1})).await;
        c.calls_until(from, &calls[k - 1]).await;
        // Steps 1..k-1 are done and step k is under way: the cluster dies.
        c.crash_and_restart().await;
        let mut want = calls[..k].to_vec();
        want.extend(install_undo(&id, k));
        let last = want.last().unwrap().clone();
        let got = c.calls_until(from, &last).await;
        assert_eq!(got, want, "crash at step {k}");
        c.assert_nothing_left(&id).await;
        c.script.fault(&calls[k - 1], None);
    }
    assert!(c.cluster.log().contains("add-module of hello4 was cut short by a restart of this agent: undone"));
    // The cluster works on.
    assert_eq!(c.install().await, "hello5");
}

#[tokio::test]
async fn a_unix_user_of_the_next_id_never_blocks_an_install() {
    let c = Cluster::start().await;
    c.script.unix_users.lock().unwrap().extend(["hello1".to_owned(), "hello2".to_owned()]);
    let id = c.install().await;
    assert_eq!(id, "hello3");
    let mut want = Vec::new();
    for skipped in ["hello1", "hello2"] {
        want.extend(install_calls(skipped)[..3].to_vec());
        // The node's undo is refused (not a module of its own): nothing of ours is there.
        want.extend(install_undo(skipped, 3));
    }
    want.extend(install_calls("hello3"));
    assert_eq!(c.script.calls(), want);
    for skipped in ["hello1", "hello2"] {
        assert!(c.traces(skipped).is_empty(), "{:?}", c.traces(skipped));
        assert!(c.cluster.log().contains(&format!("{skipped} skipped: a Unix user named {skipped} exists on node/1")));
    }
    assert!(c.installed("hello3"));
}

// ---------------------------------------------------------------------------------
// update-module

#[tokio::test]
async fn an_update_that_fails_is_rolled_back_and_one_cut_short_by_a_crash_too() {
    let mut c = Cluster::start().await;
    let id = c.install().await;
    let update = json!({"module_url": c.v2, "instances": [id]});
    let node_update = format!("update-module {id}");
    let module_update = format!("{id}: update-module");
    let commit = format!("finish-update {id} commit");
    let rollback = format!("finish-update {id} rollback");

    // Step 1, the node's: it put back what it had changed; nothing else runs.
    c.script.fault(&node_update, Some(Fault::Fail));
    let from = c.script.calls().len();
    let r = c.run("update-module", update.clone()).await;
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert!(
        r.error.starts_with(&format!("cannot update {id} to {}: node/1/update-module failed", c.v2)),
        "{}",
        r.error
    );
    assert_eq!(c.script.calls()[from..], strings(&[&node_update]));
    assert!(c.free(&id));
    c.script.fault(&node_update, None);

    // Step 2, the module's own: the node rolls back to its snapshot.
    c.script.fault(&module_update, Some(Fault::Fail));
    let from = c.script.calls().len();
    let r = c.run("update-module", update.clone()).await;
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert!(r.error.trim_end().ends_with(&format!("rolled back to {}, which runs again", c.v1)), "{}", r.error);
    assert_eq!(c.script.calls()[from..], strings(&[&node_update, &module_update, &rollback]));
    assert_eq!(c.env(&id, "IMAGE_URL"), c.v1);
    assert!(c.free(&id));
    c.script.fault(&module_update, None);

    // A crash during the module's steps: rolled back at restart.
    c.script.fault(&module_update, Some(Fault::Hang));
    let from = c.script.calls().len();
    c.push("update-module", update.clone()).await;
    c.calls_until(from, &module_update).await;
    c.crash_and_restart().await;
    let got = c.calls_until(from, &rollback).await;
    assert_eq!(got, strings(&[&node_update, &module_update, &rollback]));
    assert_eq!(c.env(&id, "IMAGE_URL"), c.v1);
    c.script.fault(&module_update, None);

    // A crash during the node's step, before its snapshot: the node has no update in
    // progress, which means nothing to roll back.
    c.script.fault(&node_update, Some(Fault::Hang));
    let from = c.script.calls().len();
    c.push("update-module", update.clone()).await;
    c.calls_until(from, &node_update).await;
    c.crash_and_restart().await;
    let got = c.calls_until(from, &rollback).await;
    assert_eq!(got, strings(&[&node_update, &rollback]));
    c.script.fault(&node_update, None);
    testkit::agent::eventually("the module free again", || c.free(&id)).await;

    // A crash during the commit: the next start rolls back whatever is left.
    c.script.fault(&commit, Some(Fault::Hang));
    let from = c.script.calls().len();
    c.push("update-module", update.clone()).await;
    c.calls_until(from, &commit).await;
    c.crash_and_restart().await;
    let got = c.calls_until(from, &rollback).await;
    assert_eq!(got, strings(&[&node_update, &module_update, &commit, &rollback]));
    c.script.fault(&commit, None);
    testkit::agent::eventually("the module free again", || c.free(&id)).await;

    // And without faults it updates.
    let from = c.script.calls().len();
    let r = c.run("update-module", update).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.output["instances"][0]["previous_image_url"], c.v1.as_str());
    assert_eq!(c.script.calls()[from..], strings(&[&node_update, &module_update, &commit]));
    assert_eq!(c.env(&id, "IMAGE_URL"), c.v2);
    assert!(c.free(&id));
}

// ---------------------------------------------------------------------------------
// remove-module

#[tokio::test]
async fn a_removal_refused_changes_nothing_and_one_cut_short_by_a_crash_is_finished() {
    let mut c = Cluster::start().await;
    let id = c.install().await;
    let destroy = format!("{id}: destroy-module");
    let node_remove = format!("remove-module {id}");
    let rest = [format!("deallocate-ports {id} tcp"), format!("deallocate-ports {id} udp")];

    // The module's cleanup fails: without force, nothing more happens.
    c.script.fault(&destroy, Some(Fault::Fail));
    let from = c.script.calls().len();
    let r = c.run("remove-module", json!({"module_id": id})).await;
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert!(r.error.trim_end().ends_with("(force removes it anyway)"), "{}", r.error);
    assert_eq!(c.script.calls()[from..], strings(&[&destroy]));
    assert!(c.installed(&id) && c.free(&id));
    c.script.fault(&destroy, None);

    // The node's removal fails: the module stays, for another try.
    c.script.fault(&node_remove, Some(Fault::Fail));
    let from = c.script.calls().len();
    let r = c.run("remove-module", json!({"module_id": id})).await;
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert_eq!(c.script.calls()[from..], strings(&[&destroy, &node_remove]));
    assert!(c.free(&id));
    c.script.fault(&node_remove, None);

    // A crash during the module's cleanup: the removal is finished at restart.
    c.script.fault(&destroy, Some(Fault::Hang));
    let from = c.script.calls().len();
    c.push("remove-module", json!({"module_id": id})).await;
    c.calls_until(from, &destroy).await;
    c.crash_and_restart().await;
    let got = c.calls_until(from, &rest[1]).await;
    assert_eq!(got, [vec![destroy.clone(), node_remove.clone()], rest.to_vec()].concat());
    c.assert_nothing_left(&id).await;
    c.script.fault(&destroy, None);

    // A crash during the node's removal: finished at restart too.
    let id = c.install().await;
    let node_remove = format!("remove-module {id}");
    let rest = [format!("deallocate-ports {id} tcp"), format!("deallocate-ports {id} udp")];
    c.script.fault(&node_remove, Some(Fault::Hang));
    let from = c.script.calls().len();
    c.push("remove-module", json!({"module_id": id})).await;
    c.calls_until(from, &node_remove).await;
    c.script.fault(&node_remove, None);
    c.crash_and_restart().await;
    let got = c.calls_until(from, &rest[1]).await;
    assert_eq!(got, [vec![format!("{id}: destroy-module"), node_remove.clone(), node_remove], rest.to_vec()].concat());
    c.assert_nothing_left(&id).await;
}

#[tokio::test]
async fn force_removes_a_module_whose_node_is_dead() {
    let mut c = Cluster::start().await;
    let id = c.install().await;
    // Its agent and its node die.
    let made = c.script.made.lock().unwrap().get_mut(&id).unwrap().agent.take();
    drop(made);
    c.kill_node(1);
    let from = c.script.calls().len();
    let r = c.run("remove-module", json!({"module_id": id})).await;
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert!(r.error.contains(&format!("node/1 is not running: {id} was not touched (force")), "{}", r.error);
    assert!(c.redis.cli(&["HEXISTS", "cluster/module_node", &id]).unwrap() == "1" && c.free(&id));

    let r = c.run("remove-module", json!({"module_id": id, "force": true})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(c.script.calls()[from..], Vec::<String>::new(), "nothing reaches a dead node");
    // What the node made stays on it (it is dead); everything in Redis goes, its port
    // table included.
    c.script.made.lock().unwrap().remove(&id);
    c.assert_nothing_left(&id).await;
}
