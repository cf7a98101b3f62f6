//! The audit trail's hash chain detects an edited or a deleted record.

mod common;

use common::{Api, PASSWORD};

/// Rewrite the stream as someone with write access to Redis could: same ids, with
/// `edit` applied to each record's field/value list (`None` drops the record).
fn rewrite(api: &Api, edit: impl Fn(u64, Vec<String>) -> Option<Vec<String>>) {
    let raw = api.redis.cli(&["--json", "XRANGE", "private/audit", "-", "+"]).unwrap();
    let entries: Vec<(String, Vec<String>)> = serde_json::from_str(&raw).unwrap();
    api.redis.cli(&["DEL", "private/audit"]).unwrap();
    for (n, (id, fields)) in entries.into_iter().enumerate() {
        if let Some(fields) = edit(n as u64 + 1, fields) {
            let mut args = vec!["XADD".to_owned(), "private/audit".into(), id];
            args.extend(fields);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            api.redis.cli(&args).unwrap();
        }
    }
}

#[test]
fn the_chain_detects_edits_and_deletions() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    assert_eq!(api.login("admin", "bad password!", None).status, 401);
    assert_eq!(api.login("mallory", "bad password!", None).status, 401);
    let token = api.token("admin", PASSWORD);
    let v = api.get("/api/audit/verify", &token);
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.data()["ok"], true, "{v:?}");
    assert_eq!(v.data()["checked"], 3);
    assert_eq!(v.data()["head"]["id"], 3);
    let users = api.get("/api/audit/users", &token);
    assert_eq!(users.data()["users"], serde_json::json!(["admin", "mallory"]));

    // Someone hides mallory's attempt by renaming the user in record 2.
    rewrite(&api, |n, mut f| {
        if n == 2 {
            let i = f.iter().position(|x| x == "user").unwrap();
            f[i + 1] = "admin".into();
        }
        Some(f)
    });
    let v = api.get("/api/audit/verify", &token);
    assert_eq!(v.data()["ok"], false, "{v:?}");
    assert_eq!(v.data()["first_broken"]["id"], 2, "{v:?}");
    assert!(v.data()["first_broken"]["reason"].as_str().unwrap().contains("edited"), "{v:?}");

    // Or deletes it altogether (restoring record 2 first would need its old hash).
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    assert_eq!(api.login("mallory", "bad password!", None).status, 401);
    assert_eq!(api.login("mallory", "bad password!", None).status, 401);
    let token = api.token("admin", PASSWORD);
    rewrite(&api, |n, f| (n != 2).then_some(f));
    let v = api.get("/api/audit/verify", &token);
    assert_eq!(v.data()["ok"], false, "{v:?}");
    assert_eq!(v.data()["first_broken"]["id"], 3, "{v:?}");
    // New records keep chaining from the real head.
    assert_eq!(api.login("admin", "bad password!", None).status, 401);
    let records = api.audit(&token, "limit=2");
    assert_eq!(records[0]["prev"], records[1]["hash"]);
}

fn verify(api: &Api, token: &str) -> serde_json::Value {
    let v = api.get("/api/audit/verify", token);
    assert_eq!(v.status, 200, "{v:?}");
    v.data().clone()
}

/// The first keyed record is record 1; `n` more failed logins follow.
fn trail(n: usize) -> (Api, String) {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    for _ in 0..n {
        assert_eq!(api.login("mallory", "bad password!", None).status, 401);
    }
    (api, token)
}

fn field<'a>(fields: &'a [String], name: &str) -> &'a str {
    let i = fields.iter().position(|x| x == name).unwrap();
    &fields[i + 1]
}

fn set(fields: &mut [String], name: &str, value: &str) {
    let i = fields.iter().position(|x| x == name).unwrap();
    fields[i + 1] = value.to_owned();
}

#[test]
fn verify_reports_length_head_and_a_truncated_tail() {
    let (mut api, token) = trail(4);
    let v = verify(&api, &token);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["length"], 5);
    assert_eq!(v["head"]["id"], 5);
    assert_eq!(v["start"]["by"], "genesis");
    assert_eq!(v["written_head"], v["head"], "the server keeps the head it wrote");
    let head = std::fs::read_to_string(api.tree.root().join("audit-head")).unwrap();
    assert!(head.contains(v["head"]["hash"].as_str().unwrap()), "{head}");

    // The two newest records removed: the rest of the chain is intact, but shorter
    // than what this server wrote.
    rewrite(&api, |n, f| (n <= 3).then_some(f));
    let v = verify(&api, &token);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["first_broken"]["reason"].as_str().unwrap().contains("removed from the end"), "{v}");
    // Still seen after a restart of the server and new records: the server writes
    // the gap into the chain before going on.
    api.restart_server();
    let token = api.token("admin", PASSWORD);
    let v = verify(&api, &token);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["gaps"].as_array().unwrap().len(), 1, "{v}");
    let reason = v["first_broken"]["reason"].as_str().unwrap();
    assert!(reason.contains("ended at record 3 when this server had written up to record 5"), "{v}");
    assert_eq!(v["head"], v["written_head"]);
}

