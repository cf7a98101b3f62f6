//! Backups of a real application: DokuWiki installed in rootless Podman, a page
//! edited, then backed up by plans to a local directory and to a real S3 server (moto,
//! signing enforced) through `run-backup`, with the real restic and rclone.
//!
//! What is checked: the snapshot holds the edited page byte for byte, with the owner
//! the container gave it (a sub-uid on the host, the same uid in the snapshot); the
//! module's repository is `<destination>/dokuwiki/<MODULE_UUID>` as in NS8; a second
//! run adds little; retention keeps the plan's count; `list-backups` shows each
//! module's last run (success, snapshot, sizes); the run history keeps every run; the
//! webhook receives the report of each run, success included; a second run of a plan
//! while one runs is refused naming the first; a repository made with another password
//! revoked S3 credentials and a full destination disk fail the run by name, the
//! snapshots intact; an S3 server
//! that went away fails the run with the reason, recorded; restores as a copy and as a replacement bring the
//! same files back (content, owner, mode), a bad snapshot or destination installs
//! nothing; plans run on schedule and stop when disabled; a `kill -9` of the node
//! agent mid-backup fails the run, takes the gateway with it, and the next run clears
//! the stale lock and succeeds; a drill restores and checks health, and a sabotaged
//! repository fails it with the reason; the restic password and the S3 secret are
//! nowhere in Redis in clear.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::LocalCluster;
use e2e::modules::{page, port_of, run, wiki_fingerprint as fingerprint, write_wiki_page};
use serde_json::{Value, json};
use testkit::S3Server;

const PASSWORD: &str = "restic password of the office";
const EDIT: &str = "Minutes of the meeting: kept safe by the nightly backup.";

/// A one-shot-per-connection HTTP server that hands each request body over.
fn webhook() -> (u16, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (port, rx)
}

fn modules(c: &LocalCluster) -> Vec<String> {
    let mut m: Vec<String> = c.redis(&["HKEYS", "cluster/module_node"]).lines().map(str::to_owned).collect();
    m.sort();
    m
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).into_owned()
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse().ok())
}

