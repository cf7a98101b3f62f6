//! The api-server works with its least-privilege Redis user (`REDIS_ACL_RULES`), and
//! that user cannot do what it does not need.

mod common;

use common::{Api, PASSWORD};
use serde_json::json;

#[test]
fn works_with_its_own_acl_user() {
    let acl_pw = "0f4c2a5e-api-server-redis-password";
    let mut api = Api::start_with_acl(acl_pw);
    // The rules are what they claim: no FLUSHALL, no CONFIG, no foreign channel.
    let as_api = |args: &[&str]| {
        let mut all = vec!["--user", "api-server", "--pass", acl_pw, "--no-auth-warning"];
        all.extend_from_slice(args);
        api.redis.cli(&all).unwrap()
    };
    assert!(as_api(&["FLUSHALL"]).contains("NOPERM"));
    assert!(as_api(&["CONFIG", "GET", "dir"]).contains("NOPERM"));
    assert!(as_api(&["PUBLISH", "cluster/event/x", "{}"]).contains("NOPERM"));
    assert!(as_api(&["ROLE"]).contains("master"));

    api.start_agent("cluster-agent", "cluster");
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);
    let r = api.post("/api/cluster/tasks", &token, &json!({"action": "get-name"}));
    assert_eq!(r.status, 201, "{r:?}\n{}", api.server.log());
    let id = r.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(api.wait_task("cluster", &id, &token).data()["exit_code"], 0);
    assert_eq!(api.login("admin", "wrong password!", None).status, 401);
    assert_eq!(api.get("/api/audit/verify", &token).data()["ok"], true);
    assert_eq!(api.get("/api/cluster/tasks", &token).status, 200);
    assert_eq!(api.request("POST", "/api/logout", Some(&token), None, &[]).status, 200);
    assert_eq!(api.get("/api/cluster/tasks", &token).status, 401);
    assert!(!api.server.log().contains("NOPERM"), "{}", api.server.log());
}
