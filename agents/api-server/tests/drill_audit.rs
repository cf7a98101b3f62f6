//! Restore drill reports, published by the cluster agent and kept in its event stream,
//! end up in the audit trail once each.

mod common;

use std::time::Duration;

use common::{Api, PASSWORD, PATIENCE};
use protocol::actions::backup::DrillReport;
use protocol::events::{BACKUP_DRILL_FINISHED, DrillFinished};
use serde_json::Value;
use testkit::{RedisServer, wait_for};

const STREAM: &str = "cluster/events";
const CURSOR: &str = "private/api/audit_events_cursor";

/// Append an event to the cluster's stream exactly as the runtime's recorder does
/// (`crates/agent-runtime/src/events.rs`); returns the entry id.
fn xadd_event(api: &Api, name: &str, payload: &str) -> String {
    let maxlen = protocol::keys::EVENT_STREAM_MAXLEN.to_string();
    let id = api.redis.cli(&["XADD", STREAM, "MAXLEN", "~", &maxlen, "*", "name", name, "payload", payload]).unwrap();
    assert!(id.contains('-'), "XADD: {id}");
    id
}

fn drill(backup_id: u64, module: &str, success: bool) -> DrillFinished {
    DrillFinished {
        backup_id,
        report: DrillReport {
            module_id: module.into(),
            start: 1_700_000_000,
            end: 1_700_000_042,
            success,
            error: (!success).then(|| "check-health answered 500".to_owned()),
            snapshot_id: Some("4bd1e9a0".into()),
            instance: Some("dokuwiki9".into()),
            restore_seconds: 37,
            repository_bytes: 123_456,
            health: None,
        },
    }
}

fn drill_records(api: &Api, token: &str) -> Vec<Value> {
    api.audit(token, &format!("action={BACKUP_DRILL_FINISHED}"))
}

/// Waits through 503s too (Redis coming back).
fn wait_drill_records(api: &Api, token: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} drill record(s) in the audit"), PATIENCE, || {
        let r = api.get(&format!("/api/audit?action={BACKUP_DRILL_FINISHED}"), token);
        let records = r.data()["audits"].as_array()?.clone();
        (r.status == 200 && records.len() >= n).then_some(records)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", api.log()))
}

