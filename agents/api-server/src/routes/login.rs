//! Login, logout, token refresh, and HTTP Basic checks for Traefik's forwardAuth.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use fred::prelude::*;
use protocol::keys;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Params, bounded, json_response, parse_body};
use crate::authz::{self, Subject};
use crate::error::{ApiError, ApiResult, ok};
use crate::state::{AppState, Caller, Shared};
use crate::token::now;
use crate::{password, totp};

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
    /// TOTP secret when 2FA is enabled.
    pub totp_secret: Option<String>,
    pub networks: String,
}

/// Check a user name and password. Human users: argon2id against `user/<name>`; agent
/// identities (`cluster`, `node/<N>`, `module/<id>`): their Redis ACL credentials.
/// `Ok(None)` for wrong credentials.
pub async fn verify_credentials(s: &AppState, username: &str, password: &str) -> Result<Option<Account>, ApiError> {
    let subject = Subject::parse(username);
    match &subject {
        Subject::Agent(_) => {
            if !bus::check_credentials(&s.redis_config, username, password).await? {
                return Ok(None);
            }
            let network: Option<String> = s.redis.get(keys::CLUSTER_NETWORK).await?;
            Ok(Some(Account { subject, totp_secret: None, networks: network.unwrap_or_default() }))
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
            let totp_secret = profile.get("2fa").filter(|s| !s.is_empty()).cloned();
            let networks = profile.get("allowed_networks").cloned().unwrap_or_default();
            Ok(Some(Account { subject, totp_secret, networks }))
        }
    }
}

fn may_connect(account: &Account, source: IpAddr) -> bool {
    authz::may_connect(&account.subject, &account.networks, source)
}

/// Check a second factor: a TOTP code (each accepted once) or a recovery code
/// (consumed). Returns a reason on failure.
async fn check_second_factor(
    s: &AppState,
    user: &str,
    secret: &str,
    otp: &str,
) -> Result<Result<(), &'static str>, ApiError> {
    let otp = otp.trim();
    if totp::looks_like_recovery_code(otp) {
        let removed: i64 = s.redis.srem(keys::user_recovery_codes(user), totp::hash_recovery_code(otp)).await?;
        return Ok(if removed == 1 { Ok(()) } else { Err("wrong OTP or recovery code") });
    }
    let Some(step) = totp::check(secret, otp, now()) else { return Ok(Err("wrong OTP or recovery code")) };
    let fresh: Option<String> = s
        .redis
        .set(keys::otp_used(user, &step.to_string()), "1", Some(Expiration::EX(120)), Some(SetOptions::NX), false)
        .await?;
    Ok(if fresh.is_some() { Ok(()) } else { Err("this OTP was already used: wait for the next one") })
}

fn token_response(token: &str, exp: u64) -> Response {
    let expire = protocol::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(exp));
    json_response(StatusCode::OK, json!({"code": 200, "expire": expire, "token": token}))
}

pub async fn login(State(s): State<Shared>, caller: Caller, body: Bytes) -> ApiResult {
    let source = caller.source;
    let req: LoginRequest = parse_body(&body)?;
    bounded("username", &req.username, 128)?;
    bounded("password", &req.password, password::MAX_LENGTH)?;
    if let Some(otp) = &req.otp {
        bounded("otp", otp, 32)?;
    }
    let addr = source.to_string();
    let wait = s.throttle.wait_ms(&s.redis, &addr, &req.username).await?;
    if wait > 0 {
        let secs = wait.div_ceil(1000);
        let mut entry = s.audit_entry(&req.username, source, "login-fail");
        entry.data = json!({"reason": "throttled"}).to_string();
        s.audit(entry).await;
        let mut e =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("too many failed logins: try again in {secs} s"));
        e.retry_after = Some(secs);
        return Err(e);
    }
    let fail = |reason: &'static str, message: &'static str| {
        let s = s.clone();
        let user = req.username.clone();
        let addr = addr.clone();
        async move {
            s.throttle.failed(&s.redis, &addr, &user).await?;
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
            // Not a failure of the password: no throttle, but recorded.
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
    s.throttle.succeeded(&s.redis, &req.username).await?;
    let now = now();
    let (token, claims) = s.tokens.issue(&account.subject.name(), two_fa, now, now);
    let mut entry = s.audit_entry(&account.subject.name(), source, "login-ok");
    entry.data = json!({"2fa": two_fa}).to_string();
    s.audit(entry).await;
    tracing::info!(user = %account.subject.name(), %source, two_fa, "[AUTH] login-ok");
    Ok(token_response(&token, claims.exp))
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
    let (token, claims) = s.tokens.issue(&c.id, c.two_fa, c.orig_iat, now);
    revoke(&s, &c.jti, c.exp).await?;
    Ok(token_response(&token, claims.exp))
}

/// Recently verified HTTP Basic credentials. Traefik asks on every proxied request,
/// and an argon2 check per request would be a denial of service; a success is reused
/// for a minute, keyed by a salted hash so the cache holds no password.
pub struct BasicCache {
    salt: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);

impl BasicCache {
    pub fn new() -> Self {
        BasicCache { salt: rand::random(), entries: Mutex::new(HashMap::new()) }
    }
    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }
    fn hit(&self, key: &[u8; 32]) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, t| t.elapsed() < BASIC_CACHE_TTL);
        entries.contains_key(key)
    }
    fn insert(&self, key: [u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() < 10_000 {
            entries.insert(key, Instant::now());
        }
    }
}

impl Default for BasicCache {
    fn default() -> Self {
        Self::new()
    }
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
    let agent = super::tasks::agent_from(&p)?;
    let action = p.get("action").cloned().unwrap_or_default();
    protocol::validate_action_name(&action).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if user.is_empty() || user == "default" || user.len() > 128 || pass.len() > password::MAX_LENGTH {
        return Ok(challenge(BAD_CREDENTIALS));
    }
    let key = s.basic_cache.key(&user, &pass);
    if !s.basic_cache.hit(&key) {
        let addr = source.to_string();
        let wait = s.throttle.wait_ms(&s.redis, &addr, &user).await?;
        if wait > 0 {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many failed logins");
            e.retry_after = Some(wait.div_ceil(1000));
            return Err(e);
        }
        match verify_credentials(&s, &user, &pass).await? {
            Some(account) if may_connect(&account, source) => s.basic_cache.insert(key),
            _ => {
                s.throttle.failed(&s.redis, &addr, &user).await?;
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
