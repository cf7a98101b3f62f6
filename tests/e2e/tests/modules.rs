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

use e2e::modules::{
    build, build_variant, crash, http_get, page, picture, port_of, run, run_in_background, traces, uid_of, update,
    user_exists, wait_until, write_step,
};
use e2e::{LocalCluster, ok};
use protocol::{AgentId, keys};
use serde_json::Value;

/// The cluster's saga journal (installs and updates under way).
fn sagas() -> String {
    keys::sagas(&AgentId::Cluster)
}

#[test]
fn hello_lifecycle_install_crash_concurrency_update_rollback_remove() {
    let c = LocalCluster::start();
    let reg = c.registry();
    let work = tempfile::tempdir().unwrap();
    let v1 = format!("{reg}/ns8rs/hello:1.0.0");

    // Failures before anything is made, each named.
    let before = picture(&c, "hello");
    let cases = [
        (format!("{reg}/ns8rs/nope:1.0.0"), "cannot read image"),
        (format!("{reg}/ns8rs/hello-server:1.0.0"), "not a module image"),
        ("127.0.0.1:1/ns8rs/hello:1.0.0".to_owned(), "cannot read image 127.0.0.1:1/ns8rs/hello:1.0.0"),
    ];
    for (image, why) in cases {
        let err = run(&c, "add-module", "cluster", serde_json::json!({"image": image, "node": 1})).unwrap_err();
        assert!(err.contains(why), "{image}: {err}");
        assert_eq!(picture(&c, "hello"), before, "{image} left something behind");
    }
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": "nosuchmodule", "node": 1})).unwrap_err();
    assert!(err.contains("not_in_repositories"), "{err}");
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": "hello", "node": 7})).unwrap_err();
    assert!(err.contains("not_alive"), "{err}");

    // A module recorded on a node that is not running: not touched unless forced,
    // and then forgotten by the cluster.
    c.redis(&["HSET", "cluster/module_node", "ghost9", "7"]);
    c.redis(&["HSET", "module/ghost9/environment", "MODULE_ID", "ghost9"]);
    let err = run(&c, "remove-module", "cluster", serde_json::json!({"module_id": "ghost9"})).unwrap_err();
    assert!(err.contains("node/7 is not running") && err.contains("not touched"), "{err}");
    assert_eq!(c.redis(&["HGET", "cluster/module_node", "ghost9"]), "7");
    run(&c, "remove-module", "cluster", serde_json::json!({"module_id": "ghost9", "force": true})).unwrap();
    assert!(traces(&c, "ghost9").is_empty(), "{:?}", traces(&c, "ghost9"));

    // Port exhaustion: another owner holds the whole range.
    c.redis(&["HSET", "node/1/tcp_ports", "squatter", "20000-45000"]);
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": v1, "node": 1, "accept": hello_accept()}))
        .unwrap_err();
    assert!(err.contains("exhausted") && err.contains("nothing of it was left behind"), "{err}");
    assert!(traces(&c, &c.module_id("hello", 1)).is_empty(), "{:?}", traces(&c, &c.module_id("hello", 1)));
    c.redis(&["HDEL", "node/1/tcp_ports", "squatter"]);

    // A module whose create-module fails: the user, files, ports, ACL user and keys
    // made before it are all removed.
    build_variant(&c, work.path(), "hello", "0.9.0", |d| {
        write_step(d, "create-module", "90fail", "#!/bin/sh\necho 'cannot configure: disk on fire' >&2\nexit 5\n");
    });
    let err = run(
        &c,
        "add-module",
        "cluster",
        serde_json::json!({"image": format!("{reg}/ns8rs/hello:0.9.0"), "node": 1, "accept": hello_accept()}),
    )
    .unwrap_err();
    assert!(err.contains("create-module failed (exit code 5): cannot configure: disk on fire"), "{err}");
    assert!(err.contains("nothing of it was left behind"), "{err}");
    assert!(traces(&c, &c.module_id("hello", 2)).is_empty(), "{:?}\n{}", traces(&c, &c.module_id("hello", 2)), c.log());

    // The cluster agent dies in the middle of an install (the module's create-module
    // is running): at its restart the install is undone, as its failure would be.
    build_variant(&c, work.path(), "hello", "0.7.0", |d| {
        write_step(d, "create-module", "10slow", "#!/bin/sh\nsleep 60\n");
    });
    let installer = run_in_background(
        &c,
        "add-module",
        serde_json::json!({"image": format!("{reg}/ns8rs/hello:0.7.0"), "node": 1, "accept": hello_accept()}),
    );
    let hello3 = c.module_id("hello", 3);
    wait_until("the install to reach the agent", || c.redis(&["HEXISTS", "cluster/module_node", &hello3]) == "1");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(user_exists(&hello3) && c.redis(&["HEXISTS", &sagas(), &keys::saga_field("add-module", &hello3)]) == "1");
    c.kill9("cluster-agent");
    let out = installer.join().unwrap();
    assert!(!out.status.success(), "the interrupted install reports failure");
    assert!(String::from_utf8_lossy(&out.stderr).contains("exit code 12"), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the interrupted install to be undone", || {
        traces(&c, &hello3).is_empty()
            && c.redis(&["HEXISTS", &sagas(), &keys::saga_field("add-module", &hello3)]) == "0"
    });

    // Labels are requests: hello's node:reader is not granted unless accepted, and
    // nothing is made meanwhile.
    let before = picture(&c, "hello");
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": "hello", "node": 1})).unwrap_err();
    assert!(err.contains("accept_consent_required") && err.contains("node:reader"), "{err}");
    assert_eq!(picture(&c, "hello"), before, "a refused install leaves nothing");
    // Install by name from the repository: the newest version, 1.0.0.
    let out =
        run(&c, "add-module", "cluster", serde_json::json!({"image": "hello", "node": 1, "accept": hello_accept()}))
            .unwrap();
    let id = out["module_id"].as_str().unwrap().to_owned();
    assert_eq!(id, c.module_id("hello", 4), "ids are never reused: {out}");
    assert_eq!(out["image_url"], v1.as_str());
    let port = port_of(&c, &id);
    assert!((20000..=45000).contains(&port), "{port}");
    assert!(page(port, "/").contains("Hello from an ns8rs module"));
    assert_eq!(page(port, "/version.txt").trim(), format!("{reg}/ns8rs/hello-server:1.0.0"));
    let conf = run(&c, "get-configuration", &format!("module/{id}"), Value::Null).unwrap();
    assert_eq!(conf["url"], format!("http://127.0.0.1:{port}/"));
    assert_eq!(c.redis(&["HGET", "cluster/module_node", &id]), "1");
    assert_eq!(c.redis(&["HGET", "roles/admin", &format!("module/{id}")]), "owner", "cluster owners own it");
    // Its org.nethserver.authorizations label (node:reader) became a grant.
    assert_eq!(c.redis(&["HGET", &format!("roles/module/{id}"), "node/1"]), "reader");
    let listed = run(&c, "list-installed-modules", "cluster", Value::Null).unwrap();
    assert!(listed.to_string().contains(&format!("\"id\":\"{id}\"")), "{listed}");
    // What its actions see with module-service, run as the module.
    let uid = uid_of(&id).unwrap();
    let services = Command::new("runuser")
        .args(["-u", &id, "--", "env", &format!("XDG_RUNTIME_DIR=/run/user/{uid}")])
        .arg(format!("AGENT_INSTALL_DIR=/home/{id}/.config"))
        .arg(c.path().join("bin/module-service"))
        .arg("list")
        .current_dir("/")
        .output()
        .unwrap();
    let services: Value = serde_json::from_str(&ok(&services)).unwrap();
    assert_eq!(
        services,
        serde_json::json!([{"name": "hello-server", "description": "Hello web server", "enabled": true, "state": "running"}])
    );

    // Edit the page, crash everything of the module: it comes back with the edit.
    let volume = PathBuf::from(format!("/home/{id}/.local/share/containers/storage/volumes/www/_data"));
    std::fs::write(volume.join("index.html"), "edited by the test\n").unwrap();
    assert_eq!(page(port, "/"), "edited by the test\n");
    crash(&id);
    assert_eq!(page(port, "/"), "edited by the test\n", "{}", c.log());
    // The whole cluster stops, its modules with it, and comes back.
    ok(&c.xtask(&["down"]));
    assert!(http_get(port, "/").is_none(), "down stops the modules' containers too");
    let left = node_agent::users::live_processes(uid_of(&id).unwrap());
    assert!(left.is_empty(), "down leaves nothing of the module running: {left:?}");
    let up = c.up_args();
    ok(&c.xtask(&up.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(page(port, "/"), "edited by the test\n", "{}", c.log());

    // Five concurrent installs: distinct users and ports, all serving.
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let (redis, bin, image) = (c.redis_address(), c.path().join("bin/api-cli"), v1.clone());
            std::thread::spawn(move || {
                let data = serde_json::json!({"image": image, "node": 1, "accept": hello_accept()}).to_string();
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
        .enumerate()
        .map(|(n, i)| {
            let (redis, bin, i) = (c.redis_address(), c.path().join("bin/api-cli"), i.clone());
            std::thread::spawn(move || {
                // The first keeps its data aside.
                let data = serde_json::json!({"module_id": i, "preserve_data": n == 0}).to_string();
                Command::new(bin)
                    .args(["run", "remove-module", "--data", &data])
                    .env("REDIS_ADDRESS", redis)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let outputs: Vec<String> = removers.into_iter().map(|r| ok(&r.join().unwrap())).collect();
    let kept: Value = serde_json::from_str(&outputs[0]).unwrap();
    let kept = PathBuf::from(kept["preserved"].as_str().unwrap_or_else(|| panic!("{kept}")));
    assert!(kept.starts_with(c.path()), "{}", kept.display());
    let page_kept = std::fs::read_to_string(kept.join("volumes/www/_data/index.html")).unwrap();
    assert!(page_kept.contains("Hello"), "{page_kept}");
    assert!(
        std::fs::read_to_string(kept.join("state/environment")).unwrap().contains(&format!("MODULE_ID={}", ids[0]))
    );
    assert!(!kept.join("state/agent.env").exists(), "no credentials are kept");
    for i in &ids {
        assert!(traces(&c, i).is_empty(), "{i}: {:?}", traces(&c, i));
    }

    // Update to 2.0.0: the new image serves the same, edited data.
    build(&c, "2.0.0", "hello");
    let out = update(&c, "hello", "2.0.0", &[&id]).unwrap();
    assert_eq!(out["instances"][0]["previous_image_url"], v1.as_str(), "{out}");
    assert_eq!(page(port, "/version.txt").trim(), format!("{reg}/ns8rs/hello-server:2.0.0"));
    assert_eq!(page(port, "/"), "edited by the test\n");
    assert_eq!(c.redis(&["HGET", &format!("module/{id}/environment"), "PREV_IMAGE_URL"]), v1);
    // The previous version's image is gone from the module's storage.
    let images = Command::new("runuser")
        .args(["-u", &id, "--", "env", &format!("XDG_RUNTIME_DIR=/run/user/{uid}"), &format!("HOME=/home/{id}")])
        .args(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"])
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(ok(&images).trim(), format!("{reg}/ns8rs/hello-server:2.0.0"));

    // The cluster agent dies while the module's own update steps run: its restart rolls
    // the update back from the node's snapshot.
    build_variant(&c, work.path(), "hello", "2.5.0", |d| {
        write_step(d, "update-module", "10slow", "#!/bin/sh\nsleep 60\n");
    });
    let snapshot = PathBuf::from(format!("/home/{id}/.ns8rs-update-snapshot"));
    let updater = run_in_background(
        &c,
        "update-module",
        serde_json::json!({"module_url": format!("{reg}/ns8rs/hello:2.5.0"), "instances": [id]}),
    );
    let state_env = format!("/home/{id}/.config/state/environment");
    wait_until("the node to swap in 2.5.0", || {
        snapshot.exists() && std::fs::read_to_string(&state_env).unwrap_or_default().contains("hello:2.5.0")
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    c.kill9("cluster-agent");
    assert!(!updater.join().unwrap().status.success());
    wait_until("the interrupted update to be rolled back", || {
        !snapshot.exists() && c.redis(&["HEXISTS", &sagas(), &keys::saga_field("update-module", &id)]) == "0"
    });
    assert_eq!(page(port, "/version.txt").trim(), format!("{reg}/ns8rs/hello-server:2.0.0"));
    assert_eq!(page(port, "/"), "edited by the test\n");
    assert_eq!(
        c.redis(&["HGET", &format!("module/{id}/environment"), "IMAGE_URL"]),
        format!("{reg}/ns8rs/hello:2.0.0")
    );

    // 3.0.0 starts, scribbles on its volume, then its migration fails: the previous
    // image, state and volume come back and serve again.
    build_variant(&c, work.path(), "hello", "3.0.0", |d| {
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
    let err = update(&c, "hello", "3.0.0", &[&id]).unwrap_err();
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
    let out = run(&c, "remove-module", "cluster", serde_json::json!({"module_id": id})).unwrap();
    assert_eq!(out["module_id"], id.as_str());
    assert!(traces(&c, &id).is_empty(), "{:?}", traces(&c, &id));
    assert!(http_get(port, "/").is_none(), "nothing serves on {port} any more");
    let left = node_agent::users::live_processes(uid);
    assert!(left.is_empty(), "processes of uid {uid} remain: {left:?}");
    assert!(!Path::new(&format!("/run/user/{uid}")).exists());
    let err = run(&c, "remove-module", "cluster", serde_json::json!({"module_id": id})).unwrap_err();
    assert!(err.contains("not_installed"), "{err}");

    // A rootful module runs as root in a Podman storage of its own, and goes without a
    // trace too.
    build_variant(&c, work.path(), "hello", "0.8.0", |d| {
        let spec = d.join("module.json");
        let text = std::fs::read_to_string(&spec)
            .unwrap()
            .replace(r#""org.nethserver.rootfull": "0""#, r#""org.nethserver.rootfull": "1""#);
        std::fs::write(&spec, text).unwrap();
    });
    let rootful = format!("{reg}/ns8rs/hello:0.8.0");
    let err =
        run(&c, "add-module", "cluster", serde_json::json!({"image": rootful, "node": 1, "accept": hello_accept()}))
            .unwrap_err();
    assert!(err.contains("accept_consent_required") && err.contains("\"rootfull\":true"), "{err}");
    let accept = serde_json::json!({"authorizations": ["node:reader"], "rootfull": true});
    let out = run(&c, "add-module", "cluster", serde_json::json!({"image": rootful, "node": 1, "accept": accept}))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let rid = out["module_id"].as_str().unwrap().to_owned();
    let rport = port_of(&c, &rid);
    assert!(page(rport, "/").contains("Hello"), "{}", c.log());
    assert!(!user_exists(&rid), "a rootful module has no Unix user");
    let base = c.path().join("rootful").join(&rid);
    let storage = c.path().join("rootful/.containers").join(&rid);
    assert!(base.join("state/environment").is_file() && storage.join("volumes/www").is_dir());
    assert_eq!(c.redis(&["SISMEMBER", &format!("module/{rid}/flags"), "rootfull"]), "1");
    run(&c, "remove-module", "cluster", serde_json::json!({"module_id": rid})).unwrap();
    assert!(traces(&c, &rid).is_empty(), "{:?}", traces(&c, &rid));
    assert!(!base.exists() && !storage.exists(), "its directories are gone");
    assert!(http_get(rport, "/").is_none());
    let marker = format!("/run/nethserver/{rid}");
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker) || c.contains(&storage.display().to_string()))
        .collect();
    assert!(running.is_empty(), "{running:?}");

    // An image asking to own the cluster, another module's owner role and to read the
    // cluster: refused until accepted, installed with it, and never owner of the cluster.
    build_variant(&c, work.path(), "hello", "0.6.0", |d| {
        let spec = d.join("module.json");
        let text = std::fs::read_to_string(&spec).unwrap().replace(
            r#""org.nethserver.authorizations": "node:reader""#,
            r#""org.nethserver.authorizations": "node:reader cluster:owner,reader hello@node:owner""#,
        );
        std::fs::write(&spec, text).unwrap();
    });
    let greedy = format!("{reg}/ns8rs/hello:0.6.0");
    let before = picture(&c, "hello");
    let partly = serde_json::json!({"authorizations": ["node:reader", "cluster:reader"]});
    let err = run(&c, "add-module", "cluster", serde_json::json!({"image": greedy, "node": 1, "accept": partly}))
        .unwrap_err();
    assert!(err.contains("accept_consent_required") && err.contains("hello@node:owner"), "{err}");
    assert!(!err.contains("cluster:owner"), "owner of the cluster is not even offered: {err}");
    assert_eq!(picture(&c, "hello"), before);
    let all =
        serde_json::json!({"authorizations": ["node:reader", "cluster:reader", "hello@node:owner", "cluster:owner"]});
    let out = run(&c, "add-module", "cluster", serde_json::json!({"image": greedy, "node": 1, "accept": all}))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    assert_eq!(out["not_granted"], serde_json::json!(["cluster:owner"]), "{out}");
    let gid = out["module_id"].as_str().unwrap().to_owned();
    assert_eq!(c.redis(&["HGET", &format!("roles/module/{gid}"), "cluster"]), "reader", "never owner of the cluster");
    let listed = run(&c, "list-modules", "cluster", Value::Null).unwrap();
    let hello = listed.as_array().unwrap().iter().find(|m| m["id"] == "hello").unwrap().clone();
    assert_eq!(
        hello["versions"][0]["consent"],
        serde_json::json!({"authorizations": ["node:reader"], "rootfull": false})
    );
    run(&c, "remove-module", "cluster", serde_json::json!({"module_id": gid})).unwrap();
    assert!(traces(&c, &gid).is_empty(), "{:?}", traces(&c, &gid));
}

/// What hello's labels ask for beyond its own agent, accepted.
fn hello_accept() -> Value {
    serde_json::json!({"authorizations": ["node:reader"]})
}
