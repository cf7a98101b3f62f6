//! `traefik-ctl`: the action steps of the `traefik` module. Each subcommand is one
//! action: its input JSON on stdin, its output JSON on stdout, as any NS8 step. It runs
//! as the module's Unix user and changes only the module's own files: Traefik's static
//! configuration, one dynamic file per route (the file provider, watched by Traefik),
//! the certificates, and a record of each route. An action that changes what Traefik
//! serves returns once Traefik serves it (read back from Traefik's API), and puts the
//! previous files back when Traefik refuses the new ones.

mod certificates;
mod certs;
mod env;
mod fail;
mod render;
mod routes;
mod service;
mod settings;
mod sync;
mod validate;

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use fail::Failure;

#[derive(Parser)]
#[command(version, about = "The traefik module's actions (run by its action steps, as its user)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// create-module: the directories, the default self-signed certificate, the
    /// settings, the roles; Traefik is started by configure-module.
    Create,
    /// configure-module: listening ports; (re)start Traefik and wait until it answers.
    Configure,
    /// get-configuration: the ports.
    GetConfiguration,
    SetRoute,
    GetRoute,
    DeleteRoute,
    ListRoutes,
    SetAcmeServer,
    GetAcmeServer,
    UploadCertificate,
    SetCertificate,
    ListCertificates,
    GetCertificate,
    DeleteCertificate,
    /// The module's timer: certificates issued, renewed or expiring, announced.
    CheckCertificates,
    /// The `module-removed` event handler: the removed module's routes go.
    ModuleRemoved,
    /// Start Traefik if it is not running, and wait until it answers (the agent's start
    /// and the update steps).
    Up,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = input().and_then(|data| run(cli.command, data));
    match result {
        Ok(Value::Null) => ExitCode::SUCCESS,
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => f.report(),
    }
}

fn input() -> Result<Value, Failure> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| Failure::failed(format!("cannot read the input: {e}")))?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(&text).map_err(|e| Failure::failed(format!("the input is not JSON: {e}")))
}

fn run(cmd: Cmd, data: Value) -> Result<Value, Failure> {
    let env = env::Env::from_process()?;
    match cmd {
        Cmd::Create => settings::create(&env).map(|_| Value::Null),
        Cmd::Configure => settings::configure(&env, data),
        Cmd::GetConfiguration => settings::get_configuration(&env),
        Cmd::Up => service::up(&env).map(|_| Value::Null),
        Cmd::SetRoute => routes::set(&env, data),
        Cmd::GetRoute => routes::get(&env, data),
        Cmd::DeleteRoute => routes::delete(&env, data),
        Cmd::ListRoutes => routes::list(&env, data),
        Cmd::ModuleRemoved => routes::module_removed(&env, data),
        Cmd::SetAcmeServer => settings::set_acme_server(&env, data),
        Cmd::GetAcmeServer => settings::get_acme_server(&env),
        Cmd::UploadCertificate => certificates::upload(&env, data),
        Cmd::SetCertificate => certificates::set(&env, data),
        Cmd::ListCertificates => certificates::list(&env, data),
        Cmd::GetCertificate => certificates::get(&env, data),
        Cmd::DeleteCertificate => certificates::delete(&env, data),
        Cmd::CheckCertificates => certificates::check(&env, data),
    }
}
