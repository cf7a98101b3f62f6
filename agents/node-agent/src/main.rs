//! `node-agent`: one per node (agent id `node/<N>`): Unix users, images, ports,
//! firewall. Runs as root. `node-agent install` sets up a node's core before its first
//! start (see `node_agent::install`; `deploy/install.sh` runs it).

use std::path::PathBuf;
use std::process::ExitCode;

use agent_runtime::AgentBinary;
use agent_runtime::{EXIT_CONFIG, EXIT_FAILURE};
use clap::Parser;
use node_agent::install::{self, InstallError};
use protocol::AgentId;

fn main() -> ExitCode {
    // A subcommand only as the first argument: the agent's own command line (flags
    // only) stays as it is.
    if std::env::args_os().nth(1).is_some_and(|a| a == "install") {
        return install_main(InstallArgs::parse_from(std::env::args_os().skip(1)));
    }
    AgentBinary {
        name: "node-agent",
        about: "Runs the actions of one node (agent id \"node/<N>\"); `node-agent install --help` sets up a node",
        default_id: None,
        expected: "node/<N>",
        accepts: |id| matches!(id, AgentId::Node(_)),
        natives: node_agent::natives,
    }
    .main()
}

/// Set up this node's core before its first start: the agents' directories under
/// /var/lib/nethserver, a Redis user with a random password for the cluster agent, the
/// node agent and the api-server (root-only environment files), and Redis's ACL file
/// /etc/ns8rs/redis.acl with only the passwords' SHA-256. Existing passwords are never
/// replaced.
#[derive(Parser)]
#[command(name = "node-agent install", bin_name = "node-agent install")]
struct InstallArgs {
    /// The file system root to install under (for tests; `/` on a server).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// This node's number (agent `node/<N>`).
    #[arg(long, default_value_t = install::FIRST_NODE)]
    node: u32,
    /// Redis as the programs reach it (`host:port` or a socket path).
    #[arg(long, default_value = install::REDIS_ADDRESS)]
    redis_address: String,
    /// Go on when the node is installed already: create what is missing and rewrite the
    /// core users' rules in the ACL file (passwords are kept).
    #[arg(long)]
    force: bool,
}

fn install_main(args: InstallArgs) -> ExitCode {
    let fail = |code: u8, msg: &dyn std::fmt::Display| {
        eprintln!("node-agent install: {msg}");
        ExitCode::from(code)
    };
    if args.root == std::path::Path::new("/") && !nix::unistd::Uid::effective().is_root() {
        return fail(EXIT_CONFIG, &"run as root: the credentials files must be root's");
    }
    if let Err(e) = bus::Address::parse(&args.redis_address) {
        return fail(EXIT_CONFIG, &format!("--redis-address: {e}"));
    }
    let opts =
        install::Options { root: args.root, node: args.node, redis_address: args.redis_address, force: args.force };
    match install::install(&opts) {
        Ok(report) => {
            for id in [&report.core.cluster, &report.core.node, &report.core.api_server] {
                let what = if id.created { "new password" } else { "password kept" };
                println!("Redis user {}: {} ({what})", id.user, id.file.display());
            }
            println!(
                "Redis ACL file: {} (default and the core users rewritten, {} other users kept)",
                report.acl_file.display(),
                report.acl.kept
            );
            ExitCode::SUCCESS
        }
        Err(e @ (InstallError::Read { .. } | InstallError::Write { .. })) => fail(EXIT_FAILURE, &e),
        Err(e) => fail(EXIT_CONFIG, &e),
    }
}
