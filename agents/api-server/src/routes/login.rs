//! Login, logout, token refresh, and HTTP Basic checks for Traefik's forwardAuth.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use fred::prelude::*;
use protocol::keys;
use serde::Deserialize;
use serde_json::json;

use super::extract::{Params, bounded, json_response, parse_body};
use crate::authz::{self, Subject};
use crate::error::{ApiError, ApiResult, ok};
use crate::state::{AppState, Caller, Shared};
use crate::throttle::Settle;
use crate::token::now;
use crate::{password, totp};

use super::secret;

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
    #[serde(default)]
    otp: Option<String>,
}

/// Generic on purpose: whether the user exists is nobody's business.
const BAD_CREDENTIALS: &str = "wrong user name or password";

/// What a successful password check learnt about the account.
pub struct Account {
    pub subject: Subject,
    /// TOTP secret, in clear, when 2FA is enabled.
    pub totp_secret: Option<String>,
    pub networks: String,
    /// The user's `token_generation` read with the password hash that was checked: a
    /// token issued for this login belongs to it.
    pub generation: u64,
}

/// Check a user name and password. Human users: argon2id against `user/<name>`; agent
/// identities (`cluster`, `node/<N>`, `module/<id>`): their Redis ACL credentials.
/// `Ok(None)` for wrong credentials. Throttling is the caller's.
pub async fn verify_credentials(s: &AppState, username: &str, password: &str) -> Result<Option<Account>, ApiError> {
    let subject = Subject::parse(username);
    match &subject {
        Subject::Agent(_) => {
            if !bus::check_credentials(&s.redis_config, username, password).await? {
                return Ok(None);
            }
            let network: Option<String> = s.redis.get(keys::CLUSTER_NETWORK).await?;
            Ok(Some(Account { subject, totp_secret: None, networks: network.unwrap_or_default(), generation: 0 }))
        }
        Subject::User(name) => {
            let valid_name = authz::valid_user_name(name);
            let profile: HashMap<String, String> =
                if valid_name { s.redis.hgetall(keys::user(name)).await? } else { HashMap::new() };
            let stored = profile.get("password_hash").cloned();
            let _permit = s.hashing.acquire().await.map_err(|_| ApiError::unauthorized(BAD_CREDENTIALS))?;
            let pw = password.to_owned();
            // A missing user still costs one hash: answers take the same time.
            let stored_or_dummy = stored.clone().unwrap_or_else(|| password::dummy_hash().to_owned());
            let matches =
                tokio::task::spawn_blocking(move || password::verify(&pw, &stored_or_dummy)).await.unwrap_or(false);
            if !matches || stored.is_none() {
                return Ok(None);
            }
            let totp_secret = match profile.get("2fa").filter(|s| !s.is_empty()) {
                None => None,
                Some(stored) => Some(secret::open_secret(s, name, stored).await?),
            };
            let networks = profile.get("allowed_networks").cloned().unwrap_or_default();
            let generation = profile.get("token_generation").and_then(|g| g.parse().ok()).unwrap_or(0);
            Ok(Some(Account { subject, totp_secret, networks, generation }))
        }
    }
}

fn may_connect(account: &Account, source: IpAddr) -> bool {
    authz::may_connect(&account.subject, &account.networks, source)
}

/// Check a second factor: a TOTP code (each accepted once) or a recovery code
/// (consumed). Returns a reason on failure.
pub async fn check_second_factor(
    s: &AppState,
    user: &str,
    secret: &str,
    otp: &str,
) -> Result<Result<(), &'static str>, ApiError> {
    let otp = otp.trim();
    if totp::looks_like_recovery_code(otp) {
        let key = keys::user_recovery_codes(user);
        let mut removed: i64 = s.redis.srem(&key, s.data_key.recovery_hash(user, otp)).await?;
        if removed == 0 {
            // Codes handed out before they were hashed with a key.
            removed = s.redis.srem(&key, totp::legacy_recovery_hash(otp)).await?;
        }
        return Ok(if removed == 1 { Ok(()) } else { Err("wrong OTP or recovery code") });
    }
    let Some(step) = totp::check(secret, otp, now()) else { return Ok(Err("wrong OTP or recovery code")) };
    let fresh: Option<String> = s
        .redis
        .set(keys::otp_used(user, &step.to_string()), "1", Some(Expiration::EX(120)), Some(SetOptions::NX), false)
        .await?;
    Ok(if fresh.is_some() { Ok(()) } else { Err("this OTP was already used: wait for the next one") })
}

pub fn token_response(token: &str, exp: u64) -> Response {
    json_response(StatusCode::OK, json!({"code": 200, "expire": expire_text(exp), "token": token}))
}

pub fn expire_text(exp: u64) -> String {
    protocol::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(exp))
}

