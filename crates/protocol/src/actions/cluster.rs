//! The cluster agent's module actions, as the api-server's clients call them (NS8
//! reference 10.2, 10.5, 10.6).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Never;

/// What the administrator accepts of an image's requests (each `list-modules`
/// version's `consent`): `selector:role` grants on other agents, rootful mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    #[serde(default)]
    pub authorizations: Vec<AuthorizationText>,
    #[serde(default)]
    pub rootfull: bool,
}

/// One `selector:role` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct AuthorizationText(#[schemars(length(min = 3, max = 128))] pub String);

action! {
    /// `add-module`.
    AddModule = "add-module", AddModuleRequest => AddModuleReply, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddModuleRequest {
    /// An image URL, or a module name from the enabled repositories.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    #[schemars(range(min = 1))]
    pub node: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "uuid"))]
    pub module_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddModuleReply {
    pub module_id: String,
    pub module_uuid: String,
    pub image_name: String,
    pub image_url: String,
    /// What the image asked for that is never granted to a module.
    pub not_granted: Vec<String>,
}

action! {
    /// `remove-module`.
    RemoveModule = "remove-module", RemoveModuleRequest => RemoveModuleReply, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemoveModuleRequest {
    #[schemars(length(min = 1))]
    pub module_id: String,
    #[serde(default)]
    pub preserve_data: bool,
    /// Remove it from the cluster even when its node or its own cleanup fails.
    #[serde(default)]
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemoveModuleReply {
    pub module_id: String,
    pub preserved: Option<String>,
}

action! {
    /// `update-module`.
    UpdateModule = "update-module", UpdateModuleRequest => UpdateModuleReply, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateModuleRequest {
    #[schemars(length(min = 1, max = 512))]
    pub module_url: String,
    #[schemars(length(min = 1))]
    pub instances: Vec<InstanceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
}

/// A module id as a request names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct InstanceId(#[schemars(length(min = 1))] pub String);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateModuleReply {
    pub image_url: String,
    pub instances: Vec<UpdatedInstance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdatedInstance {
    pub module_id: String,
    pub image_url: String,
    pub previous_image_url: String,
}

/// A software repository's name.
pub const REPOSITORY_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

action! {
    /// `add-repository` (NS8 10.8).
    AddRepository = "add-repository", AddRepositoryRequest => (), Never
}

fn enabled() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddRepositoryRequest {
    #[schemars(regex(pattern = REPOSITORY_NAME_PATTERN))]
    pub name: String,
    /// Where `repodata.json` is: `http(s)://` as NS8, or `file://`.
    #[schemars(regex(pattern = r"^(https?|file)://[^\s]+$"), length(max = 2048))]
    pub url: String,
    /// Enabled.
    #[serde(default = "enabled")]
    pub status: bool,
    /// Testing versions are offered too.
    #[serde(default)]
    pub testing: bool,
}

action! {
    /// `alter-repository`: enable, disable, offer testing versions or not.
    AlterRepository = "alter-repository", AlterRepositoryRequest => (), Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlterRepositoryRequest {
    #[schemars(regex(pattern = REPOSITORY_NAME_PATTERN))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testing: Option<bool>,
}

action! {
    /// `remove-repository`.
    RemoveRepository = "remove-repository", RepositoryName => (), Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RepositoryName {
    #[schemars(regex(pattern = REPOSITORY_NAME_PATTERN))]
    pub name: String,
}

action! {
    /// `get-name`: the cluster's label in the portal. Its input is ignored (NS8's clients
    /// send `{}` or nothing).
    GetName = "get-name", serde_json::Value => ClusterName, Never
}

action! {
    /// `set-name`.
    SetName = "set-name", ClusterName => (), Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterName {
    /// No control characters.
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[^\\u0000-\\u001f]*$"))]
    pub name: String,
}
