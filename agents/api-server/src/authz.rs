//! Who is calling and what they may do: NS8's roles and grants (reference section 8),
//! checked on every request, reads included.
//!
//! A subject (admin user or agent id) holds roles per agent in `roles/<subject>`; a role
//! is a set of action globs in `<agent>/roles/<role>`. One script reads, in a single
//! round trip, everything a request needs: whether the token was revoked, whether the
//! user still exists and from which networks it may connect, and the patterns of the
//! roles it holds on the agent concerned.

use std::net::IpAddr;

use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::task::Task;
use protocol::{AgentId, keys};

use crate::error::ApiError;
use crate::net;
use crate::token::Claims;

/// KEYS: revoked token (or "" for a request without one), user profile, grants of the
/// subject, cluster network.
/// ARGV: agent id (or ""), "user" or "agent", the token's session generation (or ""
/// for no check), the prefix of the agent's role keys (`keys::role(agent, "")`).
/// Returns {status, networks, patterns...}: status 0 = revoked, 1 = user gone, 2 = ok,
/// 3 = the session predates a password or 2FA change.
pub const SESSION: &str = r"
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local nets
if ARGV[2] == 'user' then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {1} end
  local p = redis.call('HMGET', KEYS[2], 'allowed_networks', 'token_generation')
  if ARGV[3] ~= '' and (p[2] or '0') ~= ARGV[3] then return {3} end
  nets = p[1] or ''
else
  nets = redis.call('GET', KEYS[4]) or ''
end
local out = {2, nets}
if ARGV[1] ~= '' then
  local roles = redis.call('HGET', KEYS[3], ARGV[1])
  if roles then
    for role in string.gmatch(roles, '[^,%s]+') do
      for _, p in ipairs(redis.call('SMEMBERS', ARGV[4] .. role)) do out[#out + 1] = p end
    end
  end
end
return out";

pub fn session_script() -> Script {
    Script::from_lua(SESSION)
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Agent(AgentId),
}

impl Subject {
    pub fn parse(id: &str) -> Subject {
        match id.parse::<AgentId>() {
            Ok(a) => Subject::Agent(a),
            Err(_) => Subject::User(id.to_owned()),
        }
    }
    pub fn name(&self) -> String {
        match self {
            Subject::User(u) => u.clone(),
            Subject::Agent(a) => a.to_string(),
        }
    }
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Subject::User(u) => Some(u),
            Subject::Agent(_) => None,
        }
    }
}

/// A checked request: valid token, not revoked, allowed source, and the action
/// patterns granted on the agent the request is about.
#[derive(Clone, Debug)]
pub struct Session {
    pub claims: Claims,
    pub subject: Subject,
    pub source: IpAddr,
    pub agent: Option<AgentId>,
    pub patterns: Vec<String>,
}

impl Session {
    /// Whether a granted pattern matches `action` (Go `filepath.Match` globs, as NS8).
    pub fn may(&self, action: &str) -> bool {
        matches_any(&self.patterns, action)
    }

    /// A task is visible to whoever created it and to whoever may run its action
    /// (see [`task_owner`]).
    pub fn may_see_task(&self, action: &str, user: &str) -> bool {
        user == self.subject.name() || self.may(action)
    }

    pub fn require(&self, action: &str) -> Result<(), ApiError> {
        if self.may(action) {
            Ok(())
        } else {
            let agent = self.agent.as_ref().map(|a| a.to_string()).unwrap_or_default();
            Err(ApiError::forbidden(format!(
                "{} may not run action \"{action}\" on {agent}: no granted role allows it",
                self.subject.name()
            )))
        }
    }
}

pub fn matches_any(patterns: &[String], action: &str) -> bool {
    patterns.iter().any(|p| glob::Pattern::new(p).is_ok_and(|g| g.matches(action)))
}