/// 429 for an attempt the throttle refused.
fn throttled(wait_ms: u64, message: &str) -> ApiError {
    let secs = wait_ms.div_ceil(1000);
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("{message}: try again in {secs} s"));
    e.retry_after = Some(secs);
    e
}

pub async fn login(State(s): State<Shared>, caller: Caller, body: Bytes) -> ApiResult {
    let source = caller.source;
    let req: LoginRequest = parse_body(&body)?;
    bounded("username", &req.username, 128)?;
    bounded("password", &req.password, password::MAX_LENGTH)?;
    if let Some(otp) = &req.otp {
        bounded("otp", otp, 32)?;
    }
    // Counted before anything is checked: a burst in parallel is counted one by one.
    let wait = s.throttle.attempt(&s.redis, source, &req.username).await?;
    if wait > 0 {
        let mut entry = s.audit_entry(&req.username, source, "login-fail");
        entry.data = json!({"reason": "throttled"}).to_string();
        s.audit(entry).await;
        return Err(throttled(wait, "too many failed logins"));
    }
    let fail = |reason: &'static str, message: &'static str| {
        let s = s.clone();
        let user = req.username.clone();
        async move {
            let mut entry = s.audit_entry(&user, source, "login-fail");
            entry.data = json!({"reason": reason}).to_string();
            s.audit(entry).await;
            Err::<Response, ApiError>(ApiError::unauthorized(message))
        }
    };
    // Redis's `default` user is nobody's identity.
    if req.username.is_empty() || req.username == "default" {
        return fail("bad credentials", BAD_CREDENTIALS).await;
    }
    let Some(account) = verify_credentials(&s, &req.username, &req.password).await? else {
        return fail("bad credentials", BAD_CREDENTIALS).await;
    };
    if !may_connect(&account, source) {
        return fail("source address not allowed", "this account may not log in from your address").await;
    }
    let mut two_fa = false;
    if let Some(secret) = &account.totp_secret {
        let Some(otp) = req.otp.as_deref().filter(|o| !o.trim().is_empty()) else {
            // The password was right: not a guess, so not counted; but recorded.
            s.throttle.settle(&s.redis, source, &req.username, Settle::Forgive).await?;
            let mut entry = s.audit_entry(&req.username, source, "login-fail");
            entry.data = json!({"reason": "OTP required"}).to_string();
            s.audit(entry).await;
            return Err(ApiError::unauthorized(
                "OTP required: this account has two-factor authentication enabled; send the code in \"otp\"",
            ));
        };
        if let Err(reason) = check_second_factor(&s, &req.username, secret, otp).await? {
            return fail(reason, reason).await;
        }
        two_fa = true;
    }
    s.throttle.settle(&s.redis, source, &req.username, Settle::Success).await?;
    let now = now();
    let (token, claims) = s.tokens.issue(&account.subject.name(), two_fa, account.generation, now, now);
    let mut entry = s.audit_entry(&account.subject.name(), source, "login-ok");
    entry.data = json!({"2fa": two_fa}).to_string();
    s.audit(entry).await;
    tracing::info!(user = %account.subject.name(), %source, two_fa, "[AUTH] login-ok");
    Ok(token_response(&token, claims.exp))
}

/// Prove again who one is before a change to one's credentials (password, 2FA): the
/// current password and, when 2FA is on, a current TOTP code or a recovery code
/// (`otp_field` names the body field it came in). Throttled like a login.
pub async fn reauthenticate(
    s: &AppState,
    source: IpAddr,
    user: &str,
    change: &str,
    current_password: Option<&str>,
    otp: Option<&str>,
    otp_field: &str,
) -> Result<Account, ApiError> {
    let refuse = |reason: String| async move {
        let mut entry = s.audit_entry(user, source, "reauth-fail");
        entry.data = json!({"change": change, "reason": reason}).to_string();
        s.audit(entry).await;
        ApiError::forbidden(reason)
    };
    let Some(current) = current_password.filter(|p| !p.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "field \"current_password\" missing: {change} needs the account's current password"
        )));
    };
    let wait = s.throttle.attempt(&s.redis, source, user).await?;
    if wait > 0 {
        refuse("throttled".into()).await;
        return Err(throttled(wait, "too many failed attempts"));
    }
    let Some(account) = verify_credentials(s, user, current).await? else {
        return Err(refuse("field \"current_password\": wrong password".into()).await);
    };
    if let Some(secret) = &account.totp_secret {
        let Some(code) = otp.map(str::trim).filter(|o| !o.is_empty()) else {
            s.throttle.settle(&s.redis, source, user, Settle::Forgive).await?;
            return Err(refuse(format!(
                "field \"{otp_field}\" missing: two-factor authentication is enabled on this account; send a current code or a recovery code"
            ))
            .await);
        };
        if let Err(reason) = check_second_factor(s, user, secret, code).await? {
            return Err(refuse(format!("field \"{otp_field}\": {reason}")).await);
        }
    }
    s.throttle.settle(&s.redis, source, user, Settle::Success).await?;
    Ok(account)
}

