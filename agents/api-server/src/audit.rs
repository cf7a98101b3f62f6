//! The audit trail: a Redis stream of hash-chained records.
//!
//! NS8 keeps its audit in a SQLite file on the leader, lost when the leader changes.
//! Here it is the stream [`keys::AUDIT_STREAM`], so it replicates to every node. Each
//! record carries `seq` (previous + 1), `prev` (the previous record's hash) and `hash`
//! (SHA-256 of its own fields and `prev`): editing or deleting a record breaks the
//! chain at that point, and [`verify`] reports the first broken link.
//!
//! Writers append with a compare-and-set script, so several api-server processes (or
//! tasks) never fork the chain: a stale head is refreshed and the append retried.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::keys;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// Append `ARGV[3..]` (field/value pairs) if the newest record's hash is `ARGV[1]`,
/// trimming to about `ARGV[2]` records. Returns `{1, id}` or `{0, head hash, head seq}`.
const APPEND: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local hash, seq = '', '0'
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'hash' then hash = f[i + 1] elseif f[i] == 'seq' then seq = f[i + 1] end
  end
end
if hash ~= ARGV[1] then return {0, hash, seq} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
return {1, id}";

/// One audit record's content, before chaining.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Entry {
    pub user: String,
    pub source: String,
    pub action: String,
    pub agent: String,
    pub task: String,
    /// JSON text with secrets masked, or empty.
    pub data: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Record {
    /// The stream entry id.
    pub stream_id: String,
    pub id: u64,
    pub timestamp: String,
    #[serde(flatten)]
    pub entry: Entry,
    pub prev: String,
    pub hash: String,
}

