//! The cluster's own backup between two clusters: the real cluster and node agents of
//! each on their own private Redis, a local destination, the real rclone.
//!
//! What is checked: `download-cluster-backup` needs a passphrase of 8 characters or
//! more, keeps it sealed and leaves an hour-long download of an age file; a plan's
//! run copies the encrypted dump into its destination (none before a passphrase is
//! set); the dump holds no secret in clear; on a fresh cluster,
//! `retrieve-cluster-backup` refuses a wrong passphrase and a damaged file by name,
//! accepts the copy (uploaded, or from a URL) and summarises it, `restore-cluster`
//! brings back the name, software repositories, destination (sealed again under the
//! new cluster's key: its next run works), plans (pending their modules) and the
//! administrators the new cluster lacks, keeps those it has, and refuses to run
//! twice; a module is refused all four actions whatever it is granted.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use base64::Engine;
use e2e::bin;
use protocol::AgentId;
use serde_json::{Value, json};
use testkit::agent::{client, run, run_as, wait_ready};
use testkit::{AgentProcess, AgentTree, RedisServer};

const PASSPHRASE: &str = "a long office passphrase";
const RESTIC_PASSWORD: &str = "the restic password of the usb disk";

struct Cluster {
    redis: RedisServer,
    client: bus::TaskClient,
    _trees: (AgentTree, AgentTree),
    agents: (AgentProcess, AgentProcess),
}

async fn start() -> Cluster {
    let redis = RedisServer::start().expect("redis");
    let (ctree, ntree) = (AgentTree::new().unwrap(), AgentTree::new().unwrap());
    let cluster = AgentProcess::spawn(&bin("cluster-agent"), "cluster", &ctree, &redis, &[]).unwrap();
    let node = AgentProcess::spawn(&bin("node-agent"), "node/1", &ntree, &redis, &[]).unwrap();
    let client = client(&redis).await;
    wait_ready(&client, &AgentId::Cluster, &cluster).await;
    wait_ready(&client, &AgentId::Node(1), &node).await;
    Cluster { redis, client, _trees: (ctree, ntree), agents: (cluster, node) }
}

impl Cluster {
    async fn run(&self, action: &str, data: Value) -> protocol::task::TaskResult {
        let running = run(&self.client, &AgentId::Cluster, action, data);
        match tokio::time::timeout(std::time::Duration::from_secs(25), running).await {
            Ok((r, _)) => r,
            Err(_) => panic!("{action} took too long\n{}\n{}", self.agents.0.log(), self.agents.1.log()),
        }
    }

    async fn ok(&self, action: &str, data: Value) -> Value {
        let r = self.run(action, data).await;
        assert_eq!(r.exit_code, 0, "{action}: {r:?}\n{}\n{}", self.agents.0.log(), self.agents.1.log());
        r.output
    }

    fn cli(&self, args: &[&str]) -> String {
        self.redis.cli(args).unwrap()
    }

    /// Every value Redis holds, as text.
    fn everything(&self) -> String {
        let mut all = String::new();
        for key in self.cli(&["--scan"]).lines() {
            let args: Vec<&str> = match self.cli(&["TYPE", key]).trim() {
                "string" => vec!["GET", key],
                "hash" => vec!["HGETALL", key],
                "list" => vec!["LRANGE", key, "0", "-1"],
                "set" => vec!["SMEMBERS", key],
                "stream" => vec!["XRANGE", key, "-", "+"],
                _ => continue,
            };
            all.push_str(key);
            all.push('\n');
            all.push_str(&String::from_utf8_lossy(self.cli(&args).as_bytes()));
        }
        all
    }
}

/// Exit code 10 with the validation error `error`.
fn refused(r: &protocol::task::TaskResult, error: &str) {
    assert_eq!(r.exit_code, 10, "expected {error}: {r:?}");
    let errors = r.output.as_array().unwrap_or_else(|| panic!("a validation error array: {r:?}"));
    assert!(errors.iter().any(|e| e["error"] == error), "no {error} in {r:?}");
}

