//! `cargo xtask up` / `down`: a single-node cluster on this machine.
//!
//! Everything lives under one root (default `/var/lib/ns8rs`):
//! `bin/` (copies of the release binaries, so a rebuild never swaps a running one),
//! `redis/` (config and data, persistent), `cluster/` and `node/` (agent install dirs,
//! NS8 layout: `actions/`, `events/`, `state/`), `supervisor.d/` (one JSON file per
//! program), `log/`. Redis listens on loopback only, on its own port so it never
//! collides with a distribution Redis on 6379.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::actions::{cluster as cluster_actions, traefik};
use serde_json::json;

use node_agent::install::{self, Identity};

use crate::{DEFAULT_ROOT, packages, run, workspace};

pub const BINARIES: &[&str] =
    &["supervisor", "cluster-agent", "node-agent", "module-agent", "module-service", "api-cli", "api-server"];
pub const DEFAULT_PORT: u16 = 16379;
/// The local software repository's registry (images::DEFAULT_REGISTRY).
pub const DEFAULT_REGISTRY_PORT: u16 = 15000;
/// The api-server's port, as NS8's.
pub const DEFAULT_API_PORT: u16 = 9311;
/// The name of the software repository `up` adds, holding the modules/ images.
pub const LOCAL_REPOSITORY: &str = "local";
/// The first admin, created at the first `up` with a generated password.
pub const ADMIN: &str = "admin";

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps everything.
    #[arg(long, env = "NS8RS_ROOT")]
    root: Option<PathBuf>,
    /// Loopback port of the cluster's Redis.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    redis_port: u16,
    /// Loopback port of the software repository's registry.
    #[arg(long, default_value_t = DEFAULT_REGISTRY_PORT)]
    registry_port: u16,
    /// Loopback port of the api-server.
    #[arg(long, default_value_t = DEFAULT_API_PORT)]
    api_port: u16,
    /// Use the binaries already built in this directory instead of building release
    /// ones (the tests use their debug build).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Build only these modules into the repository (comma-separated names under
    /// modules/); all of them by default. With `traefik` among them, the node's edge
    /// proxy `traefik1` is installed and started.
    #[arg(long, value_delimiter = ',')]
    modules: Vec<String>,
    /// The edge proxy's HTTP port (all addresses).
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    /// The edge proxy's HTTPS port (all addresses).
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// Number the modules' instances from here (tests: Unix user names are machine-wide).
    #[arg(long, hide = true)]
    id_base: Option<u64>,
}

#[derive(clap::Args)]
pub struct DownArgs {
    #[arg(long, env = "NS8RS_ROOT")]
    root: Option<PathBuf>,
    /// Also delete the cluster's data.
    #[arg(long)]
    purge: bool,
}

