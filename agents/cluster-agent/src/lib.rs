//! The cluster agent's native actions: the cluster's name and its software
//! repositories, the modules' install, update and removal, and backup destinations.
//! Later issues add nodes here.
//!
//! Layout: `install.rs`, `update.rs` and `removal.rs` are the three module actions,
//! each a saga (`agent_runtime::saga`) whose steps they define; `recovery.rs` finishes
//! the sagas a crash cut short; `consent.rs` what an image may get; `locks.rs` one
//! operation per module; `records.rs` the module's Redis records; `image.rs` the
//! image's labels; `repository.rs` the software repositories; `backup.rs` the backup
//! destinations, `plans.rs` the backup plans, `calendar.rs` their schedules, `runs.rs`
//! their runs, `schedule.rs` their timer, `drill.rs` the restore drills, `browse.rs`
//! the destinations' content, `disaster.rs` the cluster's own backup and its disaster
//! recovery; `failure.rs` the failures' text. Dependencies go one way: the actions use the helpers, never each other.

pub mod backup;
pub mod browse;
pub mod calendar;
pub mod consent;
pub mod disaster;
pub mod drill;
mod failure;
pub mod image;
pub mod install;
pub mod locks;
pub mod plans;
pub mod records;
pub mod recovery;
pub mod removal;
mod repository;
pub mod restore;
pub mod runs;
pub mod schedule;
pub mod update;

use agent_runtime::saga::Sagas;
use agent_runtime::{ActionContext, ActionError, AgentConfig, NativeActions};
use bus::fred::prelude::*;
use protocol::actions::{backup as destinations, cluster, disaster as dr};
use protocol::keys;
use serde_json::{Value, json};

/// NS8's default label.
const DEFAULT_NAME: &str = "NethServer 8";

/// Every step of the cluster's sagas, for their undo to be found after a crash.
pub fn sagas() -> Sagas {
    restore::steps(removal::steps(update::steps(install::steps(Sagas::new()))))
}

pub fn natives(_: &AgentConfig) -> NativeActions {
    let sagas = sagas();
    let recovering = sagas.clone();
    NativeActions::new()
        .on_start(move |ctx| {
            let sagas = recovering.clone();
            async move {
                recovery::recover(ctx.clone(), sagas).await;
                schedule::start(ctx).await;
            }
        })
        .typed_with::<cluster::AddModule, _, _, _>(sagas.clone(), install::add)
        .typed_with::<cluster::RemoveModule, _, _, _>(sagas.clone(), removal::remove)
        .typed_with::<cluster::UpdateModule, _, _, _>(sagas.clone(), update::update)
        .typed_with::<destinations::RestoreModule, _, _, _>(sagas.clone(), restore::restore)
        .typed_with::<destinations::RunDrill, _, _, _>(sagas.clone(), drill::drill)
        .typed_with::<dr::RestoreModules, _, _, _>(sagas, disaster::restore_modules)
        .typed::<dr::DownloadClusterBackup, _, _>(disaster::download)
        .typed::<dr::RetrieveClusterBackup, _, _>(disaster::retrieve)
        .typed::<dr::RestoreCluster, _, _>(disaster::restore_cluster)
        .typed::<cluster::AddRepository, _, _>(repository::add)
        .typed::<cluster::AlterRepository, _, _>(repository::alter)
        .typed::<cluster::RemoveRepository, _, _>(repository::remove)
        .add("list-repositories", None, Some(json!({"type": "array"})), repository::list)
        .add("list-modules", None, Some(json!({"type": "array"})), repository::list_modules)
        .add("list-installed-modules", None, Some(json!({"type": "object"})), repository::list_installed)
        .add("clean-repositories-cache", None, None, repository::clean_cache)
        .typed::<destinations::AddBackupRepository, _, _>(backup::add)
        .typed::<destinations::AlterBackupRepository, _, _>(backup::alter)
        .typed::<destinations::RemoveBackupRepository, _, _>(backup::remove)
        .typed::<destinations::ListBackupRepositories, _, _>(backup::list)
        .typed::<destinations::AddBackup, _, _>(plans::add)
        .typed::<destinations::AlterBackup, _, _>(plans::alter)
        .typed::<destinations::RemoveBackup, _, _>(plans::remove)
        .typed::<destinations::ListBackups, _, _>(plans::list)
        .typed::<destinations::RunBackup, _, _>(runs::run)
        .typed::<destinations::ReadBackupSnapshots, _, _>(restore::snapshots)
        .typed::<destinations::ReadBackupRepositories, _, _>(browse::repositories)
        .typed::<destinations::DetermineRestoreEligibility, _, _>(browse::eligibility)
        .typed::<cluster::GetName, _, _>(get_name)
        .typed::<cluster::SetName, _, _>(set_name)
}

async fn get_name(ctx: ActionContext, _: Value) -> Result<cluster::ClusterName, ActionError> {
    let name: Option<String> = ctx.redis.get(keys::cluster_ui_name()).await?;
    Ok(cluster::ClusterName { name: name.unwrap_or_else(|| DEFAULT_NAME.to_owned()) })
}

async fn set_name(ctx: ActionContext, req: cluster::ClusterName) -> Result<(), ActionError> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(ActionError::invalid("name", json!(req.name), "string_gte"));
    }
    ctx.redis.set::<(), _, _>(keys::cluster_ui_name(), name, None, None, false).await?;
    Ok(())
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

        let s = schema_of::<cluster::AddRepositoryRequest>();
        let p = &s["properties"];
        assert_eq!(p["name"]["pattern"], cluster::REPOSITORY_NAME_PATTERN);
        assert_eq!(
            (p["url"]["pattern"].as_str(), p["url"]["maxLength"].as_u64()),
            (Some(r"^(https?|file)://[^\s]+$"), Some(2048))
        );
        assert_eq!((p["status"]["type"].as_str(), p["status"]["default"].as_bool()), (Some("boolean"), Some(true)));
        assert_eq!(s["required"], serde_json::json!(["name", "url"]));
        let s = schema_of::<cluster::AlterRepositoryRequest>();
        assert_eq!(s["required"], serde_json::json!(["name"]));
        let s = schema_of::<cluster::ClusterName>();
        let name = &s["properties"]["name"];
        assert_eq!((name["minLength"].as_u64(), name["maxLength"].as_u64()), (Some(1), Some(64)));
        assert_eq!(name["pattern"], "^[^\\u0000-\\u001f]*$");
    }

    #[test]
    fn every_saga_step_is_registered_once() {
        // Panics on a name registered twice.
        let _ = sagas();
    }
}
