//! The audit trail: a Redis stream of records chained by a keyed hash.
//!
//! NS8 keeps its audit in a SQLite file on the leader, lost when the leader changes.
//! Here it is the stream [`keys::AUDIT_STREAM`], so it replicates to every node. Each
//! record carries `seq` (previous + 1), `prev` (the previous record's hash) and `hash`,
//! an HMAC-SHA256 of its fields and `prev` under the audit key (`AUDIT_KEY_FILE`, a
//! file only the api-server reads). Whoever can write to Redis but lacks the key can
//! neither edit a record nor forge a consistent new chain.
//!
//! [`Audit::verify`] walks the chain from its start, which must be its genesis (record
//! 1, with no predecessor) or the trim anchor ([`keys::AUDIT_ANCHOR`]: where the chain
//! starts after old records were trimmed, with the key's MAC), so deleting the oldest
//! records shows. Each api-server also keeps the last record it wrote in a file of its
//! own (`AUDIT_HEAD_FILE`), so that deleting the newest records shows too.
//!
//! Records written before the chain was keyed (plain SHA-256, no `v` field) are still
//! read and checked as such, and counted as `unkeyed`; none may follow a keyed one.
//!
//! Writers append with a compare-and-set script, so several api-server processes (or
//! tasks) never fork the chain: a stale head is refreshed and the append retried.

use std::collections::HashMap;
use std::path::PathBuf;

use fred::prelude::*;
use fred::types::scripts::Script;
use hmac::{Hmac, KeyInit, Mac};
use protocol::keys;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// Append `ARGV[4..]` (field/value pairs) if the newest record's hash is `ARGV[1]`
/// and, when a cursor `KEYS[2]` is given, it holds `ARGV[2]` (absent: empty), which is
/// then set to `ARGV[3]` in the same step. Returns `{1, id, length}`,
/// `{0, head hash, head seq}` or `{2, cursor, ''}` (the cursor had moved).
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
if #KEYS > 1 then
  local cur = redis.call('GET', KEYS[2]) or ''
  if cur ~= ARGV[2] then return {2, cur, ''} end
  redis.call('SET', KEYS[2], ARGV[3])
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
return {1, id, redis.call('XLEN', KEYS[1])}";

/// Trim the stream so that entry `ARGV[1]` (record `ARGV[2]`, whose `prev` is
/// `ARGV[3]`) is its first, and record that start with its MAC `ARGV[4]`, in one
/// step: the chain is never seen trimmed without its anchor. An anchor never moves
/// back.
const TRIM: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if cur >= tonumber(ARGV[2]) then return 0 end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'prev', ARGV[3], 'mac', ARGV[4])
return 1";

/// The value of the `v` field of a keyed record.
const KEYED: &str = "2";

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
    /// Whether `hash` is keyed (false: a plain SHA-256 from before).
    pub keyed: bool,
}

/// The key of the chain's MACs.
pub struct AuditKey(Vec<u8>);

impl AuditKey {
    pub fn new(key: Vec<u8>) -> Self {
        AuditKey(key)
    }

