//! Where this node keeps modules, read once from its environment.

use std::path::{Path, PathBuf};

use crate::registry::Registry;

pub const ENV_HOME_BASEDIR: &str = "HOME_BASEDIR";
pub const ENV_ROOTFUL_BASEDIR: &str = "ROOTFUL_BASEDIR";

/// useradd and userdel lock /etc/passwd; concurrent installs and removals take turns
/// here instead of failing on the lock.
pub static ACCOUNTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Debug)]
pub struct NodeSetup {
    pub home_base: PathBuf,
    pub rootful_base: PathBuf,
    /// The node's own state dir (its containers.conf, preserved data).
    pub state_dir: PathBuf,
    /// Where `module-agent` and `module-service` are: beside this binary.
    pub bin_dir: PathBuf,
    pub redis_address: Option<String>,
    /// The api-server's URL (`API_ENDPOINT`), handed to module agents: a module calls
    /// another agent's actions through the API, as itself, and its roles are checked.
    pub api_endpoint: Option<String>,
}

impl NodeSetup {
    /// The node's root-only record of its modules.
    pub fn registry(&self) -> Registry {
        Registry::new(&self.state_dir)
    }

    pub fn from_env(state_dir: &Path) -> Self {
        let var = |k| std::env::var(k).ok().filter(|v| !v.is_empty());
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
        NodeSetup {
            home_base: var(ENV_HOME_BASEDIR).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/home")),
            rootful_base: var(ENV_ROOTFUL_BASEDIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/nethserver")),
            state_dir: state_dir.to_path_buf(),
            bin_dir,
            redis_address: var("REDIS_ADDRESS"),
            api_endpoint: var(protocol::stepenv::API_ENDPOINT),
        }
    }
}
