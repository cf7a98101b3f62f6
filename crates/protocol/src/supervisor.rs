//! The supervisor's program file: one JSON file per program in its directory
//! (`<dir>/<NN>-<name>.json`), the format the node agent writes for each module agent
//! and the supervisor reads. The node writes a file, then sends the supervisor SIGHUP;
//! the supervisor checks each file (name and command not empty, a known stop signal)
//! and starts, restarts or stops programs to match the directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// When to start a program again after it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// One program file, as written on disk. Unknown fields are refused: a misspelled
/// setting must not be silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// Unique among the directory's files; names the program in the supervisor's log.
    pub name: String,
    /// The executable and its arguments.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `KEY=VALUE` files read at each start, after `env` (systemd's
    /// `EnvironmentFile=`); a leading `-` makes a file optional. Secrets stay there,
    /// never in the program file.
    #[serde(default)]
    pub env_files: Vec<String>,
    /// Its working directory; none: the supervisor's.
    pub cwd: Option<PathBuf>,
    /// Gets stdout and stderr appended; none: the supervisor's stderr.
    pub log: Option<PathBuf>,
    #[serde(default)]
    pub restart: Restart,
    /// The account it runs as (its groups, `HOME`, `USER`, `LOGNAME`); none: the
    /// supervisor's.
    pub user: Option<String>,
    /// `TERM`, `SIGTERM` or `sigterm`; none: SIGTERM.
    pub stop_signal: Option<String>,
    /// How long a stop waits before SIGKILL; none: 30 s.
    pub stop_timeout_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_the_defaults_and_unknown_fields_are_refused() {
        let p: Program = serde_json::from_str(r#"{"name": "a", "command": ["/bin/true"]}"#).unwrap();
        assert_eq!(p.restart, Restart::Always);
        assert!(p.env.is_empty() && p.env_files.is_empty() && p.user.is_none());
        let e = serde_json::from_str::<Program>(r#"{"name": "a", "command": [], "colour": "red"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let text = serde_json::to_value(Program { restart: Restart::OnFailure, ..p }).unwrap();
        assert_eq!(text["restart"], "on-failure");
    }
}
