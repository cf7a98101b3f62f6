//! Secrets the api-server stores in Redis but that no reader of Redis needs in clear:
//! sealed with XChaCha20-Poly1305 under the data key (`DATA_KEY_FILE`, a file only the
//! api-server reads), so a Redis dump or a replica alone reveals nothing usable.
//!
//! Today that is the TOTP secret (`user/<name>` field `2fa`); the recovery codes are
//! kept as keyed hashes ([`DataKey::recovery_hash`]). A sealed value is
//! `enc1:<base64url(nonce ‖ ciphertext)>`, with a random 192-bit nonce per value and
//! the owner's name as associated data: a value copied to another user does not open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of a sealed value; anything else is a clear value from before sealing (or
/// from NS8), still accepted and sealed at its next use.
pub const SEALED_PREFIX: &str = "enc1:";
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(
        "the stored {what} cannot be decrypted: it was altered, or the data key file is not the one it was sealed with (restore that file, or reset the value)"
    )]
    Undecryptable { what: String },
}

/// The data key.
pub struct DataKey {
    cipher: XChaCha20Poly1305,
    /// A separate key for the recovery-code hashes, derived from the data key.
    recovery: [u8; 32],
}

impl DataKey {
    pub fn new(key: &[u8]) -> Self {
        let cipher = XChaCha20Poly1305::new_from_slice(key).expect("a 32-byte data key (checked when loaded)");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"ns8rs recovery codes v1");
        DataKey { cipher, recovery: mac.finalize().into_bytes().into() }
    }

    /// Seal `clear`, bound to `owner`.
    pub fn seal(&self, owner: &str, clear: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let sealed = self
            .cipher
            .encrypt(&nonce, Payload { msg: clear.as_bytes(), aad: owner.as_bytes() })
            .expect("XChaCha20-Poly1305 encrypts any message of this size");
        let mut out = nonce_bytes.to_vec();
        out.extend(sealed);
        format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// The clear value of a stored one, and whether it was stored in clear (and so
    /// should be sealed now). `what` names the value in the error.
    pub fn open(&self, owner: &str, stored: &str, what: &str) -> Result<(String, bool), CryptError> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok((stored.to_owned(), true));
        };
        let fail = || CryptError::Undecryptable { what: what.to_owned() };
        let raw = URL_SAFE_NO_PAD.decode(b64).map_err(|_| fail())?;
        if raw.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| fail())?;
        let clear = self.cipher.decrypt(&nonce, Payload { msg: sealed, aad: owner.as_bytes() }).map_err(|_| fail())?;
        Ok((String::from_utf8(clear).map_err(|_| fail())?, false))
    }

    /// What is stored of a recovery code of `user`: a keyed hash, so that the 50-bit
    /// codes cannot be brute-forced from a Redis dump.
    pub fn recovery_hash(&self, user: &str, code: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.recovery).expect("HMAC takes any key length");
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
    fn seal_open_and_refuse_what_was_altered() {
        let key = DataKey::new(&[7u8; 32]);
        let sealed = key.seal("alice", "JBSWY3DPEHPK3PXP");
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("JBSWY3DPEHPK3PXP"), "{sealed}");
        assert_ne!(sealed, key.seal("alice", "JBSWY3DPEHPK3PXP"), "a fresh nonce per value");
        assert_eq!(key.open("alice", &sealed, "x").unwrap(), ("JBSWY3DPEHPK3PXP".to_owned(), false));
        // Bound to its owner, its key and its bytes.
        assert!(key.open("bob", &sealed, "x").is_err());
        assert!(DataKey::new(&[8u8; 32]).open("alice", &sealed, "x").is_err());
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let e = key.open("alice", &String::from_utf8(bytes).unwrap(), "2FA secret of alice").unwrap_err();
        assert!(e.to_string().starts_with("the stored 2FA secret of alice cannot be decrypted"), "{e}");
        assert!(key.open("alice", "enc1:", "x").is_err());
        // A clear value from before is read as is, and flagged for sealing.
        assert_eq!(key.open("alice", "JBSWY3DPEHPK3PXP", "x").unwrap(), ("JBSWY3DPEHPK3PXP".to_owned(), true));
    }

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
