//! `api-cli`: run an action on an agent and print its result, like NS8's command of
//! the same name.
//!
//! Two transports. Without `--endpoint`, api-cli talks to Redis directly (NS8's
//! fallback when there is no API token): it checks that the agent is alive, pushes the
//! task on `<agent>/tasks`, follows the progress channel and prints the stored result.
//! With `--endpoint URL` it goes through the api-server with the session that
//! `api-cli login` cached ([`remote`]). Exit status: the task's exit code, or
//! [`EXIT_CLI`](failure::EXIT_CLI) when api-cli itself could not do its job (see the README).

mod api;
mod cache;
mod cli;
mod failure;
mod input;
mod output;
mod remote;
mod task;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use bus::fred::prelude::*;
use bus::{RedisConfig, TaskClient};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::task::{Progress, Task, TaskResult};
use protocol::{AgentId, keys};
use serde_json::Value;

use crate::cli::{Cli, Command, RunArgs};
use crate::failure::{EXIT_INTERRUPTED, Failure};
use crate::task::{finish, task_input};

/// Name of our Redis connections, as seen in `CLIENT LIST`.
const CLIENT_NAME: &str = "api-cli";
/// NS8's liveness limit: the agent's connection active within this many seconds.
const DEFAULT_CHECK_IDLE: u64 = 8;
/// Redis user assumed when `REDIS_PASSWORD` is set without `REDIS_USER`.
const DEFAULT_REDIS_USER: &str = "cluster";

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
    let mut args = args;
    if args.as_agent {
        if args.endpoint.as_deref().is_none_or(str::is_empty) {
            args.endpoint = std::env::var(protocol::stepenv::API_ENDPOINT).ok().filter(|e| !e.is_empty());
        }
        if args.endpoint.is_none() {
            return Err(Failure::cli("--as-agent needs --endpoint or API_ENDPOINT (the api-server's URL)"));
        }
        if let Some((image, "node")) = args.agent.split_once('@') {
            args.agent = runtime.block_on(default_instance(image))?;
        }
    }
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

/// `<image>@node`: the agent of this node's default instance of `image` (NS8's
/// `node/<N>/default_instance/<image>`, a public key).
async fn default_instance(image: &str) -> Result<String, Failure> {
    let node: u32 = std::env::var("NODE_ID")
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Failure::cli(format!("{image}@node: NODE_ID is not set")))?;
    let cfg = redis_config()?;
    let redis = bus::connect(&cfg, CLIENT_NAME).await?;
    let key = keys::node_default_instance(node, image);
    let id: Option<String> = bus::fred::prelude::KeysInterface::get(&redis, &key).await.map_err(bus::BusError::from)?;
    let _ = bus::fred::prelude::ClientLike::quit(&redis).await;
    id.filter(|i| !i.is_empty())
        .map(|i| format!("module/{i}"))
        .ok_or_else(|| Failure::cli(format!("{image}@node: node {node} has no {image} module ({key} is not set)")))
}

/// Library logs (a lost Redis connection, say) go to stderr at `warn` and above,
/// `RUST_LOG` permitting.
fn init_logging() {
    telemetry::init(telemetry::Level::WARN);
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
