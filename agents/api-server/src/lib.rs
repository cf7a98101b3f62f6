//! The api-server: NS8's HTTP and WebSocket API over the Redis bus.
//!
//! It talks to agents only through Redis: it pushes tasks on their queues, reads
//! their results and relays their progress. See the crate README and `openapi.json`.

pub mod audit;
pub mod authz;
pub mod basic_cache;
pub mod config;
pub mod crypt;
pub mod error;
pub mod event_audit;
pub mod hub;
pub use seal::keyfile;
pub mod net;
pub mod password;
pub mod routes;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod totp;
pub mod ws;

use std::net::SocketAddr;
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
    Ok(keyfile::load_or_create(file, 32, false)?)
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let secret = load_secret(&args.secret_file)?;
    let audit_key = keyfile::load_or_create(&args.audit_key_path(), 32, false)?;
    let data_key = keyfile::load_or_create(&args.data_key_path(), crypt::KEY_LEN, true)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
        _ => None,
    };
    let proxy_trust = match &args.proxy_token_file {
        Some(path) => net::ProxyTrust::with_token(args.trusted_proxies.clone(), &keyfile::load_or_create_token(path)?),
        None => net::ProxyTrust::from(args.trusted_proxies.clone()),
    };
    let redis_config = bus::RedisConfig::from_env(CLIENT_NAME)?;
    let redis = bus::connect_bounded_retrying(&redis_config, CLIENT_NAME, REDIS_TIMEOUT).await;
    let subscriber = bus::connect_subscriber_retrying(&redis_config, CLIENT_NAME, 4096).await;
    let audit =
        audit::Audit::new(redis.clone(), audit::AuditKey::new(audit_key), args.audit_head_path(), args.audit_maxlen)?;
    let state = Arc::new(AppState {
        audit,
        redis,
        trusted_proxies: proxy_trust,
        data_key: crypt::DataKey::new(&data_key),
        tokens: token::Tokens::new(&secret, args.token_lifetime, args.max_session),
        session_script: authz::session_script(),
        throttle: throttle::Throttle::new(),
        hashing: Semaphore::new(password::CONCURRENT_HASHES),
        issuer: args.issuer.clone(),
        redis_config,
        hub: hub::Hub::new(),
        basic_cache: basic_cache::BasicCache::new(),
    });
    // TOTP secrets stored in clear (before sealing, or from NS8) are sealed now; a
    // failure leaves them to be sealed at their next use.
    let sealing = state.clone();
    tokio::spawn(async move {
        match routes::secret::seal_clear_secrets(&sealing).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("sealed {n} TOTP secret(s) stored in clear"),
            Err(e) => tracing::warn!("TOTP secrets stored in clear are sealed at their next use: {}", e.message),
        }
    });
    state.hub.start(subscriber);
    // Each restore drill's report, from the cluster's event stream into the audit trail.
    event_audit::start(state.clone());
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
