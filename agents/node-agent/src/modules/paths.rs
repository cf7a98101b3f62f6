//! Where one module's files are, who may touch them ([`Hands`]), and how its own
//! programs run.

use std::path::{Path, PathBuf};

use hostcmd::{Cmd, CmdError};

use super::setup::NodeSetup;
use crate::error::ModuleError;
use crate::extract::IMAGEROOT_LIST;
use crate::hands::Hands;
use crate::launcher::{AgentSpec, Launcher, LauncherError};
use crate::users;

pub const RUNTIME_BASE: &str = "/run/user";
const ROOTFUL_RUNTIME_BASE: &str = "/run/nethserver";
/// A rootless module's Podman volumes, under its home.
const VOLUMES: &str = ".local/share/containers/storage/volumes";

#[derive(Clone, Debug)]
pub struct ModulePaths {
    pub id: String,
    pub rootful: bool,
    /// A rootless module's account; `None` for a rootful module, or when the account
    /// is already gone.
    pub user: Option<users::ModuleUser>,
    pub base: PathBuf,
    pub install_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl ModulePaths {
    /// The paths of a module this node made (its registry record), or `None` when the
    /// node has none of that id: node actions touch nothing else, whatever account of
    /// that name exists. A record whose account is not the one the node made (uid or
    /// marker) is an error.
    pub fn find(setup: &NodeSetup, id: &str) -> Result<Option<Self>, ModuleError> {
        let Some(record) = setup.registry().record(id)? else { return Ok(None) };
        if record.rootful {
            return Ok(Some(Self::rootful(setup, id)));
        }
        let paths = match users::lookup(id, Path::new(RUNTIME_BASE)) {
            Some(user) => {
                if record.uid.is_some_and(|uid| uid != user.uid) || !users::is_module_account(id) {
                    return Err(ModuleError::NotOurAccount { id: id.to_owned(), uid: user.uid, recorded: record.uid });
                }
                Self::rootless(user)
            }
            // Recorded, but the account is already gone (a removal or an install cut short).
            None => ModulePaths {
                id: id.to_owned(),
                rootful: false,
                user: None,
                base: setup.home_base.join(id),
                install_dir: setup.home_base.join(id).join(".config"),
                state_dir: setup.home_base.join(id).join(".config/state"),
                runtime_dir: PathBuf::new(),
            },
        };
        Ok(Some(paths))
    }

    pub fn rootless(user: users::ModuleUser) -> Self {
        let install_dir = user.home.join(".config");
        ModulePaths {
            id: user.name.clone(),
            rootful: false,
            base: user.home.clone(),
            state_dir: install_dir.join("state"),
            runtime_dir: user.runtime_dir.clone(),
            install_dir,
            user: Some(user),
        }
    }

    pub fn rootful(setup: &NodeSetup, id: &str) -> Self {
        let base = setup.rootful_base.join(id);
        ModulePaths {
            id: id.to_owned(),
            rootful: true,
            user: None,
            install_dir: base.clone(),
            state_dir: base.join("state"),
            runtime_dir: Path::new(ROOTFUL_RUNTIME_BASE).join(id),
            base,
        }
    }

    /// Who works on its files (see [`Hands`]): never root for a rootless module.
    pub fn hands(&self) -> Result<Hands<'_>, ModuleError> {
        match (&self.user, self.rootful) {
            (Some(u), _) => Ok(Hands::Module(u)),
            (None, true) => Ok(Hands::Root),
            (None, false) => Err(ModuleError::NoUser(self.id.clone())),
        }
    }

    /// A rootful module's own Podman storage (images, containers, volumes): beside its
    /// base dir, so that its names never meet root's or another module's.
    pub fn rootful_storage(&self) -> PathBuf {
        self.base.parent().unwrap_or(Path::new("/")).join(".containers").join(&self.id)
    }

    /// Where the module's named volumes are.
    pub fn volumes_dir(&self) -> PathBuf {
        if self.rootful { self.rootful_storage().join("volumes") } else { self.base.join(VOLUMES) }
    }

