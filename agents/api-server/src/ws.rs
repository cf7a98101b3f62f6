//! `/ws`: live task progress (NS8 7.5) and the steps' stderr lines (type `log`), only
//! for tasks the session may see.
//!
//! NS8 relays every agent's progress to every session. Here a message goes to a
//! session only if the task is the session's own or its action is allowed by the roles
//! the session holds on that agent; roles and revocation are re-checked every few
//! seconds, and the socket closes when the token expires or is revoked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fred::prelude::*;
use protocol::{AgentId, keys};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::authz::{self, Session};
use crate::error::{ApiError, ApiResult, ok};
use crate::state::{AppState, Caller, NO_URL_TOKENS, Shared};
use crate::token::{Claims, TokenError};

/// Why a socket is not authorized; answered in an `authorize-error` message, except
/// [`Closed`](AuthorizeError::Closed).
#[derive(Debug, thiserror::Error)]
enum AuthorizeError {
    #[error("no authorize message within 10 s")]
    Timeout,
    /// The client closed the socket or it failed: nobody to answer.
    #[error("the socket closed before authorizing")]
    Closed,
    #[error("invalid JSON message: {0}")]
    Json(serde_json::Error),
    #[error("the first message must be {{\"action\":\"authorize\",\"payload\":{{\"jwt\":...}}}}")]
    NotAuthorize,
    #[error("authorize: payload.jwt missing")]
    NoJwt,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{}", .0.message)]
    Refused(ApiError),
}

/// How long a session's roles are trusted before they are read again.
const RECHECK: Duration = Duration::from_secs(5);
const AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a `/ws` ticket can wait for its use.
pub const TICKET_TTL_SECS: i64 = 30;

fn ticket_key(ticket: &str) -> String {
    let digest = Sha256::digest(ticket.as_bytes());
    keys::ws_ticket(&digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// `POST /api/ws-ticket`: a one-time ticket opening `/ws?ticket=...` with the caller's
/// session, so that no token travels in a URL. Any valid session may ask (the ticket
/// gives nothing the token does not); it is used once, from the same address, within
/// [`TICKET_TTL_SECS`].
pub async fn ticket(State(s): State<Shared>, caller: Caller) -> ApiResult {
    let session = s.session(&caller, None).await?;
    let ticket = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let value = json!({"claims": session.claims, "source": session.source.to_string()}).to_string();
    let _: Option<String> =
        s.redis.set(ticket_key(&ticket), value, Some(Expiration::EX(TICKET_TTL_SECS)), None, false).await?;
    Ok(ok(json!({"ticket": ticket, "expires_in": TICKET_TTL_SECS})))
}

/// Take a ticket (it cannot be used twice) and check the session it was issued for.
async fn redeem(s: &AppState, ticket: &str, source: IpAddr) -> Result<Session, ApiError> {
    let unknown = || {
        ApiError::unauthorized(format!(
            "unknown or already used /ws ticket: a ticket opens one socket, within {TICKET_TTL_SECS} s; get a new one from POST /api/ws-ticket"
        ))
    };
    if ticket.len() > 128 {
        return Err(unknown());
    }
    let stored: Option<String> = s.redis.getdel(ticket_key(ticket)).await?;
    let stored: Value = stored.and_then(|v| serde_json::from_str(&v).ok()).ok_or_else(unknown)?;
    if stored["source"].as_str() != Some(source.to_string().as_str()) {
        return Err(ApiError::unauthorized("this /ws ticket was issued to another address: get one from here"));
    }
    let claims: Claims = serde_json::from_value(stored["claims"].clone()).map_err(|_| unknown())?;
    if claims.exp <= crate::token::now() {
        return Err(ApiError::unauthorized("the session token has expired: log in again"));
    }
    authz::check(&s.redis, &s.session_script, claims, source, None).await
}

pub async fn handler(ws: WebSocketUpgrade, State(s): State<Shared>, caller: Caller) -> Response {
    let source = caller.source;
    if caller.query_param("jwt").is_some() {
        return ApiError::unauthorized(NO_URL_TOKENS).into_response();
    }
    let ready = match caller.query_param("ticket") {
        None => None,
        Some(t) => match redeem(&s, t, source).await {
            Ok(session) => Some(session),
            Err(e) => return e.into_response(),
        },
    };
    ws.max_message_size(64 * 1024).on_upgrade(move |socket| session(s, socket, source, ready))
}

fn message(kind: &str, payload: Value) -> Message {
    Message::Text(json!({"type": kind, "payload": payload}).to_string().into())
}

async fn authorize(s: &Shared, socket: &mut WebSocket, source: IpAddr) -> Result<Session, AuthorizeError> {
    let deadline = Instant::now() + AUTHORIZE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, socket.recv()).await {
            Err(_) => return Err(AuthorizeError::Timeout),
            Ok(None) | Ok(Some(Err(_))) => return Err(AuthorizeError::Closed),
            Ok(Some(Ok(m))) => m,
        };
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).map_err(AuthorizeError::Json)?;
        if v.get("action").and_then(Value::as_str) != Some("authorize") {
            return Err(AuthorizeError::NotAuthorize);
        }
        let jwt = v.pointer("/payload/jwt").and_then(Value::as_str).ok_or(AuthorizeError::NoJwt)?;
        let claims = s.tokens.verify(jwt)?;
        return authz::check(&s.redis, &s.session_script, claims, source, None).await.map_err(AuthorizeError::Refused);
    }
}

