//! `module-service`: start, stop, enable and disable a module's services (its
//! quadlet `.container` files) through the module user's Podman API. On the `PATH` of
//! the module's action steps; the module agent runs `module-service up` at start.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use services::{Engine, Layout, ServiceError};

/// Why a `module-service` command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("name at least one service")]
    NoNames,
    #[error("these services did not start: {}", .0.join(", "))]
    NotStarted(Vec<String>),
}

#[derive(Parser)]
#[command(version, about = "Manage the services of this module (run by its actions, as its user)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Each declared service: enabled or not, and its container's state (JSON).
    List,
    /// Mark services enabled (started at every agent start) and start them.
    Enable {
        names: Vec<String>,
        /// Only mark them enabled.
        #[arg(long)]
        no_start: bool,
    },
    /// Mark services disabled and stop them.
    Disable { names: Vec<String> },
    /// Start (or re-create) services now.
    Start { names: Vec<String> },
    /// Stop and remove the containers of services (named volumes stay).
    Stop { names: Vec<String> },
    /// Stop then start services: picks up a changed environment, file or image.
    Restart { names: Vec<String> },
    /// Start every enabled service that is not running (what the agent does at start).
    Up,
    /// Stop every service container of the module.
    Down,
    /// Remove the images no container uses (the node runs it after an update).
    Prune,
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let layout = Layout::from_env()?;
    let check = |names: &[String]| -> Result<Vec<services::Service>, CliError> {
        if names.is_empty() {
            return Err(CliError::NoNames);
        }
        Ok(names.iter().map(|n| layout.load(n)).collect::<Result<_, _>>()?)
    };
    match cli.command {
        Cmd::List => {
            let enabled = layout.enabled();
            let declared = layout.declared()?;
            // Listing never starts the Podman service just to say "inactive".
            let engine = Engine::running(&layout).await;
            let mut out = Vec::new();
            for name in declared {
                let svc = layout.load(&name);
                let state = match (&engine, &svc) {
                    (Some(e), Ok(s)) => e.state(&s.container_name).await?,
                    (None, Ok(_)) => "inactive".to_owned(),
                    (_, Err(e)) => format!("invalid: {e}"),
                };
                let description = svc.ok().and_then(|s| s.description);
                out.push(serde_json::json!({
                    "name": name, "description": description, "enabled": enabled.contains(&name), "state": state
                }));
            }
            println!("{}", serde_json::Value::Array(out));
        }
        Cmd::Enable { .. } | Cmd::Disable { .. } | Cmd::Start { .. } | Cmd::Stop { .. } | Cmd::Restart { .. } => {
            // What to record as enabled, and whether to (re)start or stop now. A start
            // replaces a running container, so a restart is a start.
            let (names, mark, start) = match cli.command {
                Cmd::Enable { names, no_start } => (names, Some(true), (!no_start).then_some(true)),
                Cmd::Disable { names } => (names, Some(false), Some(false)),
                Cmd::Start { names } | Cmd::Restart { names } => (names, None, Some(true)),
                Cmd::Stop { names } => (names, None, Some(false)),
                _ => unreachable!("matched above"),
            };
            let svcs = check(&names)?;
            if let Some(on) = mark {
                for s in &svcs {
                    layout.set_enabled(&s.name, on)?;
                }
            }
            if let Some(start) = start {
                let engine = Engine::connect(&layout).await?;
                for s in &svcs {
                    if start { engine.start(s).await? } else { engine.remove(&s.container_name).await? }
                }
            }
        }
        Cmd::Up => {
            let enabled = layout.enabled();
            if enabled.is_empty() {
                return Ok(());
            }
            let engine = Engine::connect(&layout).await?;
            let mut failed = Vec::new();
            for name in enabled {
                // One broken service does not keep the others down.
                let started = async {
                    let svc = layout.load(&name)?;
                    if engine.state(&svc.container_name).await? == "running" {
                        return Ok(());
                    }
                    engine.start(&svc).await
                };
                let started: Result<(), ServiceError> = started.await;
                if let Err(e) = started {
                    eprintln!("module-service: {name}: {e}");
                    failed.push(name);
                }
            }
            if !failed.is_empty() {
                return Err(CliError::NotStarted(failed));
            }
        }
        Cmd::Prune => {
            let engine = Engine::connect(&layout).await?;
            let removed = engine.prune_images().await?;
            println!("{}", serde_json::json!({"removed_images": removed}));
        }
        Cmd::Down => {
            if !layout.socket().exists() && layout.enabled().is_empty() {
                return Ok(());
            }
            let engine = Engine::connect(&layout).await?;
            for c in engine.containers().await? {
                engine.remove(&c).await?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("module-service: {e}");
            ExitCode::FAILURE
        }
    }
}
