//! The command line: subcommands and their options.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The user `login` logs in as without `--username` (NS8's first admin).
pub const DEFAULT_USER: &str = "admin";

#[derive(Parser, Debug)]
#[command(name = "api-cli", version, about = "Run actions on NethServer 8 agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run ACTION on an agent, wait for it and print its output.
    Run(RunArgs),
    /// Log in to an api-server and keep the session for `run --endpoint`.
    Login(LoginArgs),
    /// End the cached session on an api-server (the server revokes its token).
    Logout(LogoutArgs),
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The api-server's URL, e.g. `http://127.0.0.1:9311` (requests go to URL/api/...).
    #[arg(long, env = "API_CLI_ENDPOINT", value_name = "URL")]
    pub endpoint: String,
    /// The admin user (or agent identity) to log in as.
    #[arg(long, short = 'u', value_name = "NAME", default_value = DEFAULT_USER)]
    pub username: String,
    /// Read the password from the first line of stdin instead of the terminal.
    #[arg(long)]
    pub password_stdin: bool,
    /// The second factor when the account has 2FA: a TOTP code or a recovery code.
    #[arg(long, value_name = "CODE")]
    pub otp: Option<String>,
    /// Trust the server certificates signed by the CA(s) in this PEM file (a
    /// self-signed server certificate); remembered for `run` and `logout`.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The api-server's URL, as given to `login`.
    #[arg(long, env = "API_CLI_ENDPOINT", value_name = "URL")]
    pub endpoint: String,
    /// Log out only this user (default: every login cached for the endpoint).
    #[arg(long, short = 'u', value_name = "NAME")]
    pub username: Option<String>,
    /// Like `login --ca-file` (default: the file given at login).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The action name, e.g. `list-actions` or `add-module`.
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub action: String,
    /// Target agent: `cluster`, `node/<N>`, `module/<id>`, or the short forms `<N>`,
    /// `<module id>` and `node` (the local node, from NODE_ID).
    #[arg(long, short = 'a', default_value = "cluster")]
    pub agent: String,
    /// Action input: JSON text, `@FILE` to read it from a file, `-` to read stdin.
    #[arg(long, short = 'd', default_value = "{}")]
    pub data: String,
    /// The task's `extra` object (UI metadata such as `title`), as JSON text.
    #[arg(long, default_value = "{}")]
    pub extra: String,
    /// Push the task and print its id instead of waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
    /// Never show the progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Refuse to push unless the agent's Redis connection was active within SECS
    /// seconds (NS8's liveness check); 0 disables the check. Default 8. Redis transport
    /// only: the api-server does its own check.
    #[arg(long, value_name = "SECS")]
    pub check_idle: Option<u64>,
    /// Go through the api-server at URL with the session of `api-cli login`, instead
    /// of talking to Redis.
    #[arg(long, env = "API_CLI_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// With --endpoint: whose cached login to use, when there are several.
    #[arg(long, short = 'u', value_name = "NAME", requires = "endpoint")]
    pub username: Option<String>,
    /// With --endpoint: like `login --ca-file` (default: the file given at login).
    #[arg(long, value_name = "PEM", requires = "endpoint")]
    pub ca_file: Option<PathBuf>,
    /// For an agent's steps: log in to the api-server (--endpoint, default
    /// $API_ENDPOINT) as this agent, with its REDIS_USER and REDIS_PASSWORD, so that
    /// the task runs with the agent's own roles. `--agent` may then also be
    /// `<image>@node` (this node's default instance of the image, NS8's selector).
    #[arg(long)]
    pub as_agent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
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
