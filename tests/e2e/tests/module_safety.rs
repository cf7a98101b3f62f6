//! A module's own user, as an attacker, against root: the node acts only on modules it
//! made; the module's credentials are not in its home; symlinks it plants in its own
//! tree (agent.env, the install dir's entries, its file list, its volumes, its state)
//! change nothing outside it through restart, update, rollback and removal; `kill -9`
//! of the node agent at each stage of an update and of a removal ends with the old or
//! the new version serving, never half; an update and a removal of one module never
//! run at once.
//!
//! One test, in order, on one local cluster (module ids come from its sequence, Unix
//! user names are machine-wide).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::modules::{
    build, build_variant, crash, page, port_of, run, run_in_background, traces, uid_of, update, wait_until, write_step,
};
use e2e::{LocalCluster, ok};
use serde_json::{Value, json};

fn accept() -> Value {
    json!({"authorizations": ["node:reader"]})
}

/// Hashes (content, mode, owner) of every file under `dirs`, and of the account files.
fn fingerprint(dirs: &[&Path]) -> BTreeMap<String, String> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut all = BTreeMap::new();
    let mut visit = vec![PathBuf::from("/etc/passwd"), PathBuf::from("/etc/shadow"), PathBuf::from("/etc/group")];
    visit.extend(dirs.iter().map(|d| d.to_path_buf()));
    while let Some(p) = visit.pop() {
        let Ok(md) = p.symlink_metadata() else {
            all.insert(p.display().to_string(), "missing".into());
            continue;
        };
        let mut what = format!("{:o} {}:{}", md.mode(), md.uid(), md.gid());
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                visit.push(e.path());
            }
        } else if md.is_file() {
            let digest = sha2::Sha256::digest(std::fs::read(&p).unwrap());
            what.push(' ');
            what.extend(digest.iter().map(|b| format!("{b:02x}")));
        }
        all.insert(p.display().to_string(), what);
    }
    all
}

