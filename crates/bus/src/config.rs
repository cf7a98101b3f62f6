//! Where Redis is and who we are to it.

use std::fmt;
use std::path::PathBuf;

use fred::types::config::ServerConfig;

use crate::error::BusError;

pub const ENV_ADDRESS: &str = "REDIS_ADDRESS";
pub const ENV_USER: &str = "REDIS_USER";
pub const ENV_PASSWORD: &str = "REDIS_PASSWORD";
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:6379";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Address {
    /// `host:port`, `[v6]:port`, or an absolute path to a Unix socket (handy for tests
    /// and for a node-local Redis).
    pub fn parse(s: &str) -> Result<Self, BusError> {
        let bad = || BusError::Address(s.to_owned());
        if s.starts_with('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let s2 = s.strip_prefix("redis://").unwrap_or(s);
        let (host, port) = s2.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(bad());
        }
        Ok(Address::Tcp { host: host.to_owned(), port })
    }

    pub(crate) fn server_config(&self) -> ServerConfig {
        match self {
            Address::Tcp { host, port } => ServerConfig::new_centralized(host.as_str(), *port),
            Address::Unix(path) => ServerConfig::new_unix_socket(path.clone()),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Connection settings. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub address: Address,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("address", &self.address)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl RedisConfig {
    pub fn new(address: Address) -> Self {
        RedisConfig { address, user: None, password: None }
    }

    /// Read the NS8 variables. As in NS8, a password without a user authenticates as
    /// `default_user` (the agent id), and no password means no `AUTH` at all.
    pub fn from_env(default_user: &str) -> Result<Self, BusError> {
        Self::from_lookup(default_user, |k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env), but without `REDIS_PASSWORD` in the
    /// environment the `REDIS_*` variables come from the first readable file of `files`
    /// (a program's credentials file, which only root can read); the environment's
    /// `REDIS_ADDRESS` still wins.
    pub fn from_env_or_files(default_user: &str, files: &[PathBuf]) -> Result<Self, BusError> {
        let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if from_env(ENV_PASSWORD).is_some() {
            return Self::from_env(default_user);
        }
        for file in files {
            let Ok(text) = std::fs::read_to_string(file) else { continue };
            let vars = protocol::envfile::parse(&text);
            return Self::from_lookup(default_user, |k| {
                let in_file = || vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                if k == ENV_ADDRESS { from_env(k).or_else(in_file) } else { in_file() }
            });
        }
        Self::from_env(default_user)
    }

    /// Where an installed node keeps the credentials file `rel` (e.g.
    /// `cluster/state/agent.env`): beside this binary's directory as `cargo xtask up`
    /// lays it out, then under NS8's `/var/lib/nethserver`. Root-only files: only root's
    /// commands find them.
    pub fn installed_credentials(rel: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(root) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_path_buf())) {
            files.push(root.join(rel));
        }
        files.push(PathBuf::from("/var/lib/nethserver").join(rel));
        files
    }

    pub fn from_lookup(default_user: &str, get: impl Fn(&str) -> Option<String>) -> Result<Self, BusError> {
        let address = get(ENV_ADDRESS).filter(|s| !s.is_empty());
        let address = Address::parse(address.as_deref().unwrap_or(DEFAULT_ADDRESS))?;
        let password = get(ENV_PASSWORD).filter(|s| !s.is_empty());
        let user = password
            .as_ref()
            .map(|_| get(ENV_USER).filter(|s| !s.is_empty()).unwrap_or_else(|| default_user.to_owned()));
        Ok(RedisConfig { address, user, password })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(Address::parse("127.0.0.1:6379").unwrap(), Address::Tcp { host: "127.0.0.1".into(), port: 6379 });
        assert_eq!(Address::parse("cluster-leader:6379").unwrap().to_string(), "cluster-leader:6379");
        assert_eq!(Address::parse("[::1]:6379").unwrap().to_string(), "[::1]:6379");
        assert_eq!(Address::parse("/run/r.sock").unwrap(), Address::Unix("/run/r.sock".into()));
        for bad in ["", "localhost", "host:port", ":6379", "a b:1"] {
            let e = Address::parse(bad).unwrap_err().to_string();
            assert!(e.contains("REDIS_ADDRESS"), "{e}");
        }
    }

    #[test]
    fn env_rules() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let c = RedisConfig::from_lookup("node/1", env(&[])).unwrap();
        assert_eq!(c.address.to_string(), "127.0.0.1:6379");
        assert_eq!(c.user, None);
        let c = RedisConfig::from_lookup("node/1", env(&[("REDIS_PASSWORD", "s3cret")])).unwrap();
        assert_eq!(c.user.as_deref(), Some("node/1"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c =
            RedisConfig::from_lookup("node/1", env(&[("REDIS_PASSWORD", "p"), ("REDIS_USER", "api-server")])).unwrap();
        assert_eq!(c.user.as_deref(), Some("api-server"));
    }
}
