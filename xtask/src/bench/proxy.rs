//! `cargo xtask bench --only proxy`: the edge proxy (the node's `traefik` module,
//! Traefik v3 in rootless Podman on the host's network) in front of `hello`, on a
//! local cluster of release binaries.
//!
//! * HTTP: `GET /` of hello's page on `--proxy-connections` keep-alive connections,
//!   one client thread each, straight to hello's port and through Traefik's HTTP port
//!   (`Host: hello.example.test`), in series of `--proxy-secs` after 0.5 s of warm-up,
//!   direct and proxied alternated `--proxy-rounds` times (D P, P D, ...). Every
//!   answer must be a 200 with hello's page byte for byte. BusyBox httpd closes the
//!   connection after each answer, so the direct client reconnects every time (the
//!   connect is in the latency); Traefik keeps the client's connection and opens one
//!   to hello per request. The client is [`super::http`]'s, a few microseconds per
//!   request.
//! * TLS: full handshakes against Traefik's HTTPS port, a new TCP connection each, SNI
//!   `hello.example.test`, no session reused, the certificate not verified. The
//!   client is Python's `ssl` module (OpenSSL) in `--proxy-connections` threads,
//!   as xtask links no TLS library.
//! * Route changes: `--route-changes` times, a new route (`bench-r<N>`, host
//!   `r<N>.example.test`, to hello) sent with `api-cli run set-route`; from the moment
//!   it is started, Traefik's HTTP port is polled every millisecond for that host on a
//!   keep-alive connection. Both are timed: the first 200 through the proxy, and
//!   api-cli's exit (set-route returns once Traefik's API shows the route). Then
//!   `delete-route`, timed the same way until the host answers 404 again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::http::Http;
use super::measure::{Cpu, latency_of, median, system_cpu};
use super::modules::{Cluster, free_port, install};

#[derive(clap::Args, Clone)]
pub struct ProxyArgs {
    /// Concurrent client connections of the proxy's HTTP and TLS series.
    #[arg(long, default_value_t = 4)]
    pub(super) proxy_connections: usize,
    /// Measured seconds of each HTTP and TLS series (after 0.5 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub(super) proxy_secs: f64,
    /// Rounds per run: a direct and a proxied HTTP series, then a TLS series.
    #[arg(long, default_value_t = 3)]
    pub(super) proxy_rounds: usize,
    /// Route changes timed per run.
    #[arg(long, default_value_t = 20)]
    pub(super) route_changes: usize,
}

const HOST: &str = "hello.example.test";
const WARMUP: Duration = Duration::from_millis(500);
/// Between two polls of a route being changed: fine enough for a 1 s target, light
/// enough to leave Traefik's configuration reload the CPU.
const POLL_PAUSE: Duration = Duration::from_millis(1);
/// The longest a route change may take before the bench gives up.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Targets of the issue.
const RATIO_TARGET: f64 = 0.5;
const ROUTE_P50_TARGET_MS: f64 = 1000.0;

/// Where the CPU went during a series, per request (or handshake), µs.
#[derive(Clone, Copy, Default)]
struct CpuSplit {
    /// Every process of hello's Unix user: httpd and the children it forks per
    /// connection, conmon, the port forwarder.
    hello: f64,
    /// Every process of Traefik's user: Traefik and its conmon.
    traefik: f64,
    /// The benchmark's client.
    client: f64,
    /// The whole machine's busy time (all processes, the kernel's interrupts, where
    /// loopback traffic is mostly handled; not the hypervisor's steal).
    machine: f64,
    idle_pct: f64,
    /// Time the hypervisor gave other guests while this one wanted to run.
    steal_pct: f64,
}

/// One HTTP series.
#[derive(Clone, Default)]
struct HttpSeries {
    rate: f64,
    p50: f64,
    p99: f64,
    /// TCP connections the client opened while measured.
    connects: usize,
    errors: usize,
    first_error: Option<String>,
    cpu: CpuSplit,
}

/// One TLS series, as the Python client reports it.
#[derive(Clone, Default)]
struct TlsSeries {
    rate: f64,
    p50: f64,
    p99: f64,
    errors: usize,
    resumed: usize,
    cpu: CpuSplit,
    what: String,
}

