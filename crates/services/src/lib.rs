//! A module's services: the quadlet `.container` subset they are declared in
//! ([`quadlet`]) and their containers on the module user's Podman API socket
//! ([`engine`]). Used by the `module-service` command that actions call.

pub mod engine;
pub mod quadlet;

pub use engine::{Engine, Layout, ServiceError};
pub use quadlet::{QuadletError, Service};
