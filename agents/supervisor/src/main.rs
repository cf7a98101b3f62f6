//! `supervisor`: a small process supervisor to run the agents where systemd is not
//! PID 1 (containers, CI, development machines). One JSON file per program in a
//! directory; restart with back-off; SIGHUP reloads; SIGTERM stops everything in
//! reverse order. See the crate's README.

mod config;
mod supervise;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// Exit code for a bad configuration (sysexits `EX_USAGE`), as the agents.
const EXIT_CONFIG: u8 = 64;
/// Exit code for a runtime failure (sysexits `EX_SOFTWARE`), as the agents.
const EXIT_FAILURE: u8 = 70;

#[derive(Parser)]
#[command(name = "supervisor", version, about = "Runs and restarts the programs described in a directory")]
struct Cli {
    /// Directory of program files, one `<name>.json` per program.
    #[arg(long)]
    config_dir: PathBuf,
    /// File that holds the supervisor's pid while it runs.
    #[arg(long)]
    pidfile: Option<PathBuf>,
}

/// Log to stderr like the agents (see the `telemetry` crate).
fn init_logging() {
    telemetry::init(telemetry::Level::INFO);
}

/// The pidfile, removed when dropped.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path) -> std::io::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("supervisor: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let _pidfile = match cli.pidfile.as_deref().map(PidFile::create).transpose() {
        Ok(p) => p,
        Err(e) => {
            let path = cli.pidfile.as_deref().unwrap_or(Path::new("")).display();
            tracing::error!("supervisor: cannot write {path}: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(supervise::run(&cli.config_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(supervise::Fatal::Config(e)) => {
            tracing::error!("supervisor: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(supervise::Fatal::Runtime(e)) => {
            tracing::error!("supervisor: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
