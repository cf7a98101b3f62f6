//! The cluster agent's native actions: the cluster's name and its software
//! repositories, and the modules' install and removal. Later issues add nodes and
//! backups here.

pub mod image;
pub mod modules;
mod repository;

use agent_runtime::{ActionContext, ActionError, AgentConfig, NativeActions};
use bus::fred::prelude::*;
use protocol::keys;
use serde_json::{Value, json};

/// NS8's default label.
const DEFAULT_NAME: &str = "NethServer 8";

pub fn natives(cfg: &AgentConfig) -> NativeActions {
    let redis = cfg.redis.clone();
    NativeActions::new()
        .on_start(move |ctx| modules::recover(ctx, redis.clone()))
        .add_with("add-module", Some(modules::add_schema()), None, cfg.redis.clone(), modules::add)
        .add_with("remove-module", Some(modules::remove_schema()), None, cfg.redis.clone(), modules::remove)
        .add_with("update-module", Some(modules::update_schema()), None, cfg.redis.clone(), modules::update)
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
