//! The TOTP secrets as stored: sealed with the data key, opened on use; secrets
//! still stored in clear (from before sealing, or from NS8) are sealed.

use axum::http::StatusCode;
use fred::prelude::*;
use fred::types::scripts::Script;
use protocol::keys;

use crate::crypt;
use crate::error::ApiError;
use crate::state::AppState;

/// Seal a clear secret in place, unless it changed meanwhile.
const RESEAL: &str = r"
if redis.call('HGET', KEYS[1], '2fa') == ARGV[1] then
  redis.call('HSET', KEYS[1], '2fa', ARGV[2])
  return 1
end
return 0";

fn reseal_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::from_lua(RESEAL))
}

/// The clear TOTP secret of `user` from its stored form. A secret still stored in
/// clear (from before sealing, or from NS8) is sealed now.
pub async fn open_secret(s: &AppState, user: &str, stored: &str) -> Result<String, ApiError> {
    match s.data_key.open(user, stored, &format!("2FA secret of {user}")) {
        Ok((clear, was_clear)) => {
            if was_clear {
                let sealed = s.data_key.seal(user, &clear);
                let _: i64 = reseal_script()
                    .evalsha_with_reload(&s.redis, vec![keys::user(user)], vec![stored, &sealed])
                    .await?;
            }
            Ok(clear)
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; an administrator can run `api-server reset-2fa {user}`"),
            ))
        }
    }
}

/// Seal every TOTP secret still stored in clear (run at start). Returns how many.
pub async fn seal_clear_secrets(s: &AppState) -> Result<usize, ApiError> {
    let mut sealed = 0;
    for key in bus::scan(&s.redis, keys::USER_PATTERN, None).await? {
        let Some(user) = keys::parse_user(&key) else { continue };
        let stored: Option<String> = s.redis.hget(&key, "2fa").await?;
        let Some(stored) = stored.filter(|v| !v.is_empty() && !v.starts_with(crypt::SEALED_PREFIX)) else {
            continue;
        };
        open_secret(s, user, &stored).await?;
        sealed += 1;
    }
    Ok(sealed)
}
