//! The node's refusals through the real node agent and Redis: each is an NS8
//! validation error (exit code 10) whose `field` and `error` are the contract's
//! (`protocol::actions::node`), so the cluster can act on it without reading text.

use std::path::Path;
use std::process::Command;

use protocol::actions::Refusal;
use protocol::actions::node::{AddModuleRefusal, FinishUpdateRefusal, RemoveModuleRefusal};
use protocol::exit;
use protocol::task::{TaskResult, ValidationError};
use serde_json::json;
use testkit::agent::Fixture;

async fn start() -> Fixture {
    Fixture::start(Path::new(env!("CARGO_BIN_EXE_node-agent")), "node/1", &[]).await
}

/// The one validation error of `r`, checked to be `refusal` about `value`.
fn assert_refused<R: Refusal + PartialEq>(r: &TaskResult, refusal: R, value: &str) {
    assert_eq!(r.exit_code, exit::VALIDATION_FAILED, "{r:?}");
    let errors: Vec<ValidationError> = serde_json::from_value(r.output.clone()).expect("the validation shape");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, refusal.field());
    assert_eq!(errors[0].error, refusal.error());
    assert_eq!(errors[0].value, json!(value));
    assert_eq!(R::from_validation(&errors[0]), Some(refusal));
}

/// A person's account with a module-like name, removed on drop.
struct Person(String);

impl Person {
    fn new() -> Self {
        let name = format!("person{}", std::process::id());
        let _ = Command::new("userdel").args(["-r", &name]).output();
        let out = Command::new("useradd").args(["--create-home", &name]).output().unwrap();
        assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
        Person(name)
    }
}

impl Drop for Person {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-r", &self.0]).output();
    }
}

#[tokio::test]
async fn an_existing_unix_account_is_refused_by_add_and_remove() {
    let node = start().await;
    let person = Person::new();
    let image = "127.0.0.1:5000/ns8rs/hello:1.0.0";
    let r = node.run("add-module", json!({"module_id": person.0, "image_url": image, "environment": {}})).await;
    assert_refused(&r, AddModuleRefusal::UnixUserExists, &person.0);
    let r = node.run("remove-module", json!({"module_id": person.0})).await;
    assert_refused(&r, RemoveModuleRefusal::NotAModuleOfThisNode, &person.0);
    assert!(Path::new(&format!("/home/{}", person.0)).is_dir(), "the account was left alone");
    assert!(!node.tree.state().join("modules").join(&person.0).exists(), "nothing recorded");
}

#[tokio::test]
async fn finishing_an_update_that_is_not_in_progress_is_refused() {
    let node = start().await;
    // A module the node made (its record), with no operation in progress.
    let dir = node.tree.state().join("modules/web7");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("module.json"), r#"{"id":"web7","rootful":true,"uid":null}"#).unwrap();
    for outcome in ["commit", "rollback"] {
        let r = node.run("finish-update", json!({"module_id": "web7", "outcome": outcome})).await;
        assert_refused(&r, FinishUpdateRefusal::NoUpdateInProgress, "web7");
    }
}

#[tokio::test]
async fn the_inputs_schemas_come_from_the_contracts() {
    let node = start().await;
    let r = node.run("list-actions", serde_json::Value::Null).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let text = r.output.to_string();
    for name in ["add-module", "remove-module", "update-module", "finish-update", "allocate-ports", "deallocate-ports"]
    {
        assert!(text.contains(name), "{name} in {text}");
    }
    // The limits the hand-written schemas had, now derived from the types.
    let r = node.run("add-module", json!({"module_id": "Bad", "image_url": "x", "environment": {}})).await;
    assert_eq!(r.exit_code, exit::VALIDATION_FAILED, "{r:?}");
    let r = node.run("allocate-ports", json!({"ports": 1001, "module_id": "app1", "protocol": "tcp"})).await;
    assert_eq!(r.exit_code, exit::VALIDATION_FAILED, "{r:?}");
    let r = node.run("deallocate-ports", json!({"module_id": "app1", "protocol": "sctp"})).await;
    assert_eq!(r.exit_code, exit::VALIDATION_FAILED, "{r:?}");
}
