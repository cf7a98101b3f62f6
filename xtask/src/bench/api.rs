//! `cargo xtask bench --only api`: the api-server's authenticated reads and
//! logins, against a private Redis and the release `api-server`.
//!
//! Setup of each run: a fresh redis-server, the role `cluster/roles/owner = {*}`, a
//! user `admin` created by `api-server add-user --grant owner:cluster`, and a finished
//! `get-name` task of that user written straight into Redis. The server listens on a
//! free loopback port (`LISTEN_ADDRESS=127.0.0.1:0`; the port is read from its log).
//!
//! * Reads: `GET /api/cluster/task/<id>/status` with a bearer token from a real login,
//!   on `--api-clients` keep-alive HTTP/1.1 connections spread over `--api-threads`
//!   client threads. Each thread sends one request on each of its connections, then
//!   reads the answers in order, so every connection always has one request in flight.
//!   The first answer is checked in full (exit code, output); every later one must be
//!   a 200 with the same body byte for byte. Anything else is an error, and a run with
//!   errors fails the bench. After `--api-warmup` seconds,
//!   answers that complete within the next `--api-secs` are counted (requests/s) and
//!   their latencies (send to last byte read) give p50/p99.
//! * Logins: `--logins` sequential `POST /api/login` with the right password on one
//!   connection; p50/p90. The argon2id hash alone is estimated as the difference
//!   between `add-user` of a new user (one hash) and `add-user --if-missing` of an
//!   existing one (the same process, connection and stdin, no hash).
//!
//! [`super::http`] is the client; [`super::api_report`] prints the medians.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::{AgentId, keys};

use super::fixture::{Proc, TempDir, start_redis, tempfile_dir};
use super::http::{Http, get_request};
use super::measure::{Cpu, median, percentile, status_kb, system_cpu};
use crate::resp::Conn;

#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// Concurrent keep-alive connections of the api-server read benchmark.
    #[arg(long, default_value_t = 32)]
    pub(super) api_clients: usize,
    /// Client threads the read connections are spread over.
    #[arg(long, default_value_t = 4)]
    pub(super) api_threads: usize,
    /// Seconds of reads before the measurement starts.
    #[arg(long, default_value_t = 2.0)]
    pub(super) api_warmup: f64,
    /// Seconds of measured reads.
    #[arg(long, default_value_t = 10.0)]
    pub(super) api_secs: f64,
    /// Sequential logins per run.
    #[arg(long, default_value_t = 20)]
    pub(super) logins: usize,
    /// Benchmark this api-server binary instead of the release build (to compare two
    /// builds run after run).
    #[arg(long)]
    pub(super) api_server: Option<PathBuf>,
}

const USER: &str = "admin";
const PASSWORD: &str = "bench password, long enough";
const TASK_ID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f";

#[derive(Default, Clone)]
pub(super) struct ApiRun {
    pub(super) rate: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) errors: usize,
    pub(super) server_us: f64,
    pub(super) redis_us: f64,
    pub(super) client_us: f64,
    pub(super) idle_pct: f64,
    /// Share of the machine used by other processes during the reads (noise).
    pub(super) others_pct: f64,
    pub(super) login_p50: f64,
    pub(super) login_p90: f64,
    pub(super) hash_ms: f64,
    pub(super) rss_idle_kb: u64,
    pub(super) rss_peak_kb: u64,
}

