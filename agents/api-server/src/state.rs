//! What every handler shares.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::AgentId;
use tokio::sync::Semaphore;

use crate::audit::{Audit, Entry};
use crate::authz::{self, Session};
use crate::basic_cache::BasicCache;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::throttle::Throttle;
use crate::token::Tokens;

pub struct AppState {
    pub redis: Client,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: crate::net::ProxyTrust,
    /// Seals the secrets stored in Redis (TOTP secrets).
    pub data_key: crate::crypt::DataKey,
    pub tokens: Tokens,
    pub session_script: Script,
    pub throttle: Throttle,
    pub audit: Audit,
    /// Bounds concurrent argon2 computations (memory and CPU).
    pub hashing: Semaphore,
    pub issuer: String,
    pub redis_config: bus::RedisConfig,
    pub hub: Hub,
    pub basic_cache: BasicCache,
}

pub type Shared = Arc<AppState>;

/// Who sent a request: its source address (see [`crate::net::client_addr`]), headers
/// and query string. Every handler takes one.
pub struct Caller {
    pub source: IpAddr,
    pub headers: HeaderMap,
    pub query: Option<String>,
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        // The server always serves with connect info; without it, trust nothing.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(Caller {
            source: crate::net::client_addr(peer, &parts.headers, &state.trusted_proxies),
            headers: parts.headers.clone(),
            query: parts.uri.query().map(str::to_owned),
        })
    }
}

/// Why a token in a URL is refused, for the clients that still send NS8's `?jwt=`.
pub const NO_URL_TOKENS: &str = "tokens in URLs are not accepted (URLs end up in proxy and access logs): \
     send \"Authorization: Bearer <token>\"; for /ws, a ticket from POST /api/ws-ticket or an authorize message";

impl Caller {
    /// The bearer token, from `Authorization: Bearer ...` only.
    pub fn bearer(&self) -> Option<String> {
        let v = self.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
        let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
        Some(t.trim().to_owned())
    }

    /// A query parameter, raw (tickets and tokens are URL-safe as they are).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

impl AppState {
    /// Authenticate a request and load the caller's patterns on `agent`.
    pub async fn session(&self, caller: &Caller, agent: Option<AgentId>) -> Result<Session, ApiError> {
        let source = caller.source;
        let token = caller.bearer().ok_or_else(|| {
            if caller.query_param("jwt").is_some() {
                return ApiError::unauthorized(NO_URL_TOKENS);
            }
            ApiError::unauthorized(
                "authentication required: send \"Authorization: Bearer <token>\" (POST /api/login gives one)",
            )
        })?;
        let claims = self.tokens.verify(&token).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        authz::check(&self.redis, &self.session_script, claims, source, agent).await
    }

    /// Record an audit entry. A lost audit record must not go unnoticed, but a Redis
    /// outage already fails the request that caused it.
    pub async fn audit(&self, entry: Entry) {
        if let Err(e) = self.audit.append(entry.clone()).await {
            tracing::error!(action = %entry.action, user = %entry.user, "cannot write the audit record: {e}");
        }
    }

    pub fn audit_entry(&self, user: &str, source: IpAddr, action: &str) -> Entry {
        Entry { user: user.to_owned(), source: source.to_string(), action: action.to_owned(), ..Default::default() }
    }
}