fn wait_cursor(api: &Api, id: &str) {
    wait_for(&format!("the audit's cursor at {id}"), PATIENCE, || {
        (api.redis.cli(&["GET", CURSOR]).ok()? == id).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", api.log()));
}

fn report_of(record: &Value) -> DrillFinished {
    serde_json::from_str(record["data"].as_str().unwrap()).unwrap()
}

fn verify_ok(api: &Api, token: &str) {
    let v = api.get("/api/audit/verify", token);
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.data()["ok"], true, "{v:?}");
}

#[test]
fn drill_reports_are_audited_once_across_restarts() {
    // The server as it runs in a cluster: its own Redis user and ACL rules.
    let mut api = Api::start_with_acl("api-server-password");
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);

    let failed = drill(3, "dokuwiki1", false);
    let drill_id = xadd_event(&api, BACKUP_DRILL_FINISHED, &serde_json::to_string(&failed).unwrap());
    xadd_event(&api, "module-added", r#"{"module":"dokuwiki2","node":1}"#);
    // A drill event whose payload is not a report is skipped, not retried forever.
    let last = xadd_event(&api, BACKUP_DRILL_FINISHED, "not a report");
    wait_cursor(&api, &last);

    let records = wait_drill_records(&api, &token, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (r["user"].as_str(), r["source"].as_str(), r["agent"].as_str()),
        (Some("cluster"), Some("cluster"), Some("cluster"))
    );
    assert_eq!(r["task"], "");
    assert_eq!(report_of(r), failed);
    let data: Value = serde_json::from_str(r["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["module_id"], "dokuwiki1");
    assert_eq!(data["success"], false);
    assert_ne!(r["stream_id"], drill_id, "the record is the audit's own entry");
    let log = api.log();
    assert_eq!(log.matches("is not a drill report").count(), 1, "{log}");
    let actions = api.get("/api/audit/actions", &token);
    assert!(actions.data()["actions"].as_array().unwrap().contains(&BACKUP_DRILL_FINISHED.into()), "{actions:?}");
    verify_ok(&api, &token);

    // Restarted, the server reads on from its cursor: the old report is not audited
    // again, a new one is.
    api.restart_server();
    let token = api.token("admin", PASSWORD);
    let passed = drill(3, "dokuwiki3", true);
    let next = xadd_event(&api, BACKUP_DRILL_FINISHED, &serde_json::to_string(&passed).unwrap());
    wait_cursor(&api, &next);
    let records = wait_drill_records(&api, &token, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(report_of(&records[0]), passed, "newest first");
    assert_eq!(report_of(&records[1]), failed);
    let log = api.log();
    assert_eq!(log.matches("is not a drill report").count(), 1, "skipped entries are not read again: {log}");
    // A little later, still two.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(drill_records(&api, &token).len(), 2);
    verify_ok(&api, &token);
}

#[test]
fn drill_reports_are_audited_after_redis_comes_back() {
    let mut api = Api::start_on(RedisServer::start_persistent().unwrap(), &[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    let first = xadd_event(&api, "module-added", r#"{"module":"dokuwiki2","node":1}"#);
    wait_cursor(&api, &first);

    api.redis.stop();
    std::thread::sleep(Duration::from_millis(500));
    api.redis.restart().unwrap();
    let report = drill(1, "dokuwiki4", true);
    let id = xadd_event(&api, BACKUP_DRILL_FINISHED, &serde_json::to_string(&report).unwrap());
    wait_cursor(&api, &id);
    let records = wait_drill_records(&api, &token, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(report_of(&records[0]), report);

    // An error from Redis itself (the stream's key of the wrong type): logged once
    // while it lasts, retried, and the recovery logged. The read blocked when the key
    // changed ends empty at its timeout, which is no error.
    api.redis.cli(&["DEL", STREAM]).unwrap();
    api.redis.cli(&["SET", STREAM, "not a stream"]).unwrap();
    let failing = "cannot audit the cluster's drill reports";
    wait_for("the error in the log", PATIENCE, || api.log().contains(failing).then_some(()))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", api.log()));
    std::thread::sleep(Duration::from_millis(1500));
    let log = api.log();
    assert_eq!(log.matches(failing).count(), 1, "{log}");
    assert!(log.contains("WRONGTYPE"), "{log}");
    api.redis.cli(&["DEL", STREAM]).unwrap();
    let again = drill(1, "dokuwiki5", false);
    xadd_event(&api, BACKUP_DRILL_FINISHED, &serde_json::to_string(&again).unwrap());
    let records = wait_drill_records(&api, &token, 2);
    assert_eq!(report_of(&records[0]), again);
    // Logged once the read that found it has been handled.
    wait_for("the recovery in the log", PATIENCE, || api.log().contains("drill reports again").then_some(()))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", api.log()));
    verify_ok(&api, &token);
}

/// The record and the cursor move together, from the cursor's expected value only:
/// a writer that lost the race writes nothing.
#[test]
fn a_record_is_written_only_where_the_cursor_was() {
    use api_server::audit::{Audit, AuditKey, CursorStep, Entry, Query};
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = bus::RedisConfig::new(bus::Address::parse(&redis.address()).unwrap());
        let client = bus::connect(&cfg, "test").await.unwrap();
        let audit = Audit::new(client, AuditKey::new(vec![7; 32]), dir.path().join("head"), 1000).unwrap();
        let entry = || Entry { user: "cluster".into(), action: BACKUP_DRILL_FINISHED.into(), ..Default::default() };
        let step = |expected, next| CursorStep { key: CURSOR, expected, next };
        assert!(audit.append_at_cursor(entry(), step(None, "5-0")).await.unwrap());
        // A stale writer (still expecting no cursor) and one from the future write nothing.
        assert!(!audit.append_at_cursor(entry(), step(None, "5-0")).await.unwrap());
        assert!(!audit.append_at_cursor(entry(), step(Some("6-0"), "7-0")).await.unwrap());
        assert!(audit.append_at_cursor(entry(), step(Some("5-0"), "6-0")).await.unwrap());
        let all = audit.query(&Query { limit: 100, ..Default::default() }).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(audit.verify().await.unwrap()["ok"], true);
    });
    assert_eq!(redis.cli(&["GET", CURSOR]).unwrap(), "6-0");
}
