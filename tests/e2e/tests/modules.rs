//! The module lifecycle on a real local cluster (xtask up: supervisor, Redis, registry,
//! agents), real rootless Podman and the `hello` module: failed installs leave
//! nothing, an install serves its page on its port, survives a crash of everything the
//! module runs, five concurrent installs get their own users and ports, an update
//! keeps the data, a failing update rolls back, and a removal leaves nothing.
//!
//! One test, in order: module ids come from one cluster's sequence, and Unix user
//! names are machine-wide.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{LocalCluster, ok};
use serde_json::Value;

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.starts_with("HTTP/1.").then_some(reply)
}

/// The body of `path` once it answers 200 (services take a moment to start).
fn page(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
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

fn run(c: &LocalCluster, action: &str, agent: &str, data: Value) -> Result<Value, String> {
    let out = c.api_cli(&["run", action, "--agent", agent, "--data", &data.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(serde_json::from_str(&stdout).unwrap_or(Value::String(stdout)))
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn port_of(c: &LocalCluster, id: &str) -> u16 {
    c.redis(&["HGET", &format!("module/{id}/environment"), "TCP_PORT"]).parse().expect("TCP_PORT")
}

fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd").unwrap().lines().any(|l| l.split(':').next() == Some(name))
}

fn uid_of(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// Everything that could be left of module `id`, named; empty when nothing is.
fn traces(c: &LocalCluster, id: &str) -> Vec<String> {
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
    if c.path().join(format!("supervisor.d/50-module-{id}.json")).exists() {
        t.push("supervisor program file".into());
    }
    t
}

/// Module users, supervisor files and module keys: the whole picture for failures
/// that happen before an id is picked.
fn picture(c: &LocalCluster) -> String {
    let users: Vec<String> = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("hello"))
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

/// A copy of modules/hello with `edit` applied, built as `version` into the cluster's
/// registry and index.
fn build_variant(c: &LocalCluster, work: &Path, name: &str, version: &str, edit: impl FnOnce(&Path)) {
    let dir = work.join(name).join("hello");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    ok(&Command::new("cp").arg("-a").arg(e2e_modules().join("hello")).arg(&dir).output().unwrap());
    edit(&dir);
    build(c, version, &dir.display().to_string());
}

fn build(c: &LocalCluster, version: &str, module: &str) {
    let out = c.path().join("repository");
    ok(&Command::new(e2e::bin("xtask"))
        .args(["images", "--registry", &c.registry(), "--version", version, "--out"])
        .arg(&out)
        .arg(module)
        .output()
        .unwrap());
}

fn e2e_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../modules")
}

fn write_step(dir: &Path, action: &str, step: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.join("imageroot/actions").join(action);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(step), body).unwrap();
    std::fs::set_permissions(d.join(step), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Kill every process of the module's user: its agent, Podman and containers. The
/// supervisor starts the agent again, which brings the enabled services back.
fn crash(id: &str) {
    let uid = uid_of(id).unwrap();
    for _ in 0..20 {
        let _ = Command::new("pkill").args(["-KILL", "-U", &uid.to_string()]).status();
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hello_lifecycle_install_crash_concurrency_update_rollback_remove() {
    let c = LocalCluster::start();
    let reg = c.registry();
    let work = tempfile::tempdir().unwrap();
    let v1 = format!("{reg}/ns8rs/hello:1.0.0");

    // Failures before anything is made, each named.
    let before = picture(&c);
    let cases = [
        (format!("{reg}/ns8rs/nope:1.0.0"), "cannot read image"),
        (format!("{reg}/ns8rs/hello-server:1.0.0"), "not a module image"),
        ("127.0.0.1:1/ns8rs/hello:1.0.0".to_owned(), "cannot read image 127.0.0.1:1/ns8rs/hello:1.0.0"),
    ];
    for (image, why) in cases {
        let err = run(&c, "add-module", "cluster", serde_json::json!({"image": image, "node": 1})).unwrap_err();
        assert!(err.contains(why), "{image}: {err}");
        assert_eq!(picture(&c), before, "{image} left something behind");
    }
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": "nosuchmodule", "node": 1})).unwrap_err();
    assert!(err.contains("not_in_repositories"), "{err}");
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": "hello", "node": 7})).unwrap_err();
    assert!(err.contains("not_alive"), "{err}");

    // Port exhaustion: another owner holds the whole range.
    c.redis(&["HSET", "node/1/tcp_ports", "squatter", "20000-45000"]);
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": v1, "node": 1})).unwrap_err();
    assert!(err.contains("exhausted") && err.contains("nothing of it was left behind"), "{err}");
    assert!(traces(&c, "hello1").is_empty(), "{:?}", traces(&c, "hello1"));
    c.redis(&["HDEL", "node/1/tcp_ports", "squatter"]);

    // A module whose create-module fails: the user, files, ports, ACL user and keys
    // made before it are all removed.
    build_variant(&c, work.path(), "badcreate", "0.9.0", |d| {
        write_step(d, "create-module", "90fail", "#!/bin/sh\necho 'cannot configure: disk on fire' >&2\nexit 5\n");
    });
    let err =
        run(&c, "add-module", "cluster", serde_json::json!({"image": format!("{reg}/ns8rs/hello:0.9.0"), "node": 1}))
            .unwrap_err();
    assert!(err.contains("create-module failed (exit code 5): cannot configure: disk on fire"), "{err}");
    assert!(err.contains("nothing of it was left behind"), "{err}");
    assert!(traces(&c, "hello2").is_empty(), "{:?}\n{}", traces(&c, "hello2"), c.log());

    // Install by name from the repository: the newest version, 1.0.0.
    let out = run(&c, "add-module", "cluster", serde_json::json!({"image": "hello", "node": 1})).unwrap();
    let id = out["module_id"].as_str().unwrap().to_owned();
    assert_eq!(id, "hello3", "ids are never reused: {out}");
    assert_eq!(out["image_url"], v1.as_str());
    let port = port_of(&c, &id);
    assert!((20000..=45000).contains(&port), "{port}");
    assert!(page(port, "/").contains("Hello from an ns8rs module"));
    assert_eq!(page(port, "/version.txt").trim(), format!("{reg}/ns8rs/hello-server:1.0.0"));
    let conf = run(&c, "get-configuration", &format!("module/{id}"), Value::Null).unwrap();
    assert_eq!(conf["url"], format!("http://127.0.0.1:{port}/"));
    assert_eq!(c.redis(&["HGET", "cluster/module_node", &id]), "1");
    assert_eq!(c.redis(&["HGET", "roles/admin", &format!("module/{id}")]), "owner", "cluster owners own it");
    let listed = run(&c, "list-installed-modules", "cluster", Value::Null).unwrap();
    assert!(listed.to_string().contains(&format!("\"id\":\"{id}\"")), "{listed}");

    // Edit the page, crash everything of the module: it comes back with the edit.
    let volume = PathBuf::from(format!("/home/{id}/.local/share/containers/storage/volumes/www/_data"));
    std::fs::write(volume.join("index.html"), "edited by the test\n").unwrap();
    assert_eq!(page(port, "/"), "edited by the test\n");
    crash(&id);
    assert_eq!(page(port, "/"), "edited by the test\n", "{}", c.log());

    // Five concurrent installs: distinct users and ports, all serving.
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let (redis, bin, image) = (c.redis_address(), c.path().join("bin/api-cli"), v1.clone());
            std::thread::spawn(move || {
                let data = serde_json::json!({"image": image, "node": 1}).to_string();
                let out = Command::new(bin)
                    .args(["run", "add-module", "--data", &data])
                    .env("REDIS_ADDRESS", redis)
                    .output()
                    .unwrap();
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
                    panic!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
                });
                v["module_id"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let ids: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = ids.iter().map(|i| port_of(&c, i)).collect();
    let mut uids: Vec<u32> = ids.iter().map(|i| uid_of(i).unwrap()).collect();
    for (i, p) in ids.iter().zip(&ports) {
        assert!(page(*p, "/").contains("Hello"), "{i} on {p}");
    }
    ports.push(port);
    uids.push(uid_of(&id).unwrap());
    ports.sort();
    ports.dedup();
    uids.sort();
    uids.dedup();
    assert_eq!((ports.len(), uids.len()), (6, 6), "{ids:?}: ports {ports:?} uids {uids:?}");
    let removers: Vec<_> = ids
        .iter()
        .map(|i| {
            let (redis, bin, i) = (c.redis_address(), c.path().join("bin/api-cli"), i.clone());
            std::thread::spawn(move || {
                let data = serde_json::json!({"module_id": i}).to_string();
                Command::new(bin)
                    .args(["run", "remove-module", "--data", &data])
                    .env("REDIS_ADDRESS", redis)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for r in removers {
        ok(&r.join().unwrap());
    }
    for i in &ids {
        assert!(traces(&c, i).is_empty(), "{i}: {:?}", traces(&c, i));
    }

    // Update to 2.0.0: the new image serves the same, edited data.
    build(&c, "2.0.0", "hello");
    let out = run(
        &c,
        "update-module",
        "cluster",
        serde_json::json!({"module_url": format!("{reg}/ns8rs/hello:2.0.0"), "instances": [id]}),
    )
    .unwrap();
    assert_eq!(out["instances"][0]["previous_image_url"], v1.as_str(), "{out}");
    assert_eq!(page(port, "/version.txt").trim(), format!("{reg}/ns8rs/hello-server:2.0.0"));
    assert_eq!(page(port, "/"), "edited by the test\n");
    assert_eq!(c.redis(&["HGET", &format!("module/{id}/environment"), "PREV_IMAGE_URL"]), v1);

    // 3.0.0 starts, scribbles on its volume, then its migration fails: the previous
    // image, state and volume come back and serve again.
    build_variant(&c, work.path(), "badupdate", "3.0.0", |d| {
        let unit = d.join("imageroot/services/hello-server.container");
        let text = std::fs::read_to_string(&unit)
            .unwrap()
            .replace("cp -n /www/index.html /data/;", "echo 3 > /data/scribble.txt;");
        std::fs::write(&unit, text).unwrap();
        write_step(
            d,
            "update-module",
            "60migrate",
            "#!/bin/sh\nsleep 1\necho 'migration failed on purpose' >&2\nexit 1\n",
        );
    });
    let err = run(
        &c,
        "update-module",
        "cluster",
        serde_json::json!({"module_url": format!("{reg}/ns8rs/hello:3.0.0"), "instances": [id]}),
    )
    .unwrap_err();
    assert!(err.contains("migration failed on purpose") && err.contains("rolled back to"), "{err}\n{}", c.log());
    assert_eq!(page(port, "/version.txt").trim(), format!("{reg}/ns8rs/hello-server:2.0.0"));
    assert_eq!(page(port, "/"), "edited by the test\n");
    assert!(http_get(port, "/scribble.txt").unwrap().contains(" 404 "), "the volume was restored");
    assert_eq!(
        c.redis(&["HGET", &format!("module/{id}/environment"), "IMAGE_URL"]),
        format!("{reg}/ns8rs/hello:2.0.0")
    );
    let env = std::fs::read_to_string(format!("/home/{id}/.config/state/environment")).unwrap();
    assert!(env.contains(&format!("IMAGE_URL={reg}/ns8rs/hello:2.0.0\n")), "{env}");

    // Removal leaves nothing: user, home, containers, volume, port, ACL user, keys.
    let uid = uid_of(&id).unwrap();
    let out = run(&c, "remove-module", "cluster", serde_json::json!({"module_id": id})).unwrap();
    assert_eq!(out["module_id"], id.as_str());
    assert!(traces(&c, &id).is_empty(), "{:?}", traces(&c, &id));
    assert!(http_get(port, "/").is_none(), "nothing serves on {port} any more");
    let left = Command::new("pgrep").args(["-U", &uid.to_string()]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes of uid {uid} remain");
    assert!(!Path::new(&format!("/run/user/{uid}")).exists());
    let err = run(&c, "remove-module", "cluster", serde_json::json!({"module_id": id})).unwrap_err();
    assert!(err.contains("not_installed"), "{err}");
}
