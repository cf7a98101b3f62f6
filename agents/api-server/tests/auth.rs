//! Login, wrong passwords, throttling, token expiry, refresh and revocation.

mod common;

use common::{Api, PASSWORD};
use serde_json::json;

#[test]
fn login_ok_and_wrong_password() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let r = api.login("admin", PASSWORD, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["code"], 200);
    assert!(r.body["expire"].as_str().unwrap().ends_with('Z'));
    let token = r.body["token"].as_str().unwrap().to_owned();

    let r = api.login("admin", "wrong password!", None);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.message(), "wrong user name or password");
    // An unknown user gets the very same answer.
    let r = api.login("nobody", PASSWORD, None);
    assert_eq!((r.status, r.message()), (401, "wrong user name or password"));
    let r = api.login("default", "", None);
    assert_eq!(r.status, 401);

    // The password is stored as an argon2id hash only.
    let stored = api.redis.cli(&["HGET", "user/admin", "password_hash"]).unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    let dump = api.redis.cli(&["HGETALL", "user/admin"]).unwrap();
    assert!(!dump.contains(PASSWORD));
    assert!(!api.server.log().contains(PASSWORD));

    let audits = api.audit(&token, "action=login-ok,login-fail");
    let fails: Vec<_> = audits.iter().filter(|a| a["action"] == "login-fail").collect();
    assert_eq!(fails.len(), 3, "{audits:?}");
    assert!(fails.iter().any(|a| a["user"] == "default"));
    assert!(fails.iter().any(|a| a["user"] == "nobody" && a["source"] == "127.0.0.1"));
    assert!(audits.iter().any(|a| a["action"] == "login-ok" && a["user"] == "admin"));
    assert!(!serde_json::to_string(&audits).unwrap().contains(PASSWORD));
}

#[test]
fn bad_bodies_are_named_4xx_and_write_nothing() {
    let api = Api::start(&[]);
    api.define_builtin_roles("node/7");
    api.add_user("admin", PASSWORD, &["owner:cluster", "owner:node/7"]);
    let token = api.token("admin", PASSWORD);
    let before = api.redis.cli(&["DBSIZE"]).unwrap();
    let audit_len = api.redis.cli(&["XLEN", "private/audit"]).unwrap();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/api/login", "not json".into(), 400, "invalid JSON body"),
        ("POST", "/api/login", "{}".into(), 400, "missing field `username`"),
        ("POST", "/api/login", json!({"username": "a", "password": "x".repeat(20_000)}).to_string(), 413, "too large"),
        ("POST", "/api/cluster/tasks", "[1,2]".into(), 400, "invalid JSON body"),
        ("POST", "/api/cluster/tasks", json!({"action": "list-*"}).to_string(), 400, "invalid action name"),
        ("POST", "/api/cluster/tasks", json!({"action": "../etc"}).to_string(), 400, "invalid action name"),
        ("POST", "/api/cluster/tasks", json!({"action": "x".repeat(65)}).to_string(), 400, "invalid action name"),
        ("POST", "/api/cluster/tasks", json!({"action": "get-name", "parent": "a b"}).to_string(), 400, "parent"),
        ("POST", "/api/node/01/tasks", json!({"action": "get-info"}).to_string(), 400, "invalid node id"),
        ("POST", "/api/module/Bad!/tasks", json!({"action": "x"}).to_string(), 400, "invalid module id"),
        ("GET", "/api/cluster/task/a%20b/status", String::new(), 400, "invalid task id"),
        ("POST", "/api/users", json!({"user": "Root", "password": PASSWORD}).to_string(), 400, "not a valid user name"),
        ("POST", "/api/users", json!({"user": "bob", "password": "short"}).to_string(), 400, "too short"),
        (
            "POST",
            "/api/grants",
            json!({"subject": "bob", "on": "nowhere", "role": "owner"}).to_string(),
            400,
            "field \"on\"",
        ),
        ("GET", "/api/audit?limit=0", String::new(), 400, "limit"),
        ("GET", "/api/audit?from=yesterday", String::new(), 400, "ISO 8601"),
        ("PUT", "/api/cluster/tasks", String::new(), 405, "Method Not Allowed"),
        ("GET", "/api/nothing/here", String::new(), 404, "API not found"),
    ];
    for (method, path, body, status, needle) in cases {
        let r = api.request(method, path, Some(&token), Some(&body), &[]);
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        assert_eq!(r.body["code"], status, "{method} {path}: envelope {r:?}");
        assert!(r.message().contains(needle), "{method} {path}: {:?} lacks {needle:?}", r.message());
    }
    // A task for an agent that is not running: 404 naming it, nothing pushed.
    let r = api.post("/api/node/7/tasks", &token, &json!({"action": "get-info"}));
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.message().contains("agent node/7 is not running"), "{r:?}");
    assert_eq!(api.redis.cli(&["EXISTS", "node/7/tasks"]).unwrap(), "0");
    assert_eq!(api.redis.cli(&["DBSIZE"]).unwrap(), before);
    assert_eq!(api.redis.cli(&["XLEN", "private/audit"]).unwrap(), audit_len);
}

