//! Work that blocks (host programs, copies, `/proc` scans, file trees) leaves the
//! agent's one thread for tokio's blocking pool, as one function per step.

/// Run `f` on the blocking pool; a lost thread (the runtime shutting down) is `E`'s.
pub async fn run<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<tokio::task::JoinError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// For the crash tests: when `NS8RS_FAILPOINT` names this point, log that it was
/// reached and wait there (on a blocking thread) for the test to kill the agent. Unset
/// in production; nothing else reads it.
pub fn failpoint(name: &str) {
    if std::env::var("NS8RS_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!("failpoint {name} reached: waiting to be killed");
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
}
