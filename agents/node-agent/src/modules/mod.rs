//! The node's half of installing and removing a module (NS8's `node/add-module` and
//! `node/remove-module`): the Unix user, the files, the credentials and the agent.
//!
//! Layout, as NS8's: a rootless module `<id>` is the user `<id>` with home
//! `$HOME_BASEDIR/<id>`; its install dir is `~/.config` (`actions/`, `events/`, `bin/`,
//! `services/` from the image's `imageroot/`), its state `~/.config/state`
//! (`environment`, `agent.env`). Podman reads `~/.config/containers/containers.conf`,
//! where the node puts the settings this host needs. A rootful module lives in
//! `$ROOTFUL_BASEDIR/<id>` (install dir and `state/`), runs as root, and has a Podman
//! storage of its own in `$ROOTFUL_BASEDIR/.containers/<id>`, named to Podman by
//! `CONTAINERS_CONF`/`CONTAINERS_STORAGE_CONF` in its `agent.env`.
//!
//! Failure is atomic: whatever `add-module` made before failing is removed before it
//! answers, and `remove-module` leaves nothing of the module on the node.
//!
//! One file per job: [`setup`] says where this node keeps modules, [`paths`] where one
//! module's files are and who may touch them, [`add`] is `add-module`, [`remove`] is
//! `remove-module` and the removals a crash cut short, [`adopt`] takes in the modules
//! an earlier node agent made before it kept a registry.

pub mod add;
pub mod adopt;
pub mod paths;
pub mod remove;
pub mod setup;

pub use paths::ModulePaths;
pub use remove::{remove_files, stop_processes};
pub use setup::NodeSetup;
