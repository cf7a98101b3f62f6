//! Agent configuration: NS8's flags and environment variables.

use std::path::PathBuf;
use std::time::Duration;

use bus::RedisConfig;
use protocol::AgentId;

pub const ENV_AGENT_ID: &str = protocol::stepenv::AGENT_ID;
pub const ENV_INSTALL_DIR: &str = protocol::stepenv::AGENT_INSTALL_DIR;
pub const ENV_STATE_DIR: &str = protocol::stepenv::AGENT_STATE_DIR;
/// Go duration syntax, as NS8 (`5s`, `500ms`, `1m`).
pub const ENV_POLLING_INTERVAL: &str = "AGENT_POLLING_INTERVAL";
/// Beyond NS8: how many tasks run at once (default 32, NS8's `MAX_CONCURRENCY`).
pub const ENV_MAX_CONCURRENCY: &str = "AGENT_MAX_CONCURRENCY";

pub const DEFAULT_MAX_CONCURRENCY: usize = 32;
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent_id: AgentId,
    /// Action roots, merged by step file name, later roots winning.
    pub action_dirs: Vec<PathBuf>,
    pub events_dir: Option<PathBuf>,
    /// Holds `validator-definitions.json`.
    pub install_dir: PathBuf,
    /// Working directory of steps; holds the `environment` file.
    pub state_dir: PathBuf,
    pub redis: RedisConfig,
    pub max_concurrency: usize,
    /// Blocking-pop timeout and heartbeat period.
    pub poll_interval: Duration,
}

/// Command line shared by the three agents: NS8's `--agentid`, repeatable
/// `--actionsdir`, `--eventsdir`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Agent id: `cluster`, `node/<N>` or `module/<id>`.
    #[arg(long = "agentid", env = ENV_AGENT_ID)]
    pub agent_id: Option<String>,
    /// An action root; repeat it, later roots override earlier ones step by step.
    /// Default: `$AGENT_INSTALL_DIR/actions`.
    #[arg(long = "actionsdir")]
    pub actions_dirs: Vec<PathBuf>,
    /// Event handlers root. Default: `$AGENT_INSTALL_DIR/events`.
    #[arg(long = "eventsdir")]
    pub events_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no agent id: pass --agentid or set AGENT_ID")]
    MissingAgentId,
    #[error(transparent)]
    Id(#[from] protocol::IdError),
    #[error("{binary} runs agents of the form {expected}, not {got}")]
    WrongKind { binary: &'static str, expected: &'static str, got: AgentId },
    #[error("invalid {name} {value:?}: {why}")]
    Env { name: &'static str, value: String, why: String },
    #[error(transparent)]
    Redis(#[from] bus::BusError),
    #[error("cannot determine the working directory: {0}")]
    Cwd(std::io::Error),
}

/// Parse `5s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

impl AgentArgs {
    /// Build the configuration from flags and the environment. `default_id` is used
    /// when neither `--agentid` nor `AGENT_ID` is given (the cluster agent's id).
    pub fn into_config(self, default_id: Option<&str>) -> Result<AgentConfig, ConfigError> {
        let id = self.agent_id.or_else(|| default_id.map(str::to_owned)).ok_or(ConfigError::MissingAgentId)?;
        let agent_id: AgentId = id.parse()?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let install_dir = match env(ENV_INSTALL_DIR) {
            Some(d) => PathBuf::from(d),
            None => std::env::current_dir().map_err(ConfigError::Cwd)?,
        };
        let state_dir = env(ENV_STATE_DIR).map(PathBuf::from).unwrap_or_else(|| install_dir.join("state"));
        let action_dirs =
            if self.actions_dirs.is_empty() { vec![install_dir.join("actions")] } else { self.actions_dirs };
        let events_dir = self.events_dir.or_else(|| Some(install_dir.join("events")));
        let poll_interval = match env(ENV_POLLING_INTERVAL) {
            Some(v) => parse_duration(&v).ok_or_else(|| ConfigError::Env {
                name: ENV_POLLING_INTERVAL,
                value: v.clone(),
                why: "expected a duration like 5s or 500ms".into(),
            })?,
            None => DEFAULT_POLLING_INTERVAL,
        };
        let max_concurrency = match env(ENV_MAX_CONCURRENCY) {
            Some(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| ConfigError::Env {
                name: ENV_MAX_CONCURRENCY,
                value: v.clone(),
                why: "expected a positive integer".into(),
            })?,
            None => DEFAULT_MAX_CONCURRENCY,
        };
        let redis = RedisConfig::from_env(&agent_id.to_string())?;
        Ok(AgentConfig {
            agent_id,
            action_dirs,
            events_dir,
            install_dir,
            state_dir,
            redis,
            max_concurrency,
            poll_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        for bad in ["", "s", "5x", "0s", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
