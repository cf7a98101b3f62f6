//! What `traefik-ctl` refuses, run as the action steps run it (environment, stdin,
//! exit code 10 and NS8's error array), with no Traefik behind: every refusal comes
//! before anything is written, and the module's files are left as they were.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

struct Run {
    code: i32,
    out: Value,
    err: String,
}

/// Run `traefik-ctl <cmd>` for module `traefik1` with `state` as its state dir, as
/// `caller` (AGENT_TASK_USER), `data` on stdin. Traefik's API port has nothing on it.
fn ctl(state: &Path, caller: &str, cmd: &str, data: Value, extra_env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_traefik-ctl"))
        .arg(cmd)
        .env_clear()
        .env("AGENT_STATE_DIR", state)
        .env("AGENT_ID", "module/traefik1")
        .env("AGENT_TASK_USER", caller)
        .env("TCP_PORT", "1")
        .env("NODE_ID", "1")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data.to_string().as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        out: serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The validation error's `(parameter, error)`.
fn refused(r: &Run) -> (String, String) {
    assert_eq!(r.code, 10, "expected a validation error, got {}: {} {}", r.code, r.out, r.err);
    let e = &r.out[0];
    (e["parameter"].as_str().unwrap_or("").to_owned(), e["error"].as_str().unwrap_or("").to_owned())
}

/// Every file under `dir`, relative, sorted: what a refusal must not change.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_none_or(|n| n != ".lock") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                out.push(format!("{}:{}", p.strip_prefix(dir).unwrap().display(), text.len()));
            }
        }
    }
    out.sort();
    out
}

fn state_with_wiki_route() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("routes")).unwrap();
    let rec = json!({"instance": "dokuwiki1", "url": "http://127.0.0.1:20001", "host": "wiki.example.test", "owner": "dokuwiki1"});
    std::fs::write(dir.path().join("routes/dokuwiki1.json"), rec.to_string()).unwrap();
    dir
}

const URL: &str = "http://127.0.0.1:20002";

#[test]
fn a_module_sets_only_its_own_routes_and_never_the_cluster_admin_one() {
    let s = state_with_wiki_route();
    let before = files(s.path());
    let me = "module/hello1";
    let cases = [
        (json!({"instance": "dokuwiki1", "url": URL, "host": "x.example.test"}), ("instance", "instance_not_owned")),
        (json!({"instance": "hello10", "url": URL, "host": "x.example.test"}), ("instance", "instance_not_owned")),
        (json!({"instance": "cluster-admin", "url": URL, "path": "/cluster-admin"}), ("instance", "instance_reserved")),
        (json!({"instance": "hello1", "url": URL, "path": "/cluster-admin/api"}), ("instance", "instance_reserved")),
        (json!({"instance": "hello1-x", "url": URL, "host": "Wiki.Example.Test"}), ("host", "host_already_routed")),
    ];
    for (data, want) in cases {
        let r = ctl(s.path(), me, "set-route", data.clone(), &[]);
        assert_eq!(refused(&r), (want.0.to_owned(), want.1.to_owned()), "{data}");
    }
    // The conflict names who holds the host.
    let r = ctl(s.path(), me, "set-route", json!({"instance": "hello1", "url": URL, "host": "wiki.example.test"}), &[]);
    assert_eq!(r.out[0]["owner"], "dokuwiki1", "{}", r.out);
    // Administrators may not take the cluster-admin route either; only the core.
    let r = ctl(s.path(), "admin", "set-route", json!({"instance": "cluster-admin", "url": URL, "path": "/x"}), &[]);
    assert_eq!(refused(&r).1, "instance_reserved");
    // Deleting another module's route.
    let r = ctl(s.path(), me, "delete-route", json!({"instance": "dokuwiki1"}), &[]);
    assert_eq!(refused(&r).1, "instance_not_owned");
    assert_eq!(files(s.path()), before, "a refusal changed the module's files");
}

