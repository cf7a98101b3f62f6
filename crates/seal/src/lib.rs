//! Secrets stored where their readers need them sealed: XChaCha20-Poly1305 under a
//! key that lives in a 0600 file ([`keyfile`]), never beside the sealed values, so a
//! Redis dump or a replica alone reveals nothing usable. The api-server seals TOTP
//! secrets with it, the cluster agent backup destinations' credentials.
//!
//! A sealed value is `enc1:<base64url(nonce ‖ ciphertext)>`, with a random 192-bit
//! nonce per value and its owner (a user name, a destination) as associated data: a
//! value copied to another owner does not open.

pub mod keyfile;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Prefix of a sealed value; anything else is a clear value from before sealing (or
/// from NS8), still accepted and sealed at its next use.
pub const SEALED_PREFIX: &str = "enc1:";
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// `bytes` random bytes from the OS's generator, as hex: passwords and tokens made
/// for the administrator.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "the stored {what} cannot be decrypted: it was altered, or the key file is not the one it was sealed with (restore that file, or reset the value)"
    )]
    Undecryptable { what: String },
}

/// A sealing key.
pub struct SealKey {
    cipher: XChaCha20Poly1305,
}

impl SealKey {
    /// `key` is [`KEY_LEN`] bytes (as [`keyfile::load_or_create`] with `exact` gives).
    pub fn new(key: &[u8]) -> Self {
        SealKey { cipher: XChaCha20Poly1305::new_from_slice(key).expect("a 32-byte key (checked when loaded)") }
    }

    /// The key of the file `path`, made (random, 0600) when missing.
    pub fn load_or_create(path: &std::path::Path) -> Result<Self, keyfile::KeyFileError> {
        Ok(SealKey::new(&keyfile::load_or_create(path, KEY_LEN, true)?))
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
    pub fn open(&self, owner: &str, stored: &str, what: &str) -> Result<(String, bool), SealError> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok((stored.to_owned(), true));
        };
        let fail = || SealError::Undecryptable { what: what.to_owned() };
        let raw = URL_SAFE_NO_PAD.decode(b64).map_err(|_| fail())?;
        if raw.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| fail())?;
        let clear = self.cipher.decrypt(&nonce, Payload { msg: sealed, aad: owner.as_bytes() }).map_err(|_| fail())?;
        Ok((String::from_utf8(clear).map_err(|_| fail())?, false))
    }

    /// Only a sealed value opens: for values never stored in clear.
    pub fn open_sealed(&self, owner: &str, stored: &str, what: &str) -> Result<String, SealError> {
        if !stored.starts_with(SEALED_PREFIX) {
            return Err(SealError::Undecryptable { what: what.to_owned() });
        }
        Ok(self.open(owner, stored, what)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse_what_was_altered() {
        let key = SealKey::new(&[7u8; 32]);
        let sealed = key.seal("alice", "JBSWY3DPEHPK3PXP");
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("JBSWY3DPEHPK3PXP"), "{sealed}");
        assert_ne!(sealed, key.seal("alice", "JBSWY3DPEHPK3PXP"), "a fresh nonce per value");
        assert_eq!(key.open("alice", &sealed, "x").unwrap(), ("JBSWY3DPEHPK3PXP".to_owned(), false));
        // Bound to its owner, its key and its bytes.
        assert!(key.open("bob", &sealed, "x").is_err());
        assert!(SealKey::new(&[8u8; 32]).open("alice", &sealed, "x").is_err());
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let e = key.open("alice", &String::from_utf8(bytes).unwrap(), "2FA secret of alice").unwrap_err();
        assert!(e.to_string().starts_with("the stored 2FA secret of alice cannot be decrypted"), "{e}");
        assert!(key.open("alice", "enc1:", "x").is_err());
        // A clear value from before is read as is, and flagged for sealing; unless
        // only sealed values are expected.
        assert_eq!(key.open("alice", "JBSWY3DPEHPK3PXP", "x").unwrap(), ("JBSWY3DPEHPK3PXP".to_owned(), true));
        assert!(key.open_sealed("alice", "JBSWY3DPEHPK3PXP", "x").is_err());
        assert_eq!(key.open_sealed("alice", &sealed, "x").unwrap(), "JBSWY3DPEHPK3PXP");
    }
}