    fn mac(&self, parts: &Value) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(parts.to_string().as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The hash of a record: HMAC-SHA256 over a JSON array of its fields, which is
    /// unambiguous whatever the fields contain.
    pub fn record_hash(&self, seq: u64, timestamp: &str, e: &Entry, prev: &str) -> String {
        self.mac(&json!([
            "ns8rs audit record v2",
            seq.to_string(),
            timestamp,
            e.user,
            e.source,
            e.action,
            e.agent,
            e.task,
            e.data,
            prev
        ]))
    }

    fn anchor_mac(&self, seq: u64, prev: &str) -> String {
        self.mac(&json!(["ns8rs audit anchor v2", seq.to_string(), prev]))
    }
}

/// The hash of a record written before the chain was keyed.
pub fn unkeyed_hash(seq: u64, timestamp: &str, e: &Entry, prev: &str) -> String {
    let canonical =
        json!([seq.to_string(), timestamp, e.user, e.source, e.action, e.agent, e.task, e.data, prev]).to_string();
    Sha256::digest(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A cursor moved together with a record ([`Audit::append_at_cursor`]): the record is
/// written only if `key` still holds `expected` (`None`: absent), and `key` is set to
/// `next` in the same step, so what the cursor counts is audited once, whatever
/// crashes and however many servers.
#[derive(Clone, Copy, Debug)]
pub struct CursorStep<'a> {
    pub key: &'a str,
    pub expected: Option<&'a str>,
    pub next: &'a str,
}

/// The last record this server appended, as kept in its head file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Head {
    pub id: u64,
    pub hash: String,
}

pub struct Audit {
    redis: Client,
    key: AuditKey,
    append: Script,
    trim: Script,
    chain: Mutex<Chain>,
    head_file: PathBuf,
    maxlen: u64,
}

/// The action of the record the server writes when the trail is shorter than what it
/// wrote itself (or its last record was replaced).
pub const GAP: &str = "audit-gap";

struct Chain {
    /// The newest record as last seen in Redis: (hash, seq).
    head: (String, u64),
    /// Whether `head` was read from Redis yet (not at start).
    known: bool,
    /// The newest record this server wrote (its head file).
    written: Option<Head>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadFileError {
    #[error("cannot read the audit head file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the audit head file {path} is not what this server writes ({source}): restore it, or remove it to trust the trail as it is now"
    )]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl Audit {
    /// The trail, keyed with `key`; `head_file` keeps the last record this server
    /// wrote. `maxlen`: about how many records are kept.
    pub fn new(redis: Client, key: AuditKey, head_file: PathBuf, maxlen: u64) -> Result<Self, HeadFileError> {
        let written = read_head(&head_file)?;
        Ok(Audit {
            redis,
            key,
            append: Script::from_lua(APPEND),
            trim: Script::from_lua(TRIM),
            chain: Mutex::new(Chain { head: (String::new(), 0), known: false, written }),
            head_file,
            maxlen: maxlen.max(1),
        })
    }

    async fn save_head(&self, head: Head) {
        let tmp = self.head_file.with_extension("tmp");
        let text = serde_json::to_vec(&head).unwrap_or_default();
        let saved = async {
            tokio::fs::write(&tmp, &text).await?;
            tokio::fs::rename(&tmp, &self.head_file).await
        };
        if let Err(e) = saved.await {
            tracing::error!("cannot save the audit head in {}: {e}", self.head_file.display());
        }
    }

    /// Append a record; fails only when Redis does.
    pub async fn append(&self, entry: Entry) -> Result<(), fred::error::Error> {
        let mut entry = entry;
        entry.data = mask_data_text(&entry.data);
        let mut chain = self.chain.lock().await;
        self.append_locked(&mut chain, entry, None).await.map(|_| ())
    }

    /// Append a record and move `cursor` with it, in one step. `Ok(false)`: the
    /// cursor no longer held what was expected (another writer moved it), and
    /// nothing was written.
    pub async fn append_at_cursor(&self, entry: Entry, cursor: CursorStep<'_>) -> Result<bool, fred::error::Error> {
        let mut entry = entry;
        entry.data = mask_data_text(&entry.data);
        let mut chain = self.chain.lock().await;
        self.append_locked(&mut chain, entry, Some(cursor)).await
    }

    /// Whether the record was written (always, without a cursor).
    async fn append_locked(
        &self,
        chain: &mut Chain,
        entry: Entry,
        cursor: Option<CursorStep<'_>>,
    ) -> Result<bool, fred::error::Error> {
        if !chain.known {
            let last: Vec<(String, HashMap<String, String>)> =
                self.redis.xrevrange(keys::AUDIT_STREAM, "+", "-", Some(1)).await?;
            chain.head =
                last.into_iter().next().map(|(id, f)| to_record(id, f)).map(|r| (r.hash, r.id)).unwrap_or_default();
            chain.known = true;
        }
        for _ in 0..8 {
            // Chaining onto a head older than the record this server wrote last means
            // records were removed from the end: say so in the chain itself, where
            // only the key could have put it, before going on.
            if let Some(w) = chain.written.clone()
                && entry.action != GAP
                && (chain.head.1 < w.id || (chain.head.1 == w.id && chain.head.0 != w.hash))
            {
                let found = json!({"id": chain.head.1, "hash": chain.head.0});
                tracing::error!(
                    "audit trail: it ends at record {} but this server wrote record {} (hash {}): records were removed",
                    chain.head.1,
                    w.id,
                    w.hash
                );
                let gap = Entry {
                    user: crate::CLIENT_NAME.into(),
                    action: GAP.into(),
                    data: json!({"written": w, "found": found}).to_string(),
                    ..Default::default()
                };
                Box::pin(self.append_locked(chain, gap, None)).await?;
                continue;
            }
            let head = &mut chain.head;
            let seq = head.1 + 1;
            let timestamp = protocol::time::rfc3339(std::time::SystemTime::now());
            let hash = self.key.record_hash(seq, &timestamp, &entry, &head.0);
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
                ("v", KEYED.to_owned()),
            ];
            let mut script_keys = vec![keys::AUDIT_STREAM];
            let mut args = vec![head.0.clone()];
            match cursor {
                Some(c) => {
                    script_keys.push(c.key);
                    args.extend([c.expected.unwrap_or_default().to_owned(), c.next.to_owned()]);
                }
                None => args.extend([String::new(), String::new()]),
            }
            args.extend(fields.into_iter().flat_map(|(k, v)| [k.to_owned(), v]));
            let reply: Vec<fred::types::Value> =
                self.append.evalsha_with_reload(&self.redis, script_keys, args).await?;
            match reply.as_slice() {
                [moved, _, _] if moved.as_i64() == Some(2) => return Ok(false),
                [ok, _, len] if ok.as_i64() == Some(1) => {
                    *head = (hash.clone(), seq);
                    let written = Head { id: seq, hash };
                    self.save_head(written.clone()).await;
                    chain.written = Some(written);
                    let len = len.as_u64().unwrap_or(0);
                    // Trimmed in batches of about 1%, not at every record.
                    if len > self.maxlen + (self.maxlen / 100).max(1) {
                        self.trim_to(len).await?;
                    }
                    return Ok(true);
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

    /// Drop the oldest records of a trail of `len`, keeping `maxlen`, and anchor the
    /// chain at the new first record.
    async fn trim_to(&self, len: u64) -> Result<(), fred::error::Error> {
        let drop = len - self.maxlen;
        let batch: Vec<(String, HashMap<String, String>)> =
            self.redis.xrange(keys::AUDIT_STREAM, "-", "+", Some(drop + 1)).await?;
        let Some((id, fields)) = batch.into_iter().nth(drop as usize) else { return Ok(()) };
        let first = to_record(id, fields);
        let mac = self.key.anchor_mac(first.id, &first.prev);
        let args = vec![first.stream_id, first.id.to_string(), first.prev, mac];
        let _: i64 =
            self.trim.evalsha_with_reload(&self.redis, vec![keys::AUDIT_STREAM, keys::AUDIT_ANCHOR], args).await?;
        Ok(())
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

    /// Walk the chain from its start and report the first problem: a record edited, a
    /// record missing, a start that is neither the genesis nor the trim anchor, or an
    /// end short of the last record this server wrote.
    pub async fn verify(&self) -> Result<Value, fred::error::Error> {
        let anchor: HashMap<String, String> = self.redis.hgetall(keys::AUDIT_ANCHOR).await?;
        let anchor = match (anchor.get("seq").and_then(|s| s.parse::<u64>().ok()), anchor.get("prev")) {
            (Some(seq), Some(prev)) if anchor.get("mac") == Some(&self.key.anchor_mac(seq, prev)) => {
                Some((seq, prev.clone()))
            }
            (None, None) => None,
            // An anchor the key did not make: trust no start but the genesis.
            _ => Some((0, String::new())),
        };
        let written = self.chain.lock().await.written.clone();
        let mut prev: Option<Record> = None;
        let mut gaps: Vec<Value> = Vec::new();
        let mut broken: Option<Value> = None;
        let mut count = 0u64;
        let mut unkeyed = 0u64;
        let mut start = Value::Null;
        let mut seen_written = false;
        let written_head = written.clone();
        self.walk(|r| {
            count += 1;
            let reason = self.check_record(r, prev.as_ref(), anchor.as_ref(), &mut start);
            if let Some(reason) = reason {
                broken = Some(json!({"id": r.id, "stream_id": r.stream_id, "reason": reason}));
                return false;
            }
            if !r.keyed {
                unkeyed += 1;
            } else if r.entry.action == GAP {
                gaps.push(json!({"id": r.id, "stream_id": r.stream_id, "reason": gap_reason(&r.entry.data)}));
            }
            if let Some(w) = &written_head
                && w.id == r.id
            {
                seen_written = true;
                if w.hash != r.hash {
                    broken = Some(json!({"id": r.id, "stream_id": r.stream_id,
                        "reason": "the record differs from the one this server wrote: the chain was rewritten from here"}));
                    return false;
                }
            }
            prev = Some(r.clone());
            true
        })
        .await?;
        let head = prev.as_ref().map(|p| json!({"id": p.id, "hash": p.hash}));
        if broken.is_none() {
            broken = match &written {
                Some(w) if !seen_written => {
                    let last = prev.as_ref().map(|p| p.id).unwrap_or(0);
                    let first = start.get("id").and_then(Value::as_u64).unwrap_or(0);
                    // Trimmed past what this server wrote is fine: the anchor covers it.
                    if w.id > last {
                        Some(json!({"id": w.id, "stream_id": "", "reason": format!(
                            "the trail ends at record {last}, but this server wrote record {} (hash {}): records were removed from the end",
                            w.id, w.hash)}))
                    } else if w.id >= first {
                        Some(
                            json!({"id": w.id, "stream_id": "", "reason": "the record this server wrote last is missing"}),
                        )
                    } else {
                        None
                    }
                }
                _ => None,
            };
        }
        if broken.is_none() {
            broken = gaps.first().cloned();
        }
        let expected = written.map(|w| json!({"id": w.id, "hash": w.hash}));
        Ok(json!({
            "ok": broken.is_none(),
            "checked": count,
            "length": count,
            "first_broken": broken,
            "head": head,
            "start": start,
            "unkeyed": unkeyed,
            "gaps": gaps,
            "written_head": expected,
        }))
    }

    /// Why record `r` breaks the chain after `prev` (None for the first record), if it
    /// does. Fills `start` with how the chain starts.
    fn check_record(
        &self,
        r: &Record,
        prev: Option<&Record>,
        anchor: Option<&(u64, String)>,
        start: &mut Value,
    ) -> Option<String> {
        let expected = if r.keyed {
            self.key.record_hash(r.id, &r.timestamp, &r.entry, &r.prev)
        } else {
            unkeyed_hash(r.id, &r.timestamp, &r.entry, &r.prev)
        };
        if expected != r.hash {
            let what = if r.keyed { "(edited, or written without the audit key)" } else { "(edited)" };
            return Some(format!("the record's content does not match its hash {what}"));
        }
        match prev {
            Some(p) if !r.keyed && p.keyed => {
                Some("an unkeyed record after keyed ones: it was not written by the api-server".into())
            }
            Some(p) if r.prev != p.hash => Some("the record does not point to the previous record's hash".into()),
            Some(p) if r.id != p.id + 1 => Some("records are missing before this one".into()),
            Some(_) => None,
            None if r.id == 1 && r.prev.is_empty() => {
                *start = json!({"id": 1, "by": "genesis"});
                None
            }
            None => match anchor {
                Some((seq, prev)) if *seq == r.id && *prev == r.prev => {
                    *start = json!({"id": r.id, "by": "trim anchor"});
                    None
                }
                Some((seq, _)) if *seq == 0 => Some(
                    "the trim anchor was not made with the audit key, and the chain does not start at its genesis"
                        .into(),
                ),
                _ => Some(format!(
                    "the chain starts at record {} without its genesis (record 1) or a matching trim anchor: older records were deleted",
                    r.id
                )),
            },
        }
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

fn read_head(path: &std::path::Path) -> Result<Option<Head>, HeadFileError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| HeadFileError::Parse { path: path.to_owned(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HeadFileError::Read { path: path.to_owned(), source }),
    }
}

/// What a gap record says, in words.
fn gap_reason(data: &str) -> String {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "records were removed from the end of the trail: it ended at record {} when this server had written up to record {}",
        n("/found/id"),
        n("/written/id")
    )
}

/// An entry's data, masked by the shared rules whoever built it: JSON text is parsed
/// and masked; anything else is kept (it is the server's own words).
fn mask_data_text(data: &str) -> String {
    match serde_json::from_str::<Value>(data) {
        Ok(v) if v.is_object() || v.is_array() => protocol::secrets::mask_secrets(&v).to_string(),
        _ => data.to_owned(),
    }
}

fn to_record(stream_id: String, mut f: HashMap<String, String>) -> Record {
    let keyed = f.get("v").map(String::as_str) == Some(KEYED);
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
        keyed,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hashes_depend_on_key_and_every_field() {
        let k = AuditKey::new(vec![1; 32]);
        let e = Entry { user: "admin".into(), action: "login-ok".into(), ..Default::default() };
        let h = k.record_hash(1, "t", &e, "");
        assert_eq!(h.len(), 64);
        assert_ne!(h, AuditKey::new(vec![2; 32]).record_hash(1, "t", &e, ""));
        assert_ne!(h, k.record_hash(2, "t", &e, ""));
        assert_ne!(h, k.record_hash(1, "t", &e, "x"));
        assert_ne!(h, k.record_hash(1, "t", &Entry { user: "admin2".into(), ..e.clone() }, ""));
        assert_ne!(h, unkeyed_hash(1, "t", &e, ""));
        assert_ne!(k.anchor_mac(5, "p"), k.anchor_mac(6, "p"));
    }

    #[test]
    fn data_is_masked_whoever_wrote_it() {
        assert_eq!(mask_data_text(r#"{"user":"bob","new_password":"x"}"#), r#"{"new_password":"XXX","user":"bob"}"#);
        assert_eq!(mask_data_text("plain words"), "plain words");
        assert_eq!(mask_data_text(""), "");
    }
}
