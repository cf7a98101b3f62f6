//! Program files: one JSON file per program in the configuration directory.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::supervisor::Program as ProgramFile;
pub use protocol::supervisor::Restart;

/// Why a program file is not used; the messages don't name the file (the caller does).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("\"name\" is empty")]
    EmptyName,
    #[error("\"command\" is empty")]
    EmptyCommand,
    #[error("unknown \"stop_signal\" {0:?}")]
    UnknownSignal(String),
}

/// A validated program. Equality decides whether a reload restarts it.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub name: String,
    /// Never empty: the executable and its arguments.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// `KEY=VALUE` files read at each start, after `env` (systemd's
    /// `EnvironmentFile=`); a leading `-` makes a file optional. Secrets such as an
    /// agent's Redis password stay in the program's own 0600 file.
    pub env_files: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Gets stdout and stderr appended; `None` inherits the supervisor's stderr.
    pub log: Option<PathBuf>,
    pub restart: Restart,
    pub user: Option<String>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
}

pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Parse `TERM`, `SIGTERM` or `sigterm`.
fn parse_signal(s: &str) -> Option<Signal> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&full).ok()
}

impl Program {
    /// Parse and check the content of a program file; errors don't name the file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let f: ProgramFile = serde_json::from_str(text)?;
        if f.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if f.command.first().is_none_or(|c| c.is_empty()) {
            return Err(ConfigError::EmptyCommand);
        }
        let stop_signal = match f.stop_signal {
            None => Signal::SIGTERM,
            Some(s) => parse_signal(&s).ok_or(ConfigError::UnknownSignal(s))?,
        };
        Ok(Program {
            name: f.name,
            command: f.command,
            env: f.env,
            env_files: f.env_files,
            cwd: f.cwd,
            log: f.log,
            restart: f.restart,
            user: f.user,
            stop_signal,
            stop_timeout: f.stop_timeout_secs.map(Duration::from_secs).unwrap_or(DEFAULT_STOP_TIMEOUT),
        })
    }
}

/// What a directory scan found for one file.
#[derive(Debug)]
pub enum Entry {
    Valid(Program),
    /// Present but unusable; the error was already logged.
    Invalid,
}

/// Read every `*.json` file of `dir`, keyed (and so ordered) by file name. Invalid
/// files are logged and kept as [`Entry::Invalid`] so that a reload can tell a broken
/// file from a removed one. Fails only when the directory cannot be listed.
pub fn load_dir(dir: &Path) -> std::io::Result<BTreeMap<String, Entry>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(file) = entry.file_name().into_string() else {
            continue;
        };
        if file.starts_with('.') || !file.ends_with(".json") {
            continue;
        }
        files.insert(file, entry.path());
    }
    let mut names = HashSet::new();
    let mut out = BTreeMap::new();
    for (file, path) in files {
        let parsed = std::fs::read_to_string(&path).map_err(ConfigError::from).and_then(|t| Program::parse(&t));
        let entry = match parsed {
            Ok(p) if !names.insert(p.name.clone()) => {
                tracing::error!(
                    "{}: skipped: program name {:?} is already used by another file",
                    path.display(),
                    p.name
                );
                Entry::Invalid
            }
            Ok(p) => Entry::Valid(p),
            Err(e) => {
                tracing::error!("{}: skipped: {e}", path.display());
                Entry::Invalid
            }
        };
        out.insert(file, entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let p = Program::parse(r#"{"name": "a", "command": ["/bin/true"]}"#).unwrap();
        assert_eq!(p.restart, Restart::Always);
        assert_eq!(p.stop_signal, Signal::SIGTERM);
        assert_eq!(p.stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert!(p.user.is_none() && p.log.is_none() && p.cwd.is_none() && p.env.is_empty());
    }

    #[test]
    fn full_file() {
        let p = Program::parse(
            r#"{"name": "node-agent", "command": ["/bin/x", "--agentid", "node/1"], "env": {"A": "1"},
                "cwd": "/x/state", "log": "/x/log", "restart": "on-failure", "user": null,
                "stop_signal": "INT", "stop_timeout_secs": 3}"#,
        )
        .unwrap();
        assert_eq!(p.restart, Restart::OnFailure);
        assert_eq!(p.stop_signal, Signal::SIGINT);
        assert_eq!(p.stop_timeout, Duration::from_secs(3));
        assert_eq!(p.env["A"], "1");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGUSR1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("quit"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn rejections() {
        let e = Program::parse(r#"{"name": "a", "command": ["/bin/true"], "colour": "red"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = Program::parse(r#"{"name": "a", "command": []}"#).unwrap_err().to_string();
        assert!(e.contains("command"), "{e}");
        let e = Program::parse(r#"{"command": ["/bin/true"]}"#).unwrap_err().to_string();
        assert!(e.contains("name"), "{e}");
        let e = Program::parse(r#"{"name": "a", "command": ["x"], "restart": "sometimes"}"#).unwrap_err().to_string();
        assert!(e.contains("sometimes"), "{e}");
        let e = Program::parse(r#"{"name": "a", "command": ["x"], "stop_signal": "FOO"}"#).unwrap_err().to_string();
        assert!(e.contains("FOO"), "{e}");
    }
}
