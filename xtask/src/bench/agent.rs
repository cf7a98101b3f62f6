//! `cargo xtask bench --only agent`: the agent's latency, throughput and memory,
//! measured the way the NS8 baseline was (`../shared/reference/ns8-agent-baseline.md`,
//! section 3), in one run, beside the bare cost of the same step spawned without any
//! agent.
//!
//! Client: [`super::task_client`], on the same machine. Latency: 20 warm-up, then N
//! sequential tasks, p50/p95/p99 by linear interpolation. Idle: a few tasks, each sent
//! once the agent has idled longer than its polling interval (p50, max). Throughput: M
//! tasks in one `LPUSH`, time until M terminal messages, then every exit code is
//! tallied (any non-zero, e.g. NS8's busy rejection 11, is reported). Memory:
//! `/proc/<pid>/status` of the agent: VmRSS 3 s after start (idle), VmHWM at the end
//! (peak). Each run starts a fresh Redis and agent; [`super::agent_report`] prints the
//! medians over the runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::{AgentId, stepenv};

use super::fixture::{Proc, start_redis, tempfile_dir};
use super::measure::{Cpu, Latency, latency_of, status_kb, system_cpu};
use super::task_client::Client;
use crate::resp::Conn;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Sequential tasks per latency series.
    #[arg(long, default_value_t = 1000)]
    pub(super) tasks: usize,
    /// Tasks in each burst.
    #[arg(long, default_value_t = 2000)]
    pub(super) burst: usize,
    /// Tasks per idle series, each sent after the agent idled longer than its polling
    /// interval.
    #[arg(long, default_value_t = 5)]
    pub(super) idle_tasks: usize,
    /// Benchmark this agent binary instead of building `bench-agent` (to compare two
    /// builds run after run; it needs the native `noop` action).
    #[arg(long)]
    bench_agent: Option<PathBuf>,
}

const AGENT: &str = "module/bench1";

/// The bench agent's polling interval (its blocking pop's server-side timeout), shorter
/// than the 5 s default so that the idle series takes seconds, not minutes; the idle
/// series waits [`IDLE_GAP`], longer than it, before each task.
pub(super) const POLL_INTERVAL: &str = "2s";
pub(super) const IDLE_GAP: Duration = Duration::from_millis(2500);

/// What one run measured.
#[derive(Default, Clone)]
pub(super) struct RunFigures {
    pub(super) bare: Latency,
    pub(super) bash: Latency,
    pub(super) native: Latency,
    pub(super) bash_idle: Latency,
    pub(super) native_idle: Latency,
    pub(super) bash_rate: f64,
    pub(super) native_rate: f64,
    pub(super) bash_failed: usize,
    pub(super) native_failed: usize,
    pub(super) bash_cpu_ms: f64,
    pub(super) native_cpu_ms: f64,
    pub(super) idle_rss_kb: u64,
    pub(super) peak_rss_kb: u64,
}

/// The bench agent's own ACL user, with the rules a module's has in a cluster.
const AGENT_PASSWORD: &str = "bench-agent-password";

fn create_agent_user(port: u16) -> Result<()> {
    let agent: AgentId = AGENT.parse()?;
    let mut args = vec!["ACL".to_owned(), "SETUSER".into(), AGENT.into()];
    args.extend(protocol::acl::agent_rules(&agent, &format!(">{AGENT_PASSWORD}")));
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let reply = Conn::connect(port)?.cmd(&args)?;
    if reply.text().as_deref() != Some("OK") {
        bail!("ACL SETUSER {AGENT} failed");
    }
    Ok(())
}

fn setup_tree(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in ["actions/noop-bash", "events", "state"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let step = dir.join("actions/noop-bash/10noop");
    std::fs::write(&step, "#!/bin/bash\nexit 0\n")?;
    std::fs::set_permissions(&step, std::fs::Permissions::from_mode(0o755))?;
    // The baseline's 5-line environment file.
    std::fs::write(
        dir.join("state/environment"),
        "MODULE_ID=bench1\nIMAGE_URL=ghcr.io/example/bench:1\nMODULE_UUID=8e1b4a0b-9d51-4c4f-8e2f-3a4b1c2d3e4f\nNODE_ID=1\nTCP_PORT=20001\n",
    )?;
    Ok(())
}

/// The agent's environment, as the baseline started its agent (`env -i` plus these).
fn agent_env(dir: &Path, port: u16) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOME".into(), dir.display().to_string()),
        ("AGENT_INSTALL_DIR".into(), dir.display().to_string()),
        ("AGENT_STATE_DIR".into(), dir.join("state").display().to_string()),
        ("REDIS_ADDRESS".into(), format!("127.0.0.1:{port}")),
        ("RUST_LOG".into(), "warn".into()),
        ("AGENT_POLLING_INTERVAL".into(), POLL_INTERVAL.into()),
        ("REDIS_USER".into(), AGENT.into()),
        ("REDIS_PASSWORD".into(), AGENT_PASSWORD.into()),
    ]
}

