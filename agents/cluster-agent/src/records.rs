//! The cluster's Redis records of a module: where it runs, its copy of the module's
//! environment, its ACL user, and every trace of it forgotten at its removal.

use std::collections::BTreeMap;

use agent_runtime::ActionContext;
use agent_runtime::saga::UndoError;
use bus::fred::prelude::*;
use bus::fred::types::{ClusterHash, CustomCommand};
use protocol::actions::PortProtocol;
use protocol::{AgentId, keys};

type RedisError = bus::fred::error::Error;

fn acl() -> CustomCommand {
    CustomCommand::new_static("ACL", ClusterHash::FirstKey, false)
}

/// `ACL SAVE`: Redis users made at runtime survive a restart only in the ACL file.
/// A Redis without one (a test's) is told about in the log, not refused.
pub async fn save_acls(redis: &Client) -> Result<(), RedisError> {
    let saved: Result<String, _> = redis.custom(acl(), vec!["SAVE"]).await;
    match saved {
        Err(e) if e.details().contains("not configured to use an ACL file") => {
            tracing::warn!("Redis has no aclfile: module users will not survive a Redis restart");
            Ok(())
        }
        r => r.map(|_| ()),
    }
}

/// The module agent's Redis user, from the SHA-256 of its password (the node has the
/// password), with the rules of its kind; saved.
pub async fn create_agent_user(redis: &Client, agent: &AgentId, sha256: &str) -> Result<(), RedisError> {
    let mut args = vec!["SETUSER".to_owned(), agent.to_string()];
    args.extend(protocol::acl::agent_rules(agent, &format!("#{sha256}")));
    let _: String = redis.custom(acl(), args).await?;
    save_acls(redis).await
}

/// Every trace of module `id` in Redis: its keys, task results, grants, ACL user,
/// cluster records.
pub async fn forget(redis: &Client, agent: &AgentId, id: &str) -> Result<(), RedisError> {
    for pattern in [keys::agent_keys_pattern(agent), keys::agent_tasks_pattern(agent)] {
        let found = bus::scan(redis, &pattern, None).await?;
        for chunk in found.chunks(500) {
            let _: i64 = redis.del(chunk.to_vec()).await?;
        }
    }
    let demands = PortProtocol::ALL.map(|p| keys::ports_demand(p.as_str()));
    for key in [keys::MODULE_NODE, keys::MODULE_UUID].into_iter().chain(demands.iter().map(String::as_str)) {
        let _: i64 = redis.hdel(key, id).await?;
    }
    let _: i64 = redis.del(keys::module_authorizations(agent)).await?;
    // The default instances it was (NS8's keys, one per node and image plus the cluster's).
    let mut defaults = Vec::new();
    for pattern in keys::DEFAULT_INSTANCE_PATTERNS {
        defaults.extend(bus::scan(redis, pattern, None).await?);
    }
    for key in defaults {
        let v: Option<String> = redis.get(&key).await?;
        if v.as_deref() == Some(id) {
            let _: i64 = redis.del(&key).await?;
        }
    }
    bus::grants::forget_agent(redis, agent).await?;
    // Deleting a user that does not exist answers 0, not an error.
    let _: i64 = redis.custom(acl(), vec!["DELUSER".to_owned(), agent.to_string()]).await?;
    save_acls(redis).await
}

/// The node module `id` is installed on.
pub async fn node_of(redis: &Client, id: &str) -> Result<Option<u32>, RedisError> {
    let node: Option<String> = redis.hget(keys::MODULE_NODE, id).await?;
    Ok(node.and_then(|n| n.parse().ok()))
}

/// The module's environment as the node left it, for readers of Redis.
pub async fn copy_environment(
    redis: &Client,
    agent: &AgentId,
    environment: &BTreeMap<String, String>,
) -> Result<(), RedisError> {
    if environment.is_empty() {
        return Ok(());
    }
    let key = keys::environment(agent);
    let pairs: Vec<(&str, &str)> = environment.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tx = redis.multi();
    let _: () = tx.del(&key).await?;
    let _: () = tx.hset(&key, pairs).await?;
    tx.exec(true).await
}

/// Node `n`, if it runs: an undo on a node that does not fails at once (and stays
/// journaled for a later start) rather than waiting for it.
pub async fn running(ctx: &ActionContext, n: u32) -> Result<AgentId, UndoError> {
    let node = AgentId::Node(n);
    if !bus::agent_is_alive(&ctx.redis, &node, 30).await? {
        return Err(format!("{node} is not running: left for a later start of this agent").into());
    }
    Ok(node)
}

/// `<NAME>_IMAGE` for a service image, as NS8 names it.
pub fn image_variable(image: &str) -> String {
    let name = protocol::image::parse_reference(image).map(|(n, _)| n).unwrap_or_default();
    let mut v: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if v.starts_with(|c: char| c.is_ascii_digit()) {
        v.insert(0, 'I');
    }
    v + "_IMAGE"
}

/// The ports variables NS8 sets for an allocated range.
pub fn port_variables(proto: PortProtocol, start: u16, end: u16) -> Vec<(String, String)> {
    let p = proto.as_str().to_ascii_uppercase();
    let mut v = vec![(format!("{p}_PORT"), start.to_string())];
    if end > start {
        v.push((format!("{p}_PORTS_RANGE"), format!("{start}-{end}")));
    }
    if end - start < 8 {
        v.push((format!("{p}_PORTS"), (start..=end).map(|x| x.to_string()).collect::<Vec<_>>().join(",")));
    }
    v
}

/// NS8's `IMAGE_REOPODIGEST` (its spelling, kept for scripts that read it):
/// `<repository>@<digest>`.
pub fn repo_digest(url: &str, digest: &str) -> String {
    format!("{}@{digest}", url.rsplit_once(':').map_or(url, |x| x.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns8_variable_names() {
        assert_eq!(image_variable("127.0.0.1:15000/ns8rs/hello-server:1.0.0"), "HELLO_SERVER_IMAGE");
        assert_eq!(image_variable("docker.io/library/3proxy.v2:1"), "I3PROXY_V2_IMAGE");
        assert_eq!(
            port_variables(PortProtocol::Tcp, 20000, 20000),
            [("TCP_PORT".into(), "20000".into()), ("TCP_PORTS".into(), "20000".into())]
        );
        let many = port_variables(PortProtocol::Udp, 20000, 20009);
        assert_eq!(many[1], ("UDP_PORTS_RANGE".into(), "20000-20009".into()));
        assert_eq!(many.len(), 2, "no list beyond 8 ports");
    }
}
