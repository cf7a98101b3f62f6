//! `module-agent`: the agent of one installed application instance (`module/<id>`),
//! running as that instance's Unix user. Its actions are the module's scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_runtime::{ActionContext, AgentBinary, NativeActions};
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

/// One line of a module's `timers` file (`$AGENT_INSTALL_DIR/timers`): every
/// `seconds`, the module's own `action` is queued, as a task of its own.
#[derive(Debug, PartialEq)]
struct Timer {
    seconds: u64,
    action: String,
}

/// The shortest interval a timer may have: a module cannot flood its own queue.
const MIN_TIMER: u64 = 10;

/// `<seconds> <action>` per line, `#` comments. Bad lines are said and skipped.
fn parse_timers(text: &str) -> Vec<Timer> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let parsed = match (words.next().map(str::parse::<u64>), words.next(), words.next()) {
            (Some(Ok(s)), Some(a), None) if s >= MIN_TIMER && protocol::validate_action_name(a).is_ok() => {
                Some(Timer { seconds: s, action: a.to_owned() })
            }
            _ => None,
        };
        match parsed {
            Some(t) => out.push(t),
            None => eprintln!(
                "module-agent: timers line {}: {line:?} is not \"<seconds, at least {MIN_TIMER}> <action>\": ignored",
                n + 1
            ),
        }
    }
    out
}

/// At most this many timers per module: each is a task of its own.
const MAX_TIMERS: usize = 16;

/// Queue each timer's action at its interval (NS8 modules use systemd user timers;
/// a module agent here is no systemd user session), from the agent's start hook: the
/// task goes on the agent's own queue like any other, runs with the module's rights
/// only (its `user` is the module itself) and its result is kept.
async fn start_timers(ctx: ActionContext) {
    let Some(install) = std::env::var_os(protocol::stepenv::AGENT_INSTALL_DIR).map(PathBuf::from) else { return };
    let Ok(text) = std::fs::read_to_string(install.join("timers")) else { return };
    let timers = parse_timers(&text);
    if timers.len() > MAX_TIMERS {
        eprintln!("module-agent: {} timers, only the first {MAX_TIMERS} run", timers.len());
    }
    for t in timers.into_iter().take(MAX_TIMERS) {
        let (redis, agent) = (ctx.redis.clone(), ctx.agent.clone());
        tokio::spawn(async move {
            let every = std::time::Duration::from_secs(t.seconds);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut task = protocol::task::Task::new(t.action.clone(), serde_json::json!({}));
                task.user = agent.to_string();
                if let Err(e) = bus::push_task(&redis, &agent, &mut task).await {
                    eprintln!("module-agent: timer {}: cannot queue it: {e}", t.action);
                }
            }
        });
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
        natives: |_| NativeActions::new().on_start(start_timers),
    }
    .main()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_lines() {
        let t = parse_timers(
            "# check often\n60 check-certificates\n5 too-often\nx bad\n3600 a b\n\n120 list-actions # ok\n",
        );
        assert_eq!(
            t,
            [
                Timer { seconds: 60, action: "check-certificates".into() },
                Timer { seconds: 120, action: "list-actions".into() }
            ]
        );
    }
}
