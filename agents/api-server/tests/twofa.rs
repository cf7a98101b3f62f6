//! TOTP enrolment, login with a code or a recovery code, replay refusal, disabling.

mod common;

use api_server::totp;
use base64::Engine;
use common::{Api, PASSWORD};
use serde_json::{Value, json};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn enrol_login_with_codes_and_disable() {
    let api = Api::start(&[("ISSUER", "Acme")]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    assert_eq!(api.get("/api/2FA", &token).data(), &json!(false));

    let qr = api.get("/api/2FA/qr-code", &token);
    assert_eq!(qr.status, 200, "{qr:?}");
    let secret = qr.data()["key"].as_str().unwrap().to_owned();
    let url = qr.data()["url"].as_str().unwrap();
    assert!(url.starts_with("otpauth://totp/Acme:admin?"), "{url}");
    assert!(url.contains(&format!("secret={secret}")), "{url}");
    assert!(qr.data()["svg"].as_str().unwrap().starts_with("<svg"));
    // Not stored until verified.
    assert_eq!(api.redis.cli(&["HGET", "user/admin", "2fa"]).unwrap(), "");

    let wrong = api.post("/api/2FA", &token, &json!({"otp": "12345", "secret": secret}));
    assert_eq!(wrong.status, 400, "{wrong:?}");
    let code = totp::code_at(&secret, now()).unwrap();
    let r = api.post("/api/2FA", &token, &json!({"otp": code, "secret": secret, "current_password": PASSWORD}));
    assert_eq!(r.status, 200, "{r:?}");
    // Earlier sessions ended with the change; the answer carries a fresh token.
    let token = r.data()["token"].as_str().unwrap().to_owned();
    let recovery: Vec<String> =
        r.data()["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(recovery.len(), totp::RECOVERY_CODES);
    assert_eq!(api.get("/api/2FA", &token).data(), &json!(true));
    // Only hashes of the recovery codes are stored.
    let stored = api.redis.cli(&["SMEMBERS", "user/admin/2fa_recovery"]).unwrap();
    assert_eq!(stored.lines().count(), totp::RECOVERY_CODES);
    assert!(recovery.iter().all(|c| !stored.contains(c.as_str())));

    // The password alone is no longer enough.
    let r = api.login("admin", PASSWORD, None);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().starts_with("OTP required"), "{r:?}");
    let valid: Vec<String> =
        [now() - 30, now(), now() + 30].iter().map(|t| totp::code_at(&secret, *t).unwrap()).collect();
    let bad = (0..1_000_000).map(|n| format!("{n:06}")).find(|c| !valid.contains(c)).unwrap();
    let r = api.login("admin", PASSWORD, Some(&bad));
    assert_eq!(r.status, 401, "{r:?}");
    // The enrolment code cannot be replayed to log in.
    let r = api.login("admin", PASSWORD, Some(&code));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("already used") || r.message().contains("wrong OTP"), "{r:?}");

    // The next code works once.
    let next = totp::code_at(&secret, now() + 30).unwrap();
    let r = api.login("admin", PASSWORD, Some(&next));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(claims(r.body["token"].as_str().unwrap())["2fa"], json!(true));
    let r = api.login("admin", PASSWORD, Some(&next));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("already used"), "{r:?}");

    // A recovery code works once.
    let r = api.login("admin", PASSWORD, Some(&recovery[3]));
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.body["token"].as_str().unwrap().to_owned();
    let r = api.login("admin", PASSWORD, Some(&recovery[3]));
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(api.redis.cli(&["SCARD", "user/admin/2fa_recovery"]).unwrap(), "9");

    // Disable: the password alone works again, and everything was audited.
    let body = json!({"current_password": PASSWORD, "otp": recovery[5]}).to_string();
    let r = api.request("DELETE", "/api/2FA", Some(&token), Some(&body), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(api.redis.cli(&["EXISTS", "user/admin/2fa_recovery"]).unwrap(), "0");
    let token = api.token("admin", PASSWORD);
    let actions: Vec<String> = api.audit(&token, "").iter().map(|a| a["action"].as_str().unwrap().to_owned()).collect();
    assert!(actions.contains(&"2fa-enable".to_owned()), "{actions:?}");
    assert!(actions.contains(&"2fa-disable".to_owned()), "{actions:?}");
    let fails = api.audit(&token, "action=login-fail");
    assert!(fails.iter().any(|a| a["data"].as_str().unwrap().contains("OTP required")));
    assert!(!api.server.log().contains(&secret), "the TOTP secret is never logged");
}
