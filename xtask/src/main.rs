//! `cargo xtask`: the project's commands, in Rust so they run wherever cargo does.
//!
//! * `up` / `down`: a working single-node cluster on this machine (Redis, the cluster
//!   agent and node 1's agent under the supervisor).
//! * `test`: install what the tests need, pass the gates (fmt, clippy, tidy), then run
//!   the whole suite; `tidy`: the tidy rules alone.
//! * `bench`: the agent and api-server benchmarks (see docs/benchmarks.md).
//! * `images`: the module images and the repository index; `debian-root`: a cached
//!   Debian root tarball (for the installer's test).

mod bench;
mod cluster;
mod gates;
mod images;
mod packages;
mod resp;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, build, and start a single-node cluster.
    Up(cluster::UpArgs),
    /// Stop the local cluster (its data is kept unless --purge).
    Down(cluster::DownArgs),
    /// Measure the agent (latency, throughput, memory) and the api-server (reads,
    /// logins) and module installs; `--only agent|api|modules` for one part (see
    /// docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Build the module packages under modules/ into images, push them to a registry
    /// and write the repository index (repodata.json).
    Images(images::ImagesArgs),
    /// Print the path of a Debian 12 root tarball with these packages (comma-separated),
    /// made with debootstrap the first time and cached under target/image-cache/.
    DebianRoot {
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
    },
    /// Check the tidy rules (xtask/src/tidy/mod.rs): key names only in protocol, typed
    /// errors, the code map, host commands through hostcmd, no import cycles.
    Tidy,
    /// Install what the tests need, pass the gates (cargo fmt --check, clippy -D warnings,
    /// tidy), then run the whole test suite.
    Test {
        /// Only the gates: no packages, no build, no tests.
        #[arg(long)]
        gates_only: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Where the local cluster lives unless told: outside any home directory, because
/// module agents run as their own users and must reach its `bin/`. Here, not in
/// `cluster`, because `images` writes the repository under it too.
pub const DEFAULT_ROOT: &str = "/var/lib/ns8rs";

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_owned()
}

/// Run a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Packages the test suite needs on a fresh Debian 12 machine.
const TEST_PACKAGES: &[packages::Package] = &[
    packages::REDIS,
    packages::REGISTRY,
    packages::PEBBLE,
    packages::CHROMIUM,
    packages::DEBOOTSTRAP,
    packages::PODMAN[0],
    packages::PODMAN[1],
    packages::PODMAN[2],
    packages::PODMAN[3],
    packages::RESTIC,
    packages::RCLONE,
];

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Up(args) => cluster::up(args),
        Cmd::Down(args) => cluster::down(args),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::Images(args) => images::images(args),
        Cmd::DebianRoot { packages } => {
            println!("{}", images::debian_tarball(&packages)?.display());
            Ok(())
        }
        Cmd::Tidy => tidy::run(&workspace()),
        Cmd::Test { gates_only: true, .. } => gates::run(),
        Cmd::Test { gates_only: false, args } => {
            packages::ensure(TEST_PACKAGES)?;
            // The module image tests build and push with `cargo xtask images`.
            packages::ensure(images::PACKAGES)?;
            // The api-server's fuzz test runs schemathesis (PyPI) from a venv in target/.
            packages::ensure_schemathesis()?;
            // The backup tests' S3 server (moto, PyPI), likewise.
            packages::ensure_moto()?;
            // Before the build and the suite: seconds to fail, not hours.
            gates::run()?;
            // The end-to-end tests drive the binaries themselves: build them all first.
            run(Command::new(env!("CARGO")).current_dir(workspace()).args(["build", "--workspace", "--bins"]))?;
            run(Command::new(env!("CARGO")).current_dir(workspace()).args(["test", "--workspace"]).args(args))
        }
    }
}
