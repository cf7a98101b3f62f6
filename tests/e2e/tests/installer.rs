//! The production installer, `deploy/install.sh`, on Debian 12 with systemd as PID 1:
//! a Debian root made with debootstrap (once: `xtask debian-root` caches it under
//! `target/image-cache/`) is imported into rootful Podman and booted with systemd; the
//! workspace's binaries and `deploy/` are copied in and the script is run as root, twice.
//! The root has Debian's Redis enabled (as its package leaves it) and lacks one of the
//! packages, so the script's apt path and the port collision are real.
//!
//! The edge proxy comes from a module repository as on a real server: the `traefik`
//! image is built and pushed to a registry on the host's side of Podman's bridge (a LAN
//! registry without TLS, which the machine's registries.conf marks insecure, as its
//! admin would), its index copied in; the module's rootless containers run in the
//! booted machine under systemd, their storage on a host directory (overlay cannot
//! stack on the machine's own overlay root).
//!
//! What is checked: every unit active and Debian's Redis masked; Redis refusing the
//! anonymous user a write and a private read, answering the cluster's user; root-only
//! credentials and only SHA-256 hashes in the ACL file, even after Redis's `ACL SAVE`;
//! `api-cli` as root finding the cluster's credentials; the printed admin password
//! logging in to the API and found in no file; a second run changing no password; and
//! the units' `systemd-analyze security` exposure no worse than `deploy/README.md` says;
//! without a repository no proxy and a note saying how; with one, `traefik1` under
//! `module-agent@traefik1`, serving the API at `https://<node>/cluster-admin/` on 443
//! with plain HTTP redirected, its token root's alone; a run after it keeping the same proxy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::bin;

/// What the script installs as binaries (its BINARIES).
const BINARIES: &[&str] = &["cluster-agent", "node-agent", "module-agent", "module-service", "api-cli", "api-server"];
const UNITS: &[&str] = &["redis.service", "cluster-agent.service", "node-agent.service", "api-server.service"];
/// Left out of the cached root, so the script installs it with apt.
const LEFT_OUT: &str = "uidmap";
/// What the booted root needs beyond the script's packages.
const BOOT_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus"];
const PASSWORD_LINE: &str = "password (shown only this once, store it safely): ";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace")
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().expect("run podman")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A booted container, its image and its /home, all removed on drop, passed or not.
struct Machine {
    name: String,
    image: String,
    home: tempfile::TempDir,
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "5", &self.name]);
        let _ = podman(&["rmi", "-f", &self.image]);
        // The modules' files belong to their uids and sub-uids: root removes them
        // (TempDir's own removal would then find nothing).
        let _ = std::fs::remove_dir_all(self.home.path());
    }
}

