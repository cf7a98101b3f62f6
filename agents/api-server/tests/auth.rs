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
fn throttling_backs_off_then_a_success_clears_the_account_counter() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let checked = fail_until_throttled(|| api.login("admin", "wrong password!", None).status);
    assert!(checked > api_server::throttle::FREE_PER_USER as usize, "back-off after the free failures: {checked}");
    // Backed off: even the right password waits now (refused at once, so well within
    // the wait the refusal just doubled).
    let r = api.login("admin", PASSWORD, None);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.message().contains("too many failed logins"), "{r:?}");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=16).contains(&retry), "{retry}");
    // After the wait, the right password works and clears the account's counter.
    std::thread::sleep(std::time::Duration::from_millis(retry * 1000 + 100));
    let r = api.login("admin", PASSWORD, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(api.redis.cli(&["EXISTS", "private/api/throttle/at/127.0.0.1/admin"]).unwrap(), "0");
    // Not the address's: a success there must not reset the budget for guessing.
    assert_ne!(api.redis.cli(&["HGET", "private/api/throttle/addr/127.0.0.1", "failures"]).unwrap(), "0");
    let token = r.body["token"].as_str().unwrap().to_owned();
    let audits = api.audit(&token, "action=login-fail");
    assert!(audits.iter().any(|a| a["data"].as_str().unwrap().contains("throttled")), "{audits:?}");
}

/// Send attempts until one is refused with 429 (at most 30); returns how many were
/// checked (401 or 403) before. Waiting for the refusal, rather than counting to the
/// budget, keeps the test independent of how long each password check takes.
fn fail_until_throttled(mut attempt: impl FnMut() -> u16) -> usize {
    for checked in 0..30 {
        match attempt() {
            429 => return checked,
            401 | 403 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    panic!("never throttled in 30 attempts");
}

/// A burst of guesses sent at once is counted attempt by attempt: only the free ones
/// and the first over budget reach the password check.
#[test]
fn parallel_wrong_logins_are_all_counted() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let threads: Vec<_> =
            (0..50).map(|_| scope.spawn(|| api.login("admin", "wrong password!", None).status)).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, 50, "{statuses:?}");
    assert!(
        (1..=api_server::throttle::FREE_PER_USER as usize + 1).contains(&checked),
        "{checked} passwords were checked: {statuses:?}"
    );
    for key in ["private/api/throttle/at/127.0.0.1/admin", "private/api/throttle/addr/127.0.0.1"] {
        assert_eq!(api.redis.cli(&["HGET", key, "failures"]).unwrap(), "50", "{key}");
    }
    assert_eq!(api.login("admin", PASSWORD, None).status, 429, "the account is backed off from here");
}

/// One address guessing at `admin` backs off that address, not the account: admin
/// still logs in from elsewhere. (The test client is the trusted proxy here.)
#[test]
fn one_address_cannot_lock_a_user_out_of_another() {
    let api = Api::start(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    api.add_user("bob", PASSWORD, &[]);
    let checked = fail_until_throttled(|| api.login_from("192.0.2.66", "admin", "wrong password!").status);
    assert!(checked > api_server::throttle::FREE_PER_USER as usize, "{checked}");
    let r = api.login_from("192.0.2.66", "admin", PASSWORD);
    assert_eq!(r.status, 429, "{r:?}");
    let r = api.login_from("198.51.100.20", "admin", PASSWORD);
    assert_eq!(r.status, 200, "admin from another address: {r:?}");
    // Guessing at many accounts from one address backs the address off for all.
    let mut n = 0;
    fail_until_throttled(|| {
        n += 1;
        api.login_from("192.0.2.66", &format!("user{n}"), "wrong password!").status
    });
    let r = api.login_from("192.0.2.66", "bob", PASSWORD);
    assert_eq!(r.status, 429, "the address's own budget is spent: {r:?}");
    assert_eq!(api.login_from("198.51.100.20", "bob", PASSWORD).status, 200);
    // IPv6 addresses of one /64 are one source.
    let mut i = 0;
    fail_until_throttled(|| {
        i += 1;
        api.login_from(&format!("2001:db8:7:7::{i:x}"), "admin", "wrong password!").status
    });
    assert_eq!(api.login_from("2001:db8:7:7::ffff", "admin", PASSWORD).status, 429);
    assert_eq!(api.login_from("2001:db8:7:8::1", "admin", PASSWORD).status, 200);
}

/// Without a trusted proxy configured, forwarding headers from any peer, loopback
/// included, are ignored: they neither dodge the throttle nor pass `allowed_networks`.
#[test]
fn a_spoofed_forwarded_for_changes_nothing() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let admin = api.token("admin", PASSWORD);
    let r = api.post(
        "/api/users",
        &admin,
        &json!({"user": "carol", "password": PASSWORD, "allowed_networks": ["192.0.2.0/24"]}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let spoof = [("X-Forwarded-For", "192.0.2.5"), ("X-Real-IP", "192.0.2.5"), ("Forwarded", "for=192.0.2.5")];
    let body = json!({"username": "carol", "password": PASSWORD}).to_string();
    let r = api.request("POST", "/api/login", None, Some(&body), &spoof);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("may not log in from your address"), "{r:?}");
    // A fresh address per guess does not reset the count: it is the peer's.
    let mut last = 0;
    for i in 0..12 {
        let wrong = json!({"username": "admin", "password": format!("guess {i}")}).to_string();
        last = api
            .request("POST", "/api/login", None, Some(&wrong), &[("X-Forwarded-For", &format!("203.0.113.{i}"))])
            .status;
    }
    assert_eq!(last, 429);
    let audits = api.audit(&admin, "action=login-fail");
    assert!(!audits.is_empty());
    assert!(audits.iter().all(|a| a["source"] == "127.0.0.1"), "{audits:?}");

    // Trusted, the proxy's header is what counts (X-Real-IP and Forwarded never are).
    let api = Api::start(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    api.add_user("carol", PASSWORD, &[]);
    api.redis.cli(&["HSET", "user/carol", "allowed_networks", "192.0.2.0/24"]).unwrap();
    assert_eq!(api.login_from("192.0.2.5", "carol", PASSWORD).status, 200);
    let r = api.request("POST", "/api/login", None, Some(&body), &spoof[1..]);
    assert_eq!(r.status, 401, "{r:?}");
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
