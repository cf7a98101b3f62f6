//! `cargo xtask bench`: the agent's latency, throughput and memory, measured the way
//! the NS8 baseline was (`../shared/reference/ns8-agent-baseline.md`, section 3), in
//! one run, beside the bare cost of the same step spawned without any agent.
//!
//! Client: a minimal blocking RESP client (`resp.rs`), on the same machine. One `PSUBSCRIBE progress/<agent>/task/*`
//! opened before a series; for each task: `LPUSH`, wait for its terminal progress
//! message, `MGET` output/error/exit_code, check exit code 0. Latency: 20 warm-up,
//! then N sequential tasks, p50/p95/p99 by linear interpolation. Idle: a few tasks, each
//! sent once the agent has idled longer than its polling interval (p50, max). Throughput: M tasks in
//! one `LPUSH`, time until M terminal messages, then every exit code is tallied (any
//! non-zero, e.g. NS8's busy rejection 11, is reported). Memory: `/proc/<pid>/status`
//! of the agent: VmRSS 3 s after start (idle), VmHWM at the end (peak). Each run starts a
//! fresh Redis and agent; figures are medians over the runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::task::{Progress, Task};
use protocol::{AgentId, keys, stepenv};

use crate::resp::{Conn, Reply};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Independent runs (fresh Redis and agent each); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sequential tasks per latency series.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Tasks in each burst.
    #[arg(long, default_value_t = 2000)]
    burst: usize,
    /// Tasks per idle series, each sent after the agent idled longer than its polling
    /// interval.
    #[arg(long, default_value_t = 5)]
    idle_tasks: usize,
    /// Benchmark this agent binary instead of building `bench-agent` (to compare two
    /// builds run after run; it needs the native `noop` action).
    #[arg(long)]
    bench_agent: Option<PathBuf>,
    /// Measure only this part (default: all).
    #[arg(long, value_enum)]
    only: Option<Part>,
    #[command(flatten)]
    api: crate::bench_api::ApiArgs,
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
}

const AGENT: &str = "module/bench1";

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

#[derive(Default, Clone)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

