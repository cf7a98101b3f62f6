//! Grants (`roles/<subject>`: agent id -> comma-separated roles), changed by the
//! api-server's grant endpoints and by the cluster when modules come and go.

use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::{AgentId, keys};

/// KEYS: grants hash. ARGV: agent, role, "1" add / "0" remove. Returns whether the
/// role was held before.
const SET_GRANT: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local roles, held = {}, 0
for r in string.gmatch(cur, '[^,%s]+') do
  if r == ARGV[2] then held = 1 else roles[#roles + 1] = r end
end
if ARGV[3] == '0' and held == 0 then return 0 end
if ARGV[3] == '1' then roles[#roles + 1] = ARGV[2] end
if #roles == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], table.concat(roles, ',')) end
return held";

/// Add or remove one role of `subject` on `agent`; whether it was held before.
pub async fn set_grant(
    redis: &Client,
    subject: &str,
    agent: &AgentId,
    role: &str,
    add: bool,
) -> Result<bool, fred::error::Error> {
    let held: i64 = Script::from_lua(SET_GRANT)
        .evalsha_with_reload(
            redis,
            vec![keys::grants(subject)],
            vec![agent.to_string(), role.to_owned(), if add { "1" } else { "0" }.to_owned()],
        )
        .await?;
    Ok(held == 1)
}

/// Give `role` on `agent` to every subject holding `role` on `on` (NS8 grants a new
/// module's `owner` role to every owner of the cluster). Returns the subjects.
pub async fn extend_role(
    redis: &Client,
    on: &AgentId,
    agent: &AgentId,
    role: &str,
) -> Result<Vec<String>, fred::error::Error> {
    let mut given = Vec::new();
    for key in crate::commands::scan(redis, &keys::grants("*"), Some("hash")).await? {
        let Some(subject) = keys::parse_grants(&key) else { continue };
        let held: Option<String> = redis.hget(&key, on.to_string()).await?;
        if held.is_some_and(|r| r.split(',').any(|r| r.trim() == role)) {
            set_grant(redis, subject, agent, role, true).await?;
            given.push(subject.to_owned());
        }
    }
    Ok(given)
}

/// Forget every grant on `agent` and every grant `agent` holds.
pub async fn forget_agent(redis: &Client, agent: &AgentId) -> Result<(), fred::error::Error> {
    for key in crate::commands::scan(redis, &keys::grants("*"), Some("hash")).await? {
        let _: i64 = redis.hdel(&key, agent.to_string()).await?;
    }
    let _: i64 = redis.del(keys::grants(&agent.to_string())).await?;
    Ok(())
}
