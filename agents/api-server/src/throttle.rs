//! Login throttling with back-off, per source address and per (user, address).
//!
//! Every attempt at a password (login, HTTP Basic, the re-authentication of password
//! and 2FA changes) goes through [`Throttle::attempt`] before the password is even
//! looked at: one Lua script checks the wait and counts the attempt as a failure, so a
//! parallel burst is counted attempt by attempt and cannot slip past the check. A
//! success then takes back its own count ([`Throttle::settle`]).
//!
//! After a few free failures each further attempt doubles the wait before the next one
//! is accepted (1 s, 2 s, 4 s ... up to 15 min); an attempt made while waiting is
//! refused and still counted, so hammering only lengthens the wait. Counters live in
//! Redis, so they hold across restarts, and fade 15 minutes after the last attempt.
//!
//! There is no counter per user name alone: anyone could lock `admin` out with it.
//! A (user, address) counter slows guesses at one account from one address; the
//! address counter, guesses at many accounts. The account stays open from other
//! addresses. IPv6 addresses count per /64, what one host can be given.

use std::net::IpAddr;

use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::keys;

/// Failures allowed before back-off starts. An address is shared by an office behind
/// NAT, so it gets more.
pub const FREE_PER_USER: u32 = 5;
pub const FREE_PER_ADDRESS: u32 = 10;
pub const MAX_DELAY_MS: u64 = 15 * 60 * 1000;
const FORGET_SECS: u64 = 15 * 60;

/// The wait before the `f`-th failure's successor, in ms: shared by both scripts.
const DELAY_FN: &str = r"
local function delay(f, free, max)
  if f <= free then return 0 end
  return math.min(1000 * 2 ^ math.min(f - free - 1, 30), max)
end";

/// KEYS: address counter, (user, address) counter. ARGV: now (ms), max delay, forget
/// secs, free per address, free per (user, address).
/// Counts the attempt on both. Returns 0 when it may go ahead, else (it is refused)
/// the wait before the next one, which this attempt lengthened.
const ATTEMPT: &str = r"
local now, max, forget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local refused = false
for _, k in ipairs(KEYS) do
  if tonumber(redis.call('HGET', k, 'until') or '0') > now then refused = true end
end
local wait = 0
for i, k in ipairs(KEYS) do
  local f = redis.call('HINCRBY', k, 'failures', 1)
  local u = tonumber(redis.call('HGET', k, 'until') or '0')
  local next = now + delay(f, tonumber(ARGV[3 + i]), max)
  if next > u then u = next; redis.call('HSET', k, 'until', u) end
  redis.call('EXPIRE', k, forget + math.ceil(math.max(u - now, 0) / 1000))
  if u - now > wait then wait = u - now end
end
if refused then return wait end
return 0";

/// KEYS: address counter, (user, address) counter. ARGV: now, max delay, free per
/// address, free per (user, address), mode: `ok` (a success: its address count is
/// taken back and the (user, address) counter cleared) or `forgive` (the password was
/// right but the request could not go on, e.g. a missing OTP: both counts taken back).
/// A success never clears the address counter: logging in to one's own account must
/// not reset the budget for guessing at another's.
const SETTLE: &str = r"
local now, max = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  if i == 2 and ARGV[5] == 'ok' then
    redis.call('DEL', k)
  elseif tonumber(redis.call('HGET', k, 'failures') or '0') > 0 then
    local f = redis.call('HINCRBY', k, 'failures', -1)
    local cap = 0
    local d = delay(f, tonumber(ARGV[2 + i]), max)
    if d > 0 then cap = now + d end
    local u = tonumber(redis.call('HGET', k, 'until') or '0')
    if u > cap then redis.call('HSET', k, 'until', cap) end
  end
end
return 1";

pub struct Throttle {
    attempt: Script,
    settle: Script,
}

/// How an attempt that passed the throttle ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Fully authenticated.
    Success,
    /// The password was right, but the request stopped short of a success (a second
    /// factor is required and was not sent): not a guess, so not counted.
    Forgive,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The counted unit of a source: an IPv4 address, or the /64 of an IPv6 address.
pub fn scope(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn counter_keys(addr: IpAddr, user: &str) -> Vec<String> {
    let scope = scope(addr);
    vec![keys::throttle_address(&scope), keys::throttle_user_at(user, &scope)]
}

impl Throttle {
    pub fn new() -> Self {
        Throttle {
            attempt: Script::from_lua(format!("{DELAY_FN}\n{ATTEMPT}")),
            settle: Script::from_lua(format!("{DELAY_FN}\n{SETTLE}")),
        }
    }

    /// Count an attempt for `user` from `addr`. Returns 0 when it may go ahead, else
    /// (the attempt is refused, and still counted) the milliseconds to wait.
    pub async fn attempt(&self, redis: &Client, addr: IpAddr, user: &str) -> Result<u64, fred::error::Error> {
        let args = vec![
            now_ms().to_string(),
            MAX_DELAY_MS.to_string(),
            FORGET_SECS.to_string(),
            FREE_PER_ADDRESS.to_string(),
            FREE_PER_USER.to_string(),
        ];
        let wait: i64 = self.attempt.evalsha_with_reload(redis, counter_keys(addr, user), args).await?;
        Ok(wait.max(0) as u64)
    }

    /// Take back the count of an attempt that did not fail.
    pub async fn settle(
        &self,
        redis: &Client,
        addr: IpAddr,
        user: &str,
        how: Settle,
    ) -> Result<(), fred::error::Error> {
        let mode = match how {
            Settle::Success => "ok",
            Settle::Forgive => "forgive",
        };
        let args = vec![
            now_ms().to_string(),
            MAX_DELAY_MS.to_string(),
            FREE_PER_ADDRESS.to_string(),
            FREE_PER_USER.to_string(),
            mode.to_owned(),
        ];
        let _: i64 = self.settle.evalsha_with_reload(redis, counter_keys(addr, user), args).await?;
        Ok(())
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(scope(a), "2001:db8:1:2::/64");
        assert_eq!(scope(a), scope(b));
        assert_ne!(scope(a), scope(c));
        assert_eq!(scope("192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(scope("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
    }
}
