//! The cluster's Redis users, tried as an attacker would, on a Redis configured as a
//! cluster's (`default` the public reader, snapshots): for `default`, a module, a node
//! and the api-server, every key of the schema (`protocol::keys::examples`) read and
//! written, every agent's channels published and subscribed, every dangerous command
//! run. What the policy forbids is refused with NOPERM; what it allows works. Then the
//! real node and module agents do their work as their own users, the api-server's
//! user submits it, and everything survives a restart of Redis.

use std::time::Duration;

use bus::fred::prelude::*;
use bus::fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use bus::{Address, RedisConfig, TaskClient};
use e2e::bin;
use protocol::AgentId;
use protocol::keys::{self, Readers};
use protocol::task::Task;
use serde_json::json;
use testkit::{AgentProcess, AgentTree, RedisServer};

const PATIENCE: Duration = Duration::from_secs(30);

/// Who is tried, and what the policy (reference 2.3, made stricter) lets it do.
#[derive(Clone, Debug)]
enum Who {
    Default,
    Agent(AgentId),
    ApiServer,
}

impl Who {
    fn name(&self) -> String {
        match self {
            Who::Default => "default".into(),
            Who::Agent(a) => a.to_string(),
            Who::ApiServer => protocol::acl::API_SERVER_USER.into(),
        }
    }

    fn may_read(&self, k: &keys::KeyExample) -> bool {
        match self {
            Who::ApiServer => true,
            Who::Default => k.readers == Readers::Everyone,
            Who::Agent(a) => {
                k.writer.as_ref() == Some(a)
                    || match k.readers {
                        Readers::Everyone | Readers::Agents => true,
                        Readers::Nodes => matches!(a, AgentId::Node(_)),
                        Readers::Core => false,
                    }
            }
        }
    }

    fn may_write(&self, k: &keys::KeyExample) -> bool {
        match self {
            Who::ApiServer => true,
            Who::Default => false,
            Who::Agent(a) => k.writer.as_ref() == Some(a),
        }
    }

    /// Publish on `channel` of `owner`.
    fn may_publish(&self, owner: &AgentId, channel: &str) -> bool {
        match self {
            Who::Default => false,
            Who::ApiServer => channel.starts_with("progress/"),
            Who::Agent(a) => a == owner,
        }
    }