impl Machine {
    /// `bash -c script` as root inside, with `stdin`.
    fn sh_in(&self, script: &str, stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("podman")
            .args(["exec", "-i", &self.name, "bash", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run podman exec");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("podman exec")
    }

    fn sh(&self, script: &str) -> Output {
        self.sh_in(script, "")
    }

    /// The stdout of a script that must succeed.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "{script}: {}\n{}", out.status, text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// What `systemctl <query>` prints (it exits non-zero for "masked", "inactive", ...).
    fn state(&self, query: &str) -> String {
        String::from_utf8_lossy(&self.sh(&format!("systemctl {query}")).stdout).trim().to_owned()
    }

    fn journal(&self) -> String {
        let units: Vec<String> = UNITS.iter().map(|u| format!("-u {u}")).collect();
        text(&self.sh(&format!("journalctl --no-pager -n 80 {}", units.join(" "))))
    }

    fn install(&self) -> Output {
        self.install_with("")
    }

    fn install_with(&self, options: &str) -> Output {
        self.sh(&format!("/opt/ns8rs/deploy/install.sh {options} /opt/ns8rs/bin"))
    }

    /// HTTP status of `curl <args>` inside.
    fn status(&self, args: &str) -> String {
        self.ok(&format!("curl -s -o /dev/null -w '%{{http_code}}' {args}"))
    }

    fn var(&self, file: &str, name: &str) -> String {
        self.ok(&format!("sed -n 's/^{name}=//p' {file}"))
    }

    /// `POST /api/login` inside; the answer's JSON (the password goes through stdin).
    fn login(&self, password: &str) -> serde_json::Value {
        let body = serde_json::json!({"username": "admin", "password": password}).to_string();
        let out = self.sh_in(
            "curl -s -X POST http://127.0.0.1:9311/api/login -H 'Content-Type: application/json' --data-binary @-",
            &body,
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("login answered no JSON ({e}): {}", text(&out)))
    }
}

/// The packages `install.sh --packages` lists.
fn script_packages() -> Vec<String> {
    let out = Command::new("bash").arg(workspace().join("deploy/install.sh")).arg("--packages").output().unwrap();
    assert!(out.status.success(), "install.sh --packages: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

/// Containers and images of runs killed before their drop could remove them (their
/// names end with the test process's pid).
fn remove_leftovers() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let names = text(&podman(&["ps", "-a", "--format", "{{.Names}}", "--filter", "name=^ns8rs-installer-"]));
    for name in names.lines() {
        if let Some(pid) = name.strip_prefix("ns8rs-installer-").filter(|p| !alive(p)) {
            let _ = podman(&["rm", "-f", "-t", "0", name]);
            let _ = podman(&["rmi", "-f", &format!("localhost/ns8rs-installer-test:{pid}")]);
        }
    }
}

/// Boot the cached root with systemd as PID 1.
fn boot() -> Machine {
    remove_leftovers();
    let mut packages: Vec<String> = script_packages().into_iter().filter(|p| p != LEFT_OUT).collect();
    packages.extend(BOOT_PACKAGES.iter().map(|p| p.to_string()));
    let out = Command::new(bin("xtask")).args(["debian-root", "--packages", &packages.join(",")]).output().unwrap();
    assert!(out.status.success(), "xtask debian-root: {}", text(&out));
    let tarball = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let id = std::process::id();
    // Under the target dir: a disk file system, which rootless overlay can sit on.
    let scratch = workspace().join("target/tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let home = tempfile::Builder::new().prefix("installer-home-").tempdir_in(&scratch).unwrap();
    let m =
        Machine { name: format!("ns8rs-installer-{id}"), image: format!("localhost/ns8rs-installer-test:{id}"), home };
    let out = podman(&["import", "-q", &tarball, &m.image]);
    assert!(out.status.success(), "podman import: {}", text(&out));
    // systemd needs its mounts and the units' sandboxing needs namespaces: privileged.
    // Without CAP_SYS_RESOURCE (as on this CI) runc cannot raise the container's limits
    // to Podman's defaults: ask for the current hard limits instead.
    let mut args: Vec<String> =
        ["run", "-d", "--name", &m.name, "--hostname", "ns8rs-test", "--systemd=always"].map(str::to_owned).to_vec();
    args.push("--privileged".into());
    args.push(format!("--volume={}:/home", m.home.path().display()));
    let host = node_agent::podman::probe();
    if !host.cap_sys_resource {
        args.push(format!("--ulimit=nofile={0}:{0}", host.nofile_hard));
        args.push(format!("--ulimit=nproc={0}:{0}", host.nproc_hard));
    }
    args.extend([m.image.clone(), "/sbin/init".into()]);
    let out = podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "podman run: {}", text(&out));

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let state = String::from_utf8_lossy(&m.sh("systemctl is-system-running").stdout).trim().to_owned();
        if state == "running" || state == "degraded" {
            break;
        }
        assert!(Instant::now() < deadline, "systemd did not boot within 90 s (state {state:?})");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The cache's chroot installs kept daemons from starting; a real server has no such policy.
    m.ok("rm -f /usr/sbin/policy-rc.d && mkdir -p /opt/ns8rs/bin");
    let out = podman(&["cp", &workspace().join("deploy").display().to_string(), &format!("{}:/opt/ns8rs/", m.name)]);
    assert!(out.status.success(), "podman cp deploy: {}", text(&out));
    m
}

/// The repository the proxy comes from: `traefik` built and pushed to a registry on the
/// bridge's gateway (the host as the machine sees it), the index copied in to
/// [`REPOSITORY`], the registry marked insecure in the machine's registries.conf.d.
fn repository(m: &Machine) -> testkit::Registry {
    let out = podman(&["network", "inspect", "podman"]);
    assert!(out.status.success(), "podman network inspect: {}", text(&out));
    let nets: serde_json::Value = serde_json::from_slice(&out.stdout).expect("podman network inspect: JSON");
    let gateway = nets[0]["subnets"][0]["gateway"].as_str().unwrap_or_else(|| panic!("no gateway in {nets}"));
    let registry = testkit::Registry::start_on(gateway.parse().expect("an address")).expect("registry");
    let index = tempfile::tempdir().unwrap();
    let out = Command::new(bin("xtask"))
        .args(["images", "--registry", &registry.host(), "--out"])
        .arg(index.path())
        .arg("traefik")
        .output()
        .unwrap();
    assert!(out.status.success(), "xtask images traefik: {}", text(&out));
    let out = podman(&["cp", &index.path().display().to_string(), &format!("{}:{REPOSITORY}", m.name)]);
    assert!(out.status.success(), "podman cp repository: {}", text(&out));
    m.ok(&format!(
        "printf '[[registry]]\nlocation = \"{}\"\ninsecure = true\n' >/etc/containers/registries.conf.d/50-lan-registry.conf",
        registry.host()
    ));
    registry
}

/// Where the machine has the repository's index.
const REPOSITORY: &str = "/opt/ns8rs/repository";

fn copy_binaries(m: &Machine) {
    for b in BINARIES {
        let out = podman(&["cp", &bin(b).display().to_string(), &format!("{}:/opt/ns8rs/bin/{b}", m.name)]);
        assert!(out.status.success(), "podman cp {b}: {}", text(&out));
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

const CLUSTER_ENV: &str = "/var/lib/nethserver/cluster/state/agent.env";
const CREDENTIALS: &[&str] =
    &[CLUSTER_ENV, "/var/lib/nethserver/node/state/agent.env", "/var/lib/nethserver/api-server/agent.env"];
const ACL_FILE: &str = "/etc/ns8rs/redis.acl";

/// Exposure figures, unit by unit, from `systemd-analyze security` (running units) and,
/// for the template, `--offline=yes` on an instance of its file.
fn exposure(m: &Machine) -> Vec<(String, f64)> {
    let out = m.ok(&format!("systemd-analyze security --no-pager {}", UNITS.join(" ")));
    let mut figures: Vec<(String, f64)> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let unit = w.next()?;
            let value: f64 = w.next()?.parse().ok()?;
            UNITS.contains(&unit).then(|| (unit.to_owned(), value))
        })
        .collect();
    let offline = m.ok("cp /etc/systemd/system/module-agent@.service /tmp/module-agent@module1.service && \
         systemd-analyze security --no-pager --offline=yes /tmp/module-agent@module1.service | tail -n 1");
    // "→ Overall exposure level for module-agent@module1.service: 9.6 UNSAFE 😨"
    let value = offline.split(": ").nth(1).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok());
    figures.push(("module-agent@.service".into(), value.unwrap_or_else(|| panic!("no exposure in {offline:?}"))));
    assert_eq!(figures.len(), UNITS.len() + 1, "an exposure for every unit:\n{out}\n{offline}");
    figures
}

/// The table in deploy/README.md: `| unit | exposure | ...`.
fn documented_exposure() -> Vec<(String, f64)> {
    let doc = std::fs::read_to_string(workspace().join("deploy/README.md")).expect("deploy/README.md");
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let unit = cells.get(1)?.trim_matches('`');
            let value: f64 = cells.get(2)?.parse().ok()?;
            unit.ends_with(".service").then(|| (unit.to_owned(), value))
        })
        .collect()
}

