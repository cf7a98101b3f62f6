//! The README's first command: `cargo xtask up` brings up a working single-node cluster
//! under the supervisor, a crashed agent comes back, `down` leaves nothing running.
//! Runs the real xtask binary with the workspace's debug build of the agents.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::{LocalCluster, bin_dir, ok};

/// A one-shot HTTP/1.1 request: status and body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the api-server");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn up_runs_tasks_restarts_crashed_agents_and_down_stops_everything() {
    for b in ["supervisor", "cluster-agent", "node-agent", "module-agent", "module-service", "api-cli", "api-server"] {
        assert!(
            bin_dir().join(b).exists(),
            "{b} is not built in {}: run the whole workspace's tests",
            bin_dir().display()
        );
    }
    let cluster = LocalCluster::start();
    let (api_port, registry_port) = (cluster.api_port, cluster.registry_port);
    let up_args = cluster.up_args();
    let up_args: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let text = cluster.up_output.clone();
    assert!(text.contains("The local cluster is up"), "{text}");
    assert!(text.contains("api-cli run"), "up prints how to run a task: {text}");
    // The software repository is up and holds the module images.
    let index = std::fs::read_to_string(cluster.path().join("repository/repodata.json")).unwrap();
    assert!(index.contains(&format!("127.0.0.1:{registry_port}/ns8rs/hello")), "{index}");
    let modules = ok(&cluster.api_cli(&["run", "list-modules"]));
    assert!(modules.contains(&format!("127.0.0.1:{registry_port}/ns8rs/hello")), "{modules}");

    // The first admin's generated password is printed once, and logs in to the API.
    let password = text
        .lines()
        .find_map(|l| l.split_once("store it safely): ").map(|(_, p)| p.trim().to_owned()))
        .unwrap_or_else(|| panic!("no admin password in: {text}"));
    assert!(password.len() >= 16, "{password}");
    let login = serde_json::json!({"username": "admin", "password": password}).to_string();
    let (status, reply) = http(api_port, "POST", "/api/login", None, &login);
    assert_eq!(status, 200, "{reply}\n{}", cluster.log());
    let token = reply["token"].as_str().unwrap().to_owned();
    let (status, reply) =
        http(api_port, "POST", "/api/node/1/tasks", Some(&token), r#"{"action":"get-info","data":{}}"#);
    assert_eq!(status, 201, "{reply}");

    let info: serde_json::Value =
        serde_json::from_str(&ok(&cluster.api_cli(&["run", "get-info", "--agent", "node/1"]))).unwrap();
    assert!(info["cpus"].as_u64().unwrap() >= 1, "{info}");
    ok(&cluster.api_cli(&["run", "set-name", "--data", r#"{"name": "Test HQ"}"#]));

    // A crashed agent is restarted by the supervisor.
    cluster.kill9("node-agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cluster.api_cli(&["run", "get-info", "--agent", "1", "--quiet"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "node agent not back:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Data survives a restart of the whole cluster (Redis persistence).
    ok(&cluster.xtask(&["down"]));
    assert!(cluster.processes().is_empty(), "down leaves nothing running: {:?}", cluster.processes());
    let text = ok(&cluster.xtask(&up_args));
    assert!(!text.contains(&password) && text.contains("already exists"), "the password is shown once: {text}");
    let (status, _) = http(api_port, "POST", "/api/login", None, &login);
    assert_eq!(status, 200, "the admin survives a restart\n{}", cluster.log());
    let name = ok(&cluster.api_cli(&["run", "get-name"]));
    assert!(name.contains("Test HQ"), "{name}\n{}", cluster.log());
    ok(&cluster.xtask(&["down", "--purge"]));
    assert!(cluster.processes().is_empty());
    assert!(!cluster.path().join("redis").exists(), "--purge removes the data");
}
