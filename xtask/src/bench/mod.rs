//! `cargo xtask bench`: the agent's latency, throughput and memory against the NS8
//! baseline, the api-server's reads and logins, module installs on a local cluster,
//! the edge proxy in front of a module, backups against bare restic (docs/benchmarks.md
//! has the figures). One file per part and per job: the part's
//! runs, its report, its client; `measure` and `fixture` are the leaves every part
//! uses.

mod agent;
mod agent_report;
mod api;
mod api_report;
mod backup;
mod fixture;
mod http;
mod measure;
mod modules;
mod proxy;
mod task_client;

use std::process::Command;

use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Independent runs (fresh Redis and agent each); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measure only this part (default: all).
    #[arg(long, value_enum)]
    only: Option<Part>,
    #[command(flatten)]
    agent: agent::AgentArgs,
    #[command(flatten)]
    api: api::ApiArgs,
    #[command(flatten)]
    proxy: proxy::ProxyArgs,
    #[command(flatten)]
    backup: backup::BackupArgs,
}

/// The benchmark's parts.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The agent: task latency, throughput, memory.
    Agent,
    /// The api-server: authenticated reads and logins.
    Api,
    /// Module installs on a local cluster, and the module agents' memory.
    Modules,
    /// The edge proxy (Traefik) in front of hello: throughput, TLS handshakes, route changes.
    Proxy,
    /// Backups and restores of a module's data against bare restic.
    Backup,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    crate::packages::ensure(&[crate::packages::REDIS])?;
    let wants = |p: Part| args.only.is_none_or(|o| o == p);
    let (agent, api, modules, proxy) = (wants(Part::Agent), wants(Part::Api), wants(Part::Modules), wants(Part::Proxy));
    let backups = wants(Part::Backup);
    let mut packages = Vec::new();
    if agent {
        packages.extend(["-p", "xtask", "-p", "module-agent"]);
    }
    if api {
        packages.extend(["-p", "api-server"]);
    }
    if modules || proxy || backups {
        for b in crate::cluster::BINARIES {
            packages.extend(["-p", b]);
        }
    }
    eprintln!("xtask: building the release binaries");
    crate::run(
        Command::new(env!("CARGO"))
            .current_dir(crate::workspace())
            .args(["build", "--release", "--quiet"])
            .args(packages)
            .arg("--bins"),
    )?;
    let release = crate::workspace().join("target/release");
    if agent {
        let (runs, module_agent_idle_kb) = agent::measure(&release, &args.agent, args.runs)?;
        agent_report::print(&runs, &args.agent, module_agent_idle_kb);
    }
    if api {
        let runs = api::measure(&release, &args.api, args.runs)?;
        api_report::print(&runs, &args.api);
        api_report::fail_on_errors(&runs)?;
    }
    if modules {
        modules::bench(&release, args.runs)?;
    }
    if proxy {
        proxy::bench(&release, &args.proxy, args.runs)?;
    }
    if backups {
        backup::bench(&release, &args.backup, args.runs)?;
    }
    Ok(())
}
