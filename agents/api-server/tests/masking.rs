//! Secret task fields never reach what readers may read: the task context (masked by
//! the agent, which also sees the action's input schema) and the audit trail (masked
//! by the api-server, by names).

mod common;

use common::{Api, PASSWORD};
use serde_json::json;

#[test]
fn secret_fields_stay_out_of_the_context_and_the_audit() {
    let mut api = Api::start(&[]);
    let app = api.start_agent("module-agent", "module/app1");
    let schema = r#"{"type": "object", "properties": {"login": {"type": "string", "writeOnly": true}}}"#;
    api.agents[app].0.file("store", "validate-input.json", schema).unwrap();
    api.agents[app].0.step("store", "10ok", "#!/bin/sh\ncat >/dev/null\necho '{}'\n").unwrap();
    api.add_user("admin", PASSWORD, &["owner:cluster", "owner:module/app1"]);
    let token = api.token("admin", PASSWORD);

    let secrets = ["login-clear-1", "pp-clear-2", "ak-clear-3", "sc-clear-4", "tk-clear-5", "cr-clear-6"];
    let data = json!({
        "login": secrets[0],
        "db": {"passphrase": secrets[1]},
        "apiKey": secrets[2],
        "accounts": [{"session_cookie": secrets[3]}, {"refresh_token": secrets[4]}],
        "credentials": {"user": secrets[5]},
        "name": "visible",
        "key_type": "rsa"
    });
    let r = api.post("/api/module/app1/tasks", &token, &json!({"action": "store", "data": data}));
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(api.wait_task("module/app1", &id, &token).data()["exit_code"], 0);

    let context = api.get(&format!("/api/module/app1/task/{id}/context"), &token);
    let masked = &context.data()["context"]["data"];
    assert_eq!(
        masked,
        &json!({
            "login": "XXX", "db": {"passphrase": "XXX"}, "apiKey": "XXX",
            "accounts": [{"session_cookie": "XXX"}, {"refresh_token": "XXX"}],
            "credentials": "XXX", "name": "visible", "key_type": "rsa"
        }),
        "by schema and by names"
    );
    let audit = api.audit(&token, "action=create-task");
    let recorded: serde_json::Value = serde_json::from_str(audit[0]["data"].as_str().unwrap()).unwrap();
    let recorded = &recorded["data"];
    assert_eq!(recorded["name"], "visible");
    for (path, what) in [
        ("/db/passphrase", 1),
        ("/apiKey", 2),
        ("/accounts/0/session_cookie", 3),
        ("/accounts/1/refresh_token", 4),
        ("/credentials", 5),
    ] {
        assert_eq!(recorded.pointer(path), Some(&json!("XXX")), "{path}: {}", secrets[what]);
    }
    let everything = format!("{}{}{}", serde_json::to_string(&audit).unwrap(), context.body, api.log());
    for s in &secrets[1..] {
        assert!(!everything.contains(s), "{s} leaked");
    }
}
