//! `api-cli`: run an action on an agent and print its result, like NS8's command of
//! the same name.
//!
//! Two transports. Without `--endpoint`, api-cli talks to Redis directly (NS8's
//! fallback when there is no API token): it checks that the agent is alive, pushes the
//! task on `<agent>/tasks`, follows the progress channel and prints the stored result.
//! With `--endpoint URL` it goes through the api-server with the session that
//! `api-cli login` cached ([`remote`]). Exit status: the task's exit code, or
//! [`EXIT_CLI`] when api-cli itself could not do its job (see the README).

mod api;
mod cache;
mod input;
mod output;
mod remote;

use std::io::IsTerminal;
use std::path::PathBuf;
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
pub const EXIT_INTERRUPTED: u8 = 130;
/// Name of our Redis connections, as seen in `CLIENT LIST`.
const CLIENT_NAME: &str = "api-cli";
/// NS8's liveness limit: the agent's connection active within this many seconds.
const DEFAULT_CHECK_IDLE: u64 = 8;
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
    /// Log in to an api-server and keep the session for `run --endpoint`.
    Login(LoginArgs),
    /// End the cached session on an api-server (the server revokes its token).
    Logout(LogoutArgs),
}

#[derive(clap::Args, Debug)]
struct LoginArgs {
    /// The api-server's URL, e.g. `http://127.0.0.1:9311` (requests go to URL/api/...).
    #[arg(long, env = "API_CLI_ENDPOINT", value_name = "URL")]
    endpoint: String,
    /// The admin user (or agent identity) to log in as.
    #[arg(long, short = 'u', value_name = "NAME", default_value = remote::DEFAULT_USER)]
    username: String,
    /// Read the password from the first line of stdin instead of the terminal.
    #[arg(long)]
    password_stdin: bool,
    /// The second factor when the account has 2FA: a TOTP code or a recovery code.
    #[arg(long, value_name = "CODE")]
    otp: Option<String>,
    /// Trust the server certificates signed by the CA(s) in this PEM file (a
    /// self-signed server certificate); remembered for `run` and `logout`.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct LogoutArgs {
    /// The api-server's URL, as given to `login`.
    #[arg(long, env = "API_CLI_ENDPOINT", value_name = "URL")]
    endpoint: String,
    /// Log out only this user (default: every login cached for the endpoint).
    #[arg(long, short = 'u', value_name = "NAME")]
    username: Option<String>,
    /// Like `login --ca-file` (default: the file given at login).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
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
    /// seconds (NS8's liveness check); 0 disables the check. Default 8. Redis transport
    /// only: the api-server does its own check.
    #[arg(long, value_name = "SECS")]
    check_idle: Option<u64>,
    /// Go through the api-server at URL with the session of `api-cli login`, instead
    /// of talking to Redis.
    #[arg(long, env = "API_CLI_ENDPOINT", value_name = "URL")]
    endpoint: Option<String>,
    /// With --endpoint: whose cached login to use, when there are several.
    #[arg(long, short = 'u', value_name = "NAME", requires = "endpoint")]
    username: Option<String>,
    /// With --endpoint: like `login --ca-file` (default: the file given at login).
    #[arg(long, value_name = "PEM", requires = "endpoint")]
    ca_file: Option<PathBuf>,
}

