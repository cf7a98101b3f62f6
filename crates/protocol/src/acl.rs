//! The Redis ACL rules of an agent's user (NS8 reference 2.3), as `ACL SETUSER`
//! arguments after the user name.
//!
//! NS8's rules plus what this runtime needs: `@scripting` (taking, accepting and
//! finishing a task are Lua scripts; Redis still checks each command inside them
//! against these rules), `TIME` (the event cursors), `CLIENT SETNAME` (the liveness
//! name). Listening to every agent's events needs `PSUBSCRIBE */event/*`, which NS8
//! does as the read-only `default` user on a second connection; here a Redis 7
//! selector grants exactly that subscription, so the agent's `PUBLISH` stays limited to
//! its own channels.

use crate::AgentId;

/// `password` is an ACL password rule: `>clear` or `#<sha256 hex>`.
pub fn agent_rules(agent: &AgentId, password: &str) -> Vec<String> {
    let mut rules: Vec<String> = vec!["reset".into(), "on".into(), password.into()];
    let own = agent.to_string();
    rules.push(format!("~{own}/*"));
    rules.push(format!("~task/{own}/*"));
    for read in ["cluster/*", "node/*", "module/*", "private/agents/*"] {
        rules.push(format!("%R~{read}"));
    }
    if let AgentId::Node(_) = agent {
        rules.push("%R~private/nodes/*".into());
    }
    rules.push("resetchannels".into());
    rules.push(format!("&progress/{own}/*"));
    rules.push(format!("&{own}/event/*"));
    for cmd in ["+@read", "+@write", "+@transaction", "+@connection", "+publish", "+@scripting", "-@admin"] {
        rules.push(cmd.into());
    }
    rules.push("+time".into());
    rules.push("+client|setname".into());
    if let AgentId::Node(_) = agent {
        // A worker's Redis replicates from the leader as its node user.
        rules.push("+psync".into());
        rules.push("+replconf".into());
    }
    rules.push(format!("(+psubscribe +punsubscribe &{})", crate::keys::EVENT_PATTERN));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_rules_are_ns8s_plus_what_we_need() {
        let r = agent_rules(&AgentId::Module("mail1".into()), "#abc").join(" ");
        assert!(r.starts_with("reset on #abc ~module/mail1/* ~task/module/mail1/* %R~cluster/*"), "{r}");
        assert!(r.contains("resetchannels &progress/module/mail1/* &module/mail1/event/*"), "{r}");
        assert!(r.ends_with("(+psubscribe +punsubscribe &*/event/*)"), "{r}");
        assert!(!r.contains("psync"));
        let n = agent_rules(&AgentId::Node(2), ">x").join(" ");
        assert!(n.contains("~node/2/* ~task/node/2/*") && n.contains("%R~private/nodes/*") && n.contains("+psync"));
    }
}