#[test]
fn bad_input_is_named_in_ns8s_shape_and_changes_nothing() {
    let s = state_with_wiki_route();
    let before = files(s.path());
    let base = json!({"instance": "hello1", "url": URL, "host": "hello.example.test"});
    let with = |k: &str, v: Value| {
        let mut d = base.clone();
        d[k] = v;
        d
    };
    let cases = [
        (with("host", json!("bad host")), ("host", "host_invalid")),
        (with("host", json!("a.test`) || Host(`b.test")), ("host", "host_invalid")),
        (with("url", json!("ftp://x")), ("url", "url_invalid")),
        (with("url", json!("")), ("url", "missing_url_argument")),
        (json!({"instance": "hello1", "url": URL}), ("path", "missing_path_argument")),
        (with("path", json!("no-slash")), ("path", "path_invalid")),
        (with("headers", json!({"request": {"Bad Name": "1"}})), ("headers.request", "header_name_invalid")),
        (
            with("headers", json!({"response": {"X-A": "a\r\nSet-Cookie: x"}})),
            ("headers.response.X-A", "header_value_invalid"),
        ),
        (with("ip_allowlist", json!(["10.0.0.0/8", "10.0.0.0/99"])), ("ip_allowlist.1", "ip_allowlist_invalid")),
        (
            with("forward_auth", json!({"address": "not a url"})),
            ("forward_auth.address", "forward_auth_address_invalid"),
        ),
        (with("instance", json!("a/b")), ("instance", "instance_invalid")),
        (with("evil", json!(1)), ("evil", "evil_unknown")),
        (with("lets_encrypt", json!("yes")), ("lets_encrypt", "lets_encrypt_invalid_type")),
    ];
    for (data, want) in cases {
        let r = ctl(s.path(), "module/hello1", "set-route", data.clone(), &[]);
        assert_eq!(refused(&r), (want.0.to_owned(), want.1.to_owned()), "{data}: {}", r.out);
        assert_eq!(r.out[0]["field"], r.out[0]["parameter"]);
    }
    assert_eq!(files(s.path()), before);
}