/// One route change, ms from the start of `set-route` / `delete-route`.
#[derive(Clone, Copy)]
struct RouteChange {
    first_200: f64,
    set_returned: f64,
    delete_returned: f64,
    first_404: f64,
}

#[derive(Default)]
struct ProxyRun {
    direct: Vec<HttpSeries>,
    proxied: Vec<HttpSeries>,
    tls: Vec<TlsSeries>,
    routes: Vec<RouteChange>,
}

pub fn bench(release: &Path, args: &ProxyArgs, runs: usize) -> Result<()> {
    crate::packages::ensure(&[crate::packages::Package { name: "python3", provides: "python3" }])?;
    let mut all = Vec::new();
    for i in 0..runs {
        eprintln!("xtask: proxy: run {}/{runs}", i + 1);
        all.push(measure(release, args)?);
    }
    print(&all, args);
    let errors: usize = all.iter().flat_map(|r| r.direct.iter().chain(&r.proxied)).map(|s| s.errors).sum::<usize>()
        + all.iter().flat_map(|r| &r.tls).map(|s| s.errors).sum::<usize>();
    if errors > 0 {
        bail!("{errors} requests or handshakes of the proxy benchmark failed");
    }
    Ok(())
}

fn measure(release: &Path, args: &ProxyArgs) -> Result<ProxyRun> {
    let (http_port, https_port) = (free_port()?, free_port()?);
    let extra = ["--http-port".to_owned(), http_port.to_string(), "--https-port".to_owned(), https_port.to_string()];
    let c = Cluster::up(release, "hello,traefik", &extra)?;
    let traefik = c.redis_cli(&["GET", &protocol::keys::node_default_instance(1, "traefik")]);
    if traefik.is_empty() {
        bail!("xtask up installed no edge proxy");
    }
    let proxy = format!("module/{traefik}");
    let (_, hello) = install(&c, "hello", "/")?;
    let hello_port = c.module_port(&hello)?;
    let url = format!("http://127.0.0.1:{hello_port}");
    let route = json!({"instance": hello, "url": url, "host": HOST}).to_string();
    c.api_cli(&["run", "set-route", "--agent", &proxy, "--data", &route])?;
    let page = get_once(hello_port, "localhost")?;
    if get_once(http_port, HOST)? != page {
        bail!("Traefik does not serve hello's page for {HOST}");
    }
    let users = Users { hello: uid_of(&hello)?, traefik: uid_of(&traefik)? };

    let mut run = ProxyRun::default();
    let (conns, secs) = (args.proxy_connections.max(1), Duration::from_secs_f64(args.proxy_secs));
    for round in 0..args.proxy_rounds {
        for proxied in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let (port, host) = if proxied { (http_port, HOST) } else { (hello_port, "localhost") };
            let s = http_series(port, host, &page, conns, secs, users);
            eprintln!(
                "xtask: {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                if proxied { "proxied" } else { "direct" },
                s.rate,
                s.p50,
                s.p99,
                s.errors
            );
            if let Some(e) = &s.first_error {
                eprintln!("xtask: the first error: {e}");
            }
            if proxied { &mut run.proxied } else { &mut run.direct }.push(s);
        }
        let t = tls_series(https_port, conns, secs, users)?;
        eprintln!("xtask: TLS: {:.0} handshakes/s, p50 {:.2} ms, {} errors", t.rate, t.p50, t.errors);
        run.tls.push(t);
    }
    for n in 1..=args.route_changes {
        let r = route_change(&c, &proxy, n, &url, http_port, &page)?;
        eprintln!(
            "xtask: route {n}: first 200 after {:.0} ms, set-route returned after {:.0} ms",
            r.first_200, r.set_returned
        );
        run.routes.push(r);
    }
    Ok(run)
}

