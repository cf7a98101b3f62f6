//! Traefik's container, through `module-service` (the module's own services).

use std::time::Duration;

use crate::env::{Env, SERVICE};
use crate::fail::Failure;
use crate::sync;

/// Start Traefik (enabled: also at every start of the agent) if it is not running.
pub fn up(env: &Env) -> Result<(), Failure> {
    hostcmd::Cmd::new("module-service").args(["enable", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    sync::wait_ready(env, Duration::from_secs(30))
}

/// Restart Traefik so it reads a changed static configuration.
pub fn restart(env: &Env) -> Result<(), Failure> {
    hostcmd::Cmd::new("module-service")
        .args(["enable", "--no-start", SERVICE])
        .run()
        .map_err(|e| Failure::failed(e.to_string()))?;
    hostcmd::Cmd::new("module-service").args(["restart", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    sync::wait_ready(env, Duration::from_secs(30))
}

/// Run `f` with Traefik stopped, then start it and wait until it answers.
pub fn stopped(env: &Env, f: impl FnOnce() -> Result<(), Failure>) -> Result<(), Failure> {
    hostcmd::Cmd::new("module-service").args(["stop", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    let r = f();
    hostcmd::Cmd::new("module-service").args(["start", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    sync::wait_ready(env, Duration::from_secs(30))?;
    r
}
