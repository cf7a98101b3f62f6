//! The step's environment and the module's files: where everything is, the module's
//! settings, and how a file is written (whole or not at all).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fail::Failure;

/// Let's Encrypt's production directory: the default ACME server, as NS8's.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The name of the certificate resolver in the static configuration (NS8's).
pub const RESOLVER: &str = "acmeServer";
/// Where the module's state directory is mounted in Traefik's container.
pub const IN_CONTAINER: &str = "/etc/traefik";
/// The service (its `.container` file) that runs Traefik.
pub const SERVICE: &str = "traefik";

/// The step's environment: the module's directories and who asked.
pub struct Env {
    pub state: PathBuf,
    pub module_id: String,
    pub node_id: u32,
    /// `AGENT_TASK_USER`: `module/<id>` for a module, an administrator's name, or empty
    /// (a core agent's task over Redis).
    pub caller: String,
    pub event_source: String,
    /// `TCP_PORT`: the loopback port the node gave the module, for Traefik's API.
    pub api_port: u16,
}

impl Env {
    pub fn from_process() -> Result<Self, Failure> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let state = PathBuf::from(var(protocol::stepenv::AGENT_STATE_DIR));
        if !state.is_absolute() {
            return Err(Failure::failed("AGENT_STATE_DIR is not set: run as a step of the traefik module"));
        }
        let agent = var(protocol::stepenv::AGENT_ID);
        let module_id = agent.strip_prefix("module/").unwrap_or(&agent).to_owned();
        let api_port = var("TCP_PORT").parse().unwrap_or(0);
        Ok(Env {
            state,
            module_id,
            node_id: var("NODE_ID").parse().unwrap_or(0),
            caller: var(protocol::stepenv::AGENT_TASK_USER),
            event_source: var(protocol::stepenv::AGENT_EVENT_SOURCE),
            api_port,
        })
    }

    /// Traefik's own directory (mounted at [`IN_CONTAINER`]).
    pub fn traefik_dir(&self) -> PathBuf {
        self.state.join("traefik")
    }
    pub fn configs(&self) -> PathBuf {
        self.traefik_dir().join("configs")
    }
    pub fn certs(&self) -> PathBuf {
        self.traefik_dir().join("certs")
    }
    pub fn acme_store(&self) -> PathBuf {
        self.traefik_dir().join("acme/acme.json")
    }
    pub fn routes(&self) -> PathBuf {
        self.state.join("routes")
    }
    fn settings_file(&self) -> PathBuf {
        self.state.join("traefik-settings.json")
    }

    /// This module's agent id.
    pub fn agent(&self) -> protocol::AgentId {
        protocol::AgentId::Module(self.module_id.clone())
    }

    /// Run `f` on a Redis connection of this module's agent (its credentials are in
    /// the step's environment), then close it.
    pub fn with_redis<T, F, Fut>(&self, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(bus::fred::prelude::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, bus::fred::prelude::Error>>,
    {
        let agent = self.agent().to_string();
        let cfg = bus::RedisConfig::from_env(&agent).map_err(RedisError::Connect)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RedisError::Runtime)?;
        rt.block_on(async {
            use bus::fred::prelude::ClientLike;
            let redis = bus::connect(&cfg, &agent).await.map_err(RedisError::Connect)?;
            let out = f(redis.clone()).await.map_err(RedisError::Command);
            let _ = redis.quit().await;
            out
        })
    }

    /// The module id of the caller when it is a module.
    pub fn calling_module(&self) -> Option<&str> {
        self.caller.strip_prefix("module/")
    }

    /// A core agent (cluster, node) or root over Redis: may set the reserved routes.
    pub fn caller_is_core(&self) -> bool {
        self.caller.is_empty() || self.caller == "cluster" || self.caller.starts_with("node/")
    }

    pub fn load(&self) -> Result<Settings, Failure> {
        match std::fs::read_to_string(self.settings_file()) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Failure::failed(format!("traefik-settings.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(Failure::failed(format!("cannot read traefik-settings.json: {e}"))),
        }
    }

    pub fn save(&self, s: &Settings) -> Result<(), Failure> {
        write_atomic(&self.settings_file(), &pretty(&serde_json::to_value(s).unwrap_or_default()), 0o600)
    }
}

/// Why a step could not do its work on Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("{0}")]
    Connect(bus::BusError),
    #[error("cannot start the Redis client: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Command(bus::fred::prelude::Error),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub http_port: u16,
    pub https_port: u16,
    pub acme: Acme,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { http_port: 80, https_port: 443, acme: Acme::default() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Acme {
    pub url: String,
    pub email: String,
    /// `HTTP-01` or `TLS-ALPN-01`.
    pub challenge: String,
    /// Whether a CA bundle to trust the ACME server by is installed (a private CA such
    /// as a test one; the public ones are in Traefik's own bundle).
    pub private_ca: bool,
}

impl Default for Acme {
    fn default() -> Self {
        Acme { url: LETS_ENCRYPT.into(), email: String::new(), challenge: "HTTP-01".into(), private_ca: false }
    }
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Write `path` whole or not at all: a temporary file beside it, fsync'd, renamed.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().ok_or_else(|| Failure::failed(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| Failure::failed(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".{}.new", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))
}