fn local(path: &Path) -> Value {
    json!({"provider": "local", "name": "USB disk", "url": format!("local:{}", path.display()),
           "password": RESTIC_PASSWORD, "parameters": {}})
}

/// Serve `body` once over HTTP on loopback; the URL.
fn serve_once(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cluster-backup.age", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
    });
    url
}

#[tokio::test]
async fn the_cluster_backup_moves_a_configuration_to_a_fresh_cluster() {
    let old = start().await;
    let usb = tempfile::tempdir().unwrap();
    let dest = old.ok("add-backup-repository", local(usb.path())).await["id"].as_str().unwrap().to_owned();
    let plan = json!({"repository": dest, "name": "Nightly", "schedule": "daily", "retention": 3, "instances": [],
                      "enabled": true});
    let plan_id = old.ok("add-backup", plan).await.as_u64().unwrap();
    old.ok("set-name", json!({"name": "Office cluster"})).await;
    old.cli(&["HSET", "cluster/repository/extra", "url", "https://repo.example.test/", "status", "1", "testing", "0"]);
    old.cli(&[
        "HSET",
        "user/ops",
        "password_hash",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
        "2fa",
        "enc1:x",
    ]);
    old.cli(&["HSET", "roles/ops", "cluster", "reader"]);
    old.cli(&["HSET", "user/admin", "password_hash", "$argon2id$old-admin"]);

    // No copy before a passphrase exists; passphrases too short or missing refused.
    let out = old.ok("run-backup", json!({"id": plan_id})).await;
    assert!(out.get("cluster_backup").is_none(), "{out}");
    refused(&old.run("download-cluster-backup", json!({})).await, "cluster_backup_password_required");
    let r = old.run("download-cluster-backup", json!({"password": "short"})).await;
    assert_ne!(r.exit_code, 0, "{r:?}");
    assert!(old.cli(&["EXISTS", "private/cluster_backup"]) == "0", "nothing stored by a refusal");

    // A download: an age file for an hour, the passphrase sealed.
    let out = old.ok("download-cluster-backup", json!({"password": PASSPHRASE})).await;
    let path = out["path"].as_str().unwrap();
    let (token, file) = path.split_once('/').unwrap();
    assert_eq!((token.len(), file), (64, "dump.json.gz.age"), "{path}");
    let key = format!("private/cluster_backup/download/{token}");
    let ttl: i64 = old.cli(&["TTL", &key]).parse().unwrap();
    assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
    assert!(old.cli(&["GETRANGE", &key, "0", "20"]).starts_with("age-encryption.org/v1"));
    let sealed = old.cli(&["HGET", "private/cluster_backup", "passphrase"]);
    assert!(sealed.starts_with("enc1:"), "{sealed}");
    // Without a password now: the stored one.
    old.ok("download-cluster-backup", json!({})).await;

    // A plan's run leaves the copy in its destination.
    let out = old.ok("run-backup", json!({"id": plan_id})).await;
    assert_eq!(out["cluster_backup"]["success"], true, "{out}");
    let uuid = old.cli(&["GET", "cluster/uuid"]);
    let name = format!("cluster-backup-{uuid}.json.gz.age");
    assert_eq!(out["cluster_backup"]["file"], name.as_str());
    let copy = std::fs::read(usb.path().join(&name)).unwrap();
    assert!(copy.starts_with(b"age-encryption.org/v1"));
    let everything = old.everything();
    for secret in [PASSPHRASE, RESTIC_PASSWORD] {
        assert!(!everything.contains(secret), "{secret} in Redis in clear");
        assert!(!copy.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in the copy in clear");
    }

    // A module may run none of these, whatever it is granted.
    for (action, data) in [
        ("download-cluster-backup", json!({})),
        ("retrieve-cluster-backup", json!({"type": "file", "password": PASSPHRASE, "file": "AAAA"})),
        ("restore-cluster", json!({})),
        ("restore-modules", json!([{"repository": dest, "path": "dokuwiki/u1", "node": 1}])),
    ] {
        let r = run_as(&old.client, &AgentId::Cluster, action, data, "module/mod1").await.0;
        assert_ne!(r.exit_code, 0, "{action} ran for a module: {r:?}");
        assert!(r.error.contains("module mod1 may not run"), "{action}: {r:?}");
    }

    // The fresh cluster: wrong passphrase, damaged file, nothing retrieved yet.
    let new = start().await;
    new.cli(&["HSET", "user/admin", "password_hash", "$argon2id$new-admin"]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&copy);
    refused(&new.run("restore-cluster", json!({})).await, "cluster_backup_not_retrieved");
    let r = new.run("retrieve-cluster-backup", json!({"type": "file", "password": "not the passphrase", "file": b64}));
    refused(&r.await, "cluster_backup_password_wrong");
    let mut damaged = copy.clone();
    let at = damaged.len() - 10;
    damaged[at] ^= 0xff;
    let damaged = base64::engine::general_purpose::STANDARD.encode(&damaged);
    let r = new.run("retrieve-cluster-backup", json!({"type": "file", "password": PASSPHRASE, "file": damaged}));
    refused(&r.await, "cluster_backup_file_invalid");
    refused(
        &new.run("retrieve-cluster-backup", json!({"type": "file", "password": PASSPHRASE})).await,
        "cluster_backup_file_required",
    );
    assert_eq!(new.cli(&["EXISTS", "private/cluster_backup"]), "0", "nothing kept by a refusal");

    // From a URL, then the file itself: the summary.
    let url = serve_once(copy.clone());
    let summary = new
        .ok("retrieve-cluster-backup", json!({"type": "url", "url": url, "tls_verify": true, "password": PASSPHRASE}))
        .await;
    assert_eq!(summary["cluster"], "Office cluster", "{summary}");
    let summary = new.ok("retrieve-cluster-backup", json!({"type": "file", "password": PASSPHRASE, "file": b64})).await;
    assert_eq!(
        (summary["backup_repositories"].as_u64(), summary["backups"].as_u64(), summary["users"].as_u64()),
        (Some(1), Some(1), Some(2)),
        "{summary}"
    );

    // Restored: name, repositories, destination, plan, the missing administrator.
    let out = new.ok("restore-cluster", json!({})).await;
    assert_eq!(out["destinations"], json!([dest]), "{out}");
    assert_eq!(out["backups"], json!([plan_id]), "{out}");
    assert_eq!((out["users_added"].clone(), out["users_kept"].clone()), (json!(["ops"]), json!(["admin"])), "{out}");
    assert_eq!(new.cli(&["GET", "cluster/ui_name"]), "Office cluster");
    assert!(new.cli(&["HGETALL", "cluster/repository/extra"]).contains("https://repo.example.test/"));
    assert_eq!(new.cli(&["HGET", "user/admin", "password_hash"]), "$argon2id$new-admin", "its own admin kept");
    assert_eq!(new.cli(&["HGET", "user/ops", "password_hash"]), "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA");
    assert_eq!(new.cli(&["HEXISTS", "user/ops", "2fa"]), "0", "2FA is enrolled again");
    assert_eq!(new.cli(&["HGET", "roles/ops", "cluster"]), "reader");
    let listed = new.ok("list-backup-repositories", json!({})).await;
    assert_eq!(listed["repositories"][0]["name"], "USB disk", "{listed}");
    let plans = new.ok("list-backups", json!({})).await;
    assert_eq!(plans["backups"][0]["name"], "Nightly", "{plans}");
    // The destination's secrets work under the new cluster's key: a run copies again.
    let out = new.ok("run-backup", json!({"id": plan_id})).await;
    assert_eq!(out["cluster_backup"]["success"], true, "{out}");
    assert!(!new.everything().contains(RESTIC_PASSWORD), "resealed, not in clear");
    // Once only.
    refused(&new.run("restore-cluster", json!({})).await, "cluster_not_empty");
}
