//! The cluster agent's native actions: the cluster's name and its software
//! repositories, and the modules' install, update and removal. Later issues add nodes
//! and backups here.
//!
//! Layout: `install.rs`, `update.rs` and `removal.rs` are the three module actions,
//! each a saga (`agent_runtime::saga`) whose steps they define; `recovery.rs` finishes
//! the sagas a crash cut short; `consent.rs` what an image may get; `locks.rs` one
//! operation per module; `records.rs` the module's Redis records; `image.rs` the
//! image's labels; `repository.rs` the software repositories; `failure.rs` the failures'
//! text. Dependencies go one way: the actions use the helpers, never each other.

pub mod consent;
mod failure;
pub mod image;
pub mod install;
pub mod locks;
pub mod records;
pub mod recovery;
pub mod removal;
mod repository;
pub mod update;

use agent_runtime::saga::Sagas;
use agent_runtime::{ActionContext, ActionError, AgentConfig, NativeActions};
use bus::fred::prelude::*;
use protocol::actions::cluster;
use protocol::keys;
use serde_json::{Value, json};

/// NS8's default label.
const DEFAULT_NAME: &str = "NethServer 8";

/// Every step of the cluster's sagas, for their undo to be found after a crash.
pub fn sagas() -> Sagas {
    removal::steps(update::steps(install::steps(Sagas::new())))
}

pub fn natives(_: &AgentConfig) -> NativeActions {
    let sagas = sagas();
    let recovering = sagas.clone();
    NativeActions::new()
        .on_start(move |ctx| recovery::recover(ctx, recovering.clone()))
        .typed_with::<cluster::AddModule, _, _, _>(sagas.clone(), install::add)
        .typed_with::<cluster::RemoveModule, _, _, _>(sagas.clone(), removal::remove)
        .typed_with::<cluster::UpdateModule, _, _, _>(sagas, update::update)
        .add("add-repository", Some(repository::add_schema()), None, repository::add)
        .add("alter-repository", Some(repository::alter_schema()), None, repository::alter)
        .add("remove-repository", Some(repository::name_schema()), None, repository::remove)
        .add("list-repositories", None, Some(json!({"type": "array"})), repository::list)
        .add("list-modules", None, Some(json!({"type": "array"})), repository::list_modules)
        .add("list-installed-modules", None, Some(json!({"type": "object"})), repository::list_installed)
        .add("clean-repositories-cache", None, None, repository::clean_cache)
        .add(
            "get-name",
            None,
            Some(json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})),
            get_name,
        )
        .add(
            "set-name",
            Some(json!({
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\u0000-\\u001f]*$"}}
            })),
            None,
            set_name,
        )
}

async fn get_name(ctx: ActionContext, _: Value) -> Result<Value, ActionError> {
    let name: Option<String> = ctx.redis.get(keys::cluster_ui_name()).await?;
    Ok(json!({"name": name.unwrap_or_else(|| DEFAULT_NAME.to_owned())}))
}

async fn set_name(ctx: ActionContext, data: Value) -> Result<Value, ActionError> {
    // The input schema guarantees a string.
    let name = data["name"].as_str().unwrap_or_default().trim();
    if name.is_empty() {
        return Err(ActionError::invalid("name", data["name"].clone(), "string_gte"));
    }
    ctx.redis.set::<(), _, _>(keys::cluster_ui_name(), name, None, None, false).await?;
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use protocol::actions::schema_of;
    use serde_json::Value;

    use super::*;

    /// `$ref`s resolved against the schema's `$defs`, for reading limits.
    fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
            Some(name) => &root["$defs"][name],
            None => v,
        }
    }

    #[test]
    fn derived_schemas_keep_the_hand_written_limits() {
        let s = schema_of::<cluster::AddModuleRequest>();
        let p = &s["properties"];
        assert_eq!((p["image"]["minLength"].as_u64(), p["image"]["maxLength"].as_u64()), (Some(1), Some(512)));
        assert_eq!(p["node"]["minimum"], 1);
        assert_eq!(p["module_uuid"]["format"], "uuid");
        let accept = p["accept"]["anyOf"].as_array().map(|a| &a[0]).unwrap_or(&p["accept"]);
        let accept = resolve(&s, accept);
        assert_eq!(accept["additionalProperties"], false, "{accept}");
        let item = resolve(&s, &accept["properties"]["authorizations"]["items"]);
        assert_eq!((item["minLength"].as_u64(), item["maxLength"].as_u64()), (Some(3), Some(128)));
        let mut required: Vec<&str> = s["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        required.sort();
        assert_eq!(required, ["image", "node"]);

        let s = schema_of::<cluster::UpdateModuleRequest>();
        let p = &s["properties"];
        assert_eq!(p["module_url"]["maxLength"], 512);
        assert_eq!(p["instances"]["minItems"], 1);
        assert_eq!(resolve(&s, &p["instances"]["items"])["minLength"], 1);

        let s = schema_of::<cluster::RemoveModuleRequest>();
        assert_eq!(s["properties"]["module_id"]["minLength"], 1);
        assert_eq!(s["required"], serde_json::json!(["module_id"]));
    }

    #[test]
    fn every_saga_step_is_registered_once() {
        // Panics on a name registered twice.
        let _ = sagas();
    }
}