    fn may_subscribe(&self, channel: &str) -> bool {
        let event = keys::parse_event_channel(channel).is_some();
        match self {
            // Events are public; progress and step logs are not.
            Who::Default => event,
            Who::ApiServer => channel.starts_with("progress/"),
            // Agents listen to events through PSUBSCRIBE */event/* only (NS8's rules
            // give them no subscription; the cluster's user has everything).
            Who::Agent(_) => false,
        }
    }
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

async fn connect(redis: &RedisServer, who: &Who, password: Option<&str>) -> Client {
    let cfg = RedisConfig {
        user: password.map(|_| who.name()),
        password: password.map(str::to_owned),
        ..RedisConfig::new(Address::Unix(redis.socket()))
    };
    bus::connect(&cfg, &format!("acl-test-{}", who.name())).await.expect("connect")
}

fn refused(r: &Result<RedisValue, bus::fred::error::Error>) -> bool {
    matches!(r, Err(e) if e.details().contains("NOPERM"))
}

/// Every (command, outcome) that breaks the policy, as text.
async fn violations(redis: &RedisServer, who: &Who, password: Option<&str>, agents: &[AgentId]) -> Vec<String> {
    let c = connect(redis, who, password).await;
    let mut bad = Vec::new();
    for k in keys::examples(agents) {
        let read: Result<RedisValue, _> = c.custom(cmd("GET"), vec![k.key.clone()]).await;
        if refused(&read) == who.may_read(&k) {
            bad.push(format!("GET {}: {read:?} (may read: {})", k.key, who.may_read(&k)));
        }
        let write: Result<RedisValue, _> = c.custom(cmd("SET"), vec![k.key.clone(), "x".into()]).await;
        if refused(&write) == who.may_write(&k) {
            bad.push(format!("SET {}: {write:?} (may write: {})", k.key, who.may_write(&k)));
        }
    }
    for owner in agents {
        for channel in keys::channel_examples(owner) {
            let published: Result<RedisValue, _> = c.custom(cmd("PUBLISH"), vec![channel.clone(), "{}".into()]).await;
            if refused(&published) == who.may_publish(owner, &channel) {
                bad.push(format!("PUBLISH {channel}: {published:?}"));
            }
        }
    }
    for command in protocol::acl::DANGEROUS_COMMANDS {
        let (name, args) = command.split_first().expect("a command");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let r: Result<RedisValue, _> =
            c.custom(CustomCommand::new(name.to_string(), ClusterHash::Random, false), args).await;
        // The api-server runs scripts of its own and the liveness check, nothing else.
        let core_needs =
            matches!(who, Who::ApiServer) && (matches!(*name, "EVAL" | "SCRIPT") || command == &["CLIENT", "LIST"]);
        // DEBUG is off in Redis's configuration, refused before the ACL is looked at.
        let off = matches!(&r, Err(e) if e.details().contains("DEBUG command not allowed"));
        if core_needs == (refused(&r) || off) {
            bad.push(format!("{}: {r:?}", command.join(" ")));
        }
    }
    let _ = c.quit().await;

    // Subscriptions, each on a fresh connection of the same user (a subscribed
    // connection only takes subscriptions), read as Redis answers them.
    let auth = password.map(|p| (who.name(), p.to_owned()));
    for owner in agents {
        for channel in keys::channel_examples(owner) {
            let reply = first_reply(redis, auth.as_ref(), &["SUBSCRIBE", &channel]);
            if reply.starts_with("-NOPERM") == who.may_subscribe(&channel) {
                bad.push(format!("SUBSCRIBE {channel}: {reply}"));
            }
        }
    }
    let may_listen = !matches!(who, Who::ApiServer);
    let reply = first_reply(redis, auth.as_ref(), &["PSUBSCRIBE", keys::EVENT_PATTERN]);
    if reply.starts_with("-NOPERM") == may_listen {
        bad.push(format!("PSUBSCRIBE {}: {reply}", keys::EVENT_PATTERN));
    }
    let may_watch = matches!(who, Who::ApiServer);
    let reply = first_reply(redis, auth.as_ref(), &["PSUBSCRIBE", "progress/*"]);
    if reply.starts_with("-NOPERM") == may_watch {
        bad.push(format!("PSUBSCRIBE progress/*: {reply}"));
    }
    bad
}

/// The first line Redis answers to `args` on a new connection (after `AUTH`): a
/// refused subscription is `-NOPERM ...`, an accepted one `*3`.
fn first_reply(redis: &RedisServer, auth: Option<&(String, String)>, args: &[&str]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(redis.socket()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut send = |args: &[&str]| {
        let mut frame = format!("*{}\r\n", args.len());
        for a in args {
            frame.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        (&stream).write_all(frame.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    };
    if let Some((user, password)) = auth {
        assert_eq!(send(&["AUTH", user, password]), "+OK");
    }
    send(args)
}

fn set_user(redis: &RedisServer, name: &str, rules: Vec<String>) {
    let mut args = vec!["ACL".to_owned(), "SETUSER".into(), name.into()];
    args.extend(rules);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(redis.cli(&args).unwrap(), "OK", "ACL SETUSER {name}");
}

#[tokio::test]
async fn every_user_gets_exactly_what_the_policy_gives() {
    let mut redis = RedisServer::start_persistent().unwrap();
    let (m1, n1) = (AgentId::Module("m1".into()), AgentId::Node(1));
    let agents = [AgentId::Cluster, n1.clone(), AgentId::Node(2), m1.clone(), AgentId::Module("m2".into())];
    set_user(&redis, "module/m1", protocol::acl::agent_rules(&m1, ">m1-password"));
    set_user(&redis, "node/1", protocol::acl::agent_rules(&n1, ">n1-password"));
    set_user(&redis, "api-server", protocol::acl::api_server_rules(">api-password"));
    let admin_password = redis.lock_down().unwrap();

    let mut all = Vec::new();
    for (who, pw) in [
        (Who::Default, None),
        (Who::Agent(m1.clone()), Some("m1-password")),
        (Who::Agent(n1.clone()), Some("n1-password")),
        (Who::ApiServer, Some("api-password")),
    ] {
        for v in violations(&redis, &who, pw, &agents).await {
            all.push(format!("{}: {v}", who.name()));
        }
    }
    assert!(all.is_empty(), "{} policy violations:\n{}", all.len(), all.join("\n"));

    // A module cannot pass for the node: liveness counts the connection's user.
    let spoof = connect(&redis, &Who::Agent(m1.clone()), Some("m1-password")).await;
    let _: () = spoof.client_setname("node/1").await.unwrap();
    let admin = RedisConfig {
        user: Some(testkit::ADMIN_USER.into()),
        password: Some(admin_password),
        ..RedisConfig::new(Address::Unix(redis.socket()))
    };
    let admin_client = bus::connect(&admin, "acl-test-admin").await.unwrap();
    assert!(!bus::agent_is_alive(&admin_client, &n1, 8).await.unwrap(), "a module named node/1 is not node/1");
    let _ = spoof.quit().await;

    // The real agents work as their own users; the api-server's user submits tasks.
    redis.cli(&["FLUSHALL"]).unwrap();
    let node_tree = AgentTree::new().unwrap();
    let node = AgentProcess::spawn(&bin("node-agent"), "node/1", &node_tree, &redis, &[]).unwrap();
    let module_tree = AgentTree::new().unwrap();
    let cli = "redis-cli -s \"$REDIS_ADDRESS\" --user \"$REDIS_USER\" --no-auth-warning";
    module_tree
        .step(
            "configure",
            "10store",
            &format!(
                "#!/bin/bash\nexport REDISCLI_AUTH=\"$REDIS_PASSWORD\"\n\
                 {cli} HSET module/m1/settings title \"$(cat)\" >/dev/null\n\
                 {cli} PUBLISH module/m1/event/configured '{{}}' >/dev/null\n\
                 echo 'TITLE=set' >> environment\necho '{{\"ok\":true}}'\n"
            ),
        )
        .unwrap();
    let module = AgentProcess::spawn(&bin("module-agent"), "module/m1", &module_tree, &redis, &[]).unwrap();
    let api = RedisConfig {
        user: Some("api-server".into()),
        password: Some("api-password".into()),
        ..RedisConfig::new(Address::Unix(redis.socket()))
    };
    let tc = TaskClient::connect(&api, "api-server").await.unwrap();
    for (agent, process) in [(&n1, &node), (&m1, &module)] {
        tokio::time::timeout(PATIENCE, async {
            while tc.ensure_alive(agent, 8).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{agent} did not connect as its own user:\n{}", process.log()));
    }
    let run = |agent: &AgentId, action: &str, data: serde_json::Value| {
        let (tc, agent, action) = (&tc, agent.clone(), action.to_owned());
        async move {
            let mut task = Task::new(&action, data);
            tokio::time::timeout(PATIENCE, tc.run(&agent, &mut task, |_| {})).await.expect("in time").unwrap()
        }
    };
    let ports = run(&n1, "allocate-ports", json!({"module_id": "m1", "ports": 2, "protocol": "tcp"})).await;
    assert_eq!(ports.exit_code, 0, "{ports:?}\n{}", node.log());
    assert_eq!(ports.output, json!([20000, 20001]));
    let info = run(&n1, "get-info", json!({})).await;
    assert_eq!(info.exit_code, 0, "{info:?}");
    let conf = run(&m1, "configure", json!("Acme")).await;
    assert_eq!((conf.exit_code, &conf.output), (0, &json!({"ok": true})), "{conf:?}\n{}", module.log());
    for log in [node.log(), module.log()] {
        assert!(!log.contains("NOPERM"), "{log}");
    }

    // All of it survives a restart of Redis (snapshots; see deploy/redis.conf).
    drop(tc);
    drop(node);
    drop(module);
    redis.restart().unwrap();
    assert_eq!(redis.cli(&["HGET", "node/1/tcp_ports", "m1"]).unwrap(), "20000-20001");
    assert_eq!(redis.cli(&["HGET", "module/m1/settings", "title"]).unwrap(), "\"Acme\"");
    assert_eq!(redis.cli(&["HGET", "module/m1/environment", "TITLE"]).unwrap(), "set");
    assert_eq!(redis.cli(&["XLEN", "module/m1/events"]).unwrap(), "1");
    assert_eq!(redis.cli(&["GET", &keys::task_exit_code(&m1, &conf_id(&redis))]).unwrap(), "0");
    assert!(redis.cli(&["ACL", "USERS"]).unwrap().lines().any(|u| u == "module/m1"));
}

/// The id of the one `configure` task module m1 ran.
fn conf_id(redis: &RedisServer) -> String {
    let keys = redis.cli(&["--scan", "--pattern", "task/module/m1/*/exit_code"]).unwrap();
    let key = keys.lines().next().expect("the configure task's exit code is stored").to_owned();
    key.trim_start_matches("task/module/m1/").trim_end_matches("/exit_code").to_owned()
}
