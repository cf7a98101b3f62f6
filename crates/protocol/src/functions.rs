//! The Redis Functions library of the runtime: the atomic multi-command operations of
//! the task path and of port allocation, which agents call with `FCALL`.
//!
//! Agents may not run scripts of their own ([`crate::acl`]): a module's `EVAL` could
//! busy-loop and stall Redis for the whole cluster. These functions are the only code
//! they may run inside Redis; the cluster agent loads them at its start (`FUNCTION LOAD
//! REPLACE`), Redis persists and replicates them with the data. Each runs its commands
//! under the caller's ACL, so it grants nothing the caller could not do one command at
//! a time.

/// The library's name, as `FUNCTION LIST` shows it.
pub const LIBRARY_NAME: &str = "ns8rs";
/// Bumped when a function changes; [`VERSION_FN`] answers it.
pub const LIBRARY_VERSION: &str = "1";

/// Store the context with a TTL, then publish each message.
/// Keys: context. Args: context JSON, TTL, channel, message...
pub const TASK_ACCEPT: &str = "ns8rs_task_accept";
/// Store a result and close the task, see `agent_runtime::runner::finish`.
/// Keys: environment, output, error, exit_code, context, inflight.
/// Args: TTL, output, error, exit code, raw task, channel, final message,
/// copy environment ("1"/"0"), then environment name/value pairs.
pub const TASK_FINISH: &str = "ns8rs_task_finish";
/// Move up to args[1] tasks from the queue's right end to the in-flight list, as
/// `BLMOVE` does one at a time, without blocking. Keys: queue, inflight.
pub const TASK_TAKE: &str = "ns8rs_task_take";
/// First-fit port range. Keys: allocations hash. Args: module, count, first, last,
/// keep existing ("1"/"0"). Returns {start, end}, or {0} when no gap is large enough.
pub const PORTS_ALLOCATE: &str = "ns8rs_ports_allocate";
/// The library's version (read-only).
pub const VERSION_FN: &str = "ns8rs_version";

/// The library source for `FUNCTION LOAD REPLACE`.
pub const LIBRARY: &str = r"#!lua name=ns8rs

local function task_accept(keys, args)
  redis.call('SET', keys[1], args[1], 'EX', args[2])
  for i = 4, #args do redis.call('PUBLISH', args[3], args[i]) end
  return 1
end

local function task_finish(keys, args)
  if args[8] == '1' then
    redis.call('DEL', keys[1])
    if #args > 8 then redis.call('HSET', keys[1], unpack(args, 9)) end
  end
  redis.call('SET', keys[2], args[2], 'EX', args[1])
  redis.call('SET', keys[3], args[3], 'EX', args[1])
  redis.call('SET', keys[4], args[4], 'EX', args[1])
  redis.call('EXPIRE', keys[5], args[1])
  redis.call('LREM', keys[6], 1, args[5])
  redis.call('PUBLISH', args[6], args[7])
  return 1
end

local function task_take(keys, args)
  local items = redis.call('RPOP', keys[1], args[1])
  if not items then return {} end
  for _, item in ipairs(items) do redis.call('LPUSH', keys[2], item) end
  return items
end

local function ports_allocate(keys, args)
  local module, n, lo, hi = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  local mine = redis.call('HGET', keys[1], module) or ''
  if args[5] ~= '1' then mine = '' end
  local used = {}
  local all = redis.call('HGETALL', keys[1])
  for i = 1, #all, 2 do
    local v = all[i + 1]
    if all[i] == module then v = mine end
    for a, b in string.gmatch(v, '(%d+)-(%d+)') do used[#used + 1] = {tonumber(a), tonumber(b)} end
  end
  table.sort(used, function(x, y) return x[1] < y[1] end)
  local start = lo
  for _, r in ipairs(used) do
    if r[1] - start >= n then break end
    if r[2] + 1 > start then start = r[2] + 1 end
  end
  if start + n - 1 > hi then return {0} end
  local range = start .. '-' .. (start + n - 1)
  if mine == '' then mine = range else mine = mine .. ' ' .. range end
  redis.call('HSET', keys[1], module, mine)
  return {start, start + n - 1}
end

redis.register_function('ns8rs_task_accept', task_accept)
redis.register_function('ns8rs_task_finish', task_finish)
redis.register_function('ns8rs_task_take', task_take)
redis.register_function('ns8rs_ports_allocate', ports_allocate)
redis.register_function{function_name = 'ns8rs_version', callback = function() return '1' end, flags = {'no-writes'}}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_function_is_registered_and_the_version_matches() {
        for f in [TASK_ACCEPT, TASK_FINISH, TASK_TAKE, PORTS_ALLOCATE, VERSION_FN] {
            assert!(LIBRARY.contains(&format!("'{f}'")), "{f} is not registered");
        }
        assert!(LIBRARY.starts_with(&format!("#!lua name={LIBRARY_NAME}\n")));
        assert!(LIBRARY.contains(&format!("return '{LIBRARY_VERSION}' end")));
    }
}