/// The hash of a record: SHA-256 over a JSON array of its fields, which is
/// unambiguous whatever the fields contain.
pub fn record_hash(seq: u64, timestamp: &str, e: &Entry, prev: &str) -> String {
    let canonical =
        json!([seq.to_string(), timestamp, e.user, e.source, e.action, e.agent, e.task, e.data, prev]).to_string();
    Sha256::digest(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Audit {
    redis: Client,
    script: Script,
    head: Mutex<(String, u64)>,
    maxlen: u64,
}

impl Audit {
    pub fn new(redis: Client, maxlen: u64) -> Self {
        Audit { redis, script: Script::from_lua(APPEND), head: Mutex::new((String::new(), 0)), maxlen }
    }

    /// Append a record; fails only when Redis does.
    pub async fn append(&self, entry: Entry) -> Result<(), fred::error::Error> {
        let mut head = self.head.lock().await;
        for _ in 0..8 {
            let seq = head.1 + 1;
            let timestamp = protocol::time::rfc3339(std::time::SystemTime::now());
            let hash = record_hash(seq, &timestamp, &entry, &head.0);
            let fields = [
                ("seq", seq.to_string()),
                ("timestamp", timestamp),
                ("user", entry.user.clone()),
                ("source", entry.source.clone()),
                ("action", entry.action.clone()),
                ("agent", entry.agent.clone()),
                ("task", entry.task.clone()),
                ("data", entry.data.clone()),
                ("prev", head.0.clone()),
                ("hash", hash.clone()),
            ];
            let mut args = vec![head.0.clone(), self.maxlen.to_string()];
            args.extend(fields.into_iter().flat_map(|(k, v)| [k.to_owned(), v]));
            let reply: Vec<fred::types::Value> =
                self.script.evalsha_with_reload(&self.redis, vec![keys::AUDIT_STREAM], args).await?;
            match reply.as_slice() {
                [ok, ..] if ok.as_i64() == Some(1) => {
                    *head = (hash, seq);
                    return Ok(());
                }
                [_, h, s] => {
                    let h = h.as_string().unwrap_or_default();
                    let s = s.as_string().and_then(|s| s.parse().ok()).unwrap_or(0);
                    *head = (h, s);
                }
                _ => break,
            }
        }
        Err(fred::error::Error::new(fred::error::ErrorKind::Unknown, "audit chain head kept moving"))
    }

    /// Records newest first, filtered, at most `limit`.
    pub async fn query(&self, q: &Query) -> Result<Vec<Record>, fred::error::Error> {
        let mut out = Vec::new();
        let mut end = match q.to_ms {
            Some(ms) => ms.to_string(),
            None => "+".to_owned(),
        };
        let start = match q.from_ms {
            Some(ms) => ms.to_string(),
            None => "-".to_owned(),
        };
        loop {
            let batch: Vec<(String, HashMap<String, String>)> =
                self.redis.xrevrange(keys::AUDIT_STREAM, end.as_str(), start.as_str(), Some(500)).await?;
            let Some((last_id, _)) = batch.last() else { break };
            end = format!("({last_id}");
            let done = batch.len() < 500;
            for (id, fields) in batch {
                let r = to_record(id, fields);
                if q.matches(&r) {
                    out.push(r);
                    if out.len() >= q.limit {
                        return Ok(out);
                    }
                }
            }
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Distinct values of a field over the whole trail (users, actions).
    pub async fn distinct(&self, field: &str) -> Result<Vec<String>, fred::error::Error> {
        let mut seen = std::collections::BTreeSet::new();
        self.walk(|r| {
            seen.insert(if field == "user" { r.entry.user.clone() } else { r.entry.action.clone() });
            true
        })
        .await?;
        Ok(seen.into_iter().collect())
    }

    /// Walk the chain from the oldest retained record and report the first broken link.
    pub async fn verify(&self) -> Result<Value, fred::error::Error> {
        let mut prev: Option<Record> = None;
        let mut broken: Option<Value> = None;
        let mut count = 0u64;
        self.walk(|r| {
            count += 1;

            let reason = if record_hash(r.id, &r.timestamp, &r.entry, &r.prev) != r.hash {
                Some("the record's content does not match its hash (edited)")
            } else {
                match &prev {
                    Some(p) if r.prev != p.hash => Some("the record does not point to the previous record's hash"),
                    Some(p) if r.id != p.id + 1 => Some("records are missing before this one"),
                    None if r.id == 1 && !r.prev.is_empty() => Some("the first record points to a predecessor"),
                    _ => None,
                }
            };
            if let Some(reason) = reason {
                broken = Some(json!({"id": r.id, "stream_id": r.stream_id, "reason": reason}));
                return false;
            }
            prev = Some(r.clone());
            true
        })
        .await?;
        let head = prev.map(|p| json!({"id": p.id, "hash": p.hash}));
        Ok(json!({"ok": broken.is_none(), "checked": count, "first_broken": broken, "head": head}))
    }

    /// Call `f` on every record, oldest first, until it returns false.
    async fn walk(&self, mut f: impl FnMut(&Record) -> bool) -> Result<(), fred::error::Error> {
        let mut start = "-".to_owned();
        loop {
            let batch: Vec<(String, HashMap<String, String>)> =
                self.redis.xrange(keys::AUDIT_STREAM, start.as_str(), "+", Some(1000)).await?;
            let Some((last_id, _)) = batch.last() else { return Ok(()) };
            start = format!("({last_id}");
            let done = batch.len() < 1000;
            for (id, fields) in batch {
                if !f(&to_record(id, fields)) {
                    return Ok(());
                }
            }
            if done {
                return Ok(());
            }
        }
    }
}

fn to_record(stream_id: String, mut f: HashMap<String, String>) -> Record {
    let mut take = |k: &str| f.remove(k).unwrap_or_default();
    Record {
        id: take("seq").parse().unwrap_or(0),
        timestamp: take("timestamp"),
        entry: Entry {
            user: take("user"),
            source: take("source"),
            action: take("action"),
            agent: take("agent"),
            task: take("task"),
            data: take("data"),
        },
        prev: take("prev"),
        hash: take("hash"),
        stream_id,
    }
}

/// `GET /api/audit` filters, as NS8: comma lists of users and actions, a substring of
/// the data, a time range.
#[derive(Debug, Default)]
pub struct Query {
    pub users: Vec<String>,
    pub actions: Vec<String>,
    pub data: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub limit: usize,
}

impl Query {
    fn matches(&self, r: &Record) -> bool {
        let e = &r.entry;
        (self.users.is_empty() || self.users.contains(&e.user))
            && (self.actions.is_empty() || self.actions.contains(&e.action))
            && self.data.as_ref().is_none_or(|d| e.data.contains(d.as_str()))
    }
}
