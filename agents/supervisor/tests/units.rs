//! Checks of `deploy/`: the systemd units pass `systemd-analyze verify`, read the files
//! `node-agent install` writes, and Redis starts with `deploy/redis.conf`. Each test is
//! skipped, with a notice, where its command is missing.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UNITS: &[&str] =
    &["redis.service", "cluster-agent.service", "node-agent.service", "module-agent@.service", "api-server.service"];
const REDIS_SERVER: &str = "/usr/bin/redis-server";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn has_command(name: &str) -> bool {
    Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// `/usr/local/bin/<name>` becomes the workspace's build of `<name>` when there is one
/// (this test's own binary directory), else `/bin/true`; a missing Redis becomes
/// `/bin/true` too. `verify` only checks that `ExecStart=` is executable.
fn rewrite_binaries(unit: &str) -> String {
    let built = Path::new(env!("CARGO_BIN_EXE_supervisor")).parent().unwrap().to_owned();
    let mut out = String::new();
    for line in unit.lines() {
        let mut line = line.to_owned();
        if let Some(rest) = line.strip_prefix("ExecStart=") {
            let (exe, args) = rest.split_once(' ').unwrap_or((rest, ""));
            let replacement = if let Some(name) = exe.strip_prefix("/usr/local/bin/") {
                let candidate = built.join(name);
                if candidate.is_file() { candidate.display().to_string() } else { "/bin/true".to_owned() }
            } else if exe == REDIS_SERVER && !Path::new(REDIS_SERVER).exists() {
                "/bin/true".to_owned()
            } else {
                exe.to_owned()
            };
            line = format!("ExecStart={replacement} {args}");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn systemd_units_verify() {
    if !has_command("systemd-analyze") {
        eprintln!("systemd-analyze not found: systemd units not verified");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).unwrap();
        assert!(text.starts_with("# "), "{unit} starts with a comment saying what it runs");
        std::fs::write(tmp.path().join(unit), rewrite_binaries(&text)).unwrap();
    }
    // A template is checked as such and as an instance, which expands its specifiers.
    let instance = "module-agent@module1.service";
    std::fs::copy(tmp.path().join("module-agent@.service"), tmp.path().join(instance)).unwrap();

    // A rootful module's instance, with the drop-in the node agent writes for it.
    let rootful = "module-agent@rootful1.service";
    std::fs::copy(tmp.path().join("module-agent@.service"), tmp.path().join(rootful)).unwrap();
    let state = tmp.path().join("rootful1/state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("agent.env"), "").unwrap();
    let dropin = node_agent::launcher::rootful_dropin(&node_agent::launcher::AgentSpec {
        module_id: "rootful1",
        user: None,
        binary: Path::new(env!("CARGO_BIN_EXE_supervisor")),
        install_dir: &tmp.path().join("rootful1"),
        state_dir: &state,
        env_file: &state.join("agent.env"),
    });
    std::fs::create_dir_all(tmp.path().join(format!("{rootful}.d"))).unwrap();
    std::fs::write(tmp.path().join(format!("{rootful}.d/rootful.conf")), dropin).unwrap();

    let ours: Vec<&str> = UNITS.iter().copied().chain([instance, rootful]).collect();
    let prefix = format!("{}/", tmp.path().display());
    for unit in &ours {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(tmp.path().join(unit))
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // `verify` reports problems of a unit file (unknown keys or sections, bad values)
        // as "<path>:<line>: ..." and still exits 0, and problems of a unit as
        // "<unit>: ..." or "Unit <unit> ...". Those are failures when they are about our
        // files (the units are loaded from the temporary directory, including as
        // dependencies of each other). Lines about the host's units that ours pull in
        // (network.target, a Redis unit installed by a package, ...) are not ours to fix:
        // they are shown, not failed on. A non-zero exit is about the unit given.
        let bad: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                l.starts_with(&prefix)
                    || ours.iter().any(|u| l.starts_with(&format!("{u}:")) || l.starts_with(&format!("Unit {u} ")))
            })
            .collect();
        if !stderr.trim().is_empty() {
            eprintln!("systemd-analyze verify {unit}:\n{stderr}");
        }
        assert!(out.status.success() && bad.is_empty(), "{unit} does not verify:\n{stderr}");
    }
}

/// The units read the credentials where `node-agent install` writes them, and Redis's
/// ACL file is the one it writes.
#[test]
fn units_read_what_node_agent_install_writes() {
    let root = Path::new("/");
    let files = node_agent::install::CoreFiles::under(&root.join(node_agent::install::AGENTS_BASE));
    for (unit, file) in [
        ("cluster-agent.service", &files.cluster),
        ("node-agent.service", &files.node),
        ("api-server.service", &files.api_server),
    ] {
        let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).unwrap();
        // Required (no "-"): without its credentials a program would connect as nobody.
        let line = format!("EnvironmentFile={}", file.display());
        assert!(text.lines().any(|l| l == line), "{unit} has no {line}");
    }
    let conf = std::fs::read_to_string(deploy_dir().join("redis.conf")).unwrap();
    let acl = format!("aclfile {}", root.join(node_agent::install::ACL_FILE).display());
    assert!(conf.lines().any(|l| l == acl), "redis.conf has no {acl}");
    let port = node_agent::install::REDIS_ADDRESS.rsplit(':').next().unwrap();
    assert!(conf.lines().any(|l| l == format!("port {port}")), "redis.conf listens on {port}");
}

/// Kills the Redis server when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Send a command as a RESP array and read the `CONFIG GET` reply: [name, value].
fn config_get(sock: &Path, name: &str) -> String {
    let mut stream = UnixStream::connect(sock).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cmd = format!("*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n${}\r\n{name}\r\n", name.len());
    stream.write_all(cmd.as_bytes()).unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut next = || lines.next().unwrap().unwrap();
    assert_eq!(next(), "*2", "CONFIG GET {name}");
    next();
    assert_eq!(next(), name);
    next();
    next()
}

#[test]
fn redis_starts_with_the_deployed_config() {
    if !Path::new(REDIS_SERVER).exists() {
        eprintln!("{REDIS_SERVER} not found: deploy/redis.conf not tried");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let acl = tmp.path().join("redis.acl");
    std::fs::write(&acl, "").unwrap();
    let sock = tmp.path().join("redis.sock");
    // The file as deployed, but for what must differ here: Redis changes to `dir` as it
    // reads it (so it must exist: systemd's StateDirectory= creates it in production),
    // the ACL file, no TCP port (another Redis may listen), a Unix socket instead, and
    // no systemd to notify.
    let deployed = std::fs::read_to_string(deploy_dir().join("redis.conf")).unwrap();
    let mut conf = String::new();
    for line in deployed.lines() {
        let line = match line.split_once(' ') {
            Some(("dir", _)) => format!("dir {}", tmp.path().display()),
            Some(("aclfile", _)) => format!("aclfile {}", acl.display()),
            _ => line.to_owned(),
        };
        conf.push_str(&line);
        conf.push('\n');
    }
    assert!(conf != deployed, "redis.conf sets dir and aclfile");
    let conf_path = tmp.path().join("redis.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(REDIS_SERVER)
        .arg(&conf_path)
        .args(["--port", "0", "--supervised", "no"])
        .arg("--unixsocket")
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut redis = KillOnDrop(child);
    let end = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        if let Some(status) = redis.0.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(redis.0.stdout.as_mut().unwrap(), &mut out).unwrap();
            std::io::Read::read_to_string(redis.0.stderr.as_mut().unwrap(), &mut out).unwrap();
            panic!("redis-server exited ({status}) with deploy/redis.conf:\n{out}");
        }
        assert!(Instant::now() < end, "redis-server did not open its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Snapshots only: deploy/redis.conf says why there is no append-only file.
    assert_eq!(config_get(&sock, "appendonly"), "no");
    assert_eq!(config_get(&sock, "save"), "1 1");
    assert_eq!(config_get(&sock, "protected-mode"), "yes");
    assert_eq!(config_get(&sock, "bind"), "127.0.0.1");
}
