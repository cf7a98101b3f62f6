//! The engine shared by the cluster, node and module agents.
//!
//! An agent pops tasks from `<agent-id>/tasks`, runs the action's steps (executables
//! found in the action roots, or native Rust actions), stores the result under
//! `task/<agent-id>/<task-id>/*`, publishes progress, and runs event handlers. It is
//! wire-compatible with NS8's Go agent (reference sections 3-5) and adds two guarantees
//! NS8 lacks: no task is lost when the agent dies ([`run`]), and no event is lost while
//! it is down ([`events`](crate::events)).
//!
//! Layout: [`run`] is the main loop (`agent.rs`); `runner.rs` runs one task;
//! `step.rs` runs one step process; `actions.rs` finds steps; `validate.rs` checks
//! JSON Schemas; `progress.rs` weights progress; `events.rs` records and replays events;
//! `native.rs` is the native-action API; `call.rs` typed sub-task calls; [`saga`]
//! multi-step operations with an undo per step, journaled in Redis.

mod actions;
mod agent;
mod call;
mod config;
mod events;
mod main_helper;
mod native;
mod progress;
mod redis_ops;
mod runner;
pub mod saga;
mod step;
mod validate;

pub use agent::{AgentError, run};
pub use call::{AGENT_GONE, CallError};
pub use config::{AgentArgs, AgentConfig, ConfigError};
pub use main_helper::{AgentBinary, EXIT_CONFIG, EXIT_FAILURE};
pub use native::{ActionContext, ActionError, NativeActions};

/// Resolves on SIGTERM, SIGUSR1 (NS8's graceful stop) or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut usr1 = signal(SignalKind::user_defined1()).expect("cannot install the SIGUSR1 handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = usr1.recv() => "SIGUSR1",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{which} received: finishing running tasks, then exiting");
}