/// What the agent gives the step: its own environment, the environment file, and
/// the per-task variables.
fn step_env(dir: &Path, port: u16) -> Vec<(String, String)> {
    let mut env = agent_env(dir, port);
    env.push((stepenv::AGENT_ID.into(), AGENT.into()));
    let file = std::fs::read_to_string(dir.join("state/environment")).unwrap_or_default();
    env.extend(protocol::envfile::parse(&file));
    for (k, v) in [
        (stepenv::AGENT_COMFD, "3"),
        (stepenv::AGENT_TASK_ID, "bench-0"),
        (stepenv::AGENT_TASK_ACTION, "noop-bash"),
        (stepenv::AGENT_TASK_USER, "admin"),
    ] {
        env.push((k.into(), v.into()));
    }
    env
}

/// Spawn the step as the agent does (same environment and cwd, its own process
/// group, data on stdin, output captured), without any agent, `count` times.
fn bare_spawns(step: &Path, env: &[(String, String)], cwd: &Path, count: usize) -> Result<Latency> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut ms = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        let mut child = Command::new(step)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        // The no-op never reads stdin: a broken pipe here is expected, as in the agent.
        let _ = child.stdin.take().context("stdin")?.write_all(b"{}");

        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("the bare step failed: {:?}", out.status);
        }
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latency_of(ms))
}

fn one_run(bin: &Path, args: &AgentArgs) -> Result<RunFigures> {
    let dir = tempfile_dir()?;
    setup_tree(&dir)?;
    let (redis, port) = start_redis()?;
    create_agent_user(port)?;
    let redis_pid = redis.0.id();
    let mut client = Client::connect(port, AGENT.parse()?)?;
    let agent = Proc(
        Command::new(bin)
            .args(["--agentid", AGENT])
            .env_clear()
            .envs(agent_env(&dir, port))
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the bench agent")?,
    );
    let pid = agent.0.id();
    // Wait until it serves, then let it settle like the baseline (3 s after start).
    let started = Instant::now();
    while client.round_trip("list-actions").is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the bench agent did not start");
        }
    }
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    let idle_rss_kb = status_kb(pid, "VmRSS");

    let bare =
        bare_spawns(&dir.join("actions/noop-bash/10noop"), &step_env(&dir, port), &dir.join("state"), args.tasks)?;
    let bash = client.latency("noop-bash", args.tasks)?;
    let native = client.latency("noop", args.tasks)?;
    let bash_idle = client.idle_latency("noop-bash", args.idle_tasks, IDLE_GAP)?;
    let native_idle = client.idle_latency("noop", args.idle_tasks, IDLE_GAP)?;
    let (a0, r0, s0) = (Cpu::of(pid), Cpu::of(redis_pid), system_cpu());
    let (bash_rate, bash_failed) = client.burst("noop-bash", args.burst)?;
    let (a1, r1, s1) = (Cpu::of(pid), Cpu::of(redis_pid), system_cpu());
    let d: Vec<f64> = s0.iter().zip(&s1).map(|(a, b)| (b - a) as f64).collect();
    let total: f64 = d.iter().sum();
    eprintln!(
        "xtask: machine during the bash burst: idle {:.0}%, steal {:.0}%",
        100.0 * d[3] / total,
        100.0 * d.get(7).unwrap_or(&0.0) / total
    );
    let per = |x: f64| x / args.burst as f64;
    eprintln!(
        "xtask: bash burst CPU per task: agent user {:.3} ms, system {:.3} ms; steps {:.3} ms; redis {:.3} ms",
        per(a1.user - a0.user),
        per(a1.system - a0.system),
        per(a1.children - a0.children),
        per(r1.own() - r0.own())
    );
    let (native_rate, native_failed) = client.burst("noop", args.burst)?;
    let a2 = Cpu::of(pid);
    let peak_rss_kb = status_kb(pid, "VmHWM");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunFigures {
        bare,
        bash,
        native,
        bash_idle,
        native_idle,
        bash_rate,
        native_rate,
        bash_failed,
        native_failed,
        bash_cpu_ms: per(a1.own() - a0.own()),
        native_cpu_ms: per(a2.own() - a1.own()),
        idle_rss_kb,
        peak_rss_kb,
    })
}

/// `runs` runs of the bench agent (built in `release` unless `--bench-agent`), and the
/// shipped module agent's idle memory.
pub(super) fn measure(release: &Path, args: &AgentArgs, runs: usize) -> Result<(Vec<RunFigures>, u64)> {
    let bin = args.bench_agent.clone().unwrap_or_else(|| release.join("bench-agent"));
    let mut all = Vec::new();
    for i in 0..runs {
        eprintln!("xtask: run {}/{runs}", i + 1);
        all.push(one_run(&bin, args)?);
    }
    Ok((all, module_agent_idle_rss(&release.join("module-agent"))?))
}

/// Idle RSS of the shipped module-agent binary (no native actions), 3 s after start.
fn module_agent_idle_rss(bin: &Path) -> Result<u64> {
    let dir = tempfile_dir()?;
    setup_tree(&dir)?;
    let (_redis, port) = start_redis()?;
    create_agent_user(port)?;
    let agent = Proc(
        Command::new(bin)
            .args(["--agentid", AGENT])
            .env("AGENT_INSTALL_DIR", &dir)
            .env("REDIS_ADDRESS", format!("127.0.0.1:{port}"))
            .env("REDIS_USER", AGENT)
            .env("REDIS_PASSWORD", AGENT_PASSWORD)
            .env("RUST_LOG", "warn")
            .spawn()?,
    );
    std::thread::sleep(Duration::from_secs(3));
    let rss = status_kb(agent.0.id(), "VmRSS");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rss)
}
