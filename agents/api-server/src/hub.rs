//! The relay of task progress from Redis to the `/ws` sessions, and who each task
//! belongs to (what a session may see is decided in `ws`).

use std::collections::HashMap;
use std::sync::Mutex;

use fred::prelude::*;
use protocol::{AgentId, keys};
use tokio::sync::broadcast;

use crate::authz::task_owner;

/// Progress messages from Redis, fanned out to the sessions.
pub struct Hub {
    tx: broadcast::Sender<(String, String)>,
    /// `(agent, task id) -> (action, user)`, read once per task from its context.
    owners: Mutex<HashMap<(AgentId, String), (String, String)>>,
}

impl Hub {
    pub fn new() -> Self {
        Hub { tx: broadcast::channel(4096).0, owners: Mutex::new(HashMap::new()) }
    }

    /// Relay every progress channel from Redis to the sessions, forever (the
    /// subscriber reconnects and resubscribes by itself).
    pub fn start(&self, subscriber: fred::clients::SubscriberClient) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut rx = subscriber.message_rx();
            if let Err(e) = subscriber.psubscribe(keys::PROGRESS_PATTERN_ALL).await {
                tracing::error!("cannot subscribe to task progress: {e}");
            }
            loop {
                match rx.recv().await {
                    Ok(msg) => {
                        let payload = msg.value.as_string().unwrap_or_default();
                        let _ = tx.send((msg.channel.to_string(), payload));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("progress relay lagged: {n} messages dropped")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// The messages relayed: `(channel, payload)`.
    pub fn subscribe(&self) -> broadcast::Receiver<(String, String)> {
        self.tx.subscribe()
    }

    /// `(action, user)` of a task, from its stored context.
    pub async fn owner(&self, redis: &Client, agent: &AgentId, task: &str) -> Option<(String, String)> {
        let key = (agent.clone(), task.to_owned());
        if let Some(o) = self.owners.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Some(o.clone());
        }
        let context: Option<String> = redis.get(keys::task_context(agent, task)).await.ok()?;
        let context = context?;
        let owner = task_owner(Some(&context));
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.len() > 10_000 {
            owners.clear();
        }
        owners.insert(key, owner.clone());
        Some(owner)
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}
