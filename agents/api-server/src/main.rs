//! `api-server`: serve the API, or `api-server add-user` to create an admin user from
//! the command line (how the first admin is made).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use api_server::config::ServeArgs;
use api_server::{CLIENT_NAME, authz, password, routes};
use bus::fred::prelude::*;
use clap::{Parser, Subcommand};
use protocol::AgentId;

#[derive(Parser, Debug)]
#[command(
    name = "api-server",
    version,
    about = "The cluster's HTTP and WebSocket API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an admin user in Redis (REDIS_ADDRESS, REDIS_USER, REDIS_PASSWORD).
    AddUser(AddUser),
    /// Set a user's password (a lost admin password), printing a generated one unless
    /// --password-stdin. The user's sessions end.
    SetPassword(SetPassword),
    #[command(name = "reset-2fa")]
    /// Turn off a user's two-factor authentication (a lost device, or a data key that
    /// was lost): its secret and recovery codes are removed and its sessions end.
    Reset2fa(Reset2fa),
}

#[derive(clap::Args, Debug)]
struct Reset2fa {
    name: String,
}

#[derive(clap::Args, Debug)]
struct SetPassword {
    name: String,
    /// Read the password from the first line of stdin instead of generating one.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(clap::Args, Debug)]
struct AddUser {
    name: String,
    /// Read the password from the first line of stdin instead of generating one.
    #[arg(long)]
    password_stdin: bool,
    /// Grant ROLE on AGENT, e.g. `owner:cluster` (repeatable).
    #[arg(long, value_name = "ROLE:AGENT")]
    grant: Vec<String>,
    /// Succeed without change if the user exists.
    #[arg(long)]
    if_missing: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(telemetry::Level::INFO);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("api-server: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = match cli.command {
        None => runtime.block_on(api_server::serve(cli.serve)),
        Some(Command::AddUser(a)) => runtime.block_on(add_user(a)),
        Some(Command::SetPassword(a)) => runtime.block_on(set_password(a)),
        Some(Command::Reset2fa(a)) => runtime.block_on(reset_2fa(a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn add_user(a: AddUser) -> anyhow::Result<()> {
    if !authz::valid_user_name(&a.name) {
        anyhow::bail!(
            "{:?} is not a valid user name (a lowercase letter, then lowercase letters, digits, '.', '-', '_'; at most 32)",
            a.name
        );
    }
    let mut grants = Vec::new();
    for g in &a.grant {
        let (role, agent) = g.split_once(':').ok_or_else(|| anyhow::anyhow!("--grant {g:?}: expected ROLE:AGENT"))?;
        if !authz::valid_role_name(role) {
            anyhow::bail!("--grant {g:?}: {role:?} is not a role name");
        }
        let agent: AgentId = agent.parse().map_err(|e| anyhow::anyhow!("--grant {g:?}: {e}"))?;
        grants.push((role.to_owned(), agent));
    }
    let (pw, generated) = new_password(a.password_stdin)?;
    let cfg = bus::RedisConfig::from_env_or_files(CLIENT_NAME, &credential_files())?;
    let redis = bus::connect(&cfg, CLIENT_NAME).await?;
    let exists: bool = redis.exists(protocol::keys::user(&a.name)).await?;
    if exists {
        if a.if_missing {
            return Ok(());
        }
        anyhow::bail!("user {} already exists", a.name);
    }
    let to_hash = pw.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&to_hash)).await?;
    if !routes::users::create_user(&redis, &a.name, &hash, &[]).await? {
        anyhow::bail!("user {} already exists", a.name);
    }
    for (role, agent) in &grants {
        bus::grants::set_grant(&redis, &a.name, agent, role, true).await?;
    }
    show_once(&a.name, &pw, generated);
    Ok(())
}

/// The api-server's own Redis credentials when none are in the environment (the admin
/// commands run from root's shell): where `cargo xtask up` keeps them, beside this
/// binary's directory, then the installed node's path.
fn credential_files() -> Vec<std::path::PathBuf> {
    bus::RedisConfig::installed_credentials("api-server/agent.env")
}

async fn set_password(a: SetPassword) -> anyhow::Result<()> {
    if !authz::valid_user_name(&a.name) {
        anyhow::bail!("{:?} is not a valid user name", a.name);
    }
    let (pw, generated) = new_password(a.password_stdin)?;
    let cfg = bus::RedisConfig::from_env_or_files(CLIENT_NAME, &credential_files())?;
    let redis = bus::connect(&cfg, CLIENT_NAME).await?;
    let key = protocol::keys::user(&a.name);
    if !redis.exists::<bool, _>(&key).await? {
        anyhow::bail!("no user {}", a.name);
    }
    let to_hash = pw.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&to_hash)).await?;
    // The new password and the end of the user's sessions, at once.
    let tx = redis.multi();
    let _: () = tx.hset(&key, ("password_hash", hash)).await?;
    let _: () = tx.hincrby(&key, "token_generation", 1).await?;
    let _: () = tx.exec(true).await?;
    show_once(&a.name, &pw, generated);
    Ok(())
}

async fn reset_2fa(a: Reset2fa) -> anyhow::Result<()> {
    if !authz::valid_user_name(&a.name) {
        anyhow::bail!("{:?} is not a valid user name", a.name);
    }
    let cfg = bus::RedisConfig::from_env(CLIENT_NAME)?;
    let redis = bus::connect(&cfg, CLIENT_NAME).await?;
    let key = protocol::keys::user(&a.name);
    if !redis.exists::<bool, _>(&key).await? {
        anyhow::bail!("no user {}", a.name);
    }
    let tx = redis.multi();
    let _: () = tx.hdel(&key, "2fa").await?;
    let _: () = tx.del(protocol::keys::user_recovery_codes(&a.name)).await?;
    let _: () = tx.hincrby(&key, "token_generation", 1).await?;
    let _: () = tx.exec(true).await?;
    eprintln!("two-factor authentication of {} is off; its sessions ended", a.name);
    Ok(())
}

/// The password from stdin (checked against the policy) or a generated one.
fn new_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((password::generate(20), true));
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    password::check_policy(&pw)?;
    Ok((pw, false))
}

/// A generated password is shown once, on stdout only: Redis holds its argon2id hash.
fn show_once(name: &str, pw: &str, generated: bool) {
    if generated {
        println!("{pw}");
        if std::io::stdout().is_terminal() {
            eprintln!("(the password of {name} above is shown only now: store it safely)");
        }
    }
}