    /// What tells Podman about its settings: rootless Podman reads them from the
    /// user's `~/.config/containers/`; root's would read `/etc`, so a rootful module's
    /// files are named.
    fn podman_env(&self) -> Vec<(String, String)> {
        if !self.rootful {
            return Vec::new();
        }
        let dir = self.install_dir.join("containers");
        vec![
            ("CONTAINERS_CONF".to_owned(), dir.join("containers.conf").display().to_string()),
            ("CONTAINERS_STORAGE_CONF".to_owned(), dir.join("storage.conf").display().to_string()),
        ]
    }

    /// The environment the module's own programs (agent, `module-service`) run with.
    pub fn agent_env(&self, setup: &NodeSetup, password: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("REDIS_USER".to_owned(), format!("module/{}", self.id)),
            ("REDIS_PASSWORD".to_owned(), password.to_owned()),
            ("XDG_RUNTIME_DIR".to_owned(), self.runtime_dir.display().to_string()),
            (
                "PATH".to_owned(),
                format!(
                    "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.install_dir.join("bin").display(),
                    setup.bin_dir.display()
                ),
            ),
        ];
        if let Some(a) = &setup.redis_address {
            env.push(("REDIS_ADDRESS".to_owned(), a.clone()));
        }
        if let Some(a) = &setup.api_endpoint {
            env.push((protocol::stepenv::API_ENDPOINT.to_owned(), a.clone()));
        }
        env.extend(self.podman_env());
        env
    }

    /// Run `module-service <args>` as the module, with its environment; its stdout.
    /// Blocking.
    pub fn module_service(&self, setup: &NodeSetup, args: &[&str]) -> Result<String, CmdError> {
        let mut cmd = Cmd::new(setup.bin_dir.join("module-service"))
            .args(args)
            .env_clear()
            .env("AGENT_INSTALL_DIR", &self.install_dir)
            .env("AGENT_STATE_DIR", &self.state_dir)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(&self.runtime_dir);
        for (k, v) in self.podman_env() {
            cmd = cmd.env(k, v);
        }
        if let Some(u) = &self.user {
            cmd = cmd.env("HOME", &u.home).env("USER", &u.name).uid_gid(u.uid, u.gid);
        }
        // It reads the module's state/environment itself, as the module: root does not.
        cmd.stdout()
    }

    /// Start the module's agent, reading its credentials from the node's registry.
    /// Blocking.
    pub fn start_agent(&self, setup: &NodeSetup, launcher: &Launcher) -> Result<(), LauncherError> {
        launcher.start(&AgentSpec {
            module_id: &self.id,
            user: self.user.as_ref().map(|u| u.name.as_str()),
            binary: &setup.bin_dir.join("module-agent"),
            install_dir: &self.install_dir,
            state_dir: &self.state_dir,
            env_file: &setup.registry().credentials_file(&self.id),
        })
    }

    /// Record the names the image put at the top of the install dir, so that an update
    /// replaces exactly those. Root writes it only in a rootful module's root-only dir.
    pub fn write_list(&self, names: &[String]) -> Result<(), ModuleError> {
        match self.hands()? {
            Hands::Root => Ok(crate::extract::write_imageroot_list(&self.install_dir, names)?),
            hands @ Hands::Module(_) => {
                let text: String = names.iter().map(|n| format!("{n}\n")).collect();
                Ok(hands.write(&self.install_dir.join(IMAGEROOT_LIST), text.as_bytes(), 0o644)?)
            }
        }
    }

    /// The names [`write_list`](Self::write_list) recorded, each checked (the module
    /// may have changed the file: root acts on the names).
    pub fn read_list(&self) -> Result<Vec<String>, ModuleError> {
        match self.hands()? {
            Hands::Root => Ok(crate::extract::read_imageroot_list(&self.install_dir)?),
            hands @ Hands::Module(_) => {
                let path = self.install_dir.join(IMAGEROOT_LIST);
                let text = hands.read(&path)?.unwrap_or_default();
                Ok(crate::extract::parse_imageroot_list(&path, &text)?)
            }
        }
    }
}
