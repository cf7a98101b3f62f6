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
