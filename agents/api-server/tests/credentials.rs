//! Changes to credentials (password, 2FA) need the current ones, are throttled, and
//! end every session issued before them.

mod common;

use api_server::totp;
use common::{Api, PASSWORD};
use serde_json::{Value, json};

const NEW_PASSWORD: &str = "a brand new passphrase";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn ended(api: &Api, token: &str) {
    let r = api.get("/api/audit/users", token);
    assert_eq!(r.status, 401, "the old session still works: {r:?}");
    assert!(r.message().contains("changed: log in again"), "{r:?}");
}

fn works(api: &Api, token: &str) {
    let r = api.get("/api/audit/users", token);
    assert_eq!(r.status, 200, "{r:?}");
}

/// Enable 2FA for `user` (with its current password); returns the secret and the
/// fresh token.
fn enable_2fa(api: &Api, token: &str, password: &str) -> (String, String, Vec<String>) {
    let secret = api.get("/api/2FA/qr-code", token).data()["key"].as_str().unwrap().to_owned();
    let code = totp::code_at(&secret, now()).unwrap();
    let r = api.post("/api/2FA", token, &json!({"otp": code, "secret": secret, "current_password": password}));
    assert_eq!(r.status, 200, "{r:?}");
    let codes = r.data()["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
    (secret, r.data()["token"].as_str().unwrap().to_owned(), codes)
}

/// A code of `secret` not yet used: the next step's.
fn fresh_code(secret: &str, offset: u64) -> String {
    totp::code_at(secret, now() + offset).unwrap()
}

#[test]
fn a_password_change_needs_the_current_one_and_ends_every_older_session() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let first = api.token("admin", PASSWORD);
    let second = api.token("admin", PASSWORD);
    let path = "/api/users/admin/password";

    let r = api.post(path, &first, &json!({"new_password": NEW_PASSWORD}));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.message().contains("\"current_password\" missing"), "{r:?}");
    let r = api.post(path, &first, &json!({"new_password": NEW_PASSWORD, "current_password": "not it at all"}));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("wrong password"), "{r:?}");
    works(&api, &first);

    let r = api.post(path, &first, &json!({"new_password": NEW_PASSWORD, "current_password": PASSWORD}));
    assert_eq!(r.status, 200, "{r:?}");
    let fresh = r.data()["token"].as_str().expect("a fresh token").to_owned();
    assert!(r.data()["expire"].as_str().unwrap().ends_with('Z'));
    ended(&api, &first);
    ended(&api, &second);
    works(&api, &fresh);
    assert_eq!(api.login("admin", PASSWORD, None).status, 401);
    let again = api.token("admin", NEW_PASSWORD);
    works(&api, &again);
    let r = api.request("POST", "/api/refresh", Some(&first), None, &[]);
    assert_eq!(r.status, 401, "an ended session cannot be refreshed: {r:?}");
    // The failed attempt and the change are audited, no password in them.
    let audits = api.audit(&fresh, "action=reauth-fail,change-password");
    assert_eq!(audits.len(), 2, "{audits:?}");
    let text = serde_json::to_string(&audits).unwrap();
    assert!(!text.contains(NEW_PASSWORD) && !text.contains(PASSWORD) && !text.contains("not it at all"));
    assert!(!api.log().contains(NEW_PASSWORD));
}

#[test]
fn an_owner_resetting_a_password_ends_that_users_sessions() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    api.add_user("bob", PASSWORD, &["reader:cluster"]);
    api.add_user("eve", PASSWORD, &["reader:cluster"]);
    let admin = api.token("admin", PASSWORD);
    let bob = api.token("bob", PASSWORD);
    let eve = api.token("eve", PASSWORD);

    // A reader may not set another's password (and needs no current password to be
    // told so).
    let r = api.post("/api/users/bob/password", &eve, &json!({"new_password": NEW_PASSWORD}));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("alter-user"), "{r:?}");
    works(&api, &bob);

    let r = api.post("/api/users/bob/password", &admin, &json!({"new_password": NEW_PASSWORD}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data(), &Value::Null, "the admin's own session is not the one that changed");
    ended(&api, &bob);
    works(&api, &admin);
    works(&api, &eve);
    works(&api, &api.token("bob", NEW_PASSWORD));

    // The shell's set-password ends them too.
    let bob = api.token("bob", NEW_PASSWORD);
    let mut child = std::process::Command::new(common::BIN)
        .args(["set-password", "bob", "--password-stdin"])
        .env("REDIS_ADDRESS", api.redis.address())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(child.wait().unwrap().success());
    ended(&api, &bob);
}

