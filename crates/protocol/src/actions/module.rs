//! What the cluster asks of a module agent (`module/<id>`): NS8's base actions, run by
//! the module's own steps, so their replies are the module's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Never;

action! {
    /// `list-actions` (a builtin of every agent): the action names it has.
    ListActions = "list-actions", () => Vec<String>, Never
}

action! {
    /// `create-module`: the module's first configuration, run once after its install.
    CreateModule = "create-module", CreateModuleRequest => Value, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateModuleRequest {
    /// The service images its label lists.
    pub images: Vec<String>,
}

action! {
    /// `destroy-module`: the module's own cleanup before its removal.
    DestroyModule = "destroy-module", DestroyModuleRequest => Value, Never
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DestroyModuleRequest {}

action! {
    /// `update-module` (module half): the new image's own update steps.
    UpdateModule = "update-module", UpdateModuleRequest => Value, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateModuleRequest {
    pub module_url: String,
}

action! {
    /// `module-dump-state` (optional): the module writes a consistent dump of its data
    /// (a database's) under `state/` before a backup.
    DumpState = "module-dump-state", Value => Value, Never
}

action! {
    /// `module-cleanup-state` (optional): the module removes that dump after the backup.
    CleanupState = "module-cleanup-state", Value => Value, Never
}

action! {
    /// `check-health` (optional, beyond NS8): the module says whether it works, e.g.
    /// DokuWiki fetches its start page. Run on a drill's restored instance.
    CheckHealth = "check-health", Value => Value, Never
}
