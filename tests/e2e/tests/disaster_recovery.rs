//! Disaster recovery end to end: a cluster with DokuWiki backed up to a local disk,
//! torn down with all its state, and a fresh cluster under another root brought back
//! from the cluster backup and the module's repository, with the real agents, rootless
//! Podman, restic and rclone.
//!
//! What is checked: the administrator downloads the encrypted cluster backup through
//! the API (`download-cluster-backup`, then `GET /api/cluster/backup/<path>`); a plan's
//! run leaves a copy in the destination; on the fresh cluster
//! `retrieve-cluster-backup` + `restore-cluster` bring back the destination and the
//! plan and name the module to restore; `restore-modules` restores it with the
//! consent the administrator gave the first time (`read-backup-repositories` and
//! `determine-restore-eligibility` show it first, under the id it had); it serves the same page, its data
//! is byte-identical with the same owners, it keeps its UUID, the plan names it again,
//! and the plan's next run goes on in the same repository.

use std::time::Duration;

use base64::Engine;
use e2e::LocalCluster;
use e2e::modules::{page, port_of, run, user_exists, wiki_fingerprint, write_wiki_page};
use serde_json::{Value, json};

const PASSPHRASE: &str = "the office's disaster passphrase";
const EDIT: &str = "Recovery plan: this page survived the loss of the whole server.";

