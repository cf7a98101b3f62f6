//! `module-agent`: the agent of one installed application instance (`module/<id>`),
//! running as that instance's Unix user. Its actions are the module's scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_runtime::{AgentBinary, NativeActions};
use protocol::AgentId;

/// Bring the module's enabled services up, in the background: `module-service up`,
/// beside this binary. A module without enabled services costs nothing here, and the
/// agent itself never links the Podman client (it stays small; see docs/benchmarks.md).
fn services_up() {
    let state = std::env::var_os("AGENT_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("AGENT_INSTALL_DIR").map(|d| PathBuf::from(d).join("state")));
    let Some(state) = state else { return };
    let enabled = std::fs::read_to_string(state.join("services.enabled")).unwrap_or_default();
    if enabled.trim().is_empty() {
        return;
    }
    let Some(cmd) = std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join("module-service"))) else {
        return;
    };
    // It runs beside the agent (the agent does not wait for it), so the seam's std
    // command, spawned here and reaped by a thread.
    match hostcmd::Cmd::new(&cmd).arg("up").to_std().stdin(std::process::Stdio::null()).spawn() {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => eprintln!("module-agent: cannot run {}: {e}", cmd.display()),
    }
}

fn main() -> ExitCode {
    services_up();
    AgentBinary {
        name: "module-agent",
        about: "Runs the actions and event handlers of one module instance",
        default_id: None,
        expected: "module/<id>",
        accepts: |id| matches!(id, AgentId::Module(_)),
        natives: |_| NativeActions::new(),
    }
    .main()
}