fn get_request(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// The body of one `GET /`, which must be a 200.
fn get_once(port: u16, host: &str) -> Result<Vec<u8>> {
    let mut h = Http::connect(port)?;
    h.send(&get_request(host))?;
    let status = h.read()?;
    if status != 200 {
        bail!("GET / on port {port} for {host}: {status} {}", h.body_text());
    }
    Ok(std::mem::take(&mut h.body))
}

/// The Unix users of the two modules, whose processes' CPU is counted.
#[derive(Clone, Copy)]
struct Users {
    hello: u32,
    traefik: u32,
}

fn uid_of(module: &str) -> Result<u32> {
    Ok(nix::unistd::User::from_name(module)?.with_context(|| format!("no Unix user {module}"))?.uid.as_raw())
}

/// CPU readings, ms: each user's processes (their own time and their reaped
/// children's), this process, and the machine's busy, stolen and total time.
#[derive(Clone, Copy)]
struct Reading {
    hello: f64,
    traefik: f64,
    client: f64,
    busy: f64,
    steal: f64,
    total: f64,
}

fn read_cpu(users: Users, client: Option<u32>) -> Reading {
    let (mut hello, mut traefik) = (0.0, 0.0);
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for pid in pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid: Option<u32> =
            status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()?.parse().ok());
        let of = |p: u32| {
            let c = Cpu::of(p);
            c.own() + c.children
        };
        match uid {
            Some(u) if u == users.hello => hello += of(pid),
            Some(u) if u == users.traefik => traefik += of(pid),
            _ => {}
        }
    }
    // /proc/stat: ticks of 10 ms summed over the CPUs: user, nice, system, idle,
    // iowait, irq, softirq, steal (then guest times, already counted in user).
    let ticks = system_cpu();
    let ms = |fields: &[usize]| fields.iter().map(|&i| 10.0 * *ticks.get(i).unwrap_or(&0) as f64).sum::<f64>();
    let client = client.map_or(f64::NAN, |p| Cpu::of(p).own());
    Reading {
        hello,
        traefik,
        client,
        busy: ms(&[0, 1, 2, 5, 6]),
        steal: ms(&[7]),
        total: ms(&[0, 1, 2, 3, 4, 5, 6, 7]),
    }
}

/// The CPU per request of `n` requests between two readings, µs.
fn split(a: Reading, b: Reading, n: usize) -> CpuSplit {
    let per = |x: f64, y: f64| (y - x) * 1000.0 / n.max(1) as f64;
    CpuSplit {
        hello: per(a.hello, b.hello),
        traefik: per(a.traefik, b.traefik),
        client: per(a.client, b.client),
        machine: per(a.busy, b.busy),
        idle_pct: 100.0 * (1.0 - (b.busy - a.busy + b.steal - a.steal) / (b.total - a.total).max(1.0)),
        steal_pct: 100.0 * (b.steal - a.steal) / (b.total - a.total).max(1.0),
    }
}

#[derive(Default)]
struct ThreadResult {
    latencies_ms: Vec<f64>,
    connects: usize,
    errors: usize,
    first_error: Option<String>,
}

/// `conns` client threads, each on its own connection, sending `GET /` one after the
/// other until the end; answers started after the warm-up and done before the end
/// are counted.
fn http_series(port: u16, host: &str, page: &[u8], conns: usize, secs: Duration, users: Users) -> HttpSeries {
    let request = get_request(host);
    let start = Instant::now() + WARMUP;
    let end = start + secs;
    let (results, cpu) = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..conns).map(|_| scope.spawn(|| client_thread(port, &request, page, start, end))).collect();
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let before = read_cpu(users, Some(std::process::id()));
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let after = read_cpu(users, Some(std::process::id()));
        let results: Vec<ThreadResult> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| ThreadResult { errors: 1, ..Default::default() }))
            .collect();
        (results, (before, after))
    });
    let mut s = HttpSeries {
        connects: results.iter().map(|r| r.connects).sum(),
        errors: results.iter().map(|r| r.errors).sum(),
        first_error: results.iter().find_map(|r| r.first_error.clone()),
        ..Default::default()
    };
    let latencies: Vec<f64> = results.into_iter().flat_map(|r| r.latencies_ms).collect();
    s.rate = latencies.len() as f64 / secs.as_secs_f64();
    s.cpu = split(cpu.0, cpu.1, latencies.len());
    let l = latency_of(latencies);
    (s.p50, s.p99) = (l.p50, l.p99);
    s
}