async fn session(s: Shared, mut socket: WebSocket, source: IpAddr, ready: Option<Session>) {
    let authorized = match ready {
        Some(session) => Ok(session),
        None => authorize(&s, &mut socket, source).await,
    };
    let session = match authorized {
        Ok(session) => session,
        Err(reason) => {
            if !matches!(reason, AuthorizeError::Closed) {
                let _ = socket.send(message("authorize-error", json!(reason.to_string()))).await;
            }
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let mut rx = s.hub.subscribe();
    let expires = std::time::UNIX_EPOCH + Duration::from_secs(session.claims.exp);
    let until_expiry = expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    let mut roles: HashMap<AgentId, (Session, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut expiry => {
                let _ = socket.send(message("authorize-error", json!("the session token has expired"))).await;
                break;
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Text(text))) => {
                    let action = serde_json::from_str::<Value>(&text).ok()
                        .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or_default();
                    let reply = format!("unsupported action {action:?}: this server streams task progress and step logs only");
                    let _ = socket.send(message("error", json!(reply))).await;
                }
                Some(Ok(_)) => {}
            },
            relayed = rx.recv() => {
                let (channel, payload) = match relayed {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let Some((agent, task, log)) = keys::parse_progress_channel(&channel) else { continue };
                let fresh = roles.get(&agent).is_some_and(|(_, at)| at.elapsed() < RECHECK);
                if !fresh {
                    match authz::check(&s.redis, &s.session_script, session.claims.clone(), source, Some(agent.clone())).await {
                        Ok(sess) => { roles.insert(agent.clone(), (sess, Instant::now())); }
                        Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => continue,
                        Err(e) => {
                            let _ = socket.send(message("authorize-error", json!(e.message))).await;
                            break;
                        }
                    }
                }
                let Some((sess, _)) = roles.get(&agent) else { continue };
                let Some((action, user)) = s.hub.owner(&s.redis, &agent, &task).await else { continue };
                if !sess.may_see_task(&action, &user) {
                    continue;
                }
                let timestamp = protocol::time::rfc3339(std::time::SystemTime::now());
                let out = if log {
                    // A step's stderr line: named after the task's progress channel.
                    let name = keys::progress_channel(&agent, &task);
                    json!({"name": name, "payload": {"line": payload}, "timestamp": timestamp, "type": "log"})
                } else {
                    let payload: Value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
                    json!({"name": channel, "payload": payload, "timestamp": timestamp, "type": "task"})
                };
                if socket.send(Message::Text(out.to_string().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