/// The first admin's password, as `up` printed it.
fn admin_password(c: &LocalCluster) -> String {
    let marker = "store it safely): ";
    let at = c.up_output.find(marker).unwrap_or_else(|| panic!("no admin password in {}", c.up_output));
    c.up_output[at + marker.len()..].lines().next().unwrap().trim().to_owned()
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// `GET /api/cluster/backup/<path>` as the admin: the file's bytes.
fn download(c: &LocalCluster, path: &str) -> Vec<u8> {
    let api = format!("http://127.0.0.1:{}", c.api_port);
    let login = json!({"username": "admin", "password": admin_password(c)});
    let mut reply = http().post(format!("{api}/api/login")).send_json(&login).unwrap();
    assert_eq!(reply.status(), 200);
    let token = reply.body_mut().read_json::<Value>().unwrap()["token"].as_str().unwrap().to_owned();
    let mut reply = http()
        .get(format!("{api}/api/cluster/backup/{path}"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(reply.status(), 200, "{:?}", reply.body_mut().read_to_string());
    let none = http().get(format!("{api}/api/cluster/backup/{path}")).call().unwrap();
    assert_eq!(none.status(), 401, "no session, no download");
    reply.body_mut().with_config().limit(16 << 20).read_to_vec().unwrap()
}

#[test]
fn a_lost_cluster_comes_back_with_its_wiki() {
    let disk = tempfile::tempdir().unwrap();
    let (downloaded, uuid, before, old_id, dest, plan, registry_port) = {
        let c = LocalCluster::start_with(&["dokuwiki"]);
        let install = json!({"image": "dokuwiki", "node": 1, "accept": {"authorizations": ["traefik@node:routeadm"]}});
        let id = run(&c, "add-module", "cluster", install).unwrap()["module_id"].as_str().unwrap().to_owned();
        let conf = json!({"title": "Office Wiki", "admin_user": "boss", "admin_password": "correct horse battery"});
        run(&c, "configure-module", &format!("module/{id}"), conf).unwrap();
        write_wiki_page(&id, EDIT);
        assert!(page(port_of(&c, &id), "/doku.php?id=start").contains(EDIT));
        let uuid = c.redis(&["HGET", "cluster/module_uuid", &id]);
        let url = format!("local:{}", disk.path().display());
        let dest = run(&c, "add-backup-repository", "cluster", json!({"provider": "local", "url": url})).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let plan = json!({"repository": dest, "name": "Nightly", "schedule": "daily", "retention": 7,
                          "instances": [id], "enabled": true});
        let plan = run(&c, "add-backup", "cluster", plan).unwrap().as_u64().unwrap();
        let path = run(&c, "download-cluster-backup", "cluster", json!({"password": PASSPHRASE})).unwrap();
        let downloaded = download(&c, path["path"].as_str().unwrap());
        assert!(downloaded.starts_with(b"age-encryption.org/v1"));
        let out = run(&c, "run-backup", "cluster", json!({"id": plan})).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
        assert_eq!(out["modules"][0]["status"]["success"], true, "{out}");
        assert_eq!(out["cluster_backup"]["success"], true, "{out}");
        let copy = disk.path().join(out["cluster_backup"]["file"].as_str().unwrap());
        assert!(std::fs::read(&copy).unwrap().starts_with(b"age-encryption.org/v1"));
        (downloaded, uuid, wiki_fingerprint(&id), id, dest, plan, c.registry_port)
    };
    // Torn down with its state: the module's user and home are gone too.
    assert!(!user_exists(&old_id), "{old_id} outlived its cluster");

    let c = LocalCluster::start_on(&["dokuwiki"], registry_port);
    let file = base64::engine::general_purpose::STANDARD.encode(&downloaded);
    let summary =
        run(&c, "retrieve-cluster-backup", "cluster", json!({"type": "file", "password": PASSPHRASE, "file": file}))
            .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    assert_eq!((summary["modules"].as_u64(), summary["backup_repositories"].as_u64()), (Some(1), Some(1)), "{summary}");
    let restored = run(&c, "restore-cluster", "cluster", json!({})).unwrap();
    assert_eq!((restored["destinations"].clone(), restored["backups"].clone()), (json!([dest]), json!([plan])));
    let item = &restored["restorable"][0];
    assert_eq!(
        (item["repository"].as_str(), item["path"].as_str()),
        (Some(dest.as_str()), Some(&*format!("dokuwiki/{uuid}")))
    );

    // The destination, browsed: the repository with the id it had, not installed yet;
    // the snapshot's image and the node that may take it.
    let found = run(&c, "read-backup-repositories", "cluster", json!({})).unwrap();
    let repo =
        found.as_array().unwrap().iter().find(|r| r["uuid"] == uuid.as_str()).unwrap_or_else(|| panic!("{found}"));
    assert_eq!((repo["instance"].as_str(), repo["installed_instance"].as_str()), (Some(old_id.as_str()), Some("")));
    assert_eq!((repo["repository_id"].as_str(), repo["name"].as_str()), (Some(dest.as_str()), Some("dokuwiki")));
    assert!(repo["timestamp"].as_i64().unwrap() > 0, "{repo}");
    let asked = json!({"repository": dest, "path": format!("dokuwiki/{uuid}"), "snapshot": ""});
    let eligible = run(&c, "determine-restore-eligibility", "cluster", asked).unwrap();
    assert!(eligible["image_url"].as_str().unwrap().contains("dokuwiki"), "{eligible}");
    assert_eq!(eligible["install_destinations"][0]["eligible"], true, "{eligible}");

    // The module, from what restore-cluster named, with the consent given before.
    let items = json!([{"repository": item["repository"], "path": item["path"], "snapshot": "", "node": 1}]);
    let outcome = run(&c, "restore-modules", "cluster", items).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    assert_eq!(outcome[0]["success"], true, "{outcome}");
    let id = outcome[0]["module_id"].as_str().unwrap().to_owned();
    assert!(page(port_of(&c, &id), "/doku.php?id=start").contains(EDIT), "the same page");
    assert_eq!(wiki_fingerprint(&id), before, "the same files, owners and modes");
    assert_eq!(c.redis(&["HGET", "cluster/module_uuid", &id]), uuid, "its own UUID");
    let found = run(&c, "read-backup-repositories", "cluster", json!({})).unwrap();
    assert_eq!(found[0]["installed_instance"], id.as_str(), "{found}");
    let plans = run(&c, "list-backups", "cluster", json!({})).unwrap();
    assert_eq!(plans["backups"][0]["instances"][0]["module_id"], id.as_str(), "{plans}");
    let out = run(&c, "run-backup", "cluster", json!({"id": plan})).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    assert_eq!(out["modules"][0]["status"]["success"], true, "{out}");
    assert_eq!(out["modules"][0]["status"]["snapshots_count"], 2, "the same repository goes on: {out}");
}
