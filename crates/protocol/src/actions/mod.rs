//! Typed contracts of the actions one agent (or the api-server) calls on another: for
//! each, the request, the reply and the refusals a caller can match on. The handler
//! registers with the type (`NativeActions::typed`), its input and output schemas are
//! derived from it, and callers send and decode it (`ActionContext::call`): a field
//! renamed on one side breaks the build, not a running cluster.
//!
//! The JSON on the wire is NS8's where NS8 has the action: the types only describe it.

/// Declare contract `$name` (a unit type) for the action called `$wire`.
macro_rules! action {
    ($(#[$doc:meta])* $name:ident = $wire:literal, $request:ty => $reply:ty, $refusal:ty) => {
        $(#[$doc])*
        pub struct $name;
        impl $crate::actions::Action for $name {
            const NAME: &'static str = $wire;
            type Request = $request;
            type Reply = $reply;
            type Refusal = $refusal;
        }
    };
}

/// Declare a refusal enum, each variant with the request field it is about and its
/// NS8-style error code.
macro_rules! refusals {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => ($field:literal, $error:literal)),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }
        impl $crate::actions::Refusal for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn field(self) -> &'static str {
                match self {
                    $($name::$variant => $field),+
                }
            }
            fn error(self) -> &'static str {
                match self {
                    $($name::$variant => $error),+
                }
            }
        }
    };
}

pub mod backup;
pub mod cluster;
pub mod disaster;
pub mod module;
pub mod node;
pub mod traefik;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::task::ValidationError;

/// One action's contract.
pub trait Action: 'static {
    /// The action's name on the wire (`<agent>/tasks` entries' `action`).
    const NAME: &'static str;
    type Request: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static;
    type Reply: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static;
    /// The refusals its callers may act on; [`Never`] for none.
    type Refusal: Refusal;
}

/// A refusal an action's callers can tell apart: carried on the wire as an NS8
/// validation error (exit code 10) whose `field` and `error` are the variant's.
pub trait Refusal: Sized + Copy + std::fmt::Debug + Send + Sync + 'static {
    const ALL: &'static [Self];
    /// The request field it is about.
    fn field(self) -> &'static str;
    /// The `error` code, `<field>_<reason>` as NS8 spells them.
    fn error(self) -> &'static str;

    /// The validation error for this refusal of `value`.
    fn to_validation(self, value: Value) -> ValidationError {
        ValidationError {
            field: self.field().to_owned(),
            parameter: self.field().to_owned(),
            value,
            error: self.error().to_owned(),
        }
    }

    /// The refusal a validation error carries, if it is one of this action's.
    fn from_validation(e: &ValidationError) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.field() == e.field && r.error() == e.error)
    }
}

/// For actions without refusals of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Never {}

impl Refusal for Never {
    const ALL: &'static [Self] = &[];
    fn field(self) -> &'static str {
        match self {}
    }
    fn error(self) -> &'static str {
        match self {}
    }
}

/// The JSON Schema of `T` (draft 2020-12), as `list-actions` and validation use it.
pub fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("a schema always serializes")
}

/// `tcp` or `udp`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub const ALL: [PortProtocol; 2] = [PortProtocol::Tcp, PortProtocol::Udp];

    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pattern of a module id as the node accepts it (`<image><n>`).
pub const MODULE_ID_PATTERN: &str = "^[a-z][a-z0-9_-]*[0-9]+$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_through_the_validation_shape() {
        let r = node::AddModuleRefusal::UnixUserExists;
        let v = r.to_validation(Value::from("hello1"));
        assert_eq!(v.field, "module_id");
        assert_eq!(v.error, "module_id_unix_user_exists");
        assert_eq!(node::AddModuleRefusal::from_validation(&v), Some(r));
        let other = ValidationError { error: "module_id_pattern".into(), ..v };
        assert_eq!(node::AddModuleRefusal::from_validation(&other), None);
    }

    #[test]
    fn schemas_keep_the_wire_names_and_limits() {
        let s = schema_of::<node::AddModuleRequest>();
        let props = &s["properties"];
        assert_eq!(props["module_id"]["pattern"], MODULE_ID_PATTERN);
        assert_eq!(props["module_id"]["maxLength"], 31);
        assert!(props["is_rootfull"].is_object());
        let required: Vec<&str> = s["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(required, ["module_id", "image_url", "environment"]);
        let s = schema_of::<cluster::AddModuleRequest>();
        assert_eq!(s["properties"]["node"]["minimum"], 1);
        assert_eq!(s["properties"]["module_uuid"]["format"], "uuid");
    }

    #[test]
    fn wire_shapes_are_ns8s() {
        let req: node::AllocatePortsRequest =
            serde_json::from_value(serde_json::json!({"ports": 2, "module_id": "hello1", "protocol": "udp"})).unwrap();
        assert_eq!(req.protocol, PortProtocol::Udp);
        assert!(!req.keep_existing);
        let reply: node::AllocatePortsReply = serde_json::from_value(serde_json::json!([20000, 20001])).unwrap();
        assert_eq!(reply, node::AllocatePortsReply(20000, 20001));
        let out = serde_json::to_value(node::FinishUpdateRequest {
            module_id: "hello1".into(),
            outcome: node::UpdateOutcome::Rollback,
        })
        .unwrap();
        assert_eq!(out, serde_json::json!({"module_id": "hello1", "outcome": "rollback"}));
    }
}
