//! The Redis ACL users of a cluster (NS8 reference 2.3), as `ACL SETUSER` arguments
//! after the user name. Every program connects as its own user; nothing connects as
//! `default`, which is NS8's anonymous public reader.
//!
//! Beyond NS8, the users that third-party code holds (a module's) and the node's lose
//! every `@dangerous` command (`FLUSHALL`, `KEYS`, `MIGRATE`, `CONFIG`...) and every
//! script: NS8 lets them `EVAL` (a busy loop answers BUSY to the whole cluster) and run
//! `FLUSHALL`. The runtime's atomic task commands are Redis Functions instead
//! ([`crate::functions`]), which only the cluster loads and agents may only `FCALL`;
//! Redis checks every command a function runs against the caller's keys and channels,
//! so a function grants nothing the caller could not do itself.
//!
//! Listening to every agent's events needs `PSUBSCRIBE */event/*`, which NS8 does as
//! `default` on a second connection; here a Redis 7 selector grants exactly that
//! subscription, so the agent's `PUBLISH` stays limited to its own channels.

use crate::AgentId;
use crate::keys;

/// The anonymous user's name, which Redis gives every unauthenticated connection.
pub const DEFAULT_USER: &str = "default";
/// The api-server's user (per node, as NS8's).
pub const API_SERVER_USER: &str = "api-server";

/// Key patterns everybody may read: the public configuration (reference 2.4).
pub const PUBLIC_READ: [&str; 3] = ["cluster/*", "node/*", "module/*"];

/// What the anonymous `default` user may do: read the public keys and listen to
/// events. No writes, no `task/*`, `user/*`, `roles/*` or `private/*`, no progress or
/// step logs (which carry what steps print), no dangerous command. Stricter than NS8,
/// whose `default` may subscribe to every channel.
pub fn public_rules() -> Vec<String> {
    let mut rules: Vec<String> = vec!["reset".into(), "on".into(), "nopass".into()];
    rules.extend(PUBLIC_READ.iter().map(|p| format!("%R~{p}")));
    rules.push(format!("&{}", keys::EVENT_PATTERN));
    for cmd in ["+@read", "+@connection", "+subscribe", "+psubscribe", "-@admin", "-@dangerous", "-@scripting"] {
        rules.push(cmd.into());
    }
    rules
}

/// The cluster agent: the leader's control logic, trusted with everything (NS8's
/// `cluster` user): it creates the other users and loads the functions.
pub fn cluster_rules(password: &str) -> Vec<String> {
    vec!["reset".into(), "on".into(), password.into(), "~*".into(), "&*".into(), "+@all".into()]
}

/// The api-server: every key (it reads task results and writes queues, users,
/// grants, the audit stream), only the progress channels, no dangerous command but
/// the two it needs (`CLIENT LIST` for the liveness check, `ROLE` for the leader
/// check). Its own scripts stay `EVAL`: it is core code, not a module's; but it may
/// not load, replace or delete the agents' functions.
pub fn api_server_rules(password: &str) -> Vec<String> {
    let mut rules: Vec<String> = vec!["reset".into(), "on".into(), password.into()];
    rules.extend(API_SERVER.split_whitespace().map(str::to_owned));
    rules
}

/// [`api_server_rules`] without the password and on/off switch.
pub const API_SERVER: &str = "resetkeys ~* resetchannels &progress/* -@all +@read +@write +@scripting \
     -function +@connection +@transaction +@pubsub -@dangerous +client|list +client|setname +role";