/// A Redis whose `module/hello1` has the port the node gave it (20002), and the
/// variables that reach it as traefik1.
fn redis_with_hello_port() -> (testkit::RedisServer, Vec<(&'static str, String)>) {
    let redis = testkit::RedisServer::start().unwrap();
    let password = redis.agent_user(&protocol::AgentId::Module("traefik1".into())).unwrap();
    redis.cli(&["HSET", "module/hello1/environment", "TCP_PORT", "20002"]).unwrap();
    let env = vec![
        ("REDIS_ADDRESS", redis.address()),
        ("REDIS_USER", "module/traefik1".into()),
        ("REDIS_PASSWORD", password),
    ];
    (redis, env)
}

#[test]
fn a_module_publishes_only_its_own_loopback_ports() {
    let s = state_with_wiki_route();
    let before = files(s.path());
    let (_redis, env) = redis_with_hello_port();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for url in ["http://127.0.0.1:6379", "http://localhost:20001", "http://[::1]:20003", "http://127.0.0.1"] {
        let data = json!({"instance": "hello1", "url": url, "host": "h.example.test"});
        let r = ctl(s.path(), "module/hello1", "set-route", data, &env);
        assert_eq!(refused(&r), ("url".to_owned(), "url_port_not_owned".to_owned()), "{url}: {}", r.out);
    }
    assert_eq!(files(s.path()), before);
}

#[test]
fn a_route_traefik_does_not_take_leaves_nothing_behind() {
    let s = state_with_wiki_route();
    let before = files(s.path());
    let (_redis, env) = redis_with_hello_port();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let data = json!({"instance": "hello1", "url": URL, "host": "h.example.test"});
    let r = ctl(s.path(), "module/hello1", "set-route", data, &env);
    assert_eq!(r.code, 1, "{} {}", r.out, r.err);
    assert!(
        r.err.contains("did not take the route hello1") && r.err.contains("previous configuration is back"),
        "{}",
        r.err
    );
    assert_eq!(files(s.path()), before);
}

#[test]
fn only_the_clusters_module_removed_event_removes_routes() {
    let s = state_with_wiki_route();
    let before = files(s.path());
    let r = ctl(
        s.path(),
        "",
        "module-removed",
        json!({"module": "dokuwiki1", "node": 1}),
        &[("AGENT_EVENT_SOURCE", "module/evil1")],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.err.contains("ignored"), "{}", r.err);
    assert_eq!(files(s.path()), before, "a module's fake event removed a route");
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn cert(names: &[&str], days: (i64, i64), key: &rcgen::KeyPair) -> rcgen::Certificate {
    let mut p = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(days.0);
    p.not_after = now + time::Duration::days(days.1);
    p.self_signed(key).unwrap()
}

#[test]
fn an_uploaded_certificate_is_checked_whole_before_anything_is_written() {
    let s = tempfile::tempdir().unwrap();
    let before = files(s.path());
    let key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let good = cert(&["wiki.example.test"], (-1, 90), &key);
    let expired = cert(&["wiki.example.test"], (-90, -1), &key);
    let stranger = cert(&["ca.example.test"], (-1, 90), &other);
    let upload = |c: &str, k: &str| json!({"certFile": b64(c), "keyFile": b64(k)});
    let cases = [
        (upload(&good.pem(), &other.serialize_pem()), ("keyFile", "keyFile_does_not_match_certFile")),
        (upload(&expired.pem(), &key.serialize_pem()), ("certFile", "certFile_not_valid_now")),
        // A chain whose second certificate did not sign the first.
        (
            upload(&format!("{}{}", good.pem(), stranger.pem()), &key.serialize_pem()),
            ("certFile", "certFile_chain_broken"),
        ),
        (upload("not pem", &key.serialize_pem()), ("certFile", "certFile_empty")),
        (upload(&good.pem(), "not a key"), ("keyFile", "keyFile_invalid")),
        (json!({"certFile": "%%%", "keyFile": "x"}), ("certFile", "certFile_not_base64")),
    ];
    for (data, want) in cases {
        let r = ctl(s.path(), "admin", "upload-certificate", data, &[]);
        assert_eq!(refused(&r), (want.0.to_owned(), want.1.to_owned()), "{}", r.out);
        // Neither the key nor the certificate is echoed back.
        assert!(!r.out.to_string().contains("PRIVATE KEY") && !r.err.contains("PRIVATE KEY"));
    }
    assert_eq!(files(s.path()), before);
}

#[test]
fn new_and_expiring_certificates_are_announced_once() {
    let redis = testkit::RedisServer::start().unwrap();
    let password = redis.agent_user(&protocol::AgentId::Module("traefik1".into())).unwrap();
    let mut sub = Command::new("redis-cli")
        .arg("-s")
        .arg(redis.socket())
        .args(["PSUBSCRIBE", "module/traefik1/event/*"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    // Traefik's store with a certificate for the wiki that ends in 5 days.
    let s = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let c = cert(&["wiki.example.test"], (-80, 5), &key);
    let store = json!({"acmeServer": {"Certificates": [{
        "domain": {"main": "wiki.example.test"}, "certificate": b64(&c.pem()), "key": b64(&key.serialize_pem()), "Store": "default"
    }]}});
    std::fs::create_dir_all(s.path().join("traefik/acme")).unwrap();
    std::fs::write(s.path().join("traefik/acme/acme.json"), store.to_string()).unwrap();

    let address = redis.address();
    let env =
        [("REDIS_ADDRESS", address.as_str()), ("REDIS_USER", "module/traefik1"), ("REDIS_PASSWORD", password.as_str())];
    let first = ctl(s.path(), "", "check-certificates", json!({}), &env);
    assert_eq!(first.code, 0, "{}", first.err);
    assert_eq!(first.out["changed"], json!(["wiki.example.test"]));
    assert_eq!(first.out["expiring"][0]["names"], json!(["wiki.example.test"]));
    let list = ctl(s.path(), "", "list-certificates", json!({}), &[]);
    let acme: Vec<&Value> = list.out.as_array().unwrap().iter().filter(|c| c["type"] == "acme").collect();
    assert_eq!(acme[0]["expiring"], true, "{}", list.out);
    assert!(matches!(acme[0]["days_left"].as_i64(), Some(4 | 5)), "{}", list.out);
    // A minute later: nothing new, and the day is not over.
    let second = ctl(s.path(), "", "check-certificates", json!({}), &env);
    assert_eq!(second.out["changed"], json!([]), "{}", second.err);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = sub.kill();
    let mut text = String::new();
    use std::io::Read;
    sub.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let count = |channel: &str| text.lines().filter(|l| *l == channel).count();
    assert_eq!(count("module/traefik1/event/certificate-changed"), 1, "{text}");
    assert_eq!(count("module/traefik1/event/certificate-expiring"), 1, "{text}");
    let _ = sub.wait();
}
