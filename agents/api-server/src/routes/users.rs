//! Admin users and grants. NS8 changes these through cluster actions with client-side
//! SHA-256 hashes; here the api-server owns them, because only it may see a password
//! to hash it with argon2id. Each endpoint is authorized as the NS8 cluster action of
//! the same purpose (`list-users`, `add-user`, `remove-user`, `alter-user`,
//! `list-grants`, `grant-roles`, `revoke-roles`), so `owner` of `cluster` may do all
//! of it and `reader` may list.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use fred::prelude::*;
use protocol::{AgentId, keys};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Params, bounded, parse_body};
use super::login;
use crate::authz::{self, Session, Subject};
use crate::error::{ApiError, ApiResult, envelope, ok};
use crate::state::{AppState, Caller, Shared};
use crate::{net, password};

async fn cluster_session(s: &Shared, caller: &Caller) -> Result<Session, ApiError> {
    s.session(caller, Some(AgentId::Cluster)).await
}

pub async fn list(State(s): State<Shared>, caller: Caller) -> ApiResult {
    cluster_session(&s, &caller).await?.require("list-users")?;
    let mut users = Vec::new();
    let mut names: Vec<String> = bus::scan(&s.redis, keys::USER_PATTERN, None)
        .await?
        .into_iter()
        .filter_map(|k| keys::parse_user(&k).map(str::to_owned))
        .collect();
    names.sort();
    for name in names {
        let p: HashMap<String, String> = s.redis.hgetall(keys::user(&name)).await?;
        let get = |k: &str| p.get(k).cloned().unwrap_or_default();
        let nets: Vec<String> =
            get("allowed_networks").split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect();
        users.push(json!({
            "user": name,
            "display_name": get("display_name"),
            "email": get("email"),
            "allowed_networks": nets,
            "2fa": !get("2fa").is_empty(),
        }));
    }
    Ok(ok(json!({"users": users})))
}

#[derive(Deserialize)]
struct NewUser {
    user: String,
    password: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    allowed_networks: Vec<String>,
}

/// Validate the profile fields shared by the API and the command line.
pub fn check_profile(display_name: &str, email: &str, networks: &[String]) -> Result<String, ApiError> {
    bounded("display_name", display_name, 256)?;
    bounded("email", email, 256)?;
    if networks.len() > 64 {
        return Err(ApiError::bad_request("field \"allowed_networks\": at most 64 entries"));
    }
    for n in networks {
        if net::parse_net(n).is_none() {
            return Err(ApiError::bad_request(format!(
                "field \"allowed_networks\": {n:?} is not an IP address or CIDR"
            )));
        }
    }
    Ok(networks.join(","))
}

/// Create a user; `false` if it already exists. The hash is computed by the caller.
pub async fn create_user(
    redis: &Client,
    name: &str,
    hash: &str,
    profile: &[(&str, &str)],
) -> Result<bool, fred::error::Error> {
    let created: bool = redis.hsetnx(keys::user(name), "password_hash", hash).await?;
    if created {
        // A new account's sessions start from a fresh generation: tokens of an earlier
        // account of the same name stay void.
        let mut fields: Vec<(String, String)> = profile.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        fields.push(("token_generation".into(), initial_generation().to_string()));
        let _: () = redis.hset(keys::user(name), fields).await?;
    }
    Ok(created)
}

/// Milliseconds since the epoch: larger than any generation an account of the same
/// name could have reached before.
fn initial_generation() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1)
}

async fn hash_password(s: &AppState, pw: String) -> Result<String, ApiError> {
    let _permit = s.hashing.acquire().await.map_err(|_| ApiError::bad_request("server shutting down"))?;
    tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "password hashing failed"))
}