/// End every session of `user` issued so far: `tx` (the change itself, queued by the
/// caller) is executed with a move of `token_generation`, atomically; returns the new
/// generation.
pub async fn end_sessions(s: &AppState, user: &str, tx: fred::clients::Transaction) -> Result<u64, ApiError> {
    let _: () = tx.hincrby(keys::user(user), "token_generation", 1).await?;
    let replies: Vec<fred::types::Value> = tx.exec(true).await?;
    // HTTP Basic credentials verified under the old password are forgotten too.
    s.basic_cache.clear();
    replies.last().and_then(|v| v.as_u64()).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the cluster database (Redis) gave an unexpected answer")
    })
}

/// A fresh token for the caller after `end_sessions` voided its own.
pub fn fresh_session(s: &AppState, user: &str, two_fa: bool, generation: u64) -> serde_json::Value {
    let now = now();
    let (token, claims) = s.tokens.issue(user, two_fa, generation, now, now);
    json!({"token": token, "expire": expire_text(claims.exp)})
}

/// Revoke the token: it is refused from now on, even before it expires.
pub async fn logout(State(s): State<Shared>, caller: Caller) -> ApiResult {
    let source = caller.source;
    let Some(token) = caller.bearer() else {
        return Ok(json_response(StatusCode::OK, json!({"code": 200})));
    };
    let Ok(claims) = s.tokens.verify(&token) else {
        return Ok(json_response(StatusCode::OK, json!({"code": 200})));
    };
    revoke(&s, &claims.jti, claims.exp).await?;
    s.audit(s.audit_entry(&claims.id, source, "logout")).await;
    Ok(json_response(StatusCode::OK, json!({"code": 200})))
}

pub async fn revoke(s: &AppState, jti: &str, exp: u64) -> Result<(), ApiError> {
    let ttl = exp.saturating_sub(now()).max(1) as i64;
    let _: Option<String> = s.redis.set(keys::revoked_token(jti), "1", Some(Expiration::EX(ttl)), None, false).await?;
    Ok(())
}

/// Trade a valid token for a fresh one; the old one is revoked.
pub async fn refresh(State(s): State<Shared>, caller: Caller) -> ApiResult {
    let session = s.session(&caller, None).await?;
    let now = now();
    let c = &session.claims;
    if now >= c.orig_iat + s.tokens.max_session {
        return Err(ApiError::unauthorized("the session is too old to be refreshed: log in again"));
    }
    let (token, claims) = s.tokens.issue(&c.id, c.two_fa, c.generation, c.orig_iat, now);
    revoke(&s, &c.jti, c.exp).await?;
    Ok(token_response(&token, claims.exp))
}

/// 200 with `X-Auth-User` when the HTTP Basic credentials belong to a subject holding
/// a role on `module/<id>` that allows `<action>`; 401/403 otherwise (NS8 7.2).
pub async fn http_basic(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>) -> ApiResult {
    let source = caller.source;
    let challenge = |message: &str| {
        let mut r = ApiError::unauthorized(message).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"nethserver\""));
        r
    };
    // No credentials at all is a challenge whatever the path holds.
    let Some((user, pass)) = basic_credentials(&caller.headers) else {
        return Ok(challenge("HTTP Basic credentials required"));
    };
    let agent = super::extract::agent_from(&p)?;
    let action = p.get("action").cloned().unwrap_or_default();
    protocol::validate_action_name(&action).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if user.is_empty() || user == "default" || user.len() > 128 || pass.len() > password::MAX_LENGTH {
        return Ok(challenge(BAD_CREDENTIALS));
    }
    let key = s.basic_cache.key(&user, &pass);
    if !s.basic_cache.hit(&key) {
        let wait = s.throttle.attempt(&s.redis, source, &user).await?;
        if wait > 0 {
            return Err(throttled(wait, "too many failed logins"));
        }
        match verify_credentials(&s, &user, &pass).await? {
            Some(account) if may_connect(&account, source) => {
                s.throttle.settle(&s.redis, source, &user, Settle::Success).await?;
                s.basic_cache.insert(key)
            }
            _ => {
                let mut entry = s.audit_entry(&user, source, "login-fail");
                entry.data = json!({"reason": "bad credentials", "via": "http-basic"}).to_string();
                s.audit(entry).await;
                return Ok(challenge(BAD_CREDENTIALS));
            }
        }
    }
    let (_, patterns) = authz::lookup(&s.redis, &s.session_script, &Subject::parse(&user), None, Some(&agent)).await?;
    if !authz::matches_any(&patterns, &action) {
        return Err(ApiError::forbidden(format!("{user} may not run action \"{action}\" on {agent}")));
    }
    let mut r = ok(json!(null));
    if let Ok(v) = HeaderValue::from_str(&user) {
        r.headers_mut().insert("x-auth-user", v);
    }
    Ok(r)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}