/// The entries of `full` under `dir`.
fn fingerprint_of(full: &BTreeMap<String, String>, dir: &Path) -> BTreeMap<String, String> {
    let prefix = dir.display().to_string();
    full.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Run `script` as the module's user.
fn as_module(id: &str, script: &str) -> String {
    let uid = uid_of(id).unwrap();
    ok(&Command::new("runuser")
        .args(["-u", id, "--", "env", &format!("XDG_RUNTIME_DIR=/run/user/{uid}"), &format!("HOME=/home/{id}")])
        .args(["sh", "-c", script])
        .current_dir("/")
        .output()
        .unwrap())
}

fn version(port: u16) -> String {
    page(port, "/version.txt").trim().rsplit(':').next().unwrap_or("").to_owned()
}

/// Add `line` to (or, with `None`, remove the failpoint from) the node agent's
/// environment file, read by the supervisor at each start.
fn set_failpoint(c: &LocalCluster, point: Option<&str>) {
    let file = c.path().join("node/state/agent.env");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> =
        text.lines().filter(|l| !l.starts_with("NS8RS_FAILPOINT=")).map(str::to_owned).collect();
    if let Some(p) = point {
        lines.push(format!("NS8RS_FAILPOINT={p}"));
    }
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
}

fn node_log(c: &LocalCluster) -> String {
    std::fs::read_to_string(c.path().join("log/node-agent.log")).unwrap_or_default()
}

/// Restart the node agent (the supervisor starts it again) and wait until it answers.
fn restart_node(c: &LocalCluster) {
    c.kill9("node-agent");
    wait_until("the node agent to be back", || run(c, "get-info", "node/1", Value::Null).is_ok());
}

#[test]
fn a_module_gets_nothing_from_root_and_crashes_never_leave_it_half_updated() {
    let c = LocalCluster::start();
    let reg = c.registry();
    let work = tempfile::tempdir().unwrap();

    // Only modules the node made: a person's account with a module-like name is
    // refused by every node action, before anything is touched.
    let _ = Command::new("userdel").args(["-r", "person7"]).output();
    ok(&Command::new("useradd").args(["--create-home", "person7"]).output().unwrap());
    std::fs::write("/home/person7/notes", "mine\n").unwrap();
    for (action, data) in [
        ("remove-module", json!({"module_id": "person7"})),
        (
            "update-module",
            json!({"module_id": "person7", "image_url": format!("{reg}/ns8rs/hello:1.0.0"), "environment": {}}),
        ),
        ("finish-update", json!({"module_id": "person7", "outcome": "rollback"})),
    ] {
        let err = run(&c, action, "node/1", data).unwrap_err();
        assert!(err.contains("not_a_module_of_this_node") || err.contains("not_on_this_node"), "{action}: {err}");
    }
    assert_eq!(std::fs::read_to_string("/home/person7/notes").unwrap(), "mine\n");
    ok(&Command::new("userdel").args(["-r", "person7"]).output().unwrap());

    // A root-owned sentinel outside every module's tree, which symlinks point at.
    let outside = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sentinel = outside.path().join("sentinel");
    std::fs::create_dir_all(sentinel.join("www/_data")).unwrap();
    std::fs::write(sentinel.join("www/_data/index.html"), "root's\n").unwrap();
    std::fs::write(sentinel.join("10x"), "root's\n").unwrap();
    let before = fingerprint(&[outside.path(), &c.path().join("node/state")]);

    let out = run(&c, "add-module", "cluster", json!({"image": "hello", "node": 1, "accept": accept()})).unwrap();
    let id = out["module_id"].as_str().unwrap().to_owned();
    let port = port_of(&c, &id);
    assert_eq!(version(port), "1.0.0");

    // Its credentials are the node's to keep: not in its home, and the agent's program
    // reads them from the node's root-only record.
    let home = PathBuf::from(format!("/home/{id}"));
    assert!(!home.join(".config/state/agent.env").exists());
    let program: Value = serde_json::from_str(
        &std::fs::read_to_string(c.path().join(format!("supervisor.d/50-module-{id}.json"))).unwrap(),
    )
    .unwrap();
    let creds = PathBuf::from(program["env_files"][0].as_str().unwrap());
    assert!(creds.starts_with(c.path().join("node/state/modules")), "{}", creds.display());
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&creds).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o600));

    // Its agent.env pointing at the node's credentials, then a crash: the agent comes
    // back as itself, never as node/1.
    as_module(
        &id,
        &format!("ln -sf {} $HOME/.config/state/agent.env", c.path().join("node/state/agent.env").display()),
    );
    crash(&id);
    wait_until("the module agent to be back", || {
        c.redis(&["CLIENT", "LIST"])
            .lines()
            .any(|l| l.contains(&format!("name=module/{id} ")) && l.contains(&format!("user=module/{id} ")))
    });
    assert!(
        !c.redis(&["CLIENT", "LIST"])
            .lines()
            .any(|l| l.contains(&format!("name=module/{id} ")) && l.contains("user=node/1"))
    );

    // Its install dir's entries and file list turned against root, then an update: the
    // list's `..` is refused with nothing changed; with it repaired, the update swaps
    // the planted symlink away (as the module) and the sentinel is untouched.
    let list = home.join(".config/.imageroot.lst");
    let good_list = std::fs::read_to_string(&list).unwrap();
    as_module(&id, "printf '../../../etc\\n' >> $HOME/.config/.imageroot.lst");
    build(&c, "2.0.0", "hello");
    let err = update(&c, "hello", "2.0.0", &[&id]).unwrap_err();
    assert!(err.contains(".imageroot.lst") && err.contains("is not the name of one entry"), "{err}");
    assert_eq!(version(port), "1.0.0", "the refused update left it serving");
    as_module(&id, &format!("printf '{}' > $HOME/.config/.imageroot.lst", good_list.replace('\n', "\\n")));
    as_module(&id, &format!("rm -rf $HOME/.config/actions && ln -s {} $HOME/.config/actions", sentinel.display()));
    let out = update(&c, "hello", "2.0.0", &[&id]).unwrap();
    assert_eq!(out["instances"][0]["module_id"], id.as_str());
    assert_eq!(version(port), "2.0.0");

    // Its volumes dir a symlink to the sentinel, and an update that fails: snapshot and
    // rollback run as the module, which cannot touch root's files.
    build_variant(&c, work.path(), "hello", "2.1.0", |d| {
        write_step(d, "update-module", "10fail", "#!/bin/sh\necho 'migration failed' >&2\nexit 2\n");
    });
    let volumes = home.join(".local/share/containers/storage/volumes");
    as_module(&id, &format!("mv {v} {v}.real && ln -s {} {v}", sentinel.display(), v = volumes.display()));
    let err = update(&c, "hello", "2.1.0", &[&id]).unwrap_err();
    // The module's own hands cannot put the snapshot back into root's files: the
    // rollback fails, and stays pending.
    assert!(err.contains("migration failed") && err.contains("rollback failed"), "{err}");
    // (The account files changed with the module's user; they are compared at the end.)
    assert_eq!(
        fingerprint_of(&fingerprint(&[outside.path()]), outside.path()),
        fingerprint_of(&before, outside.path())
    );
    let op = c.path().join(format!("node/state/modules/{id}/operation.json"));
    assert!(std::fs::read_to_string(&op).unwrap().contains("rollback"));
    // Repaired by the module, the pending rollback ends at the node's next start.
    as_module(&id, &format!("rm -f {v} && mv {v}.real {v}", v = volumes.display()));
    restart_node(&c);
    wait_until("the pending rollback to end", || !op.exists());
    wait_until("the module to serve again", || e2e::modules::http_get(port, "/").is_some());
    assert_eq!(version(port), "2.0.0", "{}", c.log());
    // The snapshot's place a symlink to the sentinel before another failing update.
    as_module(&id, &format!("ln -s {} $HOME/.ns8rs-update-snapshot", sentinel.display()));
    let err = update(&c, "hello", "2.1.0", &[&id]).unwrap_err();
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(version(port), "2.0.0", "{}", c.log());

    // kill -9 of the node agent at each stage of an update: it ends on a version that
    // serves, the old one before the commit and the new one from it.
    build_variant(&c, work.path(), "hello", "2.2.0", |_| {});
    for (point, to, expect) in [
        ("update:stopping", "2.2.0", "2.0.0"),
        ("update:snapshot", "2.2.0", "2.0.0"),
        ("update:swap", "2.2.0", "2.0.0"),
        ("update:commit", "2.2.0", "2.2.0"),
        // 2.1.0's migration fails: the crash comes while the rollback puts 2.0.0 back.
        ("update:rollback", "2.1.0", "2.0.0"),
    ] {
        let from = version(port);
        eprintln!("crash at {point}: from {from}, at {:?}", std::time::SystemTime::now());
        set_failpoint(&c, Some(point));
        restart_node(&c);
        let updater = run_in_background(
            &c,
            "update-module",
            json!({"module_url": format!("{reg}/ns8rs/hello:{to}"), "instances": [id]}),
        );
        wait_until(&format!("the node agent to reach {point}"), || {
            node_log(&c).contains(&format!("failpoint {point} reached"))
        });
        set_failpoint(&c, None);
        restart_node(&c);
        let _ = updater.join().unwrap();
        wait_until(&format!("{id} to serve after a crash at {point}"), || {
            e2e::modules::http_get(port, "/version.txt").is_some()
                && !c.path().join(format!("node/state/modules/{id}/operation.json")).exists()
        });
        let expected = if expect == "2.2.0" { "2.2.0" } else { from.as_str() };
        assert_eq!(version(port), expected, "after a crash at {point}\n{}", c.log());
        if expect == "2.2.0" {
            // Back to 2.0.0 for the next round.
            update(&c, "hello", "2.0.0", &[&id]).unwrap();
        }
    }

    // An update and a removal of one module never run at once.
    build_variant(&c, work.path(), "hello", "2.3.0", |d| {
        write_step(d, "update-module", "10slow", "#!/bin/sh\nsleep 5\n");
    });
    let updater = run_in_background(
        &c,
        "update-module",
        json!({"module_url": format!("{reg}/ns8rs/hello:2.3.0"), "instances": [id]}),
    );
    wait_until("the update to hold the module", || c.redis(&["HEXISTS", "cluster/module_locks", &id]) == "1");
    let err = run(&c, "remove-module", "cluster", json!({"module_id": id})).unwrap_err();
    assert!(err.contains(&format!("module {id} is busy with task")), "{err}");
    assert!(updater.join().unwrap().status.success());
    assert_eq!(version(port), "2.3.0");

    // Its state dir a symlink: a removal that keeps data refuses to copy through it and
    // removes nothing; kill -9 in the middle of the removal that follows: the node's
    // restart finishes it.
    as_module(
        &id,
        &format!("mv $HOME/.config/state $HOME/.config/state.real && ln -s {} $HOME/.config/state", sentinel.display()),
    );
    let err = run(&c, "remove-module", "cluster", json!({"module_id": id, "preserve_data": true})).unwrap_err();
    assert!(err.contains("not a real directory"), "{err}");
    assert!(Path::new(&format!("/home/{id}")).exists());
    set_failpoint(&c, Some("remove:stopped"));
    restart_node(&c);
    let remover = run_in_background(&c, "remove-module", json!({"module_id": id}));
    wait_until("the removal to reach its failpoint", || node_log(&c).contains("failpoint remove:stopped reached"));
    set_failpoint(&c, None);
    restart_node(&c);
    let _ = remover.join().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while Path::new(&format!("/home/{id}")).exists() {
        assert!(std::time::Instant::now() < deadline, "the node did not finish the removal:\n{}", c.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The cluster's removal was cut short with the node: run again, it forgets the rest.
    let _ = run(&c, "remove-module", "cluster", json!({"module_id": id}));
    assert!(traces(&c, &id).is_empty(), "{:?}", traces(&c, &id));

    let after = fingerprint(&[outside.path(), &c.path().join("node/state")]);
    let changed: Vec<String> = before
        .iter()
        .filter(|(k, v)| !k.contains("/modules/") && !k.contains("agent.env") && after.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", after.get(k)))
        .collect();
    assert!(changed.is_empty(), "outside the module's tree:\n{}", changed.join("\n"));
}
