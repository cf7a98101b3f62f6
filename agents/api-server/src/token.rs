//! Session tokens: HS256 JWTs with NS8's claims, plus an id (`jti`) for revocation.
//!
//! A token lives [`Settings::lifetime`]; `POST /api/refresh` trades a valid token for a
//! new one (the old one is revoked) until [`Settings::max_session`] after the login.
//! Logout revokes: the `jti` is kept in Redis until the token would have expired.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The subject: an admin user name or an agent id (NS8's claim name).
    pub id: String,
    /// Always empty, as NS8: roles are read from Redis on every request.
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub actions: Vec<String>,
    /// Whether a second factor was given at login.
    #[serde(rename = "2fa", default)]
    pub two_fa: bool,
    pub exp: u64,
    pub iat: u64,
    /// Time of the login this session started with; refreshes keep it.
    pub orig_iat: u64,
    pub jti: String,
    /// The user's `token_generation` when the session started: a password or 2FA
    /// change moves it on, which voids every token issued before (0 for agents and for
    /// tokens from before the field existed).
    #[serde(default)]
    pub generation: u64,
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub lifetime: u64,
    pub max_session: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the session token has expired: log in again")]
    Expired,
    #[error("the session token is not valid")]
    Invalid,
}

impl Tokens {
    pub fn new(secret: &[u8], lifetime: u64, max_session: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            lifetime,
            max_session,
        }
    }

    /// A new token for `id` of session `generation`; `orig_iat` is the login time (now,
    /// for a fresh login).
    pub fn issue(&self, id: &str, two_fa: bool, generation: u64, orig_iat: u64, now: u64) -> (String, Claims) {
        let exp = (now + self.lifetime).min(orig_iat + self.max_session);
        let claims = Claims {
            id: id.to_owned(),
            role: String::new(),
            actions: Vec::new(),
            two_fa,
            exp,
            iat: now,
            orig_iat,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            generation,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims");
        (token, claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if !data.claims.jti.is_empty() => Ok(data.claims),
            Ok(_) => Err(TokenError::Invalid),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_expire() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 3600, 7200);
        let now = now();
        let (token, claims) = t.issue("admin", true, 3, now, now);
        let back = t.verify(&token).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.exp, now + 3600);
        assert_eq!(back.generation, 3);
        // Refreshing late in the session is capped by the session's maximum age.
        let (_, c) = t.issue("admin", true, 3, now - 5000, now);
        assert_eq!(c.exp, now - 5000 + 7200);
        let (old, _) = t.issue("admin", false, 3, now - 9000, now - 9000 + 100);
        assert!(matches!(t.verify(&old), Err(TokenError::Expired)));
        let other = Tokens::new(b"another secret, another signature", 3600, 7200);
        assert!(matches!(other.verify(&token), Err(TokenError::Invalid)));
        assert!(matches!(t.verify("garbage"), Err(TokenError::Invalid)));
    }
}
