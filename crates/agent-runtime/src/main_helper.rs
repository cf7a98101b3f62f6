//! The `main` of every agent binary: flags, logging, runtime, exit code.

use std::process::ExitCode;

use clap::{Args, FromArgMatches};
use protocol::AgentId;

use crate::{AgentArgs, AgentConfig, NativeActions};

/// Exit code for a bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for a runtime failure (sysexits `EX_SOFTWARE`).
pub const EXIT_FAILURE: u8 = 70;

/// Log to stderr as every binary does (see the `telemetry` crate), `info` by default.
pub fn init_logging() {
    telemetry::init(telemetry::Level::INFO);
}

/// What an agent binary is.
pub struct AgentBinary {
    pub name: &'static str,
    pub about: &'static str,
    /// Used when neither `--agentid` nor `AGENT_ID` is given.
    pub default_id: Option<&'static str>,
    /// e.g. `"node/<N>"`, for the error when the id is of another kind.
    pub expected: &'static str,
    pub accepts: fn(&AgentId) -> bool,
    pub natives: fn(&AgentConfig) -> NativeActions,
}

impl AgentBinary {
    pub fn main(self) -> ExitCode {
        let command = clap::Command::new(self.name).about(self.about).version(env!("CARGO_PKG_VERSION"));
        let matches = AgentArgs::augment_args(command).get_matches();
        let args = match AgentArgs::from_arg_matches(&matches) {
            Ok(a) => a,
            Err(e) => e.exit(),
        };
        init_logging();
        let cfg = match args.into_config(self.default_id) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{}: {e}", self.name);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if !(self.accepts)(&cfg.agent_id) {
            tracing::error!("{}: runs agents of the form {}, not {}", self.name, self.expected, cfg.agent_id);
            return ExitCode::from(EXIT_CONFIG);
        }
        let natives = (self.natives)(&cfg);
        // One thread: the work is in the step processes, and a single-threaded agent
        // keeps its memory small (each module has its own agent).
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Blocking threads only spawn steps and resolve host names: small stacks.
            .thread_stack_size(256 * 1024)
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{}: cannot start the async runtime: {e}", self.name);
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        match runtime.block_on(crate::run(cfg, natives, crate::shutdown_signal())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{}: {e}", self.name);
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}
