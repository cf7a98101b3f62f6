//! `api-cli`: run an action on an agent and print its result, like NS8's command of
//! the same name.
//!
//! This version talks to Redis directly (NS8's fallback when there is no API token):
//! it checks that the agent is alive, pushes the task on `<agent>/tasks`, follows the
//! progress channel and prints the stored result. Exit status: the task's exit code, or
//! [`EXIT_CLI`] when api-cli itself could not do its job (see the README).

mod input;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use bus::fred::prelude::*;
use bus::{RedisConfig, TaskClient};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::task::{Progress, Task, TaskResult};
use protocol::{AgentId, exit, keys};
use serde_json::Value;

/// Exit code of api-cli's own failures: bad arguments, Redis unreachable, agent not
/// running. Clap uses the same code for usage errors.
pub const EXIT_CLI: u8 = 2;
/// Exit code after Ctrl-C while waiting (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;
/// Name of our Redis connections, as seen in `CLIENT LIST`.
const CLIENT_NAME: &str = "api-cli";
/// Redis user assumed when `REDIS_PASSWORD` is set without `REDIS_USER`.
const DEFAULT_REDIS_USER: &str = "cluster";

#[derive(Parser, Debug)]
#[command(name = "api-cli", version, about = "Run actions on NethServer 8 agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run ACTION on an agent, wait for it and print its output.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The action name, e.g. `list-actions` or `add-module`.
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    action: String,
    /// Target agent: `cluster`, `node/<N>`, `module/<id>`, or the short forms `<N>`,
    /// `<module id>` and `node` (the local node, from NODE_ID).
    #[arg(long, short = 'a', default_value = "cluster")]
    agent: String,
    /// Action input: JSON text, `@FILE` to read it from a file, `-` to read stdin.
    #[arg(long, short = 'd', default_value = "{}")]
    data: String,
    /// The task's `extra` object (UI metadata such as `title`), as JSON text.
    #[arg(long, default_value = "{}")]
    extra: String,
    /// Push the task and print its id instead of waiting for the result.
    #[arg(long)]
    no_wait: bool,
    /// Never show the progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Refuse to push unless the agent's Redis connection was active within SECS
    /// seconds (NS8's liveness check); 0 disables the check.
    #[arg(long, value_name = "SECS", default_value_t = 8)]
    check_idle: u64,
}

/// Why api-cli stops without a task result to report.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn cli(message: impl Into<String>) -> Self {
        Failure { code: EXIT_CLI, message: message.into() }
    }
}

