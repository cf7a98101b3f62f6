//! Two-factor authentication: TOTP (RFC 6238: SHA-1, 6 digits, 30 s, as every
//! authenticator app expects), its enrolment QR code, and one-time recovery codes.

use qrcodegen::{QrCode, QrCodeEcc};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Accept the previous and next 30 s step too (clock drift); NS8 accepts ±3.
const SKEW: u16 = 1;
pub const RECOVERY_CODES: usize = 10;

fn totp(secret_b32: &str, issuer: &str, account: &str) -> Option<Totp> {
    let secret = Secret::try_from_base32(secret_b32).ok()?;
    let mut builder = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(SKEW)
        .with_secret(secret);
    // ':' separates issuer and account in the URI; both are our own names anyway.
    if !issuer.contains(':') && !account.contains(':') {
        builder = builder.with_issuer(Some(issuer)).with_account_name(account);
    }
    builder.build().ok()
}

/// A new random 160-bit secret (RFC 4226's recommended length), in base32.
pub fn generate_secret() -> String {
    Secret::from(rand::random::<[u8; 20]>().to_vec()).to_base32()
}

/// Whether `secret` is a usable base32 TOTP secret (at least 128 bits).
pub fn valid_secret(secret: &str) -> bool {
    Secret::try_from_base32(secret).map(|s| s.as_bytes().len() >= 16).unwrap_or(false)
}

/// `otpauth://totp/<issuer>:<account>?secret=...&issuer=...`
pub fn otpauth_url(secret: &str, issuer: &str, account: &str) -> Option<String> {
    totp(secret, issuer, account)?.to_url().ok()
}

/// The step number `code` is valid for at `now`, if any. Callers must refuse a step
/// already used (RFC 6238 section 5.2).
pub fn check(secret: &str, code: &str, now: u64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp(secret, "x", "x")?.check(code, now)
}

/// The code an authenticator app shows at `now` (tests and diagnostics).
pub fn code_at(secret: &str, now: u64) -> Option<String> {
    Some(totp(secret, "x", "x")?.generate(now).to_string())
}

/// The QR code of `text` as a standalone SVG document.
pub fn qr_svg(text: &str) -> Option<String> {
    let qr = QrCode::encode_text(text, QrCodeEcc::Medium).ok()?;
    let border = 4;
    let size = qr.size() + 2 * border;
    let mut path = String::new();
    for y in 0..qr.size() {
        for x in 0..qr.size() {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + border, y + border));
            }
        }
    }
    Some(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" shape-rendering=\"crispEdges\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

/// Fresh recovery codes, `xxxxx-xxxxx` (50 bits each), shown to the user once.
pub fn generate_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    (0..RECOVERY_CODES)
        .map(|_| {
            let s = crate::password::random_string(ALPHABET, 10);
            format!("{}-{}", &s[..5], &s[5..])
        })
        .collect()
}

pub fn looks_like_recovery_code(code: &str) -> bool {
    code.len() == 11 && code.as_bytes()[5] == b'-'
}

/// What was stored of a recovery code before the codes were hashed with a key
/// ([`crate::crypt::DataKey::recovery_hash`]): still accepted, never written.
pub fn legacy_recovery_hash(code: &str) -> String {
    let digest = Sha256::digest(code.trim().to_ascii_lowercase().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", T = 59 s: 94287082 (8
        // digits); the 6-digit code is its last six digits.
        let secret = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        assert_eq!(code_at(&secret, 59).unwrap(), "287082");
        assert_eq!(check(&secret, "287082", 59), Some(1));
        assert_eq!(check(&secret, "287082", 59 + 30), Some(1), "previous step accepted");
        assert_eq!(check(&secret, "287082", 59 + 90), None, "too old");
        assert_eq!(check(&secret, "28708", 59), None);
        assert_eq!(check(&secret, "abcdef", 59), None);
    }

    #[test]
    fn enrolment_material() {
        let s = generate_secret();
        assert_eq!(s.len(), 32);
        assert!(valid_secret(&s));
        assert!(!valid_secret("not base32!"));
        assert!(!valid_secret("AAAA"));
        let url = otpauth_url(&s, "NethServer", "admin").unwrap();
        assert!(url.starts_with("otpauth://totp/NethServer:admin?secret="), "{url}");
        let svg = qr_svg(&url).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<path d=\"M"));
    }

    #[test]
    fn recovery_codes() {
        let codes = generate_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| looks_like_recovery_code(c)));
        assert_eq!(legacy_recovery_hash(&codes[0]), legacy_recovery_hash(&codes[0].to_uppercase()));
        assert_ne!(legacy_recovery_hash(&codes[0]), legacy_recovery_hash(&codes[1]));
    }
}
