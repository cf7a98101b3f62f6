//! The cluster's events that belong in the audit trail: each restore drill's report
//! (`backup-drill-finished`), read from the cluster's durable event stream.
//!
//! The cluster agent appends every event it publishes to [`keys::event_stream`]
//! (entries of two fields, `name` and `payload`). This task reads that stream with
//! `XREAD BLOCK` on a connection of its own, from the cursor [`keys::AUDIT_EVENTS_CURSOR`]
//! (the last entry id handled; from the start of the stream when absent), and writes
//! one audit record per drill report. The record and the cursor move in one step
//! ([`Audit::append_at_cursor`](crate::audit::Audit::append_at_cursor)), and the
//! cursor only ever moves from the value it was read at, so a report is audited once:
//! across restarts and crashes of this server, and with several servers reading the
//! same stream. Other events only move the cursor.

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::events::{BACKUP_DRILL_FINISHED, DrillFinished};
use protocol::{AgentId, keys};

use crate::CLIENT_NAME;
use crate::audit::{CursorStep, Entry};
use crate::state::Shared;

/// At most this many stream entries per read.
const READ_BATCH: u64 = 64;

/// How long one `XREAD` blocks on the server.
const BLOCK: Duration = Duration::from_secs(5);

/// Set `KEYS[1]` to `ARGV[2]` if it holds `ARGV[1]` (absent: empty). Returns 1 if set.
const ADVANCE: &str = r"
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1";

/// Start the task, forever (it waits for Redis as long as it takes).
pub fn start(state: Shared) {
    tokio::spawn(async move {
        let reader = bus::connect_blocking_retrying(&state.redis_config, CLIENT_NAME, BLOCK).await;
        let mut feed = Feed::new();
        let mut failing: Option<String> = None;
        let mut delay = Duration::from_millis(100);
        loop {
            match feed.step(&state, &reader).await {
                Ok(()) => {
                    if failing.take().is_some() {
                        tracing::info!("auditing the cluster's drill reports again");
                    }
                    delay = Duration::from_millis(100);
                }
                Err(e) => {
                    // Read the cursor again: a write may have happened before the error.
                    feed.cursor = None;
                    let msg = e.to_string();
                    if failing.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("cannot audit the cluster's drill reports: {msg}; retrying");
                        failing = Some(msg);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}

/// The cursor as stored, and where reading goes on from.
struct Cursor {
    /// The stored value (`None`: absent), which a move must find unchanged.
    stored: Option<String>,
    /// The stream id read after.
    from: String,
}

impl Cursor {
    fn new(stored: Option<String>) -> Self {
        let from = match stored.as_deref() {
            None => "0".to_owned(),
            Some(id) if is_stream_id(id) => id.to_owned(),
            Some(other) => {
                tracing::error!(
                    "the audit's cursor in the cluster's events ({}) holds {other:?}, not a stream entry id: \
                     reading the events again from the oldest kept",
                    keys::AUDIT_EVENTS_CURSOR
                );
                "0".to_owned()
            }
        };
        Cursor { stored, from }
    }

    fn step<'a>(&'a self, next: &'a str) -> CursorStep<'a> {
        CursorStep { key: keys::AUDIT_EVENTS_CURSOR, expected: self.stored.as_deref(), next }
    }

    fn moved_to(&mut self, id: &str) {
        self.stored = Some(id.to_owned());
        self.from = id.to_owned();
    }
}

/// `<ms>` or `<ms>-<seq>`, as `XREAD` takes it.
fn is_stream_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('-') {
        Some((ms, seq)) => digits(ms) && digits(seq),
        None => digits(id),
    }
}

/// One entry of the stream, as the runtime's recorder writes it.
struct Event {
    id: String,
    name: String,
    payload: String,
}

fn text(v: &Value) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.as_string().unwrap_or_default(),
    }
}

/// The audit record of a drill report, or `None` (and a warning) when the payload
/// is not one.
fn drill_record(event_id: &str, payload: &str) -> Option<Entry> {
    let report: DrillFinished = match serde_json::from_str(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                "cluster event {event_id} ({BACKUP_DRILL_FINISHED}) is not a drill report ({e}): not audited"
            );
            return None;
        }
    };
    let cluster = AgentId::Cluster.to_string();
    Some(Entry {
        user: cluster.clone(),
        source: cluster.clone(),
        action: BACKUP_DRILL_FINISHED.to_owned(),
        agent: cluster,
        task: String::new(),
        data: serde_json::to_string(&report).expect("a DrillFinished always serializes"),
    })
}

