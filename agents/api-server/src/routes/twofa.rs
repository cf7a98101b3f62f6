//! Two-factor authentication of the calling user (NS8 7.2), plus recovery codes.

use axum::body::Bytes;
use axum::extract::State;
use fred::prelude::*;
use protocol::keys;
use serde::Deserialize;
use serde_json::json;

use super::extract::{bounded, parse_body};
use super::login;
use crate::authz::Session;
use crate::error::{ApiError, ApiResult, ok};
use crate::state::{Caller, Shared};
use crate::token::now;
use crate::{password, totp};

async fn user_session(s: &Shared, caller: &Caller) -> Result<(Session, String), ApiError> {
    let session = s.session(caller, None).await?;
    let Some(user) = session.subject.user_name().map(str::to_owned) else {
        return Err(ApiError::forbidden("two-factor authentication is for admin users, not agent identities"));
    };
    Ok((session, user))
}

pub async fn status(State(s): State<Shared>, caller: Caller) -> ApiResult {
    let (_, user) = user_session(&s, &caller).await?;
    let secret: Option<String> = s.redis.hget(keys::user(&user), "2fa").await?;
    Ok(ok(json!(secret.is_some_and(|x| !x.is_empty()))))
}

/// A new secret to enrol, not stored until `POST /api/2FA` proves the app has it.
pub async fn qr_code(State(s): State<Shared>, caller: Caller) -> ApiResult {
    let (_, user) = user_session(&s, &caller).await?;
    let key = totp::generate_secret();
    let url = totp::otpauth_url(&key, &s.issuer, &user)
        .ok_or_else(|| ApiError::bad_request("the 2FA issuer name may not contain ':'"))?;
    let svg = totp::qr_svg(&url).unwrap_or_default();
    Ok(ok(json!({"url": url, "key": key, "svg": svg})))
}

#[derive(Deserialize)]
struct Enable {
    otp: String,
    secret: String,
    #[serde(default)]
    current_password: Option<String>,
    /// A code of the secret being replaced, when 2FA is already enabled.
    #[serde(default)]
    current_otp: Option<String>,
}

/// Store the secret once a code from it checks and the caller proved who it is
/// (current password, and a current code when replacing a secret); answer the recovery
/// codes, shown this once only (only keyed hashes are kept), and a fresh token: every
/// earlier session of the user ends.
pub async fn enable(State(s): State<Shared>, caller: Caller, body: Bytes) -> ApiResult {
    let (session, user) = user_session(&s, &caller).await?;
    let req: Enable = parse_body(&body)?;
    bounded("otp", &req.otp, 32)?;
    bounded("secret", &req.secret, 128)?;
    bounded("current_password", req.current_password.as_deref().unwrap_or(""), password::MAX_LENGTH)?;
    bounded("current_otp", req.current_otp.as_deref().unwrap_or(""), 32)?;
    if !totp::valid_secret(&req.secret) {
        return Err(ApiError::bad_request(
            "field \"secret\": expected a base32 TOTP secret of at least 128 bits (GET /api/2FA/qr-code gives one)",
        ));
    }
    let Some(step) = totp::check(&req.secret, &req.otp, now()) else {
        return Err(ApiError::bad_request(
            "field \"otp\": the code does not match the secret (check the device's clock)",
        ));
    };
    let account = login::reauthenticate(
        &s,
        session.source,
        &user,
        "enabling two-factor authentication",
        req.current_password.as_deref(),
        req.current_otp.as_deref(),
        "current_otp",
    )
    .await?;
    let codes = totp::generate_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| s.data_key.recovery_hash(&user, c)).collect();
    let tx = s.redis.multi();
    let _: () = tx.hset(keys::user(&user), ("2fa", s.data_key.seal(&user, &req.secret))).await?;
    let _: () = tx.del(keys::user_recovery_codes(&user)).await?;
    let _: () = tx.sadd(keys::user_recovery_codes(&user), hashes).await?;
    // The enrolment code counts as used: it cannot log in a second time.
    let _: () = tx.set(keys::otp_used(&user, &step.to_string()), "1", Some(Expiration::EX(120)), None, false).await?;
    let generation = login::end_sessions(&s, &user, tx).await?;
    let mut entry = s.audit_entry(&user, session.source, "2fa-enable");
    entry.data = json!({"replaced": account.totp_secret.is_some()}).to_string();
    s.audit(entry).await;
    let mut data = login::fresh_session(&s, &user, true, generation);
    data["recovery_codes"] = json!(codes);
    Ok(ok(data))
}

#[derive(Deserialize)]
struct Disable {
    #[serde(default)]
    current_password: Option<String>,
    #[serde(default)]
    otp: Option<String>,
}

/// Remove the caller's secret and recovery codes, once it gave its current password
/// and a current code (or a recovery code); every earlier session ends and the answer
/// carries a fresh token. Nothing changes when 2FA was not enabled.
pub async fn disable(State(s): State<Shared>, caller: Caller, body: Bytes) -> ApiResult {
    let (session, user) = user_session(&s, &caller).await?;
    let req: Disable = parse_body(&body)?;
    bounded("current_password", req.current_password.as_deref().unwrap_or(""), password::MAX_LENGTH)?;
    bounded("otp", req.otp.as_deref().unwrap_or(""), 32)?;
    let account = login::reauthenticate(
        &s,
        session.source,
        &user,
        "disabling two-factor authentication",
        req.current_password.as_deref(),
        req.otp.as_deref(),
        "otp",
    )
    .await?;
    if account.totp_secret.is_none() {
        return Ok(ok(json!(null)));
    }
    let tx = s.redis.multi();
    let _: () = tx.hdel(keys::user(&user), "2fa").await?;
    let _: () = tx.del(keys::user_recovery_codes(&user)).await?;
    let generation = login::end_sessions(&s, &user, tx).await?;
    s.audit(s.audit_entry(&user, session.source, "2fa-disable")).await;
    Ok(ok(login::fresh_session(&s, &user, false, generation)))
}