fn root_or_default(root: Option<PathBuf>) -> PathBuf {
    root.unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

fn pidfile(root: &Path) -> PathBuf {
    root.join("supervisor.pid")
}

/// The supervisor's pid, if it is running.
fn running_supervisor(root: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile(root)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline).contains("supervisor").then_some(pid)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn program(
    root: &Path,
    file: &str,
    name: &str,
    command: Vec<String>,
    env: serde_json::Value,
    cwd: &Path,
    credentials: Option<&Path>,
) -> Result<()> {
    let spec = json!({
        "name": name,
        "command": command,
        "env": env,
        // Its Redis user and password, read by the supervisor (root) at each start.
        "env_files": credentials.into_iter().collect::<Vec<_>>(),
        "cwd": cwd,
        "log": root.join("log").join(format!("{name}.log")),
        "restart": "always",
        // Agents drain their running tasks on SIGTERM.
        "stop_timeout_secs": 90,
    });
    write(&root.join("supervisor.d").join(file), &serde_json::to_string_pretty(&spec)?)
}

/// `redis-cli` as the cluster agent's user (the password through the environment, never
/// on a command line other users can read).
fn redis_cli(port: u16, who: &Identity, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--user", &who.user])
        .env("REDISCLI_AUTH", who.password())
        .args(args)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Module agents run as their own users from `<root>/bin`: every directory above it
/// must let others through.
fn reachable_by_modules(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = root.canonicalize().with_context(|| format!("cannot resolve {}", root.display()))?;
    for dir in root.ancestors() {
        let mode =
            std::fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?.permissions().mode();
        if mode & 0o001 == 0 {
            bail!(
                "{} is not searchable by other users (mode {:o}), so module agents, which run as their own users, \
                 could not start from {}: pass --root under a directory they can reach, e.g. /var/lib/ns8rs",
                dir.display(),
                mode & 0o777,
                root.join("bin").display()
            );
        }
    }
    Ok(())
}

pub fn up(args: UpArgs) -> Result<()> {
    let root = root_or_default(args.root);
    let port = args.redis_port;
    if let Some(pid) = running_supervisor(&root) {
        println!("The local cluster is already running (supervisor pid {pid}, root {}).", root.display());
        return Ok(());
    }
    packages::ensure(packages::NODE)?;
    packages::ensure(&[packages::REGISTRY])?;
    packages::ensure(crate::images::PACKAGES)?;
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!("port {port} on 127.0.0.1 is in use by another program: pick another with --redis-port");
    }
    let registry_port = args.registry_port;
    if TcpListener::bind(("127.0.0.1", registry_port)).is_err() {
        bail!("port {registry_port} on 127.0.0.1 is in use by another program: pick another with --registry-port");
    }
    let api_port = args.api_port;
    if TcpListener::bind(("127.0.0.1", api_port)).is_err() {
        bail!("port {api_port} on 127.0.0.1 is in use by another program: pick another with --api-port");
    }
    let built = match args.bin_dir {
        Some(dir) => dir,
        None => {
            eprintln!("xtask: building the release binaries");
            let mut build = Command::new(env!("CARGO"));
            build.current_dir(workspace()).args(["build", "--release", "--quiet"]);
            for b in BINARIES {
                build.args(["-p", b]);
            }
            run(&mut build)?;
            workspace().join("target/release")
        }
    };

    for dir in ["bin", "redis/data", "supervisor.d", "log", "registry/data"] {
        std::fs::create_dir_all(root.join(dir))
            .with_context(|| format!("cannot create {}", root.join(dir).display()))?;
    }
    reachable_by_modules(&root)?;
    for b in BINARIES {
        let tmp = root.join("bin").join(format!(".{b}.new"));
        std::fs::copy(built.join(b), &tmp).with_context(|| format!("cannot copy {} from {}", b, built.display()))?;
        std::fs::rename(&tmp, root.join("bin").join(b))?;
    }
    let bin = |b: &str| root.join("bin").join(b).display().to_string();

    // The agents' directories and every core program's Redis user, as on a production
    // node (`node-agent install`) but under this root. A module's user is made at its
    // install; the cluster's `ACL SAVE` keeps the file, which Redis reads at its start.
    let redis_address = format!("127.0.0.1:{port}");
    let acl = root.join("redis/users.acl");
    let (core, _) = install::setup(&root, &acl, install::FIRST_NODE, &redis_address)?;
    // Snapshots, no append-only file: see deploy/redis.conf for why.
    write(
        &root.join("redis/redis.conf"),
        &format!(
            "# Written by cargo xtask up.\nbind 127.0.0.1\nport {port}\nprotected-mode yes\ndaemonize no\n\
             dir {}\nappendonly no\nsave 1 1\nlogfile \"\"\naclfile {}\n",
            root.join("redis/data").display(),
            acl.display()
        ),
    )?;
    program(
        &root,
        "10-redis.json",
        "redis",
        vec!["redis-server".into(), root.join("redis/redis.conf").display().to_string()],
        json!({}),
        &root.join("redis"),
        None,
    )?;
    for (file, name, install, who, extra) in [
        ("20-cluster-agent.json", "cluster-agent", "cluster", &core.cluster, json!({})),
        (
            "30-node-agent.json",
            "node-agent",
            "node",
            &core.node,
            // Module agents run under this same supervisor: the node adds their files.
            json!({
                "AGENT_ID": "node/1",
                "NODE_ID": "1",
                "SUPERVISOR_DIR": root.join("supervisor.d"),
                "SUPERVISOR_PIDFILE": pidfile(&root),
                "SUPERVISOR_LOG_DIR": root.join("log"),
                "ROOTFUL_BASEDIR": root.join("rootful"),
                "API_ENDPOINT": format!("http://127.0.0.1:{api_port}"),
            }),
        ),
    ] {
        let dir = root.join(install);
        let mut env = json!({
            "AGENT_INSTALL_DIR": dir,
            "AGENT_STATE_DIR": dir.join("state"),
            "REDIS_ADDRESS": redis_address,
            "PATH": format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", root.join("bin").display()),
        });
        env.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        program(&root, file, name, vec![bin(name)], env, &dir.join("state"), Some(&who.file))?;
    }

    // The software repository: a registry for the images, repodata.json beside it.
    let registry_host = format!("127.0.0.1:{registry_port}");
    write(
        &root.join("registry/config.yml"),
        &format!(
            "# Written by cargo xtask up.\nversion: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             \x20 delete:\n    enabled: true\nhttp:\n  addr: {registry_host}\n",
            root.join("registry/data").display()
        ),
    )?;
    program(
        &root,
        "15-registry.json",
        "registry",
        vec!["docker-registry".into(), "serve".into(), root.join("registry/config.yml").display().to_string()],
        json!({}),
        &root.join("registry"),
        None,
    )?;
    proxy_token(&root)?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    program(
        &root,
        "40-api-server.json",
        "api-server",
        vec![bin("api-server")],
        json!({
            "REDIS_ADDRESS": redis_address,
            "LISTEN_ADDRESS": format!("127.0.0.1:{api_port}"),
            "API_SECRET_FILE": root.join("api-server/secret"),
            // The edge proxy, on this machine, proves itself with a token.
            "TRUSTED_PROXIES": "127.0.0.1",
            "PROXY_TOKEN_FILE": proxy_token_file(&root),
        }),
        &root.join("api-server"),
        Some(&core.api_server.file),
    )?;

    let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("log/supervisor.log"))?;
    // setsid: the cluster outlives this command and the terminal it ran in.
    Command::new("setsid")
        .arg(bin("supervisor"))
        .arg("--config-dir")
        .arg(root.join("supervisor.d"))
        .arg("--pidfile")
        .arg(pidfile(&root))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the supervisor")?;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let clients = redis_cli(port, &core.cluster, &["CLIENT", "LIST"]).unwrap_or_default();
        let api_up = std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok();
        let registry_up = std::net::TcpStream::connect(("127.0.0.1", registry_port)).is_ok();
        if clients.contains("name=cluster ") && clients.contains("name=node/1 ") && api_up && registry_up {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not come up within 60 s.\nsupervisor log:\n{}\nredis log:\n{}\ncluster-agent log:\n{}",
                tail(&root.join("log/supervisor.log")),
                tail(&root.join("log/redis.log")),
                tail(&root.join("log/cluster-agent.log")) + &tail(&root.join("log/api-server.log"))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::images::build(&registry_host, &root.join("repository"), None, &args.modules)?;
    // The cluster knows its local repository (once), through its own action.
    let repository = protocol::keys::repository(LOCAL_REPOSITORY);
    if redis_cli(port, &core.cluster, &["EXISTS", &repository]).is_some_and(|r| r.trim() == "0") {
        let data = json!({"name": LOCAL_REPOSITORY, "url": format!("file://{}", root.join("repository").display())});
        run(Command::new(bin("api-cli"))
            .args(["run", "add-repository", "--quiet", "--data", &data.to_string()])
            .env("REDIS_ADDRESS", &redis_address)
            .envs(core.cluster.env())
            .stdout(Stdio::null()))?;
    }
    if let Some(base) = args.id_base {
        let built = if args.modules.is_empty() { crate::images::module_names()? } else { args.modules.clone() };
        for m in built {
            redis_cli(port, &core.cluster, &["SET", &protocol::keys::module_sequence(&m), &base.to_string(), "NX"]);
        }
    }
    let with_proxy = args.modules.is_empty() || args.modules.iter().any(|m| m == "traefik");
    if with_proxy {
        let token = proxy_token(&root)?;
        edge_proxy(
            &bin("api-cli"),
            &redis_address,
            &core.cluster,
            port,
            (args.http_port, args.https_port, api_port),
            &token,
        )?;
    }
    let password = first_admin(&bin("api-server"), &redis_address, &core.api_server)?;
    let cli = bin("api-cli");
    let admin = match password {
        Some(pw) => format!("  Admin user \"{ADMIN}\", password (shown only this once, store it safely): {pw}\n"),
        None => format!(
            "  Admin user \"{ADMIN}\" already exists. Lost its password? As root: {} set-password {ADMIN}\n",
            bin("api-server")
        ),
    };
    println!(
        "The local cluster is up: Redis on {redis_address}, agents cluster and node/1, API on {api_url}.\n\
         \n{admin}\
         \n  Log in and run a task through the API:\n    {cli} login --endpoint {api_url} --username {ADMIN}\n    \
         {cli} run get-info --agent node/1 --endpoint {api_url}\n\
         \n  Or straight through Redis, as root on this machine (as the cluster agent's Redis user,\n  \
         whose credentials only root can read in {}):\n    \
         {cli} run set-name --data '{{\"name\": \"My cluster\"}}'\n\
         \n  Software repository: images in {registry_host}, index {}/repository/repodata.json\
         \n  State and logs: {}\n  Stop:           cargo xtask down",
        core.cluster.file.display(),
        root.display(),
        root.display()
    );
    Ok(())
}

fn proxy_token_file(root: &Path) -> PathBuf {
    root.join("api-server/proxy-token")
}

/// The token the edge proxy's cluster-admin route sends the api-server (made once,
/// root-only).
fn proxy_token(root: &Path) -> Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = proxy_token_file(root);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

/// A rootless Traefik binds 80 and 443 only if unprivileged users may bind from there
/// (NS8's node setup lowers the same sysctl to 80). Never raised here.
fn unprivileged_ports_from(port: u16) -> Result<()> {
    const KNOB: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let current: u16 = std::fs::read_to_string(KNOB).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(1024);
    if port < current {
        std::fs::write(KNOB, port.to_string())
            .with_context(|| format!("cannot let the edge proxy bind port {port}: writing {KNOB}"))?;
        eprintln!("xtask: unprivileged users may now bind ports from {port} ({KNOB}; was {current})");
    }
    Ok(())
}

/// The node's edge proxy: `traefik` installed on node 1 (once), configured with the
/// ports and started; a production node gets it from the installer the same way.
fn edge_proxy(
    cli: &str,
    redis_address: &str,
    cluster: &Identity,
    port: u16,
    (http, https, api_port): (u16, u16, u16),
    token: &str,
) -> Result<()> {
    let installed = redis_cli(port, cluster, &["GET", &protocol::keys::node_default_instance(1, "traefik")])
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let id = match installed {
        Some(id) => id,
        None => {
            eprintln!("xtask: installing the edge proxy (traefik) on node 1");
            let req =
                cluster_actions::AddModuleRequest { image: "traefik".into(), node: 1, module_uuid: None, accept: None };
            call::<cluster_actions::AddModule>(cli, redis_address, cluster, "cluster", &req)?.module_id
        }
    };
    unprivileged_ports_from(http.min(https))?;
    let agent = format!("module/{id}");
    let ports = traefik::ConfigureRequest { http_port: Some(http), https_port: Some(https) };
    call::<traefik::Configure>(cli, redis_address, cluster, &agent, &ports)?;
    // The api-server at https://<node>/cluster-admin/ (NS8's route).
    let mut route = traefik::SetRouteRequest {
        instance: traefik::CLUSTER_ADMIN_ROUTE.into(),
        url: format!("http://127.0.0.1:{api_port}"),
        path: Some(traefik::CLUSTER_ADMIN_PATH.into()),
        strip_prefix: true,
        http2https: true,
        ..Default::default()
    };
    route.headers.request.insert(traefik::PROXY_TOKEN_HEADER.into(), token.to_owned());
    call::<traefik::SetRoute>(cli, redis_address, cluster, &agent, &route)?;
    Ok(())
}

/// Run action `A` on `agent` with root's `api-cli` over Redis, as the cluster agent.
fn call<A: protocol::actions::Action>(
    cli: &str,
    redis_address: &str,
    cluster: &Identity,
    agent: &str,
    req: &A::Request,
) -> Result<A::Reply> {
    let data = serde_json::to_string(req)?;
    let out = Command::new(cli)
        .args(["run", A::NAME, "--agent", agent, "--data", &data])
        .env("REDIS_ADDRESS", redis_address)
        .envs(cluster.env())
        .output()
        .with_context(|| format!("cannot run {cli}"))?;
    if !out.status.success() {
        bail!(
            "{} on {agent} failed: {}{}",
            A::NAME,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} on {agent} answered {}", A::NAME, String::from_utf8_lossy(&out.stdout)))
}

/// The ids of the modules the node agent started (one supervisor file each).
fn module_ids(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("supervisor.d"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(name.strip_prefix("50-module-")?.strip_suffix(".json")?.to_owned())
        })
        .collect();
    ids.sort();
    ids
}

/// Containers outlive their agents (conmon watches them, not the agent): stop them
/// as a shutdown of the machine would, gracefully first, then whatever the module's
/// user still runs. The next `up` starts the enabled services again.
fn stop_modules(root: &Path) {
    let setup = node_setup(root);
    for id in module_ids(root) {
        let Ok(Some(paths)) = node_agent::modules::ModulePaths::find(&setup, &id) else { continue };
        if let Err(e) = paths.module_service(&setup, &["down"]) {
            eprintln!("xtask: module {id}: {e}");
        }
        node_agent::modules::stop_processes(&paths);
        println!("Stopped module {id}.");
    }
}

/// Where the node agent `up` starts keeps its modules.
fn node_setup(root: &Path) -> node_agent::modules::NodeSetup {
    node_agent::modules::NodeSetup {
        home_base: PathBuf::from("/home"),
        rootful_base: root.join("rootful"),
        state_dir: root.join("node/state"),
        bin_dir: root.join("bin"),
        redis_address: None,
        api_endpoint: None,
    }
}

/// The modules' Unix users (and rootful modules' containers) outlive the cluster's
/// files: remove those the node agent started (one supervisor file each).
fn remove_modules(root: &Path) -> Result<()> {
    let setup = node_setup(root);
    for id in module_ids(root) {
        if let Ok(Some(paths)) = node_agent::modules::ModulePaths::find(&setup, &id) {
            if paths.rootful {
                // Root's containers are not killed with a user: stop them first.
                let _ = paths.module_service(&setup, &["down"]);
            }
            node_agent::modules::remove_files(&paths).map_err(|e| anyhow::anyhow!("cannot remove module {id}: {e}"))?;
        }
        println!("Removed module {id} (its user or directory, and its containers).");
        std::fs::remove_file(root.join("supervisor.d").join(format!("50-module-{id}.json")))?;
    }
    Ok(())
}

/// Create the first admin (owner of the cluster and of node 1) if there is none yet;
/// its generated password, which only the api-server's stdout ever shows.
fn first_admin(api_server: &str, redis_address: &str, who: &Identity) -> Result<Option<String>> {
    let out = Command::new(api_server)
        .args(["add-user", ADMIN, "--if-missing", "--grant", "owner:cluster", "--grant", "owner:node/1"])
        .env("REDIS_ADDRESS", redis_address)
        .envs(who.env())
        .stdin(Stdio::null())
        .output()
        .context("cannot run api-server add-user")?;
    if !out.status.success() {
        bail!("cannot create the admin user: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let password = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((!password.is_empty()).then_some(password))
}

pub fn down(args: DownArgs) -> Result<()> {
    let root = root_or_default(args.root);
    match running_supervisor(&root) {
        None => println!("The local cluster is not running."),
        Some(pid) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
                .with_context(|| format!("cannot signal the supervisor (pid {pid})"))?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while Path::new(&format!("/proc/{pid}")).exists() {
                if Instant::now() > deadline {
                    bail!("the supervisor (pid {pid}) did not stop within 120 s; see {}", root.join("log").display());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!("The local cluster is stopped.");
        }
    }
    if args.purge {
        remove_modules(&root)?;
    } else {
        stop_modules(&root);
    }
    if args.purge && root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
        println!("Removed {}.", root.display());
    }
    Ok(())
}