struct Feed {
    stream: String,
    advance: Script,
    /// `None` until read from Redis (again after an error or a lost race).
    cursor: Option<Cursor>,
}

impl Feed {
    fn new() -> Self {
        Feed { stream: keys::event_stream(&AgentId::Cluster), advance: Script::from_lua(ADVANCE), cursor: None }
    }

    /// Read one batch (or wait for one) and handle it.
    async fn step(&mut self, state: &Shared, reader: &Client) -> Result<(), fred::error::Error> {
        if self.cursor.is_none() {
            let stored: Option<String> = state.redis.get(keys::AUDIT_EVENTS_CURSOR).await?;
            self.cursor = Some(Cursor::new(stored));
        }
        let from = self.cursor.as_ref().map(|c| c.from.clone()).unwrap_or_default();
        let raw: Value =
            reader.xread(Some(READ_BATCH), Some(BLOCK.as_millis() as u64), self.stream.as_str(), from.as_str()).await?;
        // Nothing within the block: nil, which fred's map conversion refuses.
        if raw.is_null() {
            return Ok(());
        }
        let mut reply: fred::types::streams::XReadResponse<String, String, String, Value> =
            raw.into_xread_response()?;
        let events = reply.remove(&self.stream).unwrap_or_default().into_iter().map(|(id, fields)| Event {
            id,
            name: fields.get(keys::EVENT_ENTRY_NAME).map(text).unwrap_or_default(),
            payload: fields.get(keys::EVENT_ENTRY_PAYLOAD).map(text).unwrap_or_default(),
        });
        // The newest entry of the current run of entries that are not audited.
        let mut skipped: Option<String> = None;
        for event in events {
            let record = (event.name == BACKUP_DRILL_FINISHED).then(|| drill_record(&event.id, &event.payload));
            let Some(Some(record)) = record else {
                skipped = Some(event.id);
                continue;
            };
            if let Some(id) = skipped.take()
                && !self.advance(state, &id).await?
            {
                return Ok(());
            }
            let Some(cursor) = self.cursor.as_mut() else { return Ok(()) };
            if state.audit.append_at_cursor(record, cursor.step(&event.id)).await? {
                cursor.moved_to(&event.id);
            } else {
                tracing::debug!("cluster event {}: the audit's cursor moved meanwhile, reading it again", event.id);
                self.cursor = None;
                return Ok(());
            }
        }
        if let Some(id) = skipped {
            self.advance(state, &id).await?;
        }
        Ok(())
    }

    /// Move the cursor past entries that are not audited. `false` (and the cursor
    /// to be read again) when it moved meanwhile.
    async fn advance(&mut self, state: &Shared, id: &str) -> Result<bool, fred::error::Error> {
        let Some(cursor) = self.cursor.as_mut() else { return Ok(false) };
        let args = vec![cursor.stored.clone().unwrap_or_default(), id.to_owned()];
        let set: i64 = self.advance.evalsha_with_reload(&state.redis, vec![keys::AUDIT_EVENTS_CURSOR], args).await?;
        if set == 1 {
            cursor.moved_to(id);
            Ok(true)
        } else {
            tracing::debug!("cluster event {id}: the audit's cursor moved meanwhile, reading it again");
            self.cursor = None;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        assert!(is_stream_id("0"));
        assert!(is_stream_id("1700000000000-3"));
        assert!(!is_stream_id(""));
        assert!(!is_stream_id("-"));
        assert!(!is_stream_id("12-"));
        assert!(!is_stream_id("$"));
        assert!(!is_stream_id("1-2-3"));
        assert_eq!(Cursor::new(Some("junk".into())).from, "0");
        assert_eq!(Cursor::new(None).from, "0");
        assert_eq!(Cursor::new(Some("5-1".into())).from, "5-1");
    }

    #[test]
    fn a_drill_report_becomes_the_clusters_record() {
        let payload = r#"{"backup_id":3,"module_id":"dokuwiki1","start":1,"end":9,"success":false,
            "error":"restic check failed","restore_seconds":0,"repository_bytes":42}"#;
        let e = drill_record("1-0", payload).unwrap();
        assert_eq!((e.user.as_str(), e.source.as_str(), e.agent.as_str()), ("cluster", "cluster", "cluster"));
        assert_eq!(e.action, "backup-drill-finished");
        assert_eq!(e.task, "");
        let data: DrillFinished = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data, serde_json::from_str::<DrillFinished>(payload).unwrap());
        assert!(drill_record("1-1", "{\"module_id\": 3}").is_none());
        assert!(drill_record("1-2", "").is_none());
    }
}
