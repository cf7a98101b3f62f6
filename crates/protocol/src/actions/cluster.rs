//! The cluster agent's module actions, as the api-server's clients call them (NS8
//! reference 10.2, 10.5, 10.6).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Action, Never};

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

/// `add-module`.
pub struct AddModule;
impl Action for AddModule {
    const NAME: &'static str = "add-module";
    type Request = AddModuleRequest;
    type Reply = AddModuleReply;
    type Refusal = Never;
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

/// `remove-module`.
pub struct RemoveModule;
impl Action for RemoveModule {
    const NAME: &'static str = "remove-module";
    type Request = RemoveModuleRequest;
    type Reply = RemoveModuleReply;
    type Refusal = Never;
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

/// `update-module`.
pub struct UpdateModule;
impl Action for UpdateModule {
    const NAME: &'static str = "update-module";
    type Request = UpdateModuleRequest;
    type Reply = UpdateModuleReply;
    type Refusal = Never;
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
