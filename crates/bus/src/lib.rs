//! Redis connections for agents and clients, configured like NS8.
//!
//! * [`RedisConfig::from_env`] reads `REDIS_ADDRESS`, `REDIS_USER`, `REDIS_PASSWORD`.
//! * Every connection is named after its agent (`CLIENT SETNAME`), at connect time and
//!   after every reconnect: NS8's liveness check looks for that name in `CLIENT LIST`.
//! * Connections come back by themselves with exponential back-off after Redis restarts.
//! * [`TaskClient`] submits tasks and waits for their results (what `api-cli` and the
//!   tests use).
//!
//! This file only names the modules and what they export: the modules use each other,
//! never this root, so no two depend on each other.

mod client;
mod commands;
pub mod config;
mod connect;
mod error;
pub mod functions;
pub mod grants;

pub use client::{TaskClient, agent_is_alive, list_has_live_agent, push_task};
pub use commands::{blocking_move, scan};
pub use config::{Address, RedisConfig};
pub use connect::{
    check_credentials, connect, connect_blocking_retrying, connect_bounded_retrying, connect_retrying,
    connect_subscriber, connect_subscriber_retrying, retry,
};
pub use error::BusError;
pub use fred;