pub async fn add(State(s): State<Shared>, caller: Caller, body: Bytes) -> ApiResult {
    let session = cluster_session(&s, &caller).await?;
    session.require("add-user")?;
    let req: NewUser = parse_body(&body)?;
    if !authz::valid_user_name(&req.user) {
        return Err(ApiError::bad_request(format!(
            "field \"user\": {:?} is not a valid user name (1-32 characters: a lowercase letter, then lowercase letters, digits, '.', '-', '_'; not \"default\" or \"cluster\")",
            req.user.chars().take(64).collect::<String>()
        )));
    }
    password::check_policy(&req.password).map_err(|e| ApiError::bad_request(format!("field \"password\": {e}")))?;
    let nets = check_profile(&req.display_name, &req.email, &req.allowed_networks)?;
    let exists: bool = s.redis.exists(keys::user(&req.user)).await?;
    if exists {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("user {} already exists", req.user)));
    }
    let hash = hash_password(&s, req.password).await?;
    let profile = [
        ("display_name", req.display_name.as_str()),
        ("email", req.email.as_str()),
        ("allowed_networks", nets.as_str()),
    ];
    if !create_user(&s.redis, &req.user, &hash, &profile).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("user {} already exists", req.user)));
    }
    let mut entry = s.audit_entry(&session.subject.name(), session.source, "add-user");
    entry.data = json!({"user": req.user, "display_name": req.display_name, "email": req.email, "allowed_networks": req.allowed_networks}).to_string();
    s.audit(entry).await;
    Ok(envelope(StatusCode::CREATED, "success", json!({"user": req.user})))
}

pub async fn remove(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>) -> ApiResult {
    let session = cluster_session(&s, &caller).await?;
    session.require("remove-user")?;
    let user = p.get("user").cloned().unwrap_or_default();
    if !authz::valid_user_name(&user) {
        return Err(ApiError::bad_request(format!("{user:?} is not a valid user name")));
    }
    if session.subject.user_name() == Some(user.as_str()) {
        return Err(ApiError::bad_request("you cannot remove your own account"));
    }
    let removed: i64 =
        s.redis.del(vec![keys::user(&user), keys::user_recovery_codes(&user), keys::grants(&user)]).await?;
    if removed == 0 {
        return Err(ApiError::not_found(format!("no user {user}")));
    }
    let mut entry = s.audit_entry(&session.subject.name(), session.source, "remove-user");
    entry.data = json!({"user": user}).to_string();
    s.audit(entry).await;
    Ok(ok(json!(null)))
}

#[derive(Deserialize)]
struct PasswordChange {
    #[serde(default)]
    current_password: Option<String>,
    new_password: String,
    /// A current TOTP code or a recovery code, when the account has 2FA.
    #[serde(default)]
    otp: Option<String>,
}

/// Users change their own password with the current one (and a current code when 2FA
/// is on); `alter-user` holders set anyone else's. Either way every session of the
/// user issued before ends; the user changing its own password gets a fresh token.
pub async fn password(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>, body: Bytes) -> ApiResult {
    let session = cluster_session(&s, &caller).await?;
    let user = p.get("user").cloned().unwrap_or_default();
    if !authz::valid_user_name(&user) {
        return Err(ApiError::bad_request(format!("{user:?} is not a valid user name")));
    }
    let req: PasswordChange = parse_body(&body)?;
    bounded("current_password", req.current_password.as_deref().unwrap_or(""), password::MAX_LENGTH)?;
    bounded("otp", req.otp.as_deref().unwrap_or(""), 32)?;
    password::check_policy(&req.new_password)
        .map_err(|e| ApiError::bad_request(format!("field \"new_password\": {e}")))?;
    let own = session.subject.user_name() == Some(user.as_str());
    let mut two_fa = false;
    if own {
        let account = login::reauthenticate(
            &s,
            session.source,
            &user,
            "changing the password",
            req.current_password.as_deref(),
            req.otp.as_deref(),
            "otp",
        )
        .await?;
        two_fa = account.totp_secret.is_some();
    } else {
        session.require("alter-user")?;
        let exists: bool = s.redis.exists(keys::user(&user)).await?;
        if !exists {
            return Err(ApiError::not_found(format!("no user {user}")));
        }
    }
    let hash = hash_password(&s, req.new_password).await?;
    let tx = s.redis.multi();
    let _: () = tx.hset(keys::user(&user), ("password_hash", hash)).await?;
    let generation = login::end_sessions(&s, &user, tx).await?;
    let mut entry = s.audit_entry(&session.subject.name(), session.source, "change-password");
    entry.data = json!({"user": user}).to_string();
    s.audit(entry).await;
    Ok(ok(if own { login::fresh_session(&s, &user, two_fa, generation) } else { json!(null) }))
}

