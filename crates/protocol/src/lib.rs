//! The wire format of the NS8 task protocol, with no I/O.
//!
//! Everything that crosses Redis or the step boundary is defined here: agent ids,
//! every key and channel name ([`keys`]), the task JSON ([`task`]), progress and
//! results, the fd-3 command channel ([`comfd`]), the `state/environment` file
//! ([`envfile`]), exit codes ([`exit`]), and the supervisor's program file
//! ([`supervisor`]). Keeping it in one I/O-free crate means the agents, the api-server
//! and the tests cannot drift apart on a key name.

pub mod acl;
pub mod actions;
pub mod comfd;
pub mod envfile;
pub mod events;
pub mod exit;
pub mod functions;
mod id;
pub mod image;
pub mod keys;
pub mod secrets;
pub mod stepenv;
pub mod supervisor;
pub mod task;
pub mod time;

pub use id::{AgentId, IdError, validate_action_name, validate_module_id, validate_task_id};