/// restic as root on a local repository.
fn restic(repo: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("restic")
        .args(["--no-cache", "-r"])
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(c: &LocalCluster, plan: u64) -> Value {
    let list = run(c, "list-backups", "cluster", json!({})).unwrap();
    let b = list["backups"].as_array().unwrap().iter().find(|b| b["id"] == plan).unwrap().clone();
    b["instances"][0]["status"].clone()
}

#[test]
fn dokuwiki_backed_up_to_a_local_disk_and_s3() {
    let c = LocalCluster::start_with(&["dokuwiki"]);
    let install = json!({"image": "dokuwiki", "node": 1, "accept": {"authorizations": ["traefik@node:routeadm"]}});
    let id = run(&c, "add-module", "cluster", install).unwrap()["module_id"].as_str().unwrap().to_owned();
    let agent = format!("module/{id}");
    let port = port_of(&c, &id);
    let conf = json!({"title": "Office Wiki", "admin_user": "boss", "admin_password": "correct horse battery"});
    run(&c, "configure-module", &agent, conf).unwrap();
    // The page, as the wiki stores it: written into its data volume from inside.
    write_wiki_page(&id, EDIT);
    assert!(page(port, "/doku.php?id=start").contains(EDIT));
    let uuid = c.redis(&["HGET", "cluster/module_uuid", &id]);

    // Two destinations and a plan for each; the webhook hears every run.
    let disk = tempfile::tempdir().unwrap();
    let s3 = S3Server::start().expect("moto");
    let local = run(
        &c,
        "add-backup-repository",
        "cluster",
        json!({"provider": "local", "url": format!("local:{}", disk.path().display()), "password": PASSWORD}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key, secret) = s3.key("rw");
    let remote = run(
        &c,
        "add-backup-repository",
        "cluster",
        json!({"provider": "generic-s3", "url": format!("s3:http://{}/office/ns8", s3.host()), "password": PASSWORD,
               "parameters": {"aws_access_key_id": key, "aws_secret_access_key": secret}}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (hook_port, reports) = webhook();
    let plan = |repository: &str| {
        json!({"repository": repository, "schedule": "daily", "retention": 2, "instances": [id], "enabled": true,
               "webhook_url": format!("http://127.0.0.1:{hook_port}/report")})
    };
    let local_plan = run(&c, "add-backup", "cluster", plan(&local)).unwrap().as_u64().unwrap();
    let s3_plan = run(&c, "add-backup", "cluster", plan(&remote)).unwrap().as_u64().unwrap();

    // To the local disk: the page is in the snapshot, byte for byte, with its owner.
    let out =
        run(&c, "run-backup", "cluster", json!({"id": local_plan})).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let first = &out["modules"][0]["status"];
    assert_eq!(first["success"], true, "{out}");
    assert!(first["data_added"].as_u64().unwrap() > 0, "{out}");
    let repo = disk.path().join("dokuwiki").join(&uuid);
    assert!(repo.join("config").is_file(), "NS8's layout: <dest>/dokuwiki/<MODULE_UUID>");
    let dumped = restic(&repo, &["dump", "latest", "/volumes/data/pages/start.txt"]);
    assert_eq!(dumped, EDIT);
    let listing = restic(&repo, &["ls", "-l", "latest", "/volumes/data/pages/start.txt"]);
    let www_data = Command::new("runuser")
        .args(["-u", &id, "--", "podman", "exec", "dokuwiki", "id", "-u", "www-data"])
        .env("XDG_RUNTIME_DIR", format!("/run/user/{}", e2e::modules::uid_of(&id).unwrap()))
        .output()
        .unwrap();
    let www_data = String::from_utf8_lossy(&www_data.stdout).trim().to_owned();
    let owner: Vec<&str> = listing
        .lines()
        .find(|l| l.starts_with('-'))
        .unwrap_or_else(|| panic!("{listing}"))
        .split_whitespace()
        .collect();
    assert_eq!(owner[1], www_data, "the container's owner kept: {listing}");
    assert!(restic(&repo, &["ls", "latest"]).contains("/state/environment"));
    let report = reports.recv_timeout(Duration::from_secs(10)).expect("a webhook report of the success");
    assert_eq!((report["backup_id"].as_u64(), report["success"].as_bool()), (Some(local_plan), Some(true)), "{report}");

    // Again, twice: little added, and the plan keeps two snapshots.
    for _ in 0..2 {
        run(&c, "run-backup", "cluster", json!({"id": local_plan})).unwrap();
    }
    let last = status(&c, local_plan);
    assert_eq!((last["success"].as_bool(), last["snapshots_count"].as_u64()), (Some(true), Some(2)), "{last}");
    assert!(last["data_added"].as_u64().unwrap() < first["data_added"].as_u64().unwrap() / 2, "{last} vs {first}");
    assert!(last["total_size"].as_u64().unwrap() > EDIT.len() as u64, "{last}");
    let history = c.redis(&["LLEN", &format!("cluster/backup_runs/{local_plan}")]);
    assert_eq!(history, "3");

    // To S3; a second run of the plan meanwhile is refused, naming the first.
    let first_run = std::thread::scope(|scope| {
        let handle = scope.spawn(|| run(&c, "run-backup", "cluster", json!({"id": s3_plan})));
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.redis(&["EXISTS", &format!("cluster/backup_lock/{s3_plan}")]) != "1" {
            assert!(Instant::now() < deadline && !handle.is_finished(), "the first run never held its lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        let second = run(&c, "run-backup", "cluster", json!({"id": s3_plan})).unwrap_err();
        assert!(second.contains("backup_running") && second.contains("is running already, as task"), "{second}");
        handle.join().unwrap()
    });
    let out = first_run.unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    assert_eq!(out["modules"][0]["status"]["success"], true, "{out}");
    assert!(status(&c, s3_plan)["snapshot_id"].is_string());

    // Restored from S3 as a copy beside the original: a new instance with its own
    // UUID, the same pages, history and settings, owners and modes.
    let original = fingerprint(&id);
    let restore = |repository: &str, replace: bool| {
        json!({"repository": repository, "path": format!("dokuwiki/{uuid}"), "snapshot": "", "node": 1,
               "replace": replace, "accept": {"authorizations": ["traefik@node:routeadm"]}})
    };
    let copy =
        run(&c, "restore-module", "cluster", restore(&remote, false)).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let copy_id = copy["module_id"].as_str().unwrap().to_owned();
    assert_ne!(copy_id, id);
    assert_ne!(copy["module_uuid"].as_str().unwrap(), uuid, "a copy gets a UUID of its own");
    assert_eq!(fingerprint(&copy_id), original, "the copy's data");
    assert!(page(port_of(&c, &copy_id), "/doku.php?id=start").contains(EDIT));
    assert!(page(port, "/doku.php?id=start").contains(EDIT), "the original still serves");
    let snaps =
        run(&c, "read-backup-snapshots", "cluster", json!({"repository": local, "path": format!("dokuwiki/{uuid}")}))
            .unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    assert!(snaps[0]["id"].as_str().unwrap().len() >= 8 && snaps[0]["timestamp"].as_i64().unwrap() > 0, "{snaps}");
    // Bad input installs nothing: no such snapshot, no such destination.
    let before = modules(&c);
    let mut bad = restore(&local, false);
    bad["snapshot"] = json!("deadbeef");
    let err = run(&c, "restore-module", "cluster", bad).unwrap_err();
    assert!(err.contains("not_a_module_backup"), "{err}");
    let err = run(&c, "restore-module", "cluster", restore("nope", false)).unwrap_err();
    assert!(err.contains("backup_repository_not_found"), "{err}");
    assert_eq!(modules(&c), before);

    // Faults, each named, the snapshots already made left as they were. A repository
    // that another password made (a destination's password changed behind its back):
    let other_disk = tempfile::tempdir().unwrap();
    let foreign = other_disk.path().join("dokuwiki").join(&uuid);
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    let init = Command::new("restic")
        .args(["--no-cache", "init", "-r"])
        .arg(&foreign)
        .env("RESTIC_PASSWORD", "somebody else's password")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let url = format!("local:{}", other_disk.path().display());
    let other = run(&c, "add-backup-repository", "cluster", json!({"provider": "local", "url": url})).unwrap();
    let mut quiet = plan(other["id"].as_str().unwrap());
    quiet.as_object_mut().unwrap().remove("webhook_url");
    let other_plan = run(&c, "add-backup", "cluster", quiet).unwrap().as_u64().unwrap();
    let err = run(&c, "run-backup", "cluster", json!({"id": other_plan})).unwrap_err();
    assert!(err.contains(&id) && err.contains("wrong password"), "{err}");
    assert!(status(&c, other_plan)["error"].as_str().unwrap().contains("wrong password"));
    // A full destination disk (a 300 MiB tmpfs, filled after a first run): the run
    // fails saying so, and the snapshot already there stays readable.
    let small = tempfile::tempdir().unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=300m,mode=0755", "tmpfs"]).arg(small.path()).status();
    assert!(mounted.unwrap().success(), "mount a tmpfs");
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(small.path());
    let url = format!("local:{}", small.path().display());
    let full =
        run(&c, "add-backup-repository", "cluster", json!({"provider": "local", "url": url, "password": PASSWORD}))
            .unwrap();
    let mut quiet_full = plan(full["id"].as_str().unwrap());
    quiet_full.as_object_mut().unwrap().remove("webhook_url");
    let full_plan = run(&c, "add-backup", "cluster", quiet_full).unwrap().as_u64().unwrap();
    run(&c, "run-backup", "cluster", json!({"id": full_plan})).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}/filler", small.path().display()))
        .args(["bs=1M", "status=none"])
        .status();
    let started = Instant::now();
    let err = run(&c, "run-backup", "cluster", json!({"id": full_plan})).unwrap_err();
    assert!(err.contains(&id) && err.contains("the destination is full"), "{err}");
    eprintln!("a full destination failed the run in {:?}", started.elapsed());
    let kept = restic(&small.path().join("dokuwiki").join(&uuid), &["snapshots", "--json", "--no-lock"]);
    assert_eq!(serde_json::from_str::<Value>(&kept).unwrap().as_array().unwrap().len(), 1, "{kept}");
    // S3 credentials revoked (an expired key): refused by the store, named.
    let s3_snapshots = status(&c, s3_plan)["snapshots_count"].clone();
    let mut s3 = s3;
    let (key, secret) = s3.rotate_key("rw").unwrap();
    let err = run(&c, "run-backup", "cluster", json!({"id": s3_plan})).unwrap_err();
    assert!(err.contains(&id) && err.contains("403") && err.contains("refused the credentials"), "{err}");
    assert_eq!(status(&c, s3_plan)["success"], false);
    let alter = json!({"id": remote, "provider": "generic-s3",
                       "parameters": {"aws_access_key_id": key, "aws_secret_access_key": secret}});
    run(&c, "alter-backup-repository", "cluster", alter).unwrap();
    let snaps =
        run(&c, "read-backup-snapshots", "cluster", json!({"repository": remote, "path": format!("dokuwiki/{uuid}")}))
            .unwrap();
    assert_eq!(json!(snaps.as_array().unwrap().len()), s3_snapshots, "the S3 snapshots are intact: {snaps}");

    // The S3 server goes away: the run fails with the reason, and it is recorded.
    s3.stop();
    let err = run(&c, "run-backup", "cluster", json!({"id": s3_plan})).unwrap_err();
    assert!(err.contains(&id) && err.contains("connection refused"), "{err}");
    let failed = status(&c, s3_plan);
    assert_eq!(failed["success"], false, "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("connection refused"), "{failed}");
    let report = std::iter::from_fn(|| reports.recv_timeout(Duration::from_secs(10)).ok())
        .find(|r| {
            r["success"] == false && r["modules"][0]["status"]["error"].to_string().contains("connection refused")
        })
        .expect("a webhook report of the failure");
    assert!(report["modules"][0]["status"]["error"].as_str().unwrap().contains("connection refused"), "{report}");

    // Replaced from the local disk: the original goes, the restored one has its UUID,
    // its data, and its place in the plan.
    let replaced =
        run(&c, "restore-module", "cluster", restore(&local, true)).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let new_id = replaced["module_id"].as_str().unwrap().to_owned();
    assert_eq!(replaced["module_uuid"].as_str().unwrap(), uuid, "the replacement keeps the UUID");
    assert!(!modules(&c).contains(&id) && !e2e::modules::user_exists(&id), "the original is removed");
    assert_eq!(fingerprint(&new_id), original, "the replacement's data");
    assert!(page(port_of(&c, &new_id), "/doku.php?id=start").contains(EDIT));
    assert_eq!(c.redis(&["HGET", &format!("cluster/backup/{local_plan}"), "instances"]), new_id, "the plan re-linked");

    // On schedule: every 5 seconds, runs by themselves; disabled, they stop.
    let mut every = plan(&local);
    every["schedule"] = json!("*-*-* *:*:0/5");
    every["instances"] = json!([new_id]);
    let timed = run(&c, "add-backup", "cluster", every.clone()).unwrap().as_u64().unwrap();
    let runs_key = format!("cluster/backup_runs/{timed}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.redis(&["LLEN", &runs_key]).parse::<u32>().unwrap() < 2 {
        assert!(Instant::now() < deadline, "no two scheduled runs within 60 s\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status(&c, timed)["success"], true);
    every["id"] = json!(timed);
    every["name"] = json!("Paused");
    every["enabled"] = json!(false);
    run(&c, "alter-backup", "cluster", every).unwrap();
    // A run queued before the change ends first.
    std::thread::sleep(Duration::from_secs(1));
    while c.redis(&["EXISTS", &format!("cluster/backup_lock/{timed}")]) == "1" {
        std::thread::sleep(Duration::from_millis(100));
    }
    let settled = c.redis(&["LLEN", &runs_key]);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(c.redis(&["LLEN", &runs_key]), settled, "a disabled plan does not run");

    // The node agent killed -9 in the middle of a backup: the run fails and says so, the
    // gateway dies with the agent, and once the backup's own restic is killed too (its
    // lock left behind), the next run clears that stale lock and succeeds.
    // The node agent's gateways: `rclone serve restic --append-only` children of it
    // (restic's own `rclone:` backend runs `serve restic --stdio`).
    let node_agent = || {
        let exe = c.path().join("bin/node-agent").display().to_string();
        pids().into_iter().find(|pid| cmdline(*pid).starts_with(&exe))
    };
    let any_gateway =
        || pids().into_iter().filter(|pid| cmdline(*pid).contains("serve\0restic\0--append-only")).count();
    let gateways = || {
        let parent = node_agent();
        pids()
            .into_iter()
            .filter(|pid| cmdline(*pid).contains("serve\0restic\0--append-only"))
            .filter(|pid| parent.is_some() && parent_of(*pid) == parent)
            .count()
    };
    let killed = std::thread::scope(|scope| {
        let handle = scope.spawn(|| run(&c, "run-backup", "cluster", json!({"id": local_plan})));
        let deadline = Instant::now() + Duration::from_secs(60);
        while gateways() == 0 {
            assert!(Instant::now() < deadline && !handle.is_finished(), "no gateway seen\n{}", c.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        c.kill9("node-agent");
        handle.join().unwrap()
    });
    let err = match killed {
        Err(e) => e,
        Ok(out) => panic!("a run whose node agent was killed succeeded: {out}\n{}", c.log()),
    };
    assert!(err.contains(&new_id), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while any_gateway() > 0 {
        let left: Vec<String> = pids()
            .into_iter()
            .filter(|pid| cmdline(*pid).contains("serve\0restic\0--append-only"))
            .map(|pid| format!("{pid} (parent {:?}): {}", parent_of(pid), cmdline(pid).replace('\0', " ")))
            .collect();
        assert!(Instant::now() < deadline, "the gateway outlived its node agent: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("pkill").args(["-9", "-u", &new_id, "restic"]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        match run(&c, "run-backup", "cluster", json!({"id": local_plan})) {
            Ok(out) => break out,
            Err(e) if Instant::now() < deadline && e.contains("not running") => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Err(e) => panic!("the run after the crash: {e}\n{}", c.log()),
        }
    };
    assert_eq!(again["modules"][0]["status"]["success"], true, "{again}");
    assert_eq!(std::fs::read_dir(repo.join("locks")).unwrap().count(), 0, "no lock left in the repository");

    // A drill: the repository checked, the latest snapshot restored beside, its health
    // checked, the instance gone; the proof kept in list-backups.
    let before = modules(&c);
    let drill =
        run(&c, "run-drill", "cluster", json!({"id": local_plan})).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let report = &drill["modules"][0];
    assert_eq!(
        (report["success"].as_bool(), report["health"]["healthy"].as_bool()),
        (Some(true), Some(true)),
        "{drill}"
    );
    assert_eq!(report["health"]["title"], "Office Wiki", "{drill}");
    let instance = report["instance"].as_str().unwrap().to_owned();
    assert!(instance != new_id && !e2e::modules::user_exists(&instance), "the drill's instance is removed: {drill}");
    assert_eq!(modules(&c), before);
    let list = run(&c, "list-backups", "cluster", json!({})).unwrap();
    let item = &list["backups"].as_array().unwrap().iter().find(|b| b["id"] == local_plan).unwrap()["instances"][0];
    assert_eq!(item["last_good_drill"]["instance"], instance.as_str(), "{item}");
    // Sabotaged: every data pack of the repository altered. The drill fails, says why,
    // leaves no instance, and the last good drill is still the one before.
    for pack in
        std::fs::read_dir(repo.join("data")).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
    {
        let path = pack.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let err = run(&c, "run-drill", "cluster", json!({"id": local_plan})).unwrap_err();
    assert!(err.contains("the repository check failed"), "{err}");
    assert_eq!(modules(&c), before, "a failed drill leaves no instance");
    let list = run(&c, "list-backups", "cluster", json!({})).unwrap();
    let item = &list["backups"].as_array().unwrap().iter().find(|b| b["id"] == local_plan).unwrap()["instances"][0];
    assert_eq!(item["last_drill"]["success"], false, "{item}");
    assert!(item["last_drill"]["error"].as_str().unwrap().contains("check failed"), "{item}");
    assert_eq!(item["last_good_drill"]["instance"], instance.as_str(), "{item}");

    // The restic password is nowhere in Redis in clear.
    for key in c.redis(&["--scan"]).lines() {
        let kind = c.redis(&["TYPE", key]);
        let value = match kind.as_str() {
            "string" => c.redis(&["GET", key]),
            "hash" => c.redis(&["HGETALL", key]),
            "list" => c.redis(&["LRANGE", key, "0", "-1"]),
            _ => continue,
        };
        assert!(!value.contains(PASSWORD), "{key} holds the restic password");
        assert!(!value.contains(&secret), "{key} holds the S3 secret");
    }
}