use bus::grants::set_grant;

#[derive(Deserialize)]
struct Grant {
    subject: String,
    on: String,
    role: String,
}

fn check_grant(g: &Grant) -> Result<(Subject, AgentId), ApiError> {
    let subject = Subject::parse(&g.subject);
    if let Subject::User(u) = &subject
        && !authz::valid_user_name(u)
    {
        return Err(ApiError::bad_request(format!(
            "field \"subject\": {:?} is neither a user name nor an agent id",
            g.subject.chars().take(64).collect::<String>()
        )));
    }
    let on: AgentId =
        g.on.parse().map_err(|e: protocol::IdError| ApiError::bad_request(format!("field \"on\": {e}")))?;
    if !authz::valid_role_name(&g.role) {
        return Err(ApiError::bad_request(format!(
            "field \"role\": {:?} is not a role name (1-32 lowercase letters, digits, '-', '_')",
            g.role.chars().take(64).collect::<String>()
        )));
    }
    Ok((subject, on))
}

pub async fn grants(State(s): State<Shared>, caller: Caller, Query(p): Query<HashMap<String, String>>) -> ApiResult {
    let session = cluster_session(&s, &caller).await?;
    let subject = p.get("subject").cloned().unwrap_or_else(|| session.subject.name());
    if subject != session.subject.name() {
        session.require("list-grants")?;
    }
    bounded("subject", &subject, 128)?;
    let map: HashMap<String, String> = s.redis.hgetall(keys::grants(&subject)).await?;
    let grants: serde_json::Map<String, Value> = map
        .into_iter()
        .map(|(agent, roles)| {
            (agent, json!(roles.split(',').map(str::trim).filter(|r| !r.is_empty()).collect::<Vec<_>>()))
        })
        .collect();
    Ok(ok(json!({"subject": subject, "grants": grants})))
}

pub async fn grant(State(s): State<Shared>, caller: Caller, body: Bytes) -> ApiResult {
    let session = cluster_session(&s, &caller).await?;
    session.require("grant-roles")?;
    let g: Grant = parse_body(&body)?;
    let (subject, on) = check_grant(&g)?;
    if let Subject::User(u) = &subject {
        let exists: bool = s.redis.exists(keys::user(u)).await?;
        if !exists {
            return Err(ApiError::not_found(format!("field \"subject\": no user {u}")));
        }
    }
    let defined: bool = s.redis.exists(keys::role(&on, &g.role)).await?;
    if !defined {
        return Err(ApiError::bad_request(format!(
            "field \"role\": role {} is not defined on {on} (no key {})",
            g.role,
            keys::role(&on, &g.role)
        )));
    }
    set_grant(&s.redis, &subject.name(), &on, &g.role, true).await?;
    let mut entry = s.audit_entry(&session.subject.name(), session.source, "grant-role");
    entry.agent = on.to_string();
    entry.data = json!({"subject": subject.name(), "role": g.role}).to_string();
    s.audit(entry).await;
    Ok(ok(json!(null)))
}

pub async fn revoke(State(s): State<Shared>, caller: Caller, Query(p): Query<HashMap<String, String>>) -> ApiResult {
    let session = cluster_session(&s, &caller).await?;
    session.require("revoke-roles")?;
    let field =
        |k: &str| p.get(k).cloned().ok_or_else(|| ApiError::bad_request(format!("query parameter \"{k}\" missing")));
    let g = Grant { subject: field("subject")?, on: field("on")?, role: field("role")? };
    let (subject, on) = check_grant(&g)?;
    if !set_grant(&s.redis, &subject.name(), &on, &g.role, false).await? {
        return Err(ApiError::not_found(format!("{} does not hold role {} on {on}", subject.name(), g.role)));
    }
    let mut entry = s.audit_entry(&session.subject.name(), session.source, "revoke-role");
    entry.agent = on.to_string();
    entry.data = json!({"subject": subject.name(), "role": g.role}).to_string();
    s.audit(entry).await;
    Ok(ok(json!(null)))
}
