//! What the cluster asks of a module agent (`module/<id>`): NS8's base actions, run by
//! the module's own steps, so their replies are the module's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Action, Never};

/// `list-actions` (a builtin of every agent): the action names it has.
pub struct ListActions;
impl Action for ListActions {
    const NAME: &'static str = "list-actions";
    type Request = ();
    type Reply = Vec<String>;
    type Refusal = Never;
}

/// `create-module`: the module's first configuration, run once after its install.
pub struct CreateModule;
impl Action for CreateModule {
    const NAME: &'static str = "create-module";
    type Request = CreateModuleRequest;
    type Reply = Value;
    type Refusal = Never;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateModuleRequest {
    /// The service images its label lists.
    pub images: Vec<String>,
}

/// `destroy-module`: the module's own cleanup before its removal.
pub struct DestroyModule;
impl Action for DestroyModule {
    const NAME: &'static str = "destroy-module";
    type Request = DestroyModuleRequest;
    type Reply = Value;
    type Refusal = Never;
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DestroyModuleRequest {}

/// `update-module` (module half): the new image's own update steps.
pub struct UpdateModule;
impl Action for UpdateModule {
    const NAME: &'static str = "update-module";
    type Request = UpdateModuleRequest;
    type Reply = Value;
    type Refusal = Never;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateModuleRequest {
    pub module_url: String,
}
