//! `GET /api/cluster/backup/{token}/{file}`: the encrypted cluster backup that
//! `download-cluster-backup` stored in Redis, as bytes, for whoever may run that action.

mod common;

use common::{Api, PASSWORD};
use protocol::actions::disaster::{DOWNLOAD_FILE, DOWNLOAD_TTL_SECS};
use protocol::keys;
use serde_json::Value;

/// A token of the action's shape (64 lowercase hex), different for each `n`.
fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn path(token: &str) -> String {
    format!("/api/cluster/backup/{token}/{DOWNLOAD_FILE}")
}

/// Bytes that are not text: every byte value, NULs and invalid UTF-8 included, after
/// age's header, more than a few network buffers long.
fn dump() -> Vec<u8> {
    let mut d = b"age-encryption.org/v1\n-> scrypt ".to_vec();
    d.extend((0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    d.extend_from_slice(&[0, 0xff, 0xfe, 0x80, b'\r', b'\n', 0]);
    d
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn error(status: u16, body: &[u8]) -> (String, Value) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert_eq!(v["code"], status, "{v}");
    assert!(v.get("data").is_some(), "the error envelope: {v}");
    (v["message"].as_str().unwrap_or_default().to_owned(), v)
}

#[test]
fn an_owner_downloads_the_dump_byte_for_byte() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let admin = api.token("admin", PASSWORD);
    let t = token(0x3c);
    let bytes = dump();
    api.set_bytes(&keys::cluster_backup_download(&t), &bytes, DOWNLOAD_TTL_SECS as u64 * 1000);

    let (status, headers, body) = api.get_bytes(&path(&t), Some(&admin));
    assert_eq!(status, 200, "{headers:?} {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    assert_eq!(body.len(), bytes.len());
    assert!(body == bytes, "the downloaded bytes differ from the stored ones");
    assert_eq!(header(&headers, "content-type"), Some("application/octet-stream"));
    assert_eq!(header(&headers, "content-disposition"), Some("attachment; filename=\"dump.json.gz.age\""));
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    assert_eq!(header(&headers, "content-length"), Some(bytes.len().to_string().as_str()));
    // Downloadable again until it expires (a browser may retry).
    let (status, _, again) = api.get_bytes(&path(&t), Some(&admin));
    assert_eq!(status, 200);
    assert!(again == bytes);

    // Audited, without the token (a capability) or the dump.
    let audits = api.audit(&admin, "action=download-cluster-backup-file");
    assert_eq!(audits.len(), 2, "{audits:?}");
    let a = &audits[0];
    assert_eq!((a["user"].as_str(), a["agent"].as_str()), (Some("admin"), Some("cluster")), "{a}");
    let data: Value = serde_json::from_str(a["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["bytes"], bytes.len(), "{data}");
    let text = serde_json::to_string(&audits).unwrap();
    assert!(!text.contains(&t), "the token is in the audit trail: {text}");
    assert!(!api.log().contains(&t), "the token is in the server's log");
    assert_eq!(api.get("/api/audit/verify", &admin).data()["ok"], true);
}

#[test]
fn only_who_may_run_download_cluster_backup_gets_it() {
    let api = Api::start(&[]);
    // A role allowing that action alone, as task creation would check it.
    api.redis.cli(&["SADD", "cluster/roles/backup-taker", "download-cluster-*"]).unwrap();
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    api.add_user("reader", PASSWORD, &["reader:cluster"]);
    api.add_user("taker", PASSWORD, &["backup-taker:cluster"]);
    api.add_user("nobody", PASSWORD, &[]);
    let t = token(0xa7);
    api.set_bytes(&keys::cluster_backup_download(&t), b"\x00secret dump\xff", 60_000);

    for user in ["reader", "nobody"] {
        let session = api.token(user, PASSWORD);
        let (status, headers, body) = api.get_bytes(&path(&t), Some(&session));
        assert_eq!(status, 403, "{user}");
        assert!(header(&headers, "content-type").is_some_and(|c| c.starts_with("application/json")));
        let (message, v) = error(403, &body);
        assert_eq!(
            message,
            format!("{user} may not run action \"download-cluster-backup\" on cluster: no granted role allows it"),
            "{v}"
        );
        assert!(!body.windows(6).any(|w| w == b"secret"), "{user} got the dump");
    }
    // The same check as a task: the custom role allows it, through the task route too.
    let taker = api.token("taker", PASSWORD);
    let (status, _, body) = api.get_bytes(&path(&t), Some(&taker));
    assert_eq!(status, 200);
    assert_eq!(body, b"\x00secret dump\xff");
    let reader = api.token("reader", PASSWORD);
    let r = api.post("/api/cluster/tasks", &reader, &serde_json::json!({"action": "download-cluster-backup"}));
    assert_eq!(r.status, 403, "{r:?}");

    // The refusals are audited as task creation's are: auth-fail, the action named.
    let admin = api.token("admin", PASSWORD);
    let fails = api.audit(&admin, "action=auth-fail");
    let users: Vec<&str> = fails.iter().filter_map(|a| a["user"].as_str()).collect();
    assert_eq!(users, ["reader", "nobody", "reader"], "{fails:?}");
    for a in &fails {
        assert_eq!(a["agent"], "cluster");
        assert_eq!(a["data"], r#"{"action":"download-cluster-backup"}"#);
    }
    assert!(!serde_json::to_string(&fails).unwrap().contains(&t));
    let downloads = api.audit(&admin, "action=download-cluster-backup-file");
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(downloads[0]["user"], "taker");
}

#[test]
fn malformed_missing_and_expired_downloads_are_refused() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let admin = api.token("admin", PASSWORD);
    let good = token(0x5e);

    // Malformed tokens: 400, naming the token, without repeating it; nothing is read,
    // even when a key of that name exists.
    let upper = good.to_uppercase();
    api.set_bytes(&keys::cluster_backup_download(&upper), b"not for you", 60_000);
    let long = format!("{good}0");
    let short = &good[1..];
    let not_hex = format!("{}g", &good[1..]);
    for bad in [upper.as_str(), long.as_str(), short, not_hex.as_str(), "%2e%2e", "x"] {
        let (status, _, body) = api.get_bytes(&path(bad), Some(&admin));
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
        let (message, _) = error(400, &body);
        assert!(message.contains("\"token\"") && message.contains("64 lowercase hexadecimal"), "{message}");
        assert!(bad.len() < 3 || !message.contains(bad), "the token is repeated: {message}");
    }
    // Another file than the dump: 404, naming it.
    for file in ["dump.json.gz", "dump.json.gz.age.bak", "users.acl"] {
        let (status, _, body) = api.get_bytes(&format!("/api/cluster/backup/{good}/{file}"), Some(&admin));
        assert_eq!(status, 404, "{file}");
        let (message, _) = error(404, &body);
        assert!(message.contains("\"file\"") && message.contains(DOWNLOAD_FILE), "{message}");
    }
    // Nothing under the token, or expired.
    let (status, _, body) = api.get_bytes(&path(&good), Some(&admin));
    assert_eq!(status, 404);
    let (message, _) = error(404, &body);
    assert_eq!(message, "no such cluster backup download (it expires after an hour)");
    api.set_bytes(&keys::cluster_backup_download(&good), b"soon gone", 100);
    testkit::wait_for("the download to expire", common::PATIENCE, || {
        (api.redis.cli(&["EXISTS", &keys::cluster_backup_download(&good)]).ok()? == "0").then_some(())
    })
    .unwrap();
    let (status, _, body) = api.get_bytes(&path(&good), Some(&admin));
    assert_eq!(status, 404);
    assert_eq!(error(404, &body).0, "no such cluster backup download (it expires after an hour)");
    // Nothing downloaded, nothing audited as a download.
    assert!(api.audit(&admin, "action=download-cluster-backup-file").is_empty());
}

#[test]
fn a_download_needs_a_session() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let admin = api.token("admin", PASSWORD);
    let t = token(0x01);
    api.set_bytes(&keys::cluster_backup_download(&t), b"dump", 60_000);

    let (status, _, body) = api.get_bytes(&path(&t), None);
    assert_eq!(status, 401);
    assert!(error(401, &body).0.contains("authentication required"));
    let (status, _, body) = api.get_bytes(&path(&t), Some("not.a.token"));
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    // NS8's ?jwt= is refused here too.
    let (status, _, body) = api.get_bytes(&format!("{}?jwt={admin}", path(&t)), None);
    assert_eq!(status, 401);
    assert!(error(401, &body).0.contains("tokens in URLs are not accepted"));
    // A logged-out session is over.
    assert_eq!(api.request("POST", "/api/logout", Some(&admin), None, &[]).status, 200);
    let (status, _, _) = api.get_bytes(&path(&t), Some(&admin));
    assert_eq!(status, 401);
}
