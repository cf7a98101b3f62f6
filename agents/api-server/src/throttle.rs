//! Login throttling with back-off, per source address and per user name.
//!
//! After a few free failures each further failure doubles the wait before the next
//! attempt is even checked (1 s, 2 s, 4 s ... up to 15 min). Counters live in Redis, so
//! they hold across api-server restarts, and fade 15 minutes after the last failure.
//! A success clears the user's counter, not the address's: an attacker cannot reset
//! its budget by logging in to an account of its own from the same address.

use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::keys;

/// Failures allowed before back-off starts. An address is shared by an office behind
/// NAT, so it gets more.
pub const FREE_PER_USER: u32 = 5;
pub const FREE_PER_ADDRESS: u32 = 10;
pub const MAX_DELAY_MS: u64 = 15 * 60 * 1000;
const FORGET_SECS: u64 = 15 * 60;

/// KEYS: counters. ARGV: now (ms). Returns the longest remaining wait in ms (0 = go).
const CHECK: &str = r"
local wait = 0
for _, k in ipairs(KEYS) do
  local u = tonumber(redis.call('HGET', k, 'until') or '0')
  if u - tonumber(ARGV[1]) > wait then wait = u - tonumber(ARGV[1]) end
end
return wait";

/// KEYS: counters. ARGV: now, max delay, forget secs, then one free budget per key.
const FAIL: &str = r"
for i, k in ipairs(KEYS) do
  local f = redis.call('HINCRBY', k, 'failures', 1)
  local free = tonumber(ARGV[3 + i])
  local delay = 0
  if f > free then delay = math.min(1000 * 2 ^ math.min(f - free - 1, 30), tonumber(ARGV[2])) end
  redis.call('HSET', k, 'until', tonumber(ARGV[1]) + delay)
  redis.call('EXPIRE', k, tonumber(ARGV[3]) + math.ceil(delay / 1000))
end
return 1";

pub struct Throttle {
    check: Script,
    fail: Script,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn counter_keys(addr: &str, user: &str) -> Vec<String> {
    vec![keys::throttle("addr", addr), keys::throttle("user", user)]
}

impl Throttle {
    pub fn new() -> Self {
        Throttle { check: Script::from_lua(CHECK), fail: Script::from_lua(FAIL) }
    }

    /// Milliseconds to wait before an attempt for `user` from `addr` is accepted.
    pub async fn wait_ms(&self, redis: &Client, addr: &str, user: &str) -> Result<u64, fred::error::Error> {
        let wait: i64 = self.check.evalsha_with_reload(redis, counter_keys(addr, user), vec![now_ms()]).await?;
        Ok(wait.max(0) as u64)
    }

    pub async fn failed(&self, redis: &Client, addr: &str, user: &str) -> Result<(), fred::error::Error> {
        let args = vec![
            now_ms().to_string(),
            MAX_DELAY_MS.to_string(),
            FORGET_SECS.to_string(),
            FREE_PER_ADDRESS.to_string(),
            FREE_PER_USER.to_string(),
        ];
        let _: i64 = self.fail.evalsha_with_reload(redis, counter_keys(addr, user), args).await?;
        Ok(())
    }

    pub async fn succeeded(&self, redis: &Client, user: &str) -> Result<(), fred::error::Error> {
        let _: i64 = redis.del(keys::throttle("user", user)).await?;
        Ok(())
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}