fn login_request(port: u16) -> Vec<u8> {
    let body = serde_json::json!({"username": USER, "password": PASSWORD}).to_string();
    format!(
        "POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One login: (ms, token).
fn login(http: &mut Http, request: &[u8]) -> Result<(f64, String)> {
    let t0 = Instant::now();
    http.send(request)?;
    let status = http.read()?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        bail!("login answered {status}: {}", http.body_text());
    }
    let v: serde_json::Value = serde_json::from_slice(&http.body).context("login answer")?;
    let token = v["token"].as_str().context("no token in the login answer")?.to_owned();
    Ok((ms, token))
}

/// The release `api-server` with the bench's environment (`env -i` plus these).
fn server_command(bin: &Path, port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .env("REDIS_ADDRESS", format!("127.0.0.1:{port}"))
        .env("API_SECRET_FILE", dir.join("secret"))
        .env("LISTEN_ADDRESS", "127.0.0.1:0")
        .env("RUST_LOG", "info");
    cmd
}

/// `api-server add-user NAME --password-stdin [extra]`, timed.
fn add_user(bin: &Path, port: u16, dir: &Path, name: &str, extra: &[&str]) -> Result<f64> {
    let t0 = Instant::now();
    let mut child = server_command(bin, port, dir)
        .args(["add-user", name, "--password-stdin"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run api-server add-user")?;
    writeln!(child.stdin.take().context("stdin")?, "{PASSWORD}")?;
    let out = child.wait_with_output()?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!("api-server add-user {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(ms)
}

/// Start the server and wait for `listening on http://127.0.0.1:PORT` in its log.
fn start_server(bin: &Path, redis_port: u16, dir: &Path) -> Result<(Proc, u16)> {
    let log_path = dir.join("api-server.log");
    let log = std::fs::File::create(&log_path)?;
    let mut server = Proc(
        server_command(bin, redis_port, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(port) = text
            .lines()
            .find_map(|l| l.split("listening on http://").nth(1))
            .and_then(|a| a.trim().rsplit(':').next()?.parse::<u16>().ok())
        {
            return Ok((server, port));
        }
        if let Some(status) = server.0.try_wait()? {
            bail!("the api-server exited with {status}; its log:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("the api-server did not listen within 10 s; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one client thread saw.
#[derive(Default)]
struct ThreadResult {
    latencies_ms: Vec<f64>,
    counted: usize,
    errors: usize,
    first_error: Option<String>,
}

/// One client thread: `conns` connections in lock step until `end`. A good answer is
/// a 200 whose body is `expected` byte for byte.
fn read_loop(port: u16, conns: usize, request: &[u8], expected: &[u8], start: Instant, end: Instant) -> ThreadResult {
    let mut r = ThreadResult { latencies_ms: Vec::with_capacity(200_000), ..Default::default() };
    let fail = |r: &mut ThreadResult, e: String| {
        r.errors += 1;
        r.first_error.get_or_insert(e);
    };
    let mut pool: Vec<Option<Http>> = (0..conns).map(|_| None).collect();
    let mut sent = vec![Instant::now(); conns];
    while Instant::now() < end {
        for (c, t) in pool.iter_mut().zip(sent.iter_mut()) {
            if c.is_none() {
                match Http::connect(port) {
                    Ok(h) => *c = Some(h),
                    Err(e) => {
                        fail(&mut r, format!("{e:#}"));
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
            let Some(h) = c else { continue };
            *t = Instant::now();
            if let Err(e) = h.send(request) {
                fail(&mut r, format!("send: {e:#}"));
                *c = None;
            }
        }
        for (c, t) in pool.iter_mut().zip(sent.iter()) {
            let Some(h) = c else { continue };
            match h.read() {
                Ok(200) if h.body == expected => {
                    let done = Instant::now();
                    if done >= start && done < end {
                        r.counted += 1;
                        r.latencies_ms.push((done - *t).as_secs_f64() * 1000.0);
                    }
                }
                Ok(status) => fail(&mut r, format!("HTTP {status}: {}", h.body_text())),
                Err(e) => {
                    fail(&mut r, format!("read: {e:#}"));
                    *c = None;
                }
            }
        }
    }
    r
}

fn one_run(bin: &Path, args: &ApiArgs) -> Result<ApiRun> {
    let dir = TempDir(tempfile_dir()?);
    let (redis, redis_port) = start_redis()?;
    let mut db = Conn::connect(redis_port)?;
    let cluster = AgentId::Cluster;
    // What the cluster agent defines at its start.
    db.cmd(&[b"SADD", keys::role(&cluster, "owner").as_bytes(), b"*"])?;
    add_user(bin, redis_port, &dir.0, USER, &["--grant", "owner:cluster"])?;
    // A finished task of the user, as the agent's finish script leaves it.
    let context = serde_json::json!({
        "id": TASK_ID, "action": "get-name", "data": {}, "extra": {}, "queue": keys::tasks(&cluster),
        "user": USER, "timestamp": "2026-11-26T16:14:49.695761Z", "parent": "",
    })
    .to_string();
    db.cmd(&[
        b"MSET",
        keys::task_context(&cluster, TASK_ID).as_bytes(),
        context.as_bytes(),
        keys::task_output(&cluster, TASK_ID).as_bytes(),
        br#"{"name":"Bench cluster"}"#,
        keys::task_error(&cluster, TASK_ID).as_bytes(),
        b"",
        keys::task_exit_code(&cluster, TASK_ID).as_bytes(),
        b"0",
    ])?;

    // The hash alone: a new user (one hash) minus an existing one (none).
    let samples = args.logins.clamp(3, 10);
    let mut with_hash = Vec::with_capacity(samples);
    let mut without = Vec::with_capacity(samples);
    for i in 0..samples {
        with_hash.push(add_user(bin, redis_port, &dir.0, &format!("hash{i}"), &[])?);
        without.push(add_user(bin, redis_port, &dir.0, USER, &["--if-missing"])?);
    }
    let hash_ms = median(with_hash) - median(without);

    let (server, port) = start_server(bin, redis_port, &dir.0)?;
    let pid = server.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle_kb = status_kb(pid, "VmRSS");

    let login_req = login_request(port);
    let mut http = Http::connect(port)?;
    let (_, token) = login(&mut http, &login_req)?;
    let path = format!("/api/cluster/task/{TASK_ID}/status");
    let request = get_request(port, &path, &token);
    // One answer checked in full before the clock starts; every later one must be the
    // same bytes.
    http.send(&request)?;
    let status = http.read()?;
    let answer: serde_json::Value = serde_json::from_slice(&http.body).unwrap_or_default();
    let data = &answer["data"];
    if status != 200 || data["exit_code"] != 0 || data["output"]["name"] != "Bench cluster" {
        bail!("GET {path} answered {status}: {}", http.body_text());
    }
    let expected = http.body.clone();

    let clients = args.api_clients.max(1);
    let threads = args.api_threads.clamp(1, clients);
    let start = Instant::now() + Duration::from_secs_f64(args.api_warmup);
    let end = start + Duration::from_secs_f64(args.api_secs);
    let me = std::process::id();
    let redis_pid = redis.0.id();
    let (results, cpu) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let conns = clients / threads + usize::from(t < clients % threads);
                let (request, expected) = (&request, &expected);
                scope.spawn(move || read_loop(port, conns, request, expected, start, end))
            })
            .collect();
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let before = (Cpu::of(pid), Cpu::of(redis_pid), Cpu::of(me), system_cpu());
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let after = (Cpu::of(pid), Cpu::of(redis_pid), Cpu::of(me), system_cpu());
        let results: Vec<ThreadResult> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| ThreadResult { errors: 1, ..Default::default() }))
            .collect();
        (results, (before, after))
    });
    let counted: usize = results.iter().map(|r| r.counted).sum();
    let errors: usize = results.iter().map(|r| r.errors).sum();
    if let Some(e) = results.iter().find_map(|r| r.first_error.as_ref()) {
        eprintln!("xtask: api-server read errors: {errors}; the first: {e}");
    }
    let mut lat: Vec<f64> = results.into_iter().flat_map(|r| r.latencies_ms).collect();
    lat.sort_by(f64::total_cmp);
    let ((s0, r0, c0, m0), (s1, r1, c1, m1)) = cpu;
    let per_req_us = |a: Cpu, b: Cpu| (b.own() - a.own()) * 1000.0 / counted.max(1) as f64;
    let d: Vec<f64> = m0.iter().zip(&m1).map(|(a, b)| (b - a) as f64).collect();
    // /proc/stat counts ticks of 10 ms summed over the CPUs; idle and iowait are
    // fields 3 and 4.
    let total_ms = 10.0 * d.iter().sum::<f64>().max(1.0);
    let idle_ms = 10.0 * (d.get(3).unwrap_or(&0.0) + d.get(4).unwrap_or(&0.0));
    let ours_ms = (s1.own() - s0.own()) + (r1.own() - r0.own()) + (c1.own() - c0.own());
    let idle_pct = 100.0 * idle_ms / total_ms;
    let others_pct = (100.0 * (total_ms - idle_ms - ours_ms) / total_ms).max(0.0);

    let mut login_ms = Vec::with_capacity(args.logins);
    for _ in 0..args.logins {
        login_ms.push(login(&mut http, &login_req)?.0);
    }
    login_ms.sort_by(f64::total_cmp);
    let rss_peak_kb = status_kb(pid, "VmHWM");
    drop(server);
    drop(redis);

    Ok(ApiRun {
        rate: counted as f64 / args.api_secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        errors,
        server_us: per_req_us(s0, s1),
        redis_us: per_req_us(r0, r1),
        client_us: per_req_us(c0, c1),
        idle_pct,
        others_pct,
        login_p50: percentile(&login_ms, 0.5),
        login_p90: percentile(&login_ms, 0.9),
        hash_ms,
        rss_idle_kb,
        rss_peak_kb,
    })
}

/// Run the api-server benchmark `runs` times.
pub(super) fn measure(release: &Path, args: &ApiArgs, runs: usize) -> Result<Vec<ApiRun>> {
    let bin = args.api_server.clone().unwrap_or_else(|| release.join("api-server"));
    let mut all = Vec::new();
    for i in 0..runs {
        eprintln!("xtask: api-server run {}/{runs}", i + 1);
        let r = one_run(&bin, args)?;
        eprintln!(
            "xtask:   {:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; CPU per read: server {:.1} µs, redis {:.1} µs, client {:.1} µs; machine idle {:.0}%, other processes {:.0}%; login p50 {:.0} ms",
            r.rate, r.p50, r.p99, r.errors, r.server_us, r.redis_us, r.client_us, r.idle_pct, r.others_pct, r.login_p50
        );
        all.push(r);
    }
    Ok(all)
}
