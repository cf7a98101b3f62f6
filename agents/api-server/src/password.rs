//! Admin passwords: argon2id, never stored in clear or in a reversible form.
//!
//! The cost is the brute-force defence and is chosen to take 50-250 ms per hash on a
//! small server (measured by `cargo xtask bench`, docs/benchmarks.md). At most
//! [`CONCURRENT_HASHES`] run at once: each takes [`MEMORY_KIB`] of memory, and a burst
//! of logins must not exhaust a 2-core node.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// 64 MiB, 3 passes, 1 lane: ~130 ms on the reference 2-core machine.
pub const MEMORY_KIB: u32 = 64 * 1024;
pub const PASSES: u32 = 3;
pub const CONCURRENT_HASHES: usize = 2;

/// Shortest password `add-user` and password changes accept.
pub const MIN_LENGTH: usize = 10;
/// Longest password accepted anywhere (argon2 would take any length; a bound keeps
/// request handling predictable).
pub const MAX_LENGTH: usize = 1024;

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string (`$argon2id$v=19$m=...$salt$hash`) of `password`, with a random salt.
pub fn hash(password: &str) -> String {
    hasher().hash_password(password.as_bytes()).expect("argon2 hashing with valid parameters").to_string()
}

/// Whether `password` matches the stored PHC string. A malformed stored hash matches
/// nothing. The stored parameters are used, so hashes made with older costs still work.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a password nobody knows, verified when the user does not exist so that
/// the answer takes as long as for a real user (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash(&generate(24)))
}

/// Why a new password is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("password too short: at least {MIN_LENGTH} characters")]
    TooShort,
    #[error("password too long: at most {MAX_LENGTH} bytes")]
    TooLong,
}

/// Check a new password: length only (a passphrase of words is fine).
pub fn check_policy(password: &str) -> Result<(), PolicyError> {
    let n = password.chars().count();
    if n < MIN_LENGTH {
        return Err(PolicyError::TooShort);
    }
    if password.len() > MAX_LENGTH {
        return Err(PolicyError::TooLong);
    }
    Ok(())
}

/// A random password of `len` characters from an alphabet without look-alikes.
pub fn generate(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random_string(ALPHABET, len)
}

pub fn random_string(alphabet: &[u8], len: usize) -> String {
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in rand::random::<[u8; 32]>() {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse battery");
        assert!(h.starts_with("$argon2id$v=19$m=65536,t=3,p=1$"), "{h}");
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterz", &h));
        assert!(!verify("anything", "not a phc string"));
        assert_ne!(hash("same"), hash("same"), "salted");
    }

    #[test]
    fn policy_and_generation() {
        assert_eq!(check_policy("short"), Err(PolicyError::TooShort));
        assert!(check_policy("long enough pass").is_ok());
        assert_eq!(check_policy(&"x".repeat(2000)), Err(PolicyError::TooLong));
        let p = generate(20);
        assert_eq!(p.len(), 20);
        assert_ne!(p, generate(20));
    }
}
