//! Backup destinations end to end: the real cluster agent and node agent on a private
//! Redis, a local directory and a real S3 server (moto, signing and IAM policies
//! enforced), checked with the real rclone before anything is saved.
//!
//! What is checked: a destination is added, listed without its secrets, renamed,
//! re-credentialed (an empty secret keeps the stored one) and removed; the restic
//! password and the S3 secret are nowhere in Redis in clear (sealed, and masked in
//! every task's stored context); each refusal names its cause (a duplicate, a bad
//! URL, missing or extra parameters, a path that does not exist, a symlink, a path
//! others may change, a full disk, a wrong secret, a read-only key, an endpoint that
//! does not answer, another provider, an unknown id) and leaves the stored
//! destinations as they were; a module's Redis user cannot queue a destination
//! action on the cluster or on the node.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use e2e::bin;
use protocol::AgentId;
use serde_json::{Value, json};
use testkit::agent::{client, run, wait_ready};
use testkit::{AgentProcess, AgentTree, RedisServer, S3Server};

struct Cluster {
    redis: RedisServer,
    client: bus::TaskClient,
    _trees: (AgentTree, AgentTree),
    _agents: (AgentProcess, AgentProcess),
}

async fn start() -> Cluster {
    let redis = RedisServer::start().expect("redis");
    let (ctree, ntree) = (AgentTree::new().unwrap(), AgentTree::new().unwrap());
    let cluster = AgentProcess::spawn(&bin("cluster-agent"), "cluster", &ctree, &redis, &[]).unwrap();
    let node = AgentProcess::spawn(&bin("node-agent"), "node/1", &ntree, &redis, &[]).unwrap();
    let client = client(&redis).await;
    wait_ready(&client, &AgentId::Cluster, &cluster).await;
    wait_ready(&client, &AgentId::Node(1), &node).await;
    Cluster { redis, client, _trees: (ctree, ntree), _agents: (cluster, node) }
}

impl Cluster {
    async fn run(&self, action: &str, data: Value) -> protocol::task::TaskResult {
        run(&self.client, &AgentId::Cluster, action, data).await.0
    }

    /// The ids of the stored destinations.
    fn stored(&self) -> Vec<String> {
        let out = self.redis.cli(&["--scan", "--pattern", "cluster/backup_repository/*"]).unwrap();
        let mut ids: Vec<String> =
            out.lines().map(|l| l.trim_start_matches("cluster/backup_repository/").into()).collect();
        ids.sort();
        ids
    }

    /// Every value Redis holds, as text: what a dump of it would reveal.
    fn everything(&self) -> String {
        let mut all = String::new();
        for key in self.redis.cli(&["--scan"]).unwrap().lines() {
            let kind = self.redis.cli(&["TYPE", key]).unwrap();
            let args: Vec<&str> = match kind.trim() {
                "string" => vec!["GET", key],
                "hash" => vec!["HGETALL", key],
                "list" => vec!["LRANGE", key, "0", "-1"],
                "set" => vec!["SMEMBERS", key],
                "zset" => vec!["ZRANGE", key, "0", "-1"],
                "stream" => vec!["XRANGE", key, "-", "+"],
                _ => continue,
            };
            all.push_str(key);
            all.push('\n');
            all.push_str(&self.redis.cli(&args).unwrap());
        }
        all
    }
}

/// Exit code 10 with the one validation error `error`; its value as text.
fn refused(r: &protocol::task::TaskResult, error: &str) -> String {
    assert_eq!(r.exit_code, 10, "expected {error}: {r:?}");
    let errors = r.output.as_array().unwrap_or_else(|| panic!("a validation error array: {r:?}"));
    let found = errors.iter().find(|e| e["error"] == error).unwrap_or_else(|| panic!("no {error} in {r:?}"));
    found["value"].as_str().map(str::to_owned).unwrap_or_else(|| found["value"].to_string())
}

fn local(path: &Path) -> Value {
    json!({"provider": "local", "name": "", "url": format!("local:{}", path.display()), "password": "", "parameters": {}})
}

fn s3(server: &S3Server, bucket: &str, key: (String, String), password: &str) -> Value {
    json!({
        "provider": "generic-s3", "name": "Office S3", "url": format!("s3:http://{}/{bucket}/ns8", server.host()),
        "password": password,
        "parameters": {"aws_access_key_id": key.0, "aws_secret_access_key": key.1, "aws_default_region": "us-east-1"},
    })
}