#[test]
fn install_sh_sets_up_a_debian_server_with_systemd() {
    for cmd in ["podman", "debootstrap"] {
        assert!(
            Command::new(cmd).arg("--version").stdout(Stdio::null()).status().is_ok(),
            "{cmd} is missing: `cargo xtask test` installs it"
        );
    }
    let m = boot();
    assert_eq!(
        m.ok("systemctl is-enabled redis-server.service"),
        "enabled",
        "Debian's Redis, as its package leaves it"
    );

    // Bad input first: no binaries. A clear error, and nothing of ns8rs on the machine.
    let out = m.install();
    assert!(!out.status.success(), "install.sh without binaries succeeded:\n{}", text(&out));
    let said = text(&out);
    assert!(said.contains("no cluster-agent node-agent") && said.contains("/opt/ns8rs/bin"), "{said}");
    m.ok("test ! -e /usr/local/bin/node-agent && test ! -e /etc/ns8rs && test ! -e /var/lib/nethserver");
    assert_eq!(m.state("is-active redis-server.service"), "active", "a refusal changes nothing");

    for (options, says) in [
        ("--http-port 0", "--http-port takes a port"),
        ("--repository ftp://x", "--repository takes a URL"),
        ("--https-port 80", "must differ"),
    ] {
        let out = m.install_with(options);
        assert!(!out.status.success(), "install.sh {options} succeeded:\n{}", text(&out));
        assert!(text(&out).contains(says), "install.sh {options}: {}", text(&out));
    }
    m.ok("test ! -e /etc/ns8rs");

    copy_binaries(&m);
    let out = m.install();
    let said = text(&out);
    assert!(out.status.success(), "install.sh failed:\n{said}\n{}", m.journal());
    eprintln!("--- install.sh, first run:\n{said}");
    let password = said
        .lines()
        .find_map(|l| l.split_once(PASSWORD_LINE).map(|(_, p)| p.trim().to_owned()))
        .unwrap_or_else(|| panic!("no admin password printed:\n{said}"));
    assert!(password.len() >= 16, "a generated password");
    assert!(said.contains("No edge proxy: no module repository was given"), "{said}");
    assert_eq!(said.matches(&password).count(), 1, "the password is printed once");

    // Services: ours up, Debian's Redis out of the way, the left-out package installed.
    let active = m.ok(&format!("systemctl is-active {}", UNITS.join(" ")));
    assert_eq!(active.lines().collect::<Vec<_>>(), vec!["active"; UNITS.len()], "{active}\n{}", m.journal());
    assert_eq!(m.state("is-enabled redis-server.service"), "masked");
    assert_eq!(m.state("is-active redis-server.service"), "inactive");
    m.ok(&format!("dpkg-query -W {LEFT_OUT}"));
    for b in BINARIES {
        m.ok(&format!("test -x /usr/local/bin/{b}"));
    }

    // Credentials: root's alone; the ACL file holds hashes, never a password.
    for f in CREDENTIALS.iter().chain(&[ACL_FILE]) {
        assert_eq!(m.ok(&format!("stat -c '%a %U' {f}")), "600 root", "{f}");
    }
    assert_eq!(m.ok("stat -c '%a %U' /etc/ns8rs"), "700 root");
    let acl = m.ok(&format!("cat {ACL_FILE}"));
    let passwords: Vec<String> = CREDENTIALS.iter().map(|f| m.var(f, "REDIS_PASSWORD")).collect();
    for (f, pw) in CREDENTIALS.iter().zip(&passwords) {
        assert!(pw.len() >= 32, "{f}: a long random password");
        assert!(!acl.contains(pw.as_str()), "{f}'s password in clear in the ACL file");
        assert!(acl.contains(&format!("#{}", sha256_hex(pw))), "{f}'s hash in the ACL file:\n{acl}");
    }
    assert_eq!(m.var(CREDENTIALS[1], "AGENT_ID"), "node/1");

    // Redis: the anonymous user may not write or read private keys; the cluster may.
    let anon = text(&m.sh("redis-cli -p 6379 SET cluster/ui_name x; redis-cli -p 6379 EXISTS user/admin"));
    assert_eq!(anon.matches("NOPERM").count(), 2, "anonymous write and private read refused:\n{anon}");
    let cluster =
        format!("REDISCLI_AUTH=$(sed -n 's/^REDIS_PASSWORD=//p' {CLUSTER_ENV}) redis-cli -p 6379 --user cluster");
    assert_eq!(m.ok(&format!("{cluster} --no-auth-warning EXISTS user/admin")), "1", "the admin exists");
    // Redis writes the saved ACL file with its umask: still root's alone.
    assert_eq!(m.ok(&format!("{cluster} --no-auth-warning ACL SAVE")), "OK");
    assert_eq!(m.ok(&format!("stat -c '%a %U' {ACL_FILE}")), "600 root", "after ACL SAVE");

    // api-cli as root finds the cluster's credentials by itself.
    let info = m.ok("api-cli run get-info --agent node/1");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("get-info: {e}: {info}"));
    assert_eq!(info["hostname"], "ns8rs-test", "{info}");

    // The printed password logs in; a wrong one does not; the token reads the nodes.
    let login = m.login(&password);
    let token = login["token"].as_str().unwrap_or_else(|| panic!("no token: {login}")).to_owned();
    assert_eq!(m.login("not the password")["code"], 401);
    let nodes = m.ok(&format!("curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:9311/api/nodes"));
    assert!(nodes.contains("\"code\":200"), "{nodes}");

    // The password is in no file (the search itself finds a password that is in one).
    let search = "grep -rqsF -D skip -f - /etc /var /run /root /tmp /opt /home";
    assert!(m.sh_in(search, &passwords[0]).status.success(), "the search finds the cluster's password in its file");
    assert!(!m.sh_in(search, &password).status.success(), "the admin password is written in a file");

    // Again, with a repository: succeeds, keeps every password and the admin's,
    // restarts everything, and installs the edge proxy.
    let _registry = repository(&m);
    let with_repository = format!("--repository file://{REPOSITORY}");
    let sums = m.ok(&format!("sha256sum {}", CREDENTIALS.join(" ")));
    let out = m.install_with(&with_repository);
    let again = text(&out);
    assert!(out.status.success(), "second install.sh failed:\n{again}\n{}", m.journal());
    eprintln!("--- install.sh, second run:\n{again}");
    assert!(again.contains("installed already") && again.contains("\"admin\" exists already"), "{again}");
    assert!(!again.contains(PASSWORD_LINE), "no new admin password");
    assert_eq!(m.ok(&format!("sha256sum {}", CREDENTIALS.join(" "))), sums, "credentials unchanged");
    let active = m.ok(&format!("systemctl is-active {}", UNITS.join(" ")));
    assert_eq!(active.lines().collect::<Vec<_>>(), vec!["active"; UNITS.len()], "{active}");
    assert!(m.login(&password)["token"].is_string(), "the admin's password still logs in");
    m.ok("api-cli run get-info --agent node/1 >/dev/null");

    // The edge proxy: traefik1's agent a unit of its own, the API through it on 443
    // (the machine's own network: the real ports), plain HTTP sent to HTTPS.
    assert!(again.contains("Edge proxy traefik1"), "{again}");
    assert_eq!(m.state("is-active module-agent@traefik1.service"), "active", "{}", m.journal());
    assert_eq!(m.ok(&format!("{cluster} --no-auth-warning GET node/1/default_instance/traefik")), "traefik1");
    // The api-server's own (dynamic user), only it reads it.
    let token_file = "/var/lib/ns8rs/api-server/proxy-token";
    let (mode, uid) = m
        .ok(&format!("stat -c '%a %u' {token_file}"))
        .split_once(' ')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    assert_eq!(mode, "600");
    assert_ne!(uid, "0", "the api-server's dynamic user owns its token");
    let openapi = "https://127.0.0.1/cluster-admin/api/openapi.json";
    assert_eq!(m.status(&format!("-k {openapi}")), "200", "the API through the proxy\n{}", m.journal());
    let redirect = m.status("http://127.0.0.1/cluster-admin/api/openapi.json");
    assert!(redirect == "301" || redirect == "308", "plain HTTP redirected, not {redirect}");
    let body = serde_json::json!({"username": "admin", "password": password}).to_string();
    let out = m.sh_in(
        "curl -sk -X POST https://127.0.0.1/cluster-admin/api/login -H 'Content-Type: application/json' --data-binary @-",
        &body,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"token\""), "login through the proxy: {}", text(&out));
    // The proxy's token is a secret: in no unit's environment, in no process's arguments.
    let token = m.ok(&format!("cat {token_file}"));
    assert!(token.len() >= 32, "a long random token");
    let search = "grep -qsF -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ";
    assert!(!m.sh_in(search, &token).status.success(), "the proxy token in a process's arguments or environment");

    // A third run keeps the proxy (no second one) and its route.
    let out = m.install_with(&with_repository);
    let third = text(&out);
    assert!(out.status.success(), "third install.sh failed:\n{third}\n{}", m.journal());
    assert!(third.contains("Edge proxy traefik1") && !third.contains("installing traefik"), "{third}");
    assert_eq!(m.ok(&format!("{cluster} --no-auth-warning EXISTS module/traefik2/environment")), "0");
    assert_eq!(m.status(&format!("-k {openapi}")), "200", "the API through the proxy after an update");

    // Exposure, no worse than documented.
    let measured = exposure(&m);
    let mut table = String::from("| unit | exposure |\n| --- | --- |\n");
    for (unit, value) in &measured {
        table.push_str(&format!("| `{unit}` | {value:.1} |\n"));
    }
    eprintln!("--- systemd-analyze security:\n{table}");
    let documented = documented_exposure();
    for (unit, value) in &measured {
        let doc = documented.iter().find(|(u, _)| u == unit).map(|(_, v)| *v);
        let doc = doc.unwrap_or_else(|| panic!("deploy/README.md gives no exposure for {unit}:\n{table}"));
        assert!(*value <= doc + 1e-9, "{unit}: exposure {value} is worse than the documented {doc}:\n{table}");
    }
}
