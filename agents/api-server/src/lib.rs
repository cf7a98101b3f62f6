//! The api-server: NS8's HTTP and WebSocket API over the Redis bus.
//!
//! It talks to agents only through Redis: it pushes tasks on their queues, reads
//! their results and relays their progress. See the crate README and `openapi.json`.

pub mod audit;
pub mod authz;
pub mod config;
pub mod error;
pub mod net;
pub mod password;
pub mod routes;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod totp;
pub mod ws;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::Semaphore;

use crate::config::ServeArgs;
use crate::state::AppState;

/// Name of the server's Redis connections (`CLIENT LIST`).
pub const CLIENT_NAME: &str = "api-server";

/// How long a request waits for Redis before it is answered 503.
pub const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The Redis ACL rules of the api-server's user (`protocol::acl::API_SERVER`, where
/// every user's rules are). Tested in tests/redis_acl.rs.
pub const REDIS_ACL_RULES: &str = protocol::acl::API_SERVER;

/// The token signing key: `SECRET` (NS8), else the key file, created if missing.
pub fn load_secret(file: &Path) -> Result<Vec<u8>> {
    if let Ok(s) = std::env::var("SECRET")
        && !s.is_empty()
    {
        return Ok(s.into_bytes());
    }
    match std::fs::read(file) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => anyhow::bail!("the key file {} is shorter than 32 bytes", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read the key file {}", file.display())),
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = password::generate(64).into_bytes();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create the key file {}", file.display()))?;
    f.write_all(&key)?;
    Ok(key)
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let secret = load_secret(&args.secret_file)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
        _ => None,
    };
    let redis_config = bus::RedisConfig::from_env(CLIENT_NAME)?;
    let redis = bus::connect_bounded_retrying(&redis_config, CLIENT_NAME, REDIS_TIMEOUT).await;
    let subscriber = bus::connect_subscriber_retrying(&redis_config, CLIENT_NAME, 4096).await;
    let state = Arc::new(AppState {
        audit: audit::Audit::new(redis.clone(), args.audit_maxlen),
        redis,
        tokens: token::Tokens::new(&secret, args.token_lifetime, args.max_session),
        session_script: authz::session_script(),
        throttle: throttle::Throttle::new(),
        hashing: Semaphore::new(password::CONCURRENT_HASHES),
        issuer: args.issuer.clone(),
        redis_config,
        hub: ws::Hub::new(),
        basic_cache: routes::login::BasicCache::new(),
    });
    ws::Hub::start(&state, subscriber);
    let app = routes::router(state, args.body_limit).into_make_service_with_connect_info::<SocketAddr>();
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = tcp.local_addr()?;
    match tls {
        Some(config) => {
            tracing::info!("listening on https://{local}");
            // tap_io gives the listener axum's `ConnectInfo<SocketAddr>` support.
            let listener = axum::serve::ListenerExt::tap_io(tls::TlsListener::new(tcp, config)?, |_| {});
            axum::serve(listener, app).with_graceful_shutdown(shutdown()).await?;
        }
        None => {
            tracing::info!("listening on http://{local}");
            axum::serve(tcp, app).with_graceful_shutdown(shutdown()).await?;
        }
    }
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}