#[tokio::test]
async fn destinations_are_checked_sealed_and_refused_with_their_cause() {
    let c = start().await;
    let s3_server = S3Server::start().expect("moto S3 server");
    let disks = tempfile::tempdir().unwrap();

    // A local directory: added with a generated name, listed without secrets.
    let usb = disks.path().join("usb");
    std::fs::create_dir(&usb).unwrap();
    let r = c.run("add-backup-repository", local(&usb)).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let local_id = r.output["id"].as_str().unwrap().to_owned();
    assert_eq!(r.output["password"], "XXX", "the restic password is never returned");
    assert_eq!(std::fs::read_dir(&usb).unwrap().count(), 0, "the check's probe was deleted");
    let public = c.redis.cli(&["HGETALL", &format!("cluster/backup_repository/{local_id}")]).unwrap();
    assert!(public.contains("local") && public.contains(&format!("Local {}", usb.display())), "{public}");
    let sealed = c.redis.cli(&["HGET", &format!("private/backup_destination/{local_id}"), "password"]).unwrap();
    assert!(sealed.starts_with("enc1:"), "sealed: {sealed}");
    // The same destination again.
    refused(&c.run("add-backup-repository", local(&usb)).await, "backup_repository_exists");

    // Local paths refused, each with its cause; nothing stored by any of them.
    let missing = disks.path().join("not-mounted");
    let why = refused(&c.run("add-backup-repository", local(&missing)).await, "backup_path_not_found");
    assert!(why.contains("does not exist"), "{why}");
    let link = disks.path().join("link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let why = refused(&c.run("add-backup-repository", local(&link)).await, "backup_path_unsafe");
    assert!(why.contains("is a symlink"), "{why}");
    let open = disks.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let why = refused(&c.run("add-backup-repository", local(&open)).await, "backup_path_unsafe");
    assert!(why.contains("may be changed by others (mode 777)"), "{why}");
    let mut bad = local(&usb);
    bad["url"] = json!("local:relative/dir");
    refused(&c.run("add-backup-repository", bad).await, "url_format");
    let mut bad = local(&disks.path().join("x"));
    bad["parameters"] = json!({"aws_access_key_id": "k"});
    refused(&c.run("add-backup-repository", bad).await, "parameters_format");
    // A full disk: a small tmpfs.
    let full = disks.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"]).arg(&full).status().unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    let r = c.run("add-backup-repository", local(&full)).await;
    let _ = Command::new("umount").arg(&full).status();
    let why = refused(&r, "not_enough_space");
    assert!(why.contains("bytes free"), "{why}");
    assert_eq!(c.stored(), vec![local_id.clone()]);

    // S3: a wrong secret, a read-only key, an endpoint that does not answer.
    let (id, _) = s3_server.key("rw");
    let why = refused(
        &c.run("add-backup-repository", s3(&s3_server, "office", (id, "wrong".into()), "")).await,
        "backup_repository_not_accessible",
    );
    assert!(why.contains("SignatureDoesNotMatch"), "{why}");
    let why = refused(
        &c.run("add-backup-repository", s3(&s3_server, "office", s3_server.key("ro"), "")).await,
        "no_write_permission",
    );
    assert!(why.contains("AccessDenied"), "{why}");
    let mut no_key = s3(&s3_server, "office", s3_server.key("rw"), "");
    no_key["parameters"] = json!({"aws_access_key_id": "k"});
    refused(&c.run("add-backup-repository", no_key).await, "parameters_format");
    assert_eq!(c.stored(), vec![local_id.clone()]);

    // The good key: saved; the secret and the restic password in clear nowhere.
    let restic_password = "correct horse battery staple 1234";
    let (key_id, secret) = s3_server.key("rw");
    let r = c.run("add-backup-repository", s3(&s3_server, "office", s3_server.key("rw"), restic_password)).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let s3_id = r.output["id"].as_str().unwrap().to_owned();
    let dump = c.everything();
    assert!(!dump.contains(&secret) && !dump.contains(restic_password), "a secret in Redis in clear:\n{dump}");

    let r = c.run("list-backup-repositories", json!({})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let repos = r.output["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2, "{r:?}");
    let s3_item = repos.iter().find(|x| x["id"] == s3_id.as_str()).unwrap();
    assert_eq!(s3_item["name"], "Office S3");
    assert_eq!(s3_item["provider"], "generic-s3");
    assert_eq!(s3_item["parameters"]["aws_access_key_id"], key_id.as_str());
    assert_eq!(s3_item["parameters"]["aws_secret_access_key"], "", "the secret blanked");
    assert!(!r.output.to_string().contains(&secret), "{r:?}");

    // Alter: a rename; an empty secret keeps the stored one (checked again, passes);
    // a read-only key is refused and the stored one stays; wrong provider; unknown id.
    let alter = |params: Value| json!({"id": s3_id, "provider": "generic-s3", "name": "Renamed", "parameters": params});
    let r = c
        .run("alter-backup-repository", alter(json!({"aws_access_key_id": key_id, "aws_secret_access_key": ""})))
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let (ro_id, ro_secret) = s3_server.key("ro");
    let r = c
        .run("alter-backup-repository", alter(json!({"aws_access_key_id": ro_id, "aws_secret_access_key": ro_secret})))
        .await;
    refused(&r, "no_write_permission");
    let r = c.run("list-backup-repositories", Value::Null).await;
    let item = r.output["repositories"].as_array().unwrap().iter().find(|x| x["id"] == s3_id.as_str()).unwrap().clone();
    assert_eq!(
        (item["name"].as_str(), item["parameters"]["aws_access_key_id"].as_str()),
        (Some("Renamed"), Some(key_id.as_str()))
    );
    let mut wrong = alter(json!({}));
    wrong["provider"] = json!("aws");
    refused(&c.run("alter-backup-repository", wrong).await, "backup_provider_mismatch");
    let mut unknown = alter(json!({}));
    unknown["id"] = json!("0000");
    refused(&c.run("alter-backup-repository", unknown).await, "backup_repository_not_found");

    // An endpoint that does not answer.
    let mut stopped = s3_server;
    stopped.stop();
    let why = refused(
        &c.run("add-backup-repository", s3(&stopped, "other", ("k".into(), "s".into()), "")).await,
        "backup_repository_not_accessible",
    );
    assert!(why.contains("connection refused"), "{why}");

    // Nobody but the core queues these: a module's Redis user may not.
    let module = AgentId::module("mod1").unwrap();
    let password = c.redis.agent_user(&module).unwrap();
    for queue in ["cluster/tasks", "node/1/tasks"] {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(c.redis.socket())
            .args(["--user", "module/mod1", "--pass", &password, "--no-auth-warning", "LPUSH", queue, "{}"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NOPERM"), "module/mod1 queued on {queue}: {text}");
    }

    // Nor may a module run the node's backup actions through the API (a `node:reader`
    // grant matches `read-*`): root would read or write repositories for it.
    let dest = json!({"id": "d1", "provider": "local", "url": format!("local:{}", usb.display()), "password": "p"});
    let snapshot = json!({"destination": dest, "path": "dokuwiki/uuid-1", "snapshot": "latest"});
    for (action, data) in [
        (
            "validate-backup-destination",
            json!({"id": "d1", "provider": "local", "url": format!("local:{}", usb.display())}),
        ),
        ("read-backup-snapshots", json!({"destination": dest, "path": "dokuwiki/uuid-1"})),
        ("read-backup-environment", snapshot.clone()),
        ("check-backup-repository", json!({"destination": dest, "path": "dokuwiki/uuid-1", "read_percent": 10})),
        ("restore-module-data", json!({"module_id": "mod1", "from": snapshot})),
        ("run-backup", json!({"id": 1, "destination": dest, "retention": {"keep_last": 1}, "modules": []})),
    ] {
        let r = testkit::agent::run_as(&c.client, &AgentId::Node(1), action, data, "module/mod1").await.0;
        assert_ne!(r.exit_code, 0, "{action} ran for a module: {r:?}");
        assert!(r.error.contains("module mod1 may not run"), "{action}: {r:?}");
    }

    // Remove, and again.
    let r = c.run("remove-backup-repository", json!({"id": local_id})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    refused(&c.run("remove-backup-repository", json!({"id": local_id})).await, "backup_repository_not_found");
    assert_eq!(c.stored(), vec![s3_id.clone()]);
    assert_eq!(c.redis.cli(&["EXISTS", &format!("private/backup_destination/{local_id}")]).unwrap(), "0");
}

#[tokio::test]
async fn plans_check_their_schedule_modules_and_destination() {
    let c = start().await;
    let disk = tempfile::tempdir().unwrap();
    let r = c.run("add-backup-repository", local(disk.path())).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let dest = r.output["id"].as_str().unwrap().to_owned();
    // Three installed modules, as the cluster records them; one without data.
    for (m, flag) in [("dokuwiki1", ""), ("hello1", ""), ("proxy1", "no_data_backup")] {
        c.redis.cli(&["HSET", "cluster/module_node", m, "1"]).unwrap();
        c.redis.cli(&["HSET", "cluster/module_uuid", m, &format!("uuid-{m}")]).unwrap();
        let image = format!("127.0.0.1:5000/ns8rs/{}:1.0.0", m.trim_end_matches(char::is_numeric));
        c.redis.cli(&["HSET", &format!("module/{m}/environment"), "IMAGE_URL", &image]).unwrap();
        c.redis.cli(&["SET", &format!("module/{m}/ui_name"), &format!("My {m}")]).unwrap();
        if !flag.is_empty() {
            c.redis.cli(&["SADD", &format!("module/{m}/flags"), flag]).unwrap();
        }
    }
    let plan = |schedule: &str, instances: Value, repository: &str| {
        json!({"name": "", "repository": repository, "schedule": schedule, "retention": 7,
               "instances": instances, "enabled": true, "schedule_hint": {"interval": "daily"}})
    };
    let why =
        refused(&c.run("add-backup", plan("Funday 25:00", json!(["dokuwiki1"]), &dest)).await, "bad_schedule_format");
    assert!(why.contains("is not a weekday"), "{why}");
    let why =
        refused(&c.run("add-backup", plan("*-*-* 25:00", json!(["dokuwiki1"]), &dest)).await, "bad_schedule_format");
    assert!(why.contains("25 is outside 0..23 in the hour"), "{why}");
    refused(&c.run("add-backup", plan("daily", json!(["ghost1"]), &dest)).await, "module_not_found");
    refused(&c.run("add-backup", plan("daily", json!(["dokuwiki1"]), "nope")).await, "backup_repository_not_found");
    assert_eq!(c.redis.cli(&["EXISTS", "cluster/backup_sequence"]).unwrap(), "0", "nothing counted for a refusal");

    let r = c.run("add-backup", plan("Mon..Fri 02:30", json!(["dokuwiki1", "dokuwiki1"]), &dest)).await;
    assert_eq!((r.exit_code, &r.output), (0, &json!(1)), "{r:?}");
    let stored = c.redis.cli(&["HGET", "cluster/backup/1", "instances"]).unwrap();
    assert_eq!(stored, "dokuwiki1", "deduplicated, NS8's space-separated list");
    let r = c.run("list-backups", Value::Null).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let b = &r.output["backups"][0];
    assert_eq!((b["id"].as_u64(), b["name"].as_str(), b["retention"].as_u64()), (Some(1), Some("Backup 1"), Some(7)));
    assert_eq!(b["instances"][0]["repository_path"], "dokuwiki/uuid-dokuwiki1");
    assert_eq!(b["instances"][0]["ui_name"], "My dokuwiki1");
    assert!(b["instances"][0]["status"].is_null(), "never ran: {b}");
    assert_eq!(b["schedule_hint"], json!({"interval": "daily"}));
    // The next run, as systemd computes it for the same expression.
    // (The node's zone is the test's; systemd is asked for UTC, as next_run is.)
    let out = Command::new("systemd-analyze").args(["calendar", "Mon..Fri 02:30"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let next = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("(in UTC): "))
        .or_else(|| text.lines().find_map(|l| l.trim().strip_prefix("Next elapse: ")).filter(|l| l.ends_with(" UTC")))
        .unwrap_or_else(|| panic!("{text}"));
    let ours = b["next_run"].as_str().unwrap();
    // "Fri 2026-12-04 02:30:00 UTC" against "2026-12-04T02:30:00Z"
    let theirs: Vec<&str> = next.split_whitespace().collect();
    assert_eq!(ours, format!("{}T{}Z", theirs[1], theirs[2]), "{text}");
    let unconfigured: Vec<&str> =
        r.output["unconfigured_instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(unconfigured, ["hello1"], "proxy1 has no data to back up");

    // Alter: unknown id; a change kept.
    let mut alter = plan("weekly", json!(["dokuwiki1", "hello1"]), &dest);
    alter["id"] = json!(9);
    alter["name"] = json!("Nightly");
    refused(&c.run("alter-backup", alter.clone()).await, "backup_object_not_found");
    alter["id"] = json!(1);
    alter["keep_daily"] = json!(7);
    let r = c.run("alter-backup", alter).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let r = c.run("list-backups", Value::Null).await;
    let b = &r.output["backups"][0];
    assert_eq!(
        (b["name"].as_str(), b["schedule"].as_str(), b["keep_daily"].as_u64()),
        (Some("Nightly"), Some("weekly"), Some(7))
    );
    assert_eq!(b["instances"].as_array().unwrap().len(), 2);
    assert_eq!(r.output["unconfigured_instances"], json!([]));

    // The destination goes, and its plans with it.
    refused(&c.run("remove-backup", json!({"id": 5})).await, "backup_not_found");
    let r = c.run("add-backup", plan("daily", json!([]), &dest)).await;
    assert_eq!(r.output, json!(2), "{r:?}");
    let r = c.run("remove-backup", json!({"id": 2})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let r = c.run("remove-backup-repository", json!({"id": dest})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(c.redis.cli(&["EXISTS", "cluster/backup/1"]).unwrap(), "0");
    let r = c.run("list-backups", Value::Null).await;
    assert_eq!(r.output["backups"], json!([]), "{r:?}");
}