#[test]
fn password_changes_are_throttled_like_logins() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    let path = "/api/users/admin/password";
    let mut i = 0;
    let checked = loop {
        i += 1;
        assert!(i < 30, "never throttled");
        let guess = format!("guess number {i}");
        let r = api.post(path, &token, &json!({"new_password": NEW_PASSWORD, "current_password": guess}));
        match r.status {
            403 => continue,
            429 => break i - 1,
            _ => panic!("{r:?}"),
        }
    };
    assert!(checked > api_server::throttle::FREE_PER_USER as usize, "back-off after the free failures: {checked}");
    // Even the right one waits now, and logins from this address too.
    let r = api.post(path, &token, &json!({"new_password": NEW_PASSWORD, "current_password": PASSWORD}));
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.header("retry-after").is_some());
    assert_eq!(api.login("admin", PASSWORD, None).status, 429);
    works(&api, &token);
}

#[test]
fn two_factor_changes_need_the_password_and_a_current_code() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    let other = api.token("admin", PASSWORD);

    // Enabling: the current password is required.
    let secret = api.get("/api/2FA/qr-code", &token).data()["key"].as_str().unwrap().to_owned();
    let code = totp::code_at(&secret, now()).unwrap();
    let r = api.post("/api/2FA", &token, &json!({"otp": code, "secret": secret}));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.message().contains("current_password"), "{r:?}");
    let r = api.post("/api/2FA", &token, &json!({"otp": code, "secret": secret, "current_password": "wrong one!"}));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(api.redis.cli(&["HEXISTS", "user/admin", "2fa"]).unwrap(), "0", "nothing stored");

    let (secret, token, recovery) = enable_2fa(&api, &token, PASSWORD);
    ended(&api, &other);
    works(&api, &token);

    // Disabling: refused without a code, with a wrong one, or without the password.
    let r =
        api.request("DELETE", "/api/2FA", Some(&token), Some(&json!({"current_password": PASSWORD}).to_string()), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("\"otp\" missing"), "{r:?}");
    let valid: Vec<String> =
        [now() - 30, now(), now() + 30].iter().map(|t| totp::code_at(&secret, *t).unwrap()).collect();
    let bad = (0..1_000_000).map(|n| format!("{n:06}")).find(|c| !valid.contains(c)).unwrap();
    let r = api.request(
        "DELETE",
        "/api/2FA",
        Some(&token),
        Some(&json!({"current_password": PASSWORD, "otp": bad}).to_string()),
        &[],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r = api.request("DELETE", "/api/2FA", Some(&token), None, &[]);
    assert_eq!(r.status, 400, "{r:?}");
    let code = fresh_code(&secret, 30);
    let r = api.request(
        "DELETE",
        "/api/2FA",
        Some(&token),
        Some(&json!({"current_password": "wrong one!", "otp": code}).to_string()),
        &[],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(api.get("/api/2FA", &token).data(), &json!(true), "still enabled");

    // Replacing the secret needs a code of the current one.
    let new_secret = api.get("/api/2FA/qr-code", &token).data()["key"].as_str().unwrap().to_owned();
    let new_code = totp::code_at(&new_secret, now()).unwrap();
    let replace = json!({"otp": new_code, "secret": new_secret, "current_password": PASSWORD});
    let r = api.post("/api/2FA", &token, &replace);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("\"current_otp\" missing"), "{r:?}");
    let mut with_code = replace.clone();
    with_code["current_otp"] = json!(recovery[0]);
    let r = api.post("/api/2FA", &token, &with_code);
    assert_eq!(r.status, 200, "{r:?}");
    ended(&api, &token);
    let token = r.data()["token"].as_str().unwrap().to_owned();
    works(&api, &token);

    // Disabling with the password and a current code of the new secret.
    let body = json!({"current_password": PASSWORD, "otp": fresh_code(&new_secret, 30)}).to_string();
    let r = api.request("DELETE", "/api/2FA", Some(&token), Some(&body), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    ended(&api, &token);
    let token = r.data()["token"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/api/2FA", &token).data(), &json!(false));
    works(&api, &api.token("admin", PASSWORD));
    let actions: Vec<String> = api.audit(&token, "").iter().map(|a| a["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(actions.iter().filter(|a| *a == "reauth-fail").count(), 5, "{actions:?}");
}

#[test]
fn totp_secrets_and_recovery_codes_are_not_in_clear_in_redis() {
    let mut api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    let (secret, _, recovery) = enable_2fa(&api, &token, PASSWORD);
    let stored = api.redis.cli(&["HGET", "user/admin", "2fa"]).unwrap();
    assert!(stored.starts_with("enc1:"), "{stored}");
    let dump = api.redis.cli(&["HGETALL", "user/admin"]).unwrap();
    assert!(!dump.contains(&secret), "{dump}");
    let hashes = api.redis.cli(&["SMEMBERS", "user/admin/2fa_recovery"]).unwrap();
    for code in &recovery {
        assert!(!hashes.contains(code.as_str()));
        assert!(!hashes.contains(&totp::legacy_recovery_hash(code)), "recovery codes are hashed with a key");
    }
    // The sealed secret still checks: login with a code, and with a recovery code.
    assert_eq!(api.login("admin", PASSWORD, Some(&fresh_code(&secret, 30))).status, 200);
    assert_eq!(api.login("admin", PASSWORD, Some(&recovery[1])).status, 200);
    // Sealed for its owner only: moved to another user it does not open.
    api.add_user("bob", PASSWORD, &[]);
    api.redis.cli(&["HSET", "user/bob", "2fa", &stored]).unwrap();
    let r = api.login("bob", PASSWORD, Some(&fresh_code(&secret, 0)));
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.message().contains("cannot be decrypted") && r.message().contains("reset-2fa bob"), "{r:?}");
    let out = std::process::Command::new(common::BIN)
        .args(["reset-2fa", "bob"])
        .env("REDIS_ADDRESS", api.redis.address())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(api.login("bob", PASSWORD, None).status, 200);

    // A secret stored in clear (from before, or from NS8) still works and is sealed:
    // at its first use, or at the next start of the server.
    let clear = totp::generate_secret();
    api.add_user("carol", PASSWORD, &[]);
    api.redis.cli(&["HSET", "user/carol", "2fa", &clear]).unwrap();
    assert_eq!(api.login("carol", PASSWORD, Some(&fresh_code(&clear, 0))).status, 200);
    assert!(api.redis.cli(&["HGET", "user/carol", "2fa"]).unwrap().starts_with("enc1:"));
    let dave = totp::generate_secret();
    api.add_user("dave", PASSWORD, &[]);
    api.redis.cli(&["HSET", "user/dave", "2fa", &dave]).unwrap();
    api.restart_server();
    testkit::wait_for("dave's secret to be sealed", common::PATIENCE, || {
        api.redis.cli(&["HGET", "user/dave", "2fa"]).ok().filter(|v| v.starts_with("enc1:"))
    })
    .unwrap();
    assert_eq!(api.login("dave", PASSWORD, Some(&fresh_code(&dave, 0))).status, 200);
    assert!(!api.log().contains(&secret) && !api.log().contains(&clear) && !api.log().contains(&dave));
    // The key is a file of the server's own, private.
    use std::os::unix::fs::PermissionsExt;
    for name in ["data-key", "audit-key", "secret"] {
        let mode = std::fs::metadata(api.tree.root().join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}