/// What Redis holds about `subject`, read by the session script in one round trip:
/// the networks it may connect from and the action patterns of the roles it holds on
/// `agent`. Fails if the token `jti` was revoked or the user no longer exists.
pub async fn lookup(
    redis: &Client,
    script: &Script,
    subject: &Subject,
    token: Option<&Claims>,
    agent: Option<&AgentId>,
) -> Result<(String, Vec<String>), ApiError> {
    let jti = token.map(|c| c.jti.as_str());
    let (kind, user_key) = match subject {
        Subject::User(u) => ("user", keys::user(u)),
        Subject::Agent(_) => ("agent", String::from("-")),
    };
    let keys_ = vec![
        jti.map(keys::revoked_token).unwrap_or_default(),
        user_key,
        keys::grants(&subject.name()),
        keys::CLUSTER_NETWORK.to_owned(),
    ];
    let agent_arg = agent.map(|a| a.to_string()).unwrap_or_default();
    let generation = token.map(|c| c.generation.to_string()).unwrap_or_default();
    // The role keys' names come from protocol, not from the script.
    let role_prefix = agent.map(|a| keys::role(a, "")).unwrap_or_default();
    let reply: Vec<fred::types::Value> =
        script.evalsha_with_reload(redis, keys_, vec![agent_arg, kind.into(), generation, role_prefix]).await?;
    match reply.first().and_then(|v| v.as_i64()) {
        Some(0) => return Err(ApiError::unauthorized("the session token was revoked (logged out): log in again")),
        Some(1) => return Err(ApiError::unauthorized(format!("user {} no longer exists", subject.name()))),
        Some(3) => {
            return Err(ApiError::unauthorized(format!(
                "the session ended when the password or two-factor settings of {} changed: log in again",
                subject.name()
            )));
        }
        Some(2) => {}
        _ => return Err(ApiError::unauthorized("the session could not be checked")),
    }
    let networks = reply.get(1).and_then(|v| v.as_string()).unwrap_or_default();
    Ok((networks, reply.iter().skip(2).filter_map(|v| v.as_string()).collect()))
}

/// Whether `subject` may connect from `source` given its `networks`.
pub fn may_connect(subject: &Subject, networks: &str, source: IpAddr) -> bool {
    match subject {
        Subject::User(_) => net::user_may_connect(networks, source),
        Subject::Agent(_) => net::agent_may_connect(networks, source),
    }
}

/// Check a request's `claims` from `source` about `agent`.
pub async fn check(
    redis: &Client,
    script: &Script,
    claims: Claims,
    source: IpAddr,
    agent: Option<AgentId>,
) -> Result<Session, ApiError> {
    let subject = Subject::parse(&claims.id);
    let (networks, patterns) = lookup(redis, script, &subject, Some(&claims), agent.as_ref()).await?;
    if !may_connect(&subject, &networks, source) {
        return Err(ApiError::forbidden(format!("{} may not connect from {source}", subject.name())));
    }
    Ok(Session { claims, subject, source, agent, patterns })
}

/// Roles: 1-32 characters, lowercase letters, digits, '-' and '_'.
pub fn valid_role_name(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 32
        && role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Admin user names: 1-32 characters, a lowercase letter first, then lowercase letters,
/// digits, '.', '-' and '_'. They never contain '/', so they cannot be agent ids.
pub fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        && name.len() <= 32
        && !matches!(name, "default" | "cluster")
}

/// `(action, user)` of a task from its stored context or queue item (the task as
/// pushed), empty when missing or unreadable: what [`Session::may_see_task`] decides on.
pub fn task_owner(task: Option<&str>) -> (String, String) {
    task.and_then(|t| serde_json::from_str::<Task>(t).ok()).map(|t| (t.action, t.user)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_ns8() {
        let reader: Vec<String> = ["list-*", "get-*", "show-*", "read-*"].map(String::from).to_vec();
        assert!(matches_any(&reader, "list-actions"));
        assert!(matches_any(&reader, "get-name"));
        assert!(!matches_any(&reader, "set-name"));
        assert!(matches_any(&["*".into()], "anything"));
        assert!(matches_any(&["set-?ame".into()], "set-name"));
        assert!(matches_any(&["[gs]et-name".into()], "set-name"));
        assert!(!matches_any(&["[".into()], "["), "a malformed pattern matches nothing");
        assert!(!matches_any(&[], "get-name"));
    }

    #[test]
    fn names() {
        assert!(valid_user_name("admin"));
        assert!(valid_user_name("j.doe-2"));
        assert!(!valid_user_name("default"));
        assert!(!valid_user_name("Admin"));
        assert!(!valid_user_name("module/x"));
        assert!(!valid_user_name(""));
        assert!(valid_role_name("owner"));
        assert!(!valid_role_name("own*"));
        assert_eq!(Subject::parse("module/mail1"), Subject::Agent(AgentId::Module("mail1".into())));
        assert_eq!(Subject::parse("admin"), Subject::User("admin".into()));
    }
}
