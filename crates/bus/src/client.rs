//! Submitting tasks and waiting for their results, as NS8's Python `agent.tasks` does
//! over Redis: subscribe to the progress channel before the push, stop at a terminal
//! status, then read the result keys; a poller covers a missed Pub/Sub message.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::client::ClientKillType;
use protocol::task::{Progress, Task, TaskResult};
use protocol::{AgentId, keys};

use crate::config::RedisConfig;
use crate::connect::{connect, connect_subscriber};
use crate::error::BusError;

/// How often the waiting side re-reads the result keys in case the final progress
/// message was missed (Redis restart, slow subscriber).
const RESULT_POLL: Duration = Duration::from_secs(1);

/// NS8's liveness rule, made unspoofable: an agent is alive when a connection named
/// after it, and authenticated as its own ACL user, has been active within
/// `max_idle_secs` (the agent's blocking pop keeps it below 5 s). NS8 trusts the name
/// alone, which any client may set (`CLIENT SETNAME cluster`).
pub async fn agent_is_alive(client: &Client, agent: &AgentId, max_idle_secs: u64) -> Result<bool, BusError> {
    let list: String = client.client_list::<String, String>(Some(ClientKillType::Normal), None).await?;
    Ok(list_has_live_agent(&list, agent, max_idle_secs))
}

/// [`agent_is_alive`] over the text of `CLIENT LIST`.
pub fn list_has_live_agent(list: &str, agent: &AgentId, max_idle_secs: u64) -> bool {
    let name = agent.to_string();
    list.lines().any(|line| {
        let (mut named, mut own_user) = (false, false);
        let mut idle = u64::MAX;
        for field in line.split(' ') {
            if let Some(n) = field.strip_prefix("name=") {
                named = n == name;
            } else if let Some(u) = field.strip_prefix("user=") {
                own_user = u == name;
            } else if let Some(i) = field.strip_prefix("idle=") {
                idle = i.parse().unwrap_or(u64::MAX);
            }
        }
        named && own_user && idle <= max_idle_secs
    })
}

fn ensure_id(task: &mut Task) {
    if task.id.is_empty() {
        task.id = uuid::Uuid::new_v4().to_string();
    }
}

/// `LPUSH` the task on the agent's queue, giving it an id first if it has none (for
/// a caller that does not wait for the result).
pub async fn push_task(client: &Client, agent: &AgentId, task: &mut Task) -> Result<(), BusError> {
    ensure_id(task);
    // Strings and JSON values only: serializing cannot fail.
    let json = serde_json::to_string(task).expect("a Task always serializes");
    let _: i64 = client.lpush(keys::tasks(agent), json).await?;
    Ok(())
}

pub struct TaskClient {
    client: Client,
    subscriber: SubscriberClient,
}

impl TaskClient {
    pub async fn connect(cfg: &RedisConfig, name: &str) -> Result<Self, BusError> {
        let client = connect(cfg, name).await?;
        // A task's progress is a handful of messages; the margin covers bursts of others.
        let subscriber = connect_subscriber(cfg, name, 1024).await?;
        Ok(TaskClient { client, subscriber })
    }

    pub fn redis(&self) -> &Client {
        &self.client
    }

    pub async fn ensure_alive(&self, agent: &AgentId, max_idle_secs: u64) -> Result<(), BusError> {
        if agent_is_alive(&self.client, agent, max_idle_secs).await? {
            Ok(())
        } else {
            Err(BusError::AgentNotAlive(agent.clone(), max_idle_secs))
        }
    }

    /// `LPUSH` the task on the agent's queue, giving it an id first if it has none.
    pub async fn push(&self, agent: &AgentId, task: &mut Task) -> Result<(), BusError> {
        push_task(&self.client, agent, task).await
    }

    /// The stored result, or `None` while the task has not finished.
    pub async fn result(&self, agent: &AgentId, task_id: &str) -> Result<Option<TaskResult>, BusError> {
        let (output, error, code): (Option<String>, Option<String>, Option<String>) = self
            .client
            .mget(vec![
                keys::task_output(agent, task_id),
                keys::task_error(agent, task_id),
                keys::task_exit_code(agent, task_id),
            ])
            .await?;
        let Some(code) = code else { return Ok(None) };
        let exit_code = code
            .trim()
            .parse()
            .map_err(|_| BusError::BadResult { task: task_id.to_owned(), detail: format!("exit_code is {code:?}") })?;
        Ok(Some(TaskResult::from_stored(output.as_deref().unwrap_or(""), error.unwrap_or_default(), exit_code)))
    }

    /// Push a task and wait for its result, calling `on_progress` for every progress
    /// message. Waits as long as the task runs: there is no task timeout in the protocol.
    pub async fn run(
        &self,
        agent: &AgentId,
        task: &mut Task,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<TaskResult, BusError> {
        // The id names the progress channel, which is subscribed before the push.
        ensure_id(task);
        let channel = keys::progress_channel(agent, &task.id);
        let mut rx = self.subscriber.message_rx();
        self.subscriber.subscribe(channel.as_str()).await?;
        let outcome = async {
            self.push(agent, task).await?;
            let mut poll = tokio::time::interval(RESULT_POLL);
            poll.tick().await;
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Ok(msg) if *msg.channel == *channel => {
                            let progress = msg.value.as_str().and_then(|s| serde_json::from_str::<Progress>(s.as_ref()).ok());
                            if let Some(p) = progress {
                                on_progress(p);
                                if p.status.is_terminal()
                                    && let Some(r) = self.result(agent, &task.id).await?
                                {
                                    return Ok(r);
                                }
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            return Err(BusError::Redis(fred::error::Error::new(
                                fred::error::ErrorKind::Canceled,
                                "subscriber connection closed",
                            )));
                        }
                    },
                    _ = poll.tick() => {
                        if let Some(r) = self.result(agent, &task.id).await? {
                            return Ok(r);
                        }
                    }
                }
            }
        }
        .await;
        let _ = self.subscriber.unsubscribe(channel.as_str()).await;
        outcome
    }

    pub async fn quit(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.client.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_of_the_agents_own_user_counts() {
        let agent = AgentId::Node(1);
        let line = |name: &str, user: &str, idle: u32| {
            format!(
                "id=7 addr=/tmp/r.sock:0 laddr=/tmp/r.sock:0 fd=9 name={name} age=3 idle={idle} flags=b user={user} redir=-1"
            )
        };
        assert!(list_has_live_agent(&line("node/1", "node/1", 0), &agent, 8));
        // A module that names its connection after the node is not the node.
        assert!(!list_has_live_agent(&line("node/1", "module/evil1", 0), &agent, 8));
        assert!(!list_has_live_agent(&line("node/1", "default", 0), &agent, 8));
        assert!(!list_has_live_agent(&line("node/1", "node/1", 30), &agent, 8));
        assert!(!list_has_live_agent(&line("node/11", "node/11", 0), &agent, 8));
    }
}