fn latency_of(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    Latency {
        p50: percentile(&ms, 0.5),
        p95: percentile(&ms, 0.95),
        p99: percentile(&ms, 0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

/// The bench agent's polling interval (its blocking pop's server-side timeout), shorter
/// than the 5 s default so that the idle series takes seconds, not minutes; the idle
/// series waits [`IDLE_GAP`], longer than it, before each task.
const POLL_INTERVAL: &str = "2s";
const IDLE_GAP: Duration = Duration::from_millis(2500);

#[derive(Default, Clone)]
struct RunFigures {
    bare: Latency,
    bash: Latency,
    native: Latency,
    bash_idle: Latency,
    native_idle: Latency,
    bash_rate: f64,
    native_rate: f64,
    bash_failed: usize,
    native_failed: usize,
    bash_cpu_ms: f64,
    native_cpu_ms: f64,
    idle_rss_kb: u64,
    peak_rss_kb: u64,
}

pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU times of a process from /proc/<pid>/stat, in ms.
#[derive(Clone, Copy)]
pub(crate) struct Cpu {
    user: f64,
    system: f64,
    /// Reaped children's user + system (the agent's steps).
    children: f64,
}

impl Cpu {
    pub(crate) fn of(pid: u32) -> Cpu {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // USER_HZ is 100 on Linux; fields counted from the state letter.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) as f64 * 10.0;
        Cpu { user: ticks(11), system: ticks(12), children: ticks(13) + ticks(14) }
    }

    /// The process's own CPU (children excluded).
    pub(crate) fn own(self) -> f64 {
        self.user + self.system
    }
}

/// The machine's CPU counters (first line of /proc/stat).
pub(crate) fn system_cpu() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// A private redis-server on a free loopback port, as the baseline ran it (no
/// persistence), once it answers.
pub(crate) fn start_redis() -> Result<(Proc, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let redis = Proc(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Conn::connect(port).and_then(|mut c| c.cmd(&[b"PING"])).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server on port {port} did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the cluster agent does at its start: agents may only FCALL these.
    Conn::connect(port)?.cmd(&[b"FUNCTION", b"LOAD", b"REPLACE", protocol::functions::LIBRARY.as_bytes()])?;
    Ok((redis, port))
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

/// The benchmark's client, NS8-style: progress subscription first, then for each
/// task LPUSH, wait for its terminal progress message, MGET the result.
struct Client {
    cmd: Conn,
    sub: Conn,
    agent: AgentId,
}

fn terminal_id(channel: &str, payload: &str) -> Option<String> {
    let p: Progress = serde_json::from_str(payload).ok()?;
    p.status.is_terminal().then(|| channel.rsplit('/').next().unwrap_or("").to_owned())
}

impl Client {
    fn connect(port: u16) -> Result<Self> {
        let agent: AgentId = AGENT.parse()?;
        let cmd = Conn::connect(port)?;
        let mut sub = Conn::connect(port)?;
        sub.cmd(&[b"PSUBSCRIBE", keys::progress_pattern(&agent).as_bytes()])?;
        Ok(Client { cmd, sub, agent })
    }

    fn task_json(&self, action: &str) -> (String, String) {
        let mut t = Task::new(action, serde_json::json!({}));
        t.id = uuid_v4();
        t.queue = keys::tasks(&self.agent);
        t.user = "admin".into();
        t.timestamp = Some("2026-11-26T16:14:49.695761Z".into());
        (t.id.clone(), serde_json::to_string(&t).expect("task serializes"))
    }

    fn round_trip(&mut self, action: &str) -> Result<f64> {
        let (id, json) = self.task_json(action);
        let t0 = Instant::now();
        self.cmd.cmd(&[b"LPUSH", keys::tasks(&self.agent).as_bytes(), json.as_bytes()])?;
        loop {
            let (channel, payload) = self.sub.pmessage()?;
            if terminal_id(&channel, &payload).as_deref() == Some(id.as_str()) {
                break;
            }
        }
        let reply = self.cmd.cmd(&[
            b"MGET",
            keys::task_output(&self.agent, &id).as_bytes(),
            keys::task_error(&self.agent, &id).as_bytes(),
            keys::task_exit_code(&self.agent, &id).as_bytes(),
        ])?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let code = match reply {
            Reply::Array(Some(v)) if v.len() == 3 => v[2].text(),
            _ => None,
        };
        if code.as_deref() != Some("0") {
            bail!("task {action} ended with exit code {code:?}");
        }
        Ok(ms)
    }

    fn latency(&mut self, action: &str, n: usize) -> Result<Latency> {
        for _ in 0..20 {
            self.round_trip(action)?;
        }
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            ms.push(self.round_trip(action)?);
        }
        Ok(latency_of(ms))
    }

    /// `n` tasks, each sent after the agent has been idle for `gap`: what a person
    /// starting a task from the API or a web page pays.
    fn idle_latency(&mut self, action: &str, n: usize, gap: Duration) -> Result<Latency> {
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            std::thread::sleep(gap);
            ms.push(self.round_trip(action)?);
        }
        Ok(latency_of(ms))
    }

    /// (tasks/s, failed count)
    fn burst(&mut self, action: &str, n: usize) -> Result<(f64, usize)> {
        let tasks: Vec<(String, String)> = (0..n).map(|_| self.task_json(action)).collect();
        let queue = keys::tasks(&self.agent);
        let mut args: Vec<&[u8]> = vec![b"LPUSH", queue.as_bytes()];
        args.extend(tasks.iter().map(|(_, j)| j.as_bytes()));
        let t0 = Instant::now();
        self.cmd.cmd(&args)?;
        let mut done = 0;
        while done < n {
            let (channel, payload) = self.sub.pmessage()?;
            if terminal_id(&channel, &payload).is_some() {
                done += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut failed = 0;
        for chunk in tasks.chunks(500) {
            let names: Vec<String> = chunk.iter().map(|(id, _)| keys::task_exit_code(&self.agent, id)).collect();
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(names.iter().map(|k| k.as_bytes()));
            if let Reply::Array(Some(codes)) = self.cmd.cmd(&args)? {
                failed += codes.iter().filter(|c| c.text().as_deref() != Some("0")).count();
            }
        }
        Ok((n as f64 / secs, failed))
    }
}

fn uuid_v4() -> String {
    // Unique is enough here; the format only has to be a valid task id.
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("bench-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn one_run(bin: &Path, args: &BenchArgs) -> Result<RunFigures> {
    let dir = tempfile_dir()?;
    setup_tree(&dir)?;
    let (redis, port) = start_redis()?;
    create_agent_user(port)?;
    let redis_pid = redis.0.id();
    let mut client = Client::connect(port)?;
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

pub(crate) fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ns8rs-bench-{}-{}", std::process::id(), uuid_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    crate::packages::ensure(&[crate::packages::REDIS])?;
    let wants = |p: Part| args.only.is_none_or(|o| o == p);
    let (agent, api, modules) = (wants(Part::Agent), wants(Part::Api), wants(Part::Modules));
    let mut packages = Vec::new();
    if agent {
        packages.extend(["-p", "xtask", "-p", "module-agent"]);
    }
    if api {
        packages.extend(["-p", "api-server"]);
    }
    if modules {
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
        bench_agent(&release, &args)?;
    }
    if api {
        crate::bench_api::bench(&release, &args.api, args.runs)?;
    }
    if modules {
        crate::bench_modules::bench(&release, args.runs)?;
    }
    Ok(())
}

fn bench_agent(release: &Path, args: &BenchArgs) -> Result<()> {
    let bin = args.bench_agent.clone().unwrap_or_else(|| release.join("bench-agent"));
    let mut runs = Vec::new();
    for i in 0..args.runs {
        eprintln!("xtask: run {}/{}", i + 1, args.runs);
        runs.push(one_run(&bin, args)?);
    }
    let module_agent_idle = module_agent_idle_rss(&release.join("module-agent"))?;
    report(&runs, args, module_agent_idle);
    Ok(())
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

fn report(runs: &[RunFigures], args: &BenchArgs, module_agent_idle_kb: u64) {
    let med = |f: &dyn Fn(&RunFigures) -> f64| median(runs.iter().map(f).collect());
    let lat = |f: &dyn Fn(&RunFigures) -> &Latency| (med(&|r| f(r).p50), med(&|r| f(r).p95), med(&|r| f(r).p99));
    let bare = lat(&|r| &r.bare);
    let bash = lat(&|r| &r.bash);
    let native = lat(&|r| &r.native);
    let idle_of = |f: &dyn Fn(&RunFigures) -> &Latency| (med(&|r| f(r).p50), med(&|r| f(r).max));
    let bash_idle = idle_of(&|r| &r.bash_idle);
    let native_idle = idle_of(&|r| &r.native_idle);
    let bash_rate = med(&|r| r.bash_rate);
    let native_rate = med(&|r| r.native_rate);
    let idle = med(&|r| r.idle_rss_kb as f64);
    let peak = med(&|r| r.peak_rss_kb as f64);
    let failed: usize = runs.iter().map(|r| r.bash_failed + r.native_failed).sum();
    let ok = |b: bool| if b { "ok" } else { "MISSED" };
    println!(
        "Agent benchmark: medians of {} runs; {} sequential tasks per latency series, bursts of {}.",
        runs.len(),
        args.tasks,
        args.burst
    );
    println!();
    println!("| measure | bash no-op step | native no-op | bare bash step (no agent) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| latency p50 / p95 / p99 | {:.2} / {:.2} / {:.2} ms | {:.3} / {:.3} / {:.3} ms | {:.2} / {:.2} / {:.2} ms |",
        bash.0, bash.1, bash.2, native.0, native.1, native.2, bare.0, bare.1, bare.2
    );
    println!(
        "| latency after {:.1} s idle, p50 / max ({} tasks) | {:.2} / {:.2} ms | {:.3} / {:.3} ms | |",
        IDLE_GAP.as_secs_f64(),
        args.idle_tasks,
        bash_idle.0,
        bash_idle.1,
        native_idle.0,
        native_idle.1
    );
    println!("| burst throughput | {:.0} tasks/s | {:.0} tasks/s | |", bash_rate, native_rate);
    println!(
        "| agent CPU per task (burst) | {:.3} ms | {:.3} ms | |",
        med(&|r| r.bash_cpu_ms),
        med(&|r| r.native_cpu_ms)
    );
    println!(
        "| failed or rejected tasks | {} | {} | |",
        runs.iter().map(|r| r.bash_failed).sum::<usize>(),
        runs.iter().map(|r| r.native_failed).sum::<usize>()
    );
    println!();
    println!(
        "Agent memory: idle RSS {:.1} MB, peak RSS (VmHWM) {:.1} MB; shipped module-agent idle RSS {:.1} MB.",
        idle / 1024.0,
        peak / 1024.0,
        module_agent_idle_kb as f64 / 1024.0
    );
    println!();
    println!("Targets (issue 2) against the NS8 Go agent baseline:");
    println!(
        "  script p50 - bare spawn = {:.2} ms (target <= 0.50; NS8 ~1.05)  {}",
        bash.0 - bare.0,
        ok(bash.0 - bare.0 <= 0.5)
    );
    println!(
        "  script throughput {:.0}/s = {:.2}x NS8's 800/s (target >= 1.5x)  {}",
        bash_rate,
        bash_rate / 800.0,
        ok(bash_rate >= 1200.0)
    );
    println!("  native p50 {:.3} ms (target < 0.25; NS8 builtin 0.40)  {}", native.0, ok(native.0 < 0.25));
    println!(
        "  native throughput {:.0}/s (target >= 10,000; NS8 builtin 7,050)  {}",
        native_rate,
        ok(native_rate >= 10_000.0)
    );
    println!(
        "  after idle (polling interval {POLL_INTERVAL}): script p50 {:+.2} ms, native p50 {:+.3} ms against back-to-back (target within 2 ms, issue 14)  {}",
        bash_idle.0 - bash.0,
        native_idle.0 - native.0,
        ok(bash_idle.0 - bash.0 <= 2.0 && native_idle.0 - native.0 <= 2.0)
    );
    println!("  idle RSS {:.1} MB (target < 6; NS8 9.3)  {}", idle / 1024.0, ok(idle < 6.0 * 1024.0));
    println!("  peak RSS {:.1} MB (target < 12; NS8 16.5)  {}", peak / 1024.0, ok(peak < 12.0 * 1024.0));
    println!("  rejected tasks {failed} (target 0)  {}", ok(failed == 0));
}
