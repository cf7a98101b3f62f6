//! Events, with nothing lost while an agent is down.
//!
//! NS8 events are plain Pub/Sub: an agent that is down misses them. Here:
//!
//! * **Recorder.** Every agent subscribes to `*/event/*` (so a step keeps publishing with
//!   a plain `PUBLISH`, as NS8 modules do). When it sees an event of its own source, it
//!   appends it to its bounded stream `<agent>/events`. The source agent is the right
//!   recorder: its steps are the only ones allowed to publish on its channels, and they
//!   only run while it runs. Its ACL already covers `<agent>/*`, and the channel name
//!   is ACL-protected, so a stream's source is trustworthy.
//! * **Consumer.** Handlers run from the streams, not from Pub/Sub: each agent reads every
//!   `*/events` stream from a cursor kept in `<agent>/event_cursors`, saved after each
//!   handled event. An agent that comes back reads on from its cursors, so it runs the
//!   handlers of the events it missed, once each. Pub/Sub only tells the consumer about
//!   a source it does not follow yet.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bus::fred::clients::SubscriberClient;
use bus::fred::prelude::*;
use bus::fred::types::ClientUnblockFlag;
use bus::fred::types::{ClusterHash, CustomCommand};
use bus::retry;
use protocol::{AgentId, keys, stepenv};
use tokio::sync::{mpsc, watch};

use crate::actions;
use crate::runner::Shared;
use crate::step::{CancelHandle, StepEvent, StepProcess, StepSpec};

/// At most this many entries per stream per read.
const READ_BATCH: u64 = 64;