impl From<bus::BusError> for Failure {
    fn from(e: bus::BusError) -> Self {
        Failure::cli(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let Command::Run(args) = cli.command;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("api-cli: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CLI);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("api-cli: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Library logs (a lost Redis connection, say) go to stderr at `warn` and above,
/// `RUST_LOG` permitting.
fn init_logging() {
    telemetry::init(telemetry::Level::WARN);
}

async fn run(args: RunArgs) -> Result<u8, Failure> {
    // Everything that can be checked locally is checked before connecting, so a typo
    // never reaches a queue.
    let node_id = std::env::var("NODE_ID").ok();
    let agent = input::resolve_agent(&args.agent, node_id.as_deref()).map_err(Failure::cli)?;
    let data = input::json_arg("--data", &args.data, std::io::stdin().lock()).map_err(Failure::cli)?;
    let extra = input::json_inline("--extra", &args.extra).map_err(Failure::cli)?;
    let parent = input::parent_task(std::env::var(protocol::stepenv::AGENT_TASK_ID).ok().as_deref());

    let cfg = RedisConfig::from_env(DEFAULT_REDIS_USER)?;
    let client = TaskClient::connect(&cfg, CLIENT_NAME).await?;
    let outcome = submit(&client, &args, &agent, data, extra, parent).await;
    client.quit().await;
    outcome
}

async fn submit(
    client: &TaskClient,
    args: &RunArgs,
    agent: &AgentId,
    data: Value,
    extra: Value,
    parent: String,
) -> Result<u8, Failure> {
    if args.check_idle > 0 {
        client.ensure_alive(agent, args.check_idle).await?;
    }
    let mut task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        action: args.action.clone(),
        data,
        extra,
        parent,
        queue: keys::tasks(agent),
        // NS8: tasks pushed straight into Redis carry no user.
        user: String::new(),
        timestamp: Some(protocol::time::rfc3339(std::time::SystemTime::now())),
    };
    let id = task.id.clone();
    let prefix = keys::task_prefix(agent, &id);

    if args.no_wait {
        client.push(agent, &mut task).await?;
        output::write_stdout(&format!("{id}\n{prefix}\n")).map_err(Failure::cli)?;
        return Ok(0);
    }

    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| progress_bar(agent, &args.action));
    let on_progress = |p: Progress| {
        if let Some(bar) = &bar {
            bar.set_position(p.progress.into());
            bar.set_message(p.status.as_str());
        }
    };
    let result = tokio::select! {
        r = client.run(agent, &mut task, on_progress) => r.map_err(|e| {
            Failure::cli(format!("{e} (while waiting for {prefix}: the task may still run)"))
        }),
        // A handler that cannot be installed disables this branch (Ctrl-C then kills).
        Ok(()) = tokio::signal::ctrl_c() => Err(Failure {
            code: EXIT_INTERRUPTED,
            message: format!("interrupted: the task goes on, its result will be under {prefix}/"),
        }),
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let result = result?;
    report(client, agent, &args.action, &id, result).await
}

fn progress_bar(agent: &AgentId, action: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos:>3}% {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{agent} {action}"));
    bar.set_message("pending");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Print the output and the error, and turn the task's exit code into ours.
async fn report(
    client: &TaskClient,
    agent: &AgentId,
    action: &str,
    id: &str,
    result: TaskResult,
) -> Result<u8, Failure> {
    // The stored text, not the decoded value: a raw output is printed byte for byte and
    // JSON keeps its key order and number spelling.
    let raw: Option<String> = client.redis().get(keys::task_output(agent, id)).await.ok().flatten();
    let raw = raw.unwrap_or_else(|| match &result.output {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let text = output::render(&raw, std::io::stdout().is_terminal());
    output::write_stdout(&text).map_err(Failure::cli)?;

    if result.exit_code == exit::SUCCESS {
        return Ok(0);
    }
    let (code, note) = exit_status(result.exit_code);
    let mut err = result.error;
    if !err.is_empty() && !err.ends_with('\n') {
        err.push('\n');
    }
    eprintln!(
        "{err}api-cli: action {action} failed on {agent} with exit code {}{note} (task {})",
        result.exit_code,
        keys::task_prefix(agent, id)
    );
    Ok(code)
}

/// The process exit code for a task's exit code, and a note for the message.
///
/// 1-255 pass through. A step killed by a signal (or a cancelled task) reports -1 in
/// NS8; a process cannot exit with that, so negative codes become 1, and codes above
/// 255 (only a native action could produce one) become 255.
fn exit_status(task_code: i32) -> (u8, &'static str) {
    let code = match u8::try_from(task_code) {
        Ok(c) => c,
        Err(_) if task_code < 0 => 1,
        Err(_) => 255,
    };
    let note = match task_code {
        exit::SIGNALED => ": a step was killed by a signal or the task was cancelled",
        exit::UNDEFINED_ACTION => ": the agent has no such action",
        exit::VALIDATION_FAILED => ": validation failed",
        exit::INTERRUPTED => ": the agent restarted while the task ran",
        _ => "",
    };
    (code, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_are_mapped_into_a_byte() {
        assert_eq!(exit_status(3), (3, ""));
        assert_eq!(exit_status(255).0, 255);
        assert_eq!(exit_status(-1).0, 1);
        assert!(exit_status(-1).1.contains("signal"));
        assert_eq!(exit_status(-7).0, 1);
        assert_eq!(exit_status(256).0, 255);
        assert_eq!(exit_status(10).0, 10);
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["api-cli", "run", "list-actions"]).unwrap();
        let Command::Run(a) = cli.command;
        assert_eq!((a.agent.as_str(), a.data.as_str(), a.check_idle), ("cluster", "{}", 8));
        assert!(!a.no_wait && !a.quiet);
        assert!(Cli::try_parse_from(["api-cli", "run", ""]).is_err());
    }
}