fn client_thread(port: u16, request: &[u8], page: &[u8], start: Instant, end: Instant) -> ThreadResult {
    let mut r = ThreadResult::default();
    let mut conn: Option<Http> = None;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return r;
        }
        let counted = t0 >= start;
        let answer = (|| -> Result<()> {
            if conn.is_none() {
                conn = Some(Http::connect(port)?);
                if counted {
                    r.connects += 1;
                }
            }
            let h = conn.as_mut().expect("connected");
            h.send(request)?;
            let status = h.read()?;
            if status != 200 || h.body != page {
                bail!("answered {status} with {} bytes", h.body.len());
            }
            Ok(())
        })();
        let done = Instant::now();
        match answer {
            Ok(()) => {
                if conn.as_ref().is_some_and(|h| h.closing) {
                    conn = None;
                }
                if counted && done <= end {
                    r.latencies_ms.push((done - t0).as_secs_f64() * 1000.0);
                }
            }
            Err(e) => {
                conn = None;
                if counted {
                    r.errors += 1;
                    r.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
}

/// The TLS client: full handshakes in threads (OpenSSL releases the interpreter's
/// lock while it works), new connection each, no session given back, so none is
/// resumed. It prints one JSON line.
const TLS_CLIENT: &str = r#"
import json, socket, ssl, sys, threading, time
port, sni, warmup, secs, conns = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
start = time.monotonic() + warmup
end = start + secs
out = {"ms": [], "errors": 0, "resumed": 0, "what": "", "first_error": ""}
lock = threading.Lock()

def client():
    ms, errors, resumed, what, first = [], 0, 0, "", ""
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        try:
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                    t1 = time.monotonic()
                    resumed += tls.session_reused
                    what = what or "%s %s" % (tls.version(), tls.cipher()[0])
        except OSError as e:
            if t0 >= start:
                errors += 1
                first = first or repr(e)
            continue
        if t0 >= start and t1 <= end:
            ms.append((t1 - t0) * 1000)
    with lock:
        out["ms"] += ms
        out["errors"] += errors
        out["resumed"] += resumed
        out["what"] = out["what"] or what
        out["first_error"] = out["first_error"] or first

cpu0 = None
threads = [threading.Thread(target=client) for _ in range(conns)]
for t in threads:
    t.start()
time.sleep(max(0.0, start - time.monotonic()))
cpu0 = time.process_time()
time.sleep(max(0.0, end - time.monotonic()))
out["client_cpu_ms"] = (time.process_time() - cpu0) * 1000
for t in threads:
    t.join()
out["what"] += ", " + ssl.OPENSSL_VERSION
print(json.dumps(out))
"#;

fn tls_series(port: u16, conns: usize, secs: Duration, users: Users) -> Result<TlsSeries> {
    let mut child = Command::new("python3")
        .args(["-c", TLS_CLIENT, &port.to_string(), HOST])
        .args([WARMUP.as_secs_f64().to_string(), secs.as_secs_f64().to_string(), conns.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run python3")?;
    // Traefik's CPU over the client's measured window (its start-up is well within
    // the warm-up).
    std::thread::sleep(WARMUP);
    let before = read_cpu(users, None);
    std::thread::sleep(secs);
    let after = read_cpu(users, None);
    let out = {
        use std::io::Read;
        let mut s = String::new();
        child.stdout.take().expect("piped").read_to_string(&mut s)?;
        s
    };
    let status = child.wait()?;
    if !status.success() {
        bail!("the TLS client failed ({status})");
    }
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("the TLS client printed {out:?}"))?;
    let ms: Vec<f64> = v["ms"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
    let errors = v["errors"].as_u64().unwrap_or(0) as usize;
    if errors > 0 {
        eprintln!("xtask: TLS handshake errors: {errors}; the first: {}", v["first_error"]);
    }
    let l = latency_of(ms.clone());
    let mut cpu = split(before, after, ms.len());
    cpu.client = v["client_cpu_ms"].as_f64().unwrap_or(f64::NAN) * 1000.0 / ms.len().max(1) as f64;
    Ok(TlsSeries {
        rate: ms.len() as f64 / secs.as_secs_f64(),
        p50: l.p50,
        p99: l.p99,
        errors,
        resumed: v["resumed"].as_u64().unwrap_or(0) as usize,
        cpu,
        what: v["what"].as_str().unwrap_or("").to_owned(),
    })
}

/// A poller of one host through the proxy, on a keep-alive connection.
struct Poller {
    port: u16,
    request: Vec<u8>,
    conn: Option<Http>,
    /// The last answer's body.
    body: Vec<u8>,
}

impl Poller {
    fn new(port: u16, host: &str) -> Poller {
        Poller { port, request: get_request(host), conn: None, body: Vec::new() }
    }

    fn status(&mut self) -> Result<u16> {
        if self.conn.is_none() {
            self.conn = Some(Http::connect(self.port)?);
        }
        let h = self.conn.as_mut().expect("connected");
        let status = h.send(&self.request).and_then(|()| h.read());
        std::mem::swap(&mut self.body, &mut h.body);
        if status.is_err() || h.closing {
            self.conn = None;
        }
        status
    }
}

/// Runs `api-cli run <action>` and polls the proxy until `done(status)`: ms until
/// api-cli exited and until the proxy's answer was done.
fn timed_change(
    c: &Cluster,
    proxy: &str,
    action: &str,
    data: &str,
    poller: &mut Poller,
    done: impl Fn(u16, &[u8]) -> bool,
) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let mut child = c
        .api_cli_command()
        .args(["run", action, "--agent", proxy, "--data", data])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run api-cli")?;
    let (mut returned, mut served) = (None, None);
    while returned.is_none() || served.is_none() {
        if served.is_none() && poller.status().is_ok_and(|s| done(s, &poller.body)) {
            served = Some(t0.elapsed());
        }
        if returned.is_none() && child.try_wait()?.is_some() {
            returned = Some(t0.elapsed());
        }
        if t0.elapsed() > ROUTE_TIMEOUT {
            let _ = child.kill();
            bail!(
                "{action} {data}: not done after {} s (api-cli returned: {})",
                ROUTE_TIMEOUT.as_secs(),
                returned.is_some()
            );
        }
        std::thread::sleep(POLL_PAUSE);
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{action} {data}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let ms = |d: Option<Duration>| d.expect("set").as_secs_f64() * 1000.0;
    Ok((ms(returned), ms(served)))
}

fn route_change(c: &Cluster, proxy: &str, n: usize, url: &str, http_port: u16, page: &[u8]) -> Result<RouteChange> {
    let (instance, host) = (format!("bench-r{n}"), format!("r{n}.example.test"));
    let mut poller = Poller::new(http_port, &host);
    let before = poller.status()?;
    if before != 404 {
        bail!("{host} answers {before} before its route is set");
    }
    let data = json!({"instance": instance, "url": url, "host": host}).to_string();
    // With a body check: the page only comes from hello, through the new route.
    let (set_returned, first_200) =
        timed_change(c, proxy, "set-route", &data, &mut poller, |s, body| s == 200 && body == page)?;
    let data = json!({"instance": instance}).to_string();
    let (delete_returned, first_404) = timed_change(c, proxy, "delete-route", &data, &mut poller, |s, _| s == 404)?;
    Ok(RouteChange { first_200, set_returned, delete_returned, first_404 })
}

fn print(runs: &[ProxyRun], args: &ProxyArgs) {
    let direct: Vec<&HttpSeries> = runs.iter().flat_map(|r| &r.direct).collect();
    let proxied: Vec<&HttpSeries> = runs.iter().flat_map(|r| &r.proxied).collect();
    let tls: Vec<&TlsSeries> = runs.iter().flat_map(|r| &r.tls).collect();
    let routes: Vec<RouteChange> = runs.iter().flat_map(|r| r.routes.iter().copied()).collect();
    let med = |v: &[&HttpSeries], f: &dyn Fn(&HttpSeries) -> f64| median(v.iter().map(|s| f(s)).collect());
    let each = |v: &[&HttpSeries]| v.iter().map(|s| format!("{:.0}", s.rate)).collect::<Vec<_>>().join(" / ");
    let ok = |b: bool| if b { "met" } else { "MISSED" };

    println!("\n## Edge proxy (Traefik in rootless Podman, hello behind it, release build)\n");
    println!(
        "GET / of hello: {} keep-alive client connections, {} s per series after 0.5 s of warm-up, {} series each, \
         direct and proxied alternated; medians of the series. CPU per request: hello's processes (httpd and its \
         per-connection children, conmon, the port forwarder) / Traefik's / the client / everything else (the \
         kernel's interrupt time, which carries loopback traffic, and every other process).\n",
        args.proxy_connections,
        args.proxy_secs,
        direct.len()
    );
    println!(
        "| path | requests/s | each series | p50 / p99 | TCP connects per request | CPU per request | machine idle / stolen |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, v) in [("direct to hello's port", &direct), ("through Traefik (HTTP, Host header)", &proxied)] {
        println!(
            "| {name} | {:.0} | {} | {:.2} / {:.2} ms | {:.2} | {:.0} / {:.0} / {:.0} / {:.0} µs | {:.0}% / {:.0}% |",
            med(v, &|s| s.rate),
            each(v),
            med(v, &|s| s.p50),
            med(v, &|s| s.p99),
            med(v, &|s| s.connects as f64 / (s.rate * args.proxy_secs).max(1.0)),
            med(v, &|s| s.cpu.hello),
            med(v, &|s| s.cpu.traefik),
            med(v, &|s| s.cpu.client),
            med(v, &|s| s.cpu.machine - s.cpu.hello - s.cpu.traefik - s.cpu.client),
            med(v, &|s| s.cpu.idle_pct),
            med(v, &|s| s.cpu.steal_pct)
        );
    }
    let ratio = med(&proxied, &|s| s.rate) / med(&direct, &|s| s.rate);
    let pairs: Vec<String> = direct.iter().zip(&proxied).map(|(d, p)| format!("{:.2}", p.rate / d.rate)).collect();
    println!(
        "\nProxied / direct throughput: {ratio:.2} (ratio of the medians; per round {}); target ≥ {RATIO_TARGET}: {}",
        pairs.join(" / "),
        ok(ratio >= RATIO_TARGET)
    );

    let tmed = |f: &dyn Fn(&TlsSeries) -> f64| median(tls.iter().map(|s| f(s)).collect());
    println!(
        "\nTLS handshakes against Traefik (full, a new connection each, SNI {HOST}, {} concurrent; {}):\n\n\
         | handshakes/s | each series | handshake p50 / p99 | CPU per handshake: Traefik / the client / everything else | machine idle / stolen | sessions resumed |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | {:.0} | {} | {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} ms | {:.0}% / {:.0}% | {} |",
        args.proxy_connections,
        tls.first().map_or("", |s| s.what.as_str()),
        tmed(&|s| s.rate),
        tls.iter().map(|s| format!("{:.0}", s.rate)).collect::<Vec<_>>().join(" / "),
        tmed(&|s| s.p50),
        tmed(&|s| s.p99),
        tmed(&|s| s.cpu.traefik) / 1000.0,
        tmed(&|s| s.cpu.client) / 1000.0,
        tmed(&|s| s.cpu.machine - s.cpu.hello - s.cpu.traefik - s.cpu.client) / 1000.0,
        tmed(&|s| s.cpu.idle_pct),
        tmed(&|s| s.cpu.steal_pct),
        tls.iter().map(|s| s.resumed).sum::<usize>()
    );

    let lat = |f: &dyn Fn(&RouteChange) -> f64| latency_of(routes.iter().map(f).collect());
    let (first, set, del, gone) =
        (lat(&|r| r.first_200), lat(&|r| r.set_returned), lat(&|r| r.delete_returned), lat(&|r| r.first_404));
    println!("\nRoute changes ({} new routes, each deleted after), from the request sent:\n", routes.len());
    println!("| | p50 | max |");
    println!("| --- | --- | --- |");
    println!("| set-route: first 200 through the proxy | {:.0} ms | {:.0} ms |", first.p50, first.max);
    println!("| set-route: api-cli returned | {:.0} ms | {:.0} ms |", set.p50, set.max);
    println!("| delete-route: first 404 through the proxy | {:.0} ms | {:.0} ms |", gone.p50, gone.max);
    println!("| delete-route: api-cli returned | {:.0} ms | {:.0} ms |", del.p50, del.max);
    println!(
        "\nA new route served after p50 {:.0} ms; target < {ROUTE_P50_TARGET_MS:.0} ms: {}",
        first.p50,
        ok(first.p50 < ROUTE_P50_TARGET_MS)
    );
}