pub(crate) struct Events {
    subscriber: SubscriberClient,
    reader: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Events {
    pub async fn stop(self) {
        let _ = self.reader.unblock_self(Some(ClientUnblockFlag::Timeout)).await;
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.subscriber.quit().await;
        let _ = self.reader.quit().await;
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.as_string().unwrap_or_default(),
    }
}

/// Subscribe, load cursors, and start the recorder and the consumer. Returns once the
/// subscription is active, so events published by the first task are recorded.
pub(crate) async fn start(sh: Arc<Shared>, stop: watch::Receiver<bool>) -> Events {
    let name = sh.cfg.agent_id.to_string();
    // Events are rare; the buffer only has to absorb a burst while one is recorded.
    let subscriber = bus::connect_subscriber_retrying(&sh.cfg.redis, &name, 256).await;
    let reader = bus::connect_retrying(&sh.cfg.redis, &name).await;
    let messages = subscriber.message_rx();
    retry("cannot subscribe to events", || subscriber.psubscribe(keys::EVENT_PATTERN)).await;

    let (hint_tx, hint_rx) = mpsc::unbounded_channel();
    let mut consumer = Consumer::load(sh.clone(), reader.clone(), hint_rx).await;
    let recorder = tokio::spawn(record(sh.clone(), messages, hint_tx, reader.clone(), stop.clone()));
    let consume = tokio::spawn(async move { consumer.run(stop).await });
    Events { subscriber, reader, tasks: vec![recorder, consume] }
}

/// Append own events to `<agent>/events`; tell the consumer about unknown sources.
async fn record(
    sh: Arc<Shared>,
    mut messages: tokio::sync::broadcast::Receiver<bus::fred::types::Message>,
    hints: mpsc::UnboundedSender<AgentId>,
    reader: Client,
    mut stop: watch::Receiver<bool>,
) {
    let me = &sh.cfg.agent_id;
    let stream = keys::event_stream(me);
    let xadd = CustomCommand::new_static("XADD", ClusterHash::FirstKey, false);
    let mut known: std::collections::HashSet<AgentId> = std::collections::HashSet::new();
    loop {
        let msg = tokio::select! {
            m = messages.recv() => m,
            _ = stop.wait_for(|s| *s) => return,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!("{n} events were received faster than they could be recorded and are lost");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some((source, name)) = keys::parse_event_channel(&msg.channel) else {
            continue;
        };
        if &source == me {
            let payload = value_text(&msg.value);
            let args: Vec<Value> = vec![
                stream.as_str().into(),
                "MAXLEN".into(),
                "~".into(),
                (keys::EVENT_STREAM_MAXLEN as i64).into(),
                "*".into(),
                keys::EVENT_ENTRY_NAME.into(),
                name.as_str().into(),
                keys::EVENT_ENTRY_PAYLOAD.into(),
                payload.as_str().into(),
            ];
            retry(&format!("cannot record event {name}"), || {
                sh.redis.custom::<Value, Value>(xadd.clone(), args.clone())
            })
            .await;
        } else if known.insert(source.clone()) {
            let _ = hints.send(source);
            // Wake the consumer so it starts following the new source now.
            let _ = reader.unblock_self(Some(ClientUnblockFlag::Timeout)).await;
        }
    }
}

struct Consumer {
    sh: Arc<Shared>,
    reader: Client,
    hints: mpsc::UnboundedReceiver<AgentId>,
    /// stream key -> last handled id
    cursors: BTreeMap<String, String>,
    since: String,
}

/// One entry of an XREAD reply.
struct Entry {
    stream: String,
    id: String,
    name: String,
    payload: String,
}

fn parse_xread(reply: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams: Vec<(Value, Value)> = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    Some((kv.pop()?, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.inner().into_iter().map(|(k, v)| (Value::from(k), v)).collect(),
        _ => Vec::new(),
    };
    for (stream, entries) in streams {
        let stream = value_text(&stream);
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop().unwrap_or(Value::Null);
            let id = value_text(&parts.pop().unwrap_or(Value::Null));
            let mut name = String::new();
            let mut payload = String::new();
            let pairs: Vec<Value> = match fields {
                Value::Array(f) => f,
                Value::Map(m) => m.inner().into_iter().flat_map(|(k, v)| [Value::from(k), v]).collect(),
                _ => Vec::new(),
            };
            for pair in pairs.chunks(2) {
                if let [k, v] = pair {
                    match value_text(k).as_str() {
                        keys::EVENT_ENTRY_NAME => name = value_text(v),
                        keys::EVENT_ENTRY_PAYLOAD => payload = value_text(v),
                        _ => {}
                    }
                }
            }
            out.push(Entry { stream: stream.clone(), id, name, payload });
        }
    }
    out
}

impl Consumer {
    async fn load(sh: Arc<Shared>, reader: Client, hints: mpsc::UnboundedReceiver<AgentId>) -> Self {
        let me = sh.cfg.agent_id.clone();
        let key = keys::event_cursors(&me);
        // First start ever: remember "now" (Redis' clock, the one stream ids use).
        let (secs, micros): (String, String) = retry("cannot read the Redis clock", || {
            sh.redis.custom(CustomCommand::new_static("TIME", ClusterHash::Random, false), Vec::<Value>::new())
        })
        .await;
        let now_ms = secs.parse::<u64>().unwrap_or(0) * 1000 + micros.parse::<u64>().unwrap_or(0) / 1000;
        let now = format!("{now_ms}-0");
        let _: bool = retry("cannot initialise event cursors", || {
            sh.redis.hsetnx(key.as_str(), keys::EVENT_CURSOR_SINCE, now.as_str())
        })
        .await;
        let stored: std::collections::HashMap<String, String> =
            retry("cannot read event cursors", || sh.redis.hgetall(key.as_str())).await;
        let since = stored.get(keys::EVENT_CURSOR_SINCE).cloned().unwrap_or(now);
        let mut cursors: BTreeMap<String, String> =
            stored.into_iter().filter(|(k, _)| k != keys::EVENT_CURSOR_SINCE).collect();
        for stream in scan_streams(&sh.redis).await {
            cursors.entry(stream).or_insert_with(|| since.clone());
        }
        cursors.entry(keys::event_stream(&me)).or_insert_with(|| since.clone());
        Consumer { sh, reader, hints, cursors, since }
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        let block_ms = self.sh.cfg.poll_interval.as_millis() as u64;
        let mut last_error = String::new();
        loop {
            if *stop.borrow() {
                return;
            }
            while let Ok(source) = self.hints.try_recv() {
                self.cursors.entry(keys::event_stream(&source)).or_insert_with(|| self.since.clone());
            }
            let (streams, ids): (Vec<String>, Vec<String>) =
                self.cursors.iter().map(|(k, v)| (k.clone(), v.clone())).unzip();
            let read = tokio::select! {
                r = self.reader.xread::<Value, _, _>(Some(READ_BATCH), Some(block_ms), streams, ids) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match read {
                Ok(reply) => {
                    last_error.clear();
                    for entry in parse_xread(reply) {
                        self.handle(&entry).await;
                        self.cursors.insert(entry.stream.clone(), entry.id.clone());
                        let key = keys::event_cursors(&self.sh.cfg.agent_id);
                        retry("cannot save the event cursor", || {
                            self.sh.redis.hset::<(), _, _>(key.as_str(), (entry.stream.as_str(), entry.id.as_str()))
                        })
                        .await;
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        tracing::warn!("cannot read events: {msg}; retrying");
                        last_error = msg;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn handle(&self, entry: &Entry) {
        let Some(source) = keys::parse_event_stream(&entry.stream) else {
            return;
        };
        let Some(events_dir) = &self.sh.cfg.events_dir else {
            return;
        };
        if !keys::is_event_name(&entry.name) {
            return;
        }
        let steps = actions::handler_steps(&events_dir.join(&entry.name));
        if steps.is_empty() {
            return;
        }
        run_handler(&self.sh, &source, &entry.name, &entry.payload, &steps).await;
    }
}

async fn scan_streams(redis: &Client) -> Vec<String> {
    let found =
        retry("cannot list event streams", || bus::scan(redis, keys::EVENT_STREAM_PATTERN, Some("stream"))).await;
    found.into_iter().filter(|k| keys::parse_event_stream(k).is_some()).collect()
}

/// Run an event's handler steps in order, stopping at the first failure (NS8 5.1).
async fn run_handler(sh: &Shared, source: &AgentId, name: &str, payload: &str, steps: &[(String, std::path::PathBuf)]) {
    let src = source.to_string();
    let mut status = ("completed", 0, String::new());
    for (step, path) in steps {
        let env = sh.child_env(&[
            (stepenv::AGENT_COMFD, "2"),
            (stepenv::AGENT_EVENT_NAME, name),
            (stepenv::AGENT_EVENT_SOURCE, &src),
        ]);
        let spec = StepSpec { path, cwd: &sh.cfg.state_dir, env, stdin: payload.as_bytes().to_vec(), comfd: false };
        let mut process =
            match StepProcess::spawn(spec, Arc::new(CancelHandle::default()), &sh.reaper, &sh.spawner).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("handler of {src}/event/{name}: step {step} skipped, it cannot be executed: {e}");
                    continue;
                }
            };
        let code = loop {
            match process.next().await {
                StepEvent::Stderr(line) => log_line(&line),
                StepEvent::Command(_) => {}
                StepEvent::Exited { code, stdout } => {
                    if !stdout.is_empty() {
                        log_line(&stdout);
                    }
                    break code;
                }
            }
        };
        status = ("completed", code, step.clone());
        if code != 0 {
            status.0 = "aborted";
            break;
        }
    }
    tracing::info!(
        "Handler of {src}/event/{name} exited with status \"{}\" ({}) at step {}",
        status.0,
        status.1,
        status.2
    );
}

fn log_line(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes);
    if !bytes.ends_with(b"\n") {
        let _ = err.write_all(b"\n");
    }
}
