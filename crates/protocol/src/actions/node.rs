//! What the cluster asks of a node agent (`node/<N>`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MODULE_ID_PATTERN, Never, PortProtocol};

action! {
    /// `add-module`: the module's Unix user, files, credentials and agent.
    AddModule = "add-module", AddModuleRequest => AddModuleReply, AddModuleRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddModuleRequest {
    #[schemars(regex(pattern = MODULE_ID_PATTERN), length(max = 31))]
    pub module_id: String,
    #[schemars(length(min = 1))]
    pub image_url: String,
    /// NS8's spelling.
    #[serde(default)]
    pub is_rootfull: bool,
    /// The module's first `state/environment`.
    pub environment: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddModuleReply {
    /// SHA-256 (hex) of the agent's fresh Redis password, for its ACL user.
    pub redis_sha256: String,
    pub install_dir: String,
}

refusals! {
    AddModuleRefusal {
        /// A Unix account of that name exists already (the node never takes one over):
        /// the cluster may take the next id.
        UnixUserExists => ("module_id", "module_id_unix_user_exists"),
    }
}

action! {
    /// `remove-module`: nothing of the module stays on the node but what it preserves.
    RemoveModule = "remove-module", RemoveModuleRequest => RemoveModuleReply, RemoveModuleRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemoveModuleRequest {
    #[schemars(length(min = 1))]
    pub module_id: String,
    #[serde(default)]
    pub preserve_data: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemoveModuleReply {
    /// False when nothing of it was on the node.
    pub removed: bool,
    /// Where its data was kept, with `preserve_data`.
    pub preserved: Option<String>,
}

refusals! {
    RemoveModuleRefusal {
        /// An account of that name that the node did not make: never touched.
        NotAModuleOfThisNode => ("module_id", "module_id_not_a_module_of_this_node"),
    }
}

action! {
    /// `update-module` (node half): snapshot, then the new image's files in place.
    UpdateModule = "update-module", UpdateModuleRequest => UpdateModuleReply, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateModuleRequest {
    #[schemars(length(min = 1))]
    pub module_id: String,
    #[schemars(length(min = 1))]
    pub image_url: String,
    /// Variables to set in the module's environment.
    pub environment: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateModuleReply {
    pub snapshot: String,
    pub image_digest: String,
}

action! {
    /// `finish-update`: commit the update or roll it back to the snapshot.
    FinishUpdate = "finish-update", FinishUpdateRequest => FinishUpdateReply, FinishUpdateRefusal
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpdateOutcome {
    Commit,
    Rollback,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FinishUpdateRequest {
    #[schemars(length(min = 1))]
    pub module_id: String,
    pub outcome: UpdateOutcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FinishUpdateReply {
    pub rolled_back: bool,
    /// The module's environment as it is now, for the cluster's copy in Redis.
    pub environment: BTreeMap<String, String>,
}

refusals! {
    FinishUpdateRefusal {
        /// Nothing to finish: no update of the module is in progress (the crash came
        /// before the snapshot, or after the commit).
        NoUpdateInProgress => ("module_id", "module_id_no_update_in_progress"),
    }
}

action! {
    /// `allocate-ports`: a range of free ports on the node, recorded for the module.
    AllocatePorts = "allocate-ports", AllocatePortsRequest => AllocatePortsReply, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AllocatePortsRequest {
    #[schemars(range(min = 1, max = 1000))]
    pub ports: u16,
    #[schemars(regex(pattern = "^[a-z][a-z0-9_-]{0,31}$"))]
    pub module_id: String,
    pub protocol: PortProtocol,
    #[serde(default)]
    pub keep_existing: bool,
}

/// `[start, end]`, both included (NS8's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllocatePortsReply(pub u16, pub u16);

action! {
    /// `deallocate-ports`: the module's range of that protocol is free again.
    DeallocatePorts = "deallocate-ports", DeallocatePortsRequest => DeallocatePortsReply, Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeallocatePortsRequest {
    #[schemars(regex(pattern = "^[a-z][a-z0-9_-]{0,31}$"))]
    pub module_id: String,
    pub protocol: PortProtocol,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeallocatePortsReply {
    pub released: bool,
}