/// Why api-cli stops without a task result to report.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// api-cli's own failure, with the message of `error` (text or a typed error).
    fn cli(error: impl std::fmt::Display) -> Self {
        Failure { code: EXIT_CLI, message: error.to_string() }
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
    let outcome = match cli.command {
        Command::Run(args) => run_async(args),
        Command::Login(args) => remote::login(&args),
        Command::Logout(args) => remote::logout(&args),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("api-cli: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run_async(args: RunArgs) -> Result<u8, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::cli(format!("cannot start the async runtime: {e}")))?;
    // An empty API_CLI_ENDPOINT counts as unset.
    let outcome = match args.endpoint.clone().filter(|e| !e.is_empty()) {
        Some(_) if args.check_idle.is_some() => Err(Failure::cli(
            "--check-idle is for the Redis transport: with --endpoint the api-server checks that the agent is alive",
        )),
        Some(endpoint) => runtime.block_on(remote::run(args, &endpoint)),
        None => runtime.block_on(run(args)),
    };
    // After Ctrl-C the HTTP status poller may still be in a request: do not wait for it.
    runtime.shutdown_background();
    outcome
}

/// Library logs (a lost Redis connection, say) go to stderr at `warn` and above,
/// `RUST_LOG` permitting.
fn init_logging() {
    telemetry::init(telemetry::Level::WARN);
}

/// The target agent, `data`, `extra` and `parent` of the task. Everything that can
/// be checked locally is checked before connecting, so a typo never reaches a queue.
fn task_input(args: &RunArgs) -> Result<(AgentId, Value, Value, String), Failure> {
    let node_id = std::env::var("NODE_ID").ok();
    let agent = input::resolve_agent(&args.agent, node_id.as_deref()).map_err(Failure::cli)?;
    let data = input::json_arg("--data", &args.data, std::io::stdin().lock()).map_err(Failure::cli)?;
    let extra = input::json_inline("--extra", &args.extra).map_err(Failure::cli)?;
    let parent = input::parent_task(std::env::var(protocol::stepenv::AGENT_TASK_ID).ok().as_deref());
    Ok((agent, data, extra, parent))
}

/// The cluster agent's credentials when none are in the environment, where an
/// installed node keeps them (root-only files, so only root finds them): beside this
/// binary's directory as `cargo xtask up` lays it out, then NS8's path.
fn credential_files() -> Vec<std::path::PathBuf> {
    bus::RedisConfig::installed_credentials("cluster/state/agent.env")
}

fn redis_config() -> Result<RedisConfig, Failure> {
    Ok(RedisConfig::from_env_or_files(DEFAULT_REDIS_USER, &credential_files())?)
}

async fn run(args: RunArgs) -> Result<u8, Failure> {
    let (agent, data, extra, parent) = task_input(&args)?;
    let cfg = redis_config()?;
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
    let max_idle = args.check_idle.unwrap_or(DEFAULT_CHECK_IDLE);
    if max_idle > 0 {
        client.ensure_alive(agent, max_idle).await?;
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
    finish(agent, action, id, &raw, result.exit_code, result.error)
}

/// Print a finished task's output (`raw`, its stored text) and, when it failed, its
/// error and a line naming it; return our exit code. Both transports end here.
fn finish(agent: &AgentId, action: &str, id: &str, raw: &str, exit_code: i32, error: String) -> Result<u8, Failure> {
    let text = output::render(raw, std::io::stdout().is_terminal());
    output::write_stdout(&text).map_err(Failure::cli)?;

    if exit_code == exit::SUCCESS {
        return Ok(0);
    }
    let (code, note) = exit_status(exit_code);
    let mut err = error;
    if !err.is_empty() && !err.ends_with('\n') {
        err.push('\n');
    }
    eprintln!(
        "{err}api-cli: action {action} failed on {agent} with exit code {exit_code}{note} (task {})",
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

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(args)?;
        match cli.command {
            Command::Run(a) => Ok(a),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = run_args(&["api-cli", "run", "list-actions"]).unwrap();
        assert_eq!((a.agent.as_str(), a.data.as_str(), a.check_idle), ("cluster", "{}", None));
        assert!(!a.no_wait && !a.quiet);
        assert!(run_args(&["api-cli", "run", ""]).is_err());
    }

    #[test]
    fn http_transport_options() {
        let a = run_args(&["api-cli", "run", "get-name", "--endpoint", "http://h:1", "-u", "bob"]).unwrap();
        assert_eq!((a.endpoint.as_deref(), a.username.as_deref()), (Some("http://h:1"), Some("bob")));
        // The login options need an endpoint.
        assert!(run_args(&["api-cli", "run", "x", "--username", "bob"]).is_err());

        let cli = Cli::try_parse_from(["api-cli", "login", "--endpoint", "http://h:1", "--password-stdin"]).unwrap();
        let Command::Login(l) = cli.command else { panic!("not login") };
        assert_eq!((l.username.as_str(), l.otp, l.password_stdin), ("admin", None, true));
    }
}
