//! Authorization on every request: roles and grants, reads included, and agent
//! identities limited to their grants and to loopback or the VPN.

mod common;

use common::{Api, PASSWORD};
use serde_json::json;

fn task_id(r: &common::Reply) -> String {
    assert_eq!(r.status, 201, "{r:?}");
    r.data()["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_role_allows_one_action_and_refuses_another() {
    let mut api = Api::start(&[]);
    api.start_agent("cluster-agent", "cluster");
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    api.add_user("operator", PASSWORD, &["reader:cluster"]);
    let admin = api.token("admin", PASSWORD);
    let op = api.token("operator", PASSWORD);

    // reader: get-* yes, set-name no (403, audited, nothing pushed).
    let id = task_id(&api.post("/api/cluster/tasks", &op, &json!({"action": "get-name"})));
    let r = api.wait_task("cluster", &id, &op);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["exit_code"], 0);
    let r = api.post("/api/cluster/tasks", &op, &json!({"action": "set-name", "data": {"name": "x"}}));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("may not run action \"set-name\" on cluster"), "{r:?}");
    assert_eq!(api.redis.cli(&["LLEN", "cluster/tasks"]).unwrap(), "0");

    // The task carries who asked, when, and its queue.
    let r = api.get(&format!("/api/cluster/task/{id}/context"), &op);
    assert_eq!(r.status, 200, "{r:?}");
    let ctx = &r.data()["context"];
    assert_eq!(ctx["user"], "operator");
    assert_eq!(ctx["queue"], "cluster/tasks");
    assert!(ctx["timestamp"].as_str().unwrap().ends_with('Z'));

    // Reads are checked too: the operator cannot read the admin's set-name task.
    let admin_task =
        task_id(&api.post("/api/cluster/tasks", &admin, &json!({"action": "set-name", "data": {"name": "Acme"}})));
    assert_eq!(api.wait_task("cluster", &admin_task, &admin).status, 200);
    let r = api.get(&format!("/api/cluster/task/{admin_task}/status"), &op);
    assert_eq!(r.status, 403, "{r:?}");
    let r = api.get(&format!("/api/cluster/task/{admin_task}/context"), &op);
    assert_eq!(r.status, 403, "{r:?}");
    let listed = api.get("/api/cluster/tasks", &op);
    let keys: Vec<&String> = listed.data()["tasks"].as_object().unwrap().keys().collect();
    assert!(keys.iter().any(|k| k.ends_with(&id)), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(&admin_task)), "{keys:?}");
    let all = api.get("/api/cluster/tasks", &admin);
    assert!(all.data()["tasks"].as_object().unwrap().keys().any(|k| k.ends_with(&admin_task)));
    // Reading the audit trail needs read-audit; user admin needs list-users.
    assert_eq!(api.get("/api/audit", &op).status, 200);
    let r = api.post("/api/users", &op, &json!({"user": "eve", "password": PASSWORD}));
    assert_eq!(r.status, 403, "{r:?}");

    // A custom role granted through the API allows set-name; revoking it refuses again.
    api.redis.cli(&["SADD", "cluster/roles/namer", "set-name"]).unwrap();
    let grant = json!({"subject": "operator", "on": "cluster", "role": "namer"});
    let r = api.post("/api/grants", &op, &grant);
    assert_eq!(r.status, 403, "operator may not grant itself: {r:?}");
    let r = api.post("/api/grants", &admin, &json!({"subject": "operator", "on": "cluster", "role": "nosuch"}));
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(api.post("/api/grants", &admin, &grant).status, 200);
    assert_eq!(api.redis.cli(&["HGET", "roles/operator", "cluster"]).unwrap(), "reader,namer");
    let r = api.post("/api/cluster/tasks", &op, &json!({"action": "set-name", "data": {"name": "Ops"}}));
    assert_eq!(api.wait_task("cluster", &task_id(&r), &op).data()["exit_code"], 0);
    let r = api.request("DELETE", "/api/grants?subject=operator&on=cluster&role=namer", Some(&admin), None, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = api.post("/api/cluster/tasks", &op, &json!({"action": "set-name", "data": {"name": "x"}}));
    assert_eq!(r.status, 403, "{r:?}");

    let audits = api.audit(&admin, "");
    let count = |action: &str| audits.iter().filter(|a| a["action"] == action).count();
    assert_eq!(count("auth-fail"), 2, "{audits:?}");
    assert_eq!(count("grant-role"), 1);
    assert_eq!(count("revoke-role"), 1);
    assert_eq!(count("create-task"), 3);
    let created = audits.iter().find(|a| a["action"] == "create-task" && a["task"] == id.as_str()).unwrap();
    assert_eq!(created["agent"], "cluster");
    assert_eq!(created["user"], "operator");
}

