//! Helpers of the module tests: HTTP probes, actions through api-cli, module
//! variants built into a cluster's repository, and the list of everything a module
//! could leave behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{LocalCluster, ok};

pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.starts_with("HTTP/1.").then_some(reply)
}

/// The body of `path` once it answers 200 (services take a moment to start, more on a
/// loaded 2-core machine: the deadline is generous, a passing test never waits it out).
pub fn page(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(r) = http_get(port, path)
            && r.contains(" 200 ")
        {
            return r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "http://127.0.0.1:{port}{path} did not answer 200");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(c: &LocalCluster, action: &str, agent: &str, data: Value) -> Result<Value, String> {
    let out = c.api_cli(&["run", action, "--agent", agent, "--data", &data.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(serde_json::from_str(&stdout).unwrap_or(Value::String(stdout)))
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

pub fn port_of(c: &LocalCluster, id: &str) -> u16 {
    c.redis(&["HGET", &format!("module/{id}/environment"), "TCP_PORT"]).parse().expect("TCP_PORT")
}

pub fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd").unwrap().lines().any(|l| l.split(':').next() == Some(name))
}

pub fn uid_of(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// Everything that could be left of module `id`, named; empty when nothing is.
pub fn traces(c: &LocalCluster, id: &str) -> Vec<String> {
    let mut t = Vec::new();
    if user_exists(id) {
        t.push(format!("Unix user {id}"));
    }
    for p in [format!("/home/{id}"), format!("/etc/subuid:{id}")] {
        if let Some((file, name)) = p.split_once(':') {
            if std::fs::read_to_string(file).unwrap_or_default().lines().any(|l| l.starts_with(&format!("{name}:"))) {
                t.push(format!("{name} in {file}"));
            }
        } else if Path::new(&p).exists() {
            t.push(p);
        }
    }
    let agent = format!("module/{id}");
    if c.redis(&["ACL", "USERS"]).lines().any(|u| u == agent) {
        t.push(format!("ACL user {agent}"));
    }
    for pattern in [format!("{agent}/*"), format!("task/{agent}/*")] {
        let keys = c.redis(&["--scan", "--pattern", &pattern]);
        if !keys.is_empty() {
            t.push(format!("keys {keys}"));
        }
    }
    for hash in ["cluster/module_node", "cluster/module_uuid", "cluster/tcp_ports_demand", "node/1/tcp_ports"] {
        if c.redis(&["HEXISTS", hash, id]) == "1" {
            t.push(format!("{hash} field {id}"));
        }
    }
    for key in c.redis(&["--scan", "--pattern", "roles/*"]).lines() {
        if c.redis(&["HEXISTS", key, &agent]) == "1" {
            t.push(format!("grant in {key}"));
        }
    }
    if c.redis(&["EXISTS", &format!("roles/{agent}")]) == "1" {
        t.push(format!("grants held by {agent}"));
    }
    if c.redis(&["EXISTS", &format!("cluster/authorizations/{agent}")]) == "1" {
        t.push(format!("authorizations accepted for {agent}"));
    }
    if c.path().join(format!("supervisor.d/50-module-{id}.json")).exists() {
        t.push("supervisor program file".into());
    }
    t
}

/// Users named `prefix*`, supervisor files and module keys: the whole picture for
/// failures that happen before an id is picked.
pub fn picture(c: &LocalCluster, prefix: &str) -> String {
    let users: Vec<String> = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    let files: Vec<String> = std::fs::read_dir(c.path().join("supervisor.d"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    format!(
        "users {users:?} files {files:?} keys {} acl {} ports {}",
        c.redis(&["--scan", "--pattern", "module/*"]),
        c.redis(&["ACL", "USERS"]),
        c.redis(&["HGETALL", "node/1/tcp_ports"])
    )
}

/// A copy of modules/`module` with `edit` applied, built as `version` into the
/// cluster's registry and index.
pub fn build_variant(c: &LocalCluster, work: &Path, module: &str, version: &str, edit: impl FnOnce(&Path)) {
    let dir = work.join(format!("{module}-{version}")).join(module);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    ok(&Command::new("cp").arg("-a").arg(workspace_modules().join(module)).arg(&dir).output().unwrap());
    edit(&dir);
    build(c, version, &dir.display().to_string());
}

pub fn build(c: &LocalCluster, version: &str, module: &str) {
    let out = c.path().join("repository");
    ok(&Command::new(crate::bin("xtask"))
        .args(["images", "--registry", &c.registry(), "--version", version, "--out"])
        .arg(&out)
        .arg(module)
        .output()
        .unwrap());
}

pub fn workspace_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../modules")
}

pub fn write_step(dir: &Path, action: &str, step: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.join("imageroot/actions").join(action);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(step), body).unwrap();
    std::fs::set_permissions(d.join(step), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Kill every process of the module's user: its agent, Podman and containers. The
/// supervisor starts the agent again, which brings the enabled services back.
pub fn crash(id: &str) {
    node_agent::users::kill_all(uid_of(id).expect("the module's user exists"));
}

/// `update-module` of `instances` to `module:version` from the cluster's registry.
pub fn update(c: &LocalCluster, module: &str, version: &str, instances: &[&str]) -> Result<Value, String> {
    let url = format!("{}/ns8rs/{module}:{version}", c.registry());
    run(c, "update-module", "cluster", serde_json::json!({"module_url": url, "instances": instances}))
}

/// Run an action in the background; join for api-cli's output.
pub fn run_in_background(c: &LocalCluster, action: &str, data: Value) -> std::thread::JoinHandle<std::process::Output> {
    let (redis, bin, action) = (c.redis_address(), c.path().join("bin/api-cli"), action.to_owned());
    std::thread::spawn(move || {
        Command::new(bin)
            .args(["run", &action, "--data", &data.to_string()])
            .env("REDIS_ADDRESS", redis)
            .output()
            .expect("run api-cli")
    })
}

/// Wait up to 60 s for `cond`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Write `text` as DokuWiki page `start` of module `id`, from inside its container (the
/// file owned by the container's `www-data`, as the wiki would write it).
pub fn write_wiki_page(id: &str, text: &str) {
    use std::io::Write;
    let put = Command::new("runuser")
        .args(["-u", id, "--", "podman", "exec", "-i", "dokuwiki", "sh", "-c"])
        .arg("cat > /var/lib/dokuwiki/data/pages/start.txt && chown www-data: /var/lib/dokuwiki/data/pages/start.txt")
        .env("XDG_RUNTIME_DIR", format!("/run/user/{}", uid_of(id).expect("the module's uid")))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            child.wait()
        })
        .expect("podman exec");
    assert!(put.success(), "write the page of {id}");
}

/// What a restore must bring back of DokuWiki module `id`: every file of its pages,
/// their history and its settings (volume `acl`), with owner, mode and content hash,
/// as its containers see them (inside its user namespace).
pub fn wiki_fingerprint(id: &str) -> String {
    let uid = uid_of(id).expect("the module's uid");
    let script = "cd \"$HOME/.local/share/containers/storage/volumes\" && \
        find data/_data/pages data/_data/attic acl/_data -printf '%p %u %g %m %s\\n' | sort && \
        find data/_data/pages data/_data/attic acl/_data -type f -exec sha256sum {} + | sort";
    let out = Command::new("runuser")
        .args(["-u", id, "--", "podman", "unshare", "sh", "-c", script])
        .env("XDG_RUNTIME_DIR", format!("/run/user/{uid}"))
        .env("HOME", format!("/home/{id}"))
        .output()
        .expect("podman unshare");
    assert!(out.status.success(), "fingerprint of {id}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("pages/start.txt"), "{text}");
    text
}
