//! Secrets the api-server stores in Redis but that no reader of Redis needs in clear:
//! sealed (the `seal` crate) under the data key (`DATA_KEY_FILE`, a file only the
//! api-server reads).
//!
//! Today that is the TOTP secret (`user/<name>` field `2fa`), sealed with the owner's
//! name as associated data; the recovery codes are kept as keyed hashes
//! ([`DataKey::recovery_hash`]).

use hmac::{Hmac, Mac};
use seal::SealKey;
pub use seal::{KEY_LEN, SEALED_PREFIX, SealError as CryptError};
use sha2::Sha256;

/// The data key.
pub struct DataKey {
    seal: SealKey,
    /// A separate key for the recovery-code hashes, derived from the data key.
    recovery: [u8; 32],
}

impl DataKey {
    pub fn new(key: &[u8]) -> Self {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"ns8rs recovery codes v1");
        DataKey { seal: SealKey::new(key), recovery: mac.finalize().into_bytes().into() }
    }

    /// Seal `clear`, bound to `owner`.
    pub fn seal(&self, owner: &str, clear: &str) -> String {
        self.seal.seal(owner, clear)
    }

    /// The clear value of a stored one, and whether it was stored in clear (and so
    /// should be sealed now). `what` names the value in the error.
    pub fn open(&self, owner: &str, stored: &str, what: &str) -> Result<(String, bool), CryptError> {
        self.seal.open(owner, stored, what)
    }

    /// What is stored of a recovery code of `user`: a keyed hash, so that the 50-bit
    /// codes cannot be brute-forced from a Redis dump.
    pub fn recovery_hash(&self, user: &str, code: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.recovery).expect("HMAC takes any key length");
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(code.trim().to_ascii_lowercase().as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("k1:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_hashes_are_keyed_and_per_user() {
        let key = DataKey::new(&[7u8; 32]);
        let h = key.recovery_hash("alice", "abcde-fghij");
        assert_eq!(h, key.recovery_hash("alice", " ABCDE-FGHIJ "));
        assert_ne!(h, key.recovery_hash("bob", "abcde-fghij"));
        assert_ne!(h, DataKey::new(&[8u8; 32]).recovery_hash("alice", "abcde-fghij"));
        assert!(h.starts_with("k1:") && h.len() == 3 + 64);
    }
}