#[test]
fn throttling_backs_off_per_user_and_address() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    for i in 0..5 {
        let r = api.login("admin", "wrong password!", None);
        assert_eq!(r.status, 401, "attempt {i}: {r:?}");
    }
    // The sixth failure starts the back-off: even the right password waits now.
    let r = api.login("admin", "wrong password!", None);
    assert_eq!(r.status, 401, "{r:?}");
    let r = api.login("admin", PASSWORD, None);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.message().contains("too many failed logins"), "{r:?}");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another user from another address is not affected.
    api.add_user("bob", PASSWORD, &[]);
    let other = api.request(
        "POST",
        "/api/login",
        None,
        Some(&json!({"username": "bob", "password": PASSWORD}).to_string()),
        &[("X-Forwarded-For", "192.0.2.10")],
    );
    assert_eq!(other.status, 200, "{other:?}");
    // After the wait, the right password works and clears the user's counter.
    std::thread::sleep(std::time::Duration::from_millis(retry * 1000 + 100));
    let r = api.login("admin", PASSWORD, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(api.redis.cli(&["EXISTS", "private/api/throttle/user/admin"]).unwrap(), "0");
    let token = r.body["token"].as_str().unwrap().to_owned();
    let audits = api.audit(&token, "action=login-fail");
    assert!(audits.iter().any(|a| a["data"].as_str().unwrap().contains("throttled")), "{audits:?}");
}

#[test]
fn tokens_expire_refresh_and_die_at_logout() {
    let api = Api::start(&[("TOKEN_LIFETIME", "2")]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    assert_eq!(api.get("/api/cluster/tasks", &token).status, 200);

    // Refresh: a new token, and the old one is revoked.
    let r = api.request("POST", "/api/refresh", Some(&token), None, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let fresh = r.body["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, token);
    let r = api.get("/api/cluster/tasks", &token);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("revoked"), "{r:?}");

    // Expiry.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let r = api.get("/api/cluster/tasks", &fresh);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("expired"), "{r:?}");

    // Logout revokes at once, with a TTL so the revocation list does not grow.
    let token = api.token("admin", PASSWORD);
    let r = api.request("POST", "/api/logout", Some(&token), None, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = api.get("/api/cluster/tasks", &token);
    assert_eq!(r.status, 401, "{r:?}");
    let keys = api.redis.cli(&["KEYS", "private/api/revoked/*"]).unwrap();
    for k in keys.lines() {
        let ttl: i64 = api.redis.cli(&["TTL", k]).unwrap().parse().unwrap();
        assert!((1..=2).contains(&ttl), "{k} ttl {ttl}");
    }
    // A forged token (other key) and no token at all.
    let r = api.request("GET", "/api/cluster/tasks", None, None, &[]);
    assert_eq!(r.status, 401);
    assert!(r.message().contains("authentication required"), "{r:?}");
    let r = api.get("/api/cluster/tasks", "eyJhbGciOiJIUzI1NiJ9.e30.bm90IGEgc2lnbmF0dXJl");
    assert_eq!(r.status, 401);
}

#[test]
fn redis_down_is_a_503_then_service_resumes() {
    let mut api = Api::start_on(testkit::RedisServer::start_persistent().unwrap(), &[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    api.redis.stop();
    let started = std::time::Instant::now();
    let r = api.get("/api/cluster/tasks", &token);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.message().contains("Redis"), "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "answered in {:?}", started.elapsed());
    api.redis.restart().unwrap();
    let ok = testkit::wait_for("the api-server to reconnect", common::PATIENCE, || {
        (api.get("/api/cluster/tasks", &token).status == 200).then_some(())
    });
    assert!(ok.is_ok(), "{}", api.server.log());
}
