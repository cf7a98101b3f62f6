//! Shared helpers of the module agent's integration tests: testkit's fixture and
//! clients, with this crate's binary.

#![allow(dead_code)]

use std::path::Path;

use testkit::{AgentProcess, AgentTree, RedisServer};

// Each test file uses its own part of it.
#[allow(unused_imports)]
pub use testkit::agent::{Fixture, PATIENCE, client, eventually, run, wait_ready};

pub const BIN: &str = env!("CARGO_BIN_EXE_module-agent");

pub fn spawn(id: &str, tree: &AgentTree, redis: &RedisServer, env: &[(&str, &str)]) -> AgentProcess {
    AgentProcess::spawn(Path::new(BIN), id, tree, redis, env).expect("spawn module-agent")
}

/// The module agent `id` on a private Redis, ready for tasks.
pub async fn start(id: &str, env: &[(&str, &str)]) -> Fixture {
    Fixture::start(Path::new(BIN), id, env).await
}