#[test]
fn a_module_identity_stays_within_its_grants_and_networks() {
    // The test client poses as the edge proxy to come from elsewhere.
    let mut api = Api::start(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    api.start_agent("cluster-agent", "cluster");
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let pw = "9b1d1f0a-module-password";
    let acl = format!(">{pw}");
    api.redis.cli(&["ACL", "SETUSER", "module/app1", "on", &acl, "~module/app1/*", "+@all"]).unwrap();
    api.redis.cli(&["SET", "cluster/network", "10.5.4.0/24"]).unwrap();
    api.redis.cli(&["HSET", "roles/module/app1", "cluster", "reader"]).unwrap();

    let r = api.login("module/app1", "wrong", None);
    assert_eq!(r.status, 401, "{r:?}");
    let token = api.token("module/app1", pw);
    let id = task_id(&api.post("/api/cluster/tasks", &token, &json!({"action": "get-name"})));
    assert_eq!(api.wait_task("cluster", &id, &token).status, 200);
    let r = api.post("/api/cluster/tasks", &token, &json!({"action": "set-name", "data": {"name": "x"}}));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("module/app1 may not run action \"set-name\""), "{r:?}");
    let r = api.post("/api/node/1/tasks", &token, &json!({"action": "get-info"}));
    assert_eq!(r.status, 403, "no grant at all on node/1: {r:?}");

    // Agent identities: loopback or the VPN only, at login and on every request.
    let outside = [("X-Forwarded-For", "203.0.113.5")];
    let vpn = [("X-Forwarded-For", "10.5.4.7")];
    let body = json!({"username": "module/app1", "password": pw}).to_string();
    let r = api.request("POST", "/api/login", None, Some(&body), &outside);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("may not log in from your address"), "{r:?}");
    assert_eq!(api.request("POST", "/api/login", None, Some(&body), &vpn).status, 200);
    let r = api.request("GET", &format!("/api/cluster/task/{id}/status"), Some(&token), None, &outside);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("may not connect from 203.0.113.5"), "{r:?}");
    assert_eq!(api.request("GET", &format!("/api/cluster/task/{id}/status"), Some(&token), None, &vpn).status, 200);

    // A human user's allowed_networks apply the same way.
    api.add_user("remote", PASSWORD, &["owner:cluster"]);
    api.redis.cli(&["HSET", "user/remote", "allowed_networks", "192.0.2.0/24"]).unwrap();
    let body = json!({"username": "remote", "password": PASSWORD}).to_string();
    assert_eq!(api.request("POST", "/api/login", None, Some(&body), &outside).status, 401);
    let r = api.request("POST", "/api/login", None, Some(&body), &[("X-Forwarded-For", "192.0.2.44")]);
    assert_eq!(r.status, 200, "{r:?}");

    // The forwardAuth check for Traefik, with HTTP Basic credentials.
    api.redis.cli(&["SADD", "module/app1/roles/reader", "get-*"]).unwrap();
    api.redis.cli(&["HSET", "roles/admin", "module/app1", "reader"]).unwrap();
    use base64::Engine;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}")));
    let r = api.request("GET", "/api/module/app1/http-basic/get-config", None, None, &[("Authorization", &basic)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-auth-user"), Some("admin"));
    let r = api.request("GET", "/api/module/app1/http-basic/set-config", None, None, &[("Authorization", &basic)]);
    assert_eq!(r.status, 403, "{r:?}");
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:nope"));
    let r = api.request("GET", "/api/module/app1/http-basic/get-config", None, None, &[("Authorization", &wrong)]);
    assert_eq!(r.status, 401, "{r:?}");

    // The audit names the module identity and its source.
    let admin = api.token("admin", PASSWORD);
    let audits = api.audit(&admin, "user=module/app1");
    assert!(audits.iter().any(|a| a["action"] == "auth-fail"), "{audits:?}");
    assert!(audits.iter().any(|a| a["action"] == "login-fail" && a["source"] == "203.0.113.5"), "{audits:?}");
    assert!(audits.iter().any(|a| a["action"] == "login-ok" && a["source"] == "10.5.4.7"), "{audits:?}");
}