#[test]
fn a_chain_that_starts_midway_is_reported() {
    let (api, token) = trail(4);
    rewrite(&api, |n, f| (n > 2).then_some(f));
    let v = verify(&api, &token);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"]["id"], 3, "{v}");
    assert!(v["first_broken"]["reason"].as_str().unwrap().contains("without its genesis"), "{v}");
}

#[test]
fn a_recomputed_chain_is_reported() {
    use api_server::audit::{Entry, unkeyed_hash};
    let record = |f: &[String]| Entry {
        user: field(f, "user").into(),
        source: field(f, "source").into(),
        action: field(f, "action").into(),
        agent: field(f, "agent").into(),
        task: field(f, "task").into(),
        data: field(f, "data").into(),
    };
    // Record 2 edited and its hash recomputed without the key (the only hash one can
    // compute without it), the following ones relinked.
    let (api, token) = trail(3);
    let prev = std::cell::RefCell::new(String::new());
    rewrite(&api, |n, mut f| {
        if n == 2 {
            set(&mut f, "user", "admin");
        }
        if n >= 2 {
            set(&mut f, "prev", &prev.borrow());
            let seq: u64 = field(&f, "seq").parse().unwrap();
            let h = unkeyed_hash(seq, field(&f, "timestamp"), &record(&f), &prev.borrow());
            set(&mut f, "hash", &h);
        }
        *prev.borrow_mut() = field(&f, "hash").to_owned();
        Some(f)
    });
    let v = verify(&api, &token);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"]["id"], 2, "{v}");

    // The whole chain rewritten as old unkeyed records (no `v`): each consistent, but
    // not what this server wrote.
    let (api, token) = trail(3);
    let prev = std::cell::RefCell::new(String::new());
    rewrite(&api, |_, f| {
        let mut f: Vec<String> = f.chunks(2).filter(|kv| kv[0] != "v").flatten().cloned().collect();
        set(&mut f, "prev", &prev.borrow());
        let seq: u64 = field(&f, "seq").parse().unwrap();
        let h = unkeyed_hash(seq, field(&f, "timestamp"), &record(&f), &prev.borrow());
        set(&mut f, "hash", &h);
        *prev.borrow_mut() = h;
        Some(f)
    });
    let v = verify(&api, &token);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["first_broken"]["reason"].as_str().unwrap().contains("differs from the one this server wrote"), "{v}");
}

#[test]
fn old_unkeyed_records_are_read_and_reported_as_such() {
    use api_server::audit::{Entry, unkeyed_hash};
    let redis = testkit::RedisServer::start().unwrap();
    // Two records as the server wrote them before the chain was keyed.
    let mut prev = String::new();
    for seq in 1..=2u64 {
        let e =
            Entry { user: "old".into(), action: "login-ok".into(), source: "127.0.0.1".into(), ..Default::default() };
        let ts = "2026-01-01T00:00:00.000000Z";
        let h = unkeyed_hash(seq, ts, &e, &prev);
        let seq_s = seq.to_string();
        let args = [
            "XADD",
            "private/audit",
            "*",
            "seq",
            &seq_s,
            "timestamp",
            ts,
            "user",
            "old",
            "source",
            "127.0.0.1",
            "action",
            "login-ok",
            "agent",
            "",
            "task",
            "",
            "data",
            "",
            "prev",
            &prev,
            "hash",
            &h,
        ];
        redis.cli(&args).unwrap();
        prev = h;
    }
    let api = Api::start_on(redis, &[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    let v = verify(&api, &token);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!((v["length"].as_u64(), v["unkeyed"].as_u64()), (Some(3), Some(2)), "{v}");
    let records = api.audit(&token, "");
    assert_eq!(records[0]["keyed"], true);
    assert_eq!(records[0]["prev"], records[1]["hash"], "the keyed chain continues the old one");
    assert_eq!(records[2]["keyed"], false);
}

#[test]
fn trimming_anchors_the_chain_and_the_anchor_cannot_be_forged() {
    let api = Api::start(&[("AUDIT_MAXLEN", "5")]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    for _ in 0..12 {
        let _ = api.login("mallory", "bad password!", None);
    }
    let len: u64 = api.redis.cli(&["XLEN", "private/audit"]).unwrap().parse().unwrap();
    assert!((5..=6).contains(&len), "trimmed to about AUDIT_MAXLEN: {len}");
    let v = verify(&api, &token);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["start"]["by"], "trim anchor", "{v}");
    // Deleting the oldest retained record is still seen.
    rewrite(&api, |n, f| (n > 1).then_some(f));
    let v = verify(&api, &token);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["first_broken"]["reason"].as_str().unwrap().contains("trim anchor"), "{v}");
    // And so is an anchor moved to match, without the key.
    let first = api.redis.cli(&["--json", "XRANGE", "private/audit", "-", "+", "COUNT", "1"]).unwrap();
    let first: Vec<(String, Vec<String>)> = serde_json::from_str(&first).unwrap();
    let f = &first[0].1;
    api.redis.cli(&["HSET", "private/audit_anchor", "seq", field(f, "seq"), "prev", field(f, "prev")]).unwrap();
    let v = verify(&api, &token);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["first_broken"]["reason"].as_str().unwrap().contains("not made with the audit key"), "{v}");
}