/// An agent's user: NS8's rules for `node/<N>` and `module/<id>` (reference 2.3)
/// without `@dangerous` and scripts, plus `FCALL` of the runtime's functions, `TIME`
/// (the event cursors) and `CLIENT SETNAME` (the connection's name). The cluster's is
/// [`cluster_rules`]. `password` is an ACL password rule: `>clear` or `#<sha256 hex>`.
pub fn agent_rules(agent: &AgentId, password: &str) -> Vec<String> {
    if *agent == AgentId::Cluster {
        return cluster_rules(password);
    }
    let mut rules: Vec<String> = vec!["reset".into(), "on".into(), password.into()];
    let own = agent.to_string();
    rules.push(format!("~{own}/*"));
    rules.push(format!("~task/{own}/*"));
    for read in PUBLIC_READ.iter().chain(&["private/agents/*"]) {
        rules.push(format!("%R~{read}"));
    }
    if let AgentId::Node(_) = agent {
        rules.push("%R~private/nodes/*".into());
    }
    rules.push("resetchannels".into());
    rules.push(format!("&progress/{own}/*"));
    rules.push(format!("&{own}/event/*"));
    // Categories first, then what is taken out of them, then the few commands put back.
    for cmd in
        ["+@read", "+@write", "+@transaction", "+@connection", "+publish", "-@admin", "-@dangerous", "-@scripting"]
    {
        rules.push(cmd.into());
    }
    for cmd in ["+fcall", "+fcall_ro", "+time", "+client|setname"] {
        rules.push(cmd.into());
    }
    if let AgentId::Node(_) = agent {
        // A worker's Redis replicates from the leader as its node user.
        rules.push("+psync".into());
        rules.push("+replconf".into());
    }
    rules.push(format!("(+psubscribe +punsubscribe &{})", keys::EVENT_PATTERN));
    rules
}

/// The commands no agent but the cluster may run: what one line from a module could
/// use to wipe, stall or take over the cluster. The denial tests try each of them.
pub const DANGEROUS_COMMANDS: &[&[&str]] = &[
    &["FLUSHALL"],
    &["FLUSHDB"],
    &["SWAPDB", "0", "1"],
    &["MIGRATE", "127.0.0.1", "1", "module/x/k", "0", "1000"],
    &["KEYS", "*"],
    &["CONFIG", "GET", "dir"],
    &["CONFIG", "SET", "dir", "/tmp"],
    &["DEBUG", "SLEEP", "0"],
    &["EVAL", "return 1", "0"],
    &["FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('evil', function() return 1 end)"],
    &["FUNCTION", "DELETE", crate::functions::LIBRARY_NAME],
    &["FUNCTION", "FLUSH"],
    &["SCRIPT", "LOAD", "return 1"],
    &["ACL", "SETUSER", "evil", "on", ">x", "+@all", "~*"],
    &["ACL", "LIST"],
    &["REPLICAOF", "127.0.0.1", "1"],
    &["SHUTDOWN", "NOSAVE"],
    &["CLIENT", "LIST"],
    &["CLIENT", "KILL", "TYPE", "normal"],
    &["MONITOR"],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_rules_are_ns8s_without_danger_or_scripts() {
        let r = agent_rules(&AgentId::Module("mail1".into()), "#abc").join(" ");
        assert!(r.starts_with("reset on #abc ~module/mail1/* ~task/module/mail1/* %R~cluster/*"), "{r}");
        assert!(r.contains("resetchannels &progress/module/mail1/* &module/mail1/event/*"), "{r}");
        assert!(r.contains("-@admin -@dangerous -@scripting +fcall +fcall_ro"), "{r}");
        assert!(!r.contains("+@scripting") && !r.contains("+eval"), "{r}");
        assert!(r.ends_with("(+psubscribe +punsubscribe &*/event/*)"), "{r}");
        assert!(!r.contains("psync"));
        let n = agent_rules(&AgentId::Node(2), ">x").join(" ");
        assert!(n.contains("~node/2/* ~task/node/2/*") && n.contains("%R~private/nodes/*") && n.contains("+psync"));
        assert!(agent_rules(&AgentId::Cluster, ">y").contains(&"+@all".to_owned()));
    }

    #[test]
    fn the_public_user_reads_only_public_keys() {
        let r = public_rules().join(" ");
        assert!(r.starts_with("reset on nopass %R~cluster/* %R~node/* %R~module/* &*/event/*"), "{r}");
        assert!(!r.contains("+@write") && !r.contains("~*") && !r.contains("task/"), "{r}");
    }
}
