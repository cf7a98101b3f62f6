//! The bus's one error type.

use protocol::AgentId;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid REDIS_ADDRESS {0:?}: expected host:port, or the path of a Unix socket")]
    Address(String),
    #[error("cannot connect to Redis at {address} as user {user:?}: {source}")]
    Connect { address: String, user: String, source: fred::error::Error },
    #[error("redis error: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("agent {0} is not running: no Redis connection named \"{0}\" was active in the last {1} s")]
    AgentNotAlive(AgentId, u64),
    #[error("stored result of task {task} is malformed: {detail}")]
    BadResult { task: String, detail: String },
}
