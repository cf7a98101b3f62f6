//! `/ws`: progress reaches the sessions that may see the task, and only them.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Api, PASSWORD};
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(api: &Api, token: &str) -> Socket {
    let url = format!("{}/ws", api.url.replace("http://", "ws://"));
    let (mut ws, _) = tungstenite::connect(url).expect("websocket connect");
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    }
    ws.send(Message::text(json!({"action": "authorize", "payload": {"jwt": token}}).to_string())).unwrap();
    ws
}

/// Messages received within `wait`, stopping early once `done` holds for one.
fn collect(ws: &mut Socket, wait: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let stop = done(&v);
                out.push(v);
                if stop {
                    break;
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    out
}

/// Users `admin` (granted `admin_grant`) and `bob` (reader of the cluster), their
/// tokens and their authorized sockets.
fn admin_and_bob(api: &Api, admin_grant: &str) -> (String, String, Socket, Socket) {
    api.add_user("admin", PASSWORD, &[admin_grant]);
    api.add_user("bob", PASSWORD, &["reader:cluster"]);
    let admin = api.token("admin", PASSWORD);
    let bob = api.token("bob", PASSWORD);
    let (admin_ws, bob_ws) = (connect(api, &admin), connect(api, &bob));
    // Let both sessions authorize before anything is published.
    std::thread::sleep(Duration::from_millis(300));
    (admin, bob, admin_ws, bob_ws)
}

fn completed(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| v["name"].as_str().is_some_and(|n| n.ends_with(id)) && v["payload"]["status"] == "completed"
}

#[test]
fn progress_goes_to_who_may_see_the_task() {
    let mut api = Api::start(&[]);
    api.start_agent("cluster-agent", "cluster");
    let (admin, bob, mut admin_ws, mut bob_ws) = admin_and_bob(&api, "owner:cluster");

    // set-name is the admin's, and a reader may not run it: bob sees nothing of it.
    let r = api.post("/api/cluster/tasks", &admin, &json!({"action": "set-name", "data": {"name": "Acme"}}));
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.data()["id"].as_str().unwrap().to_owned();
    let seen = collect(&mut admin_ws, common::PATIENCE, completed(&id));
    assert!(seen.iter().any(|m| completed(&id)(m)), "admin saw {seen:?}");
    let m = seen.iter().find(|m| completed(&id)(m)).unwrap();
    assert_eq!(m["type"], "task");
    assert_eq!(m["name"], format!("progress/cluster/task/{id}"));
    assert_eq!(m["payload"]["progress"], 100);
    let leaked = collect(&mut bob_ws, Duration::from_secs(1), |_| false);
    assert!(leaked.is_empty(), "bob saw {leaked:?}");

    // Bob's own task reaches bob (and the owner of the cluster).
    let r = api.post("/api/cluster/tasks", &bob, &json!({"action": "get-name"}));
    let id2 = r.data()["id"].as_str().unwrap().to_owned();
    let seen = collect(&mut bob_ws, common::PATIENCE, completed(&id2));
    assert!(seen.iter().any(|m| completed(&id2)(m)), "bob saw {seen:?}");
    assert!(seen.iter().all(|m| !m["name"].as_str().unwrap_or("").ends_with(&id)));
    let seen = collect(&mut admin_ws, common::PATIENCE, completed(&id2));
    assert!(seen.iter().any(|m| completed(&id2)(m)), "admin saw {seen:?}");

    // Logout revokes the session's right to progress too: at the next re-check the
    // socket is told and closed.
    let r = api.request("POST", "/api/logout", Some(&bob), None, &[]);
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_secs(6));
    let r = api.post("/api/cluster/tasks", &admin, &json!({"action": "get-name"}));
    let id3 = r.data()["id"].as_str().unwrap().to_owned();
    let seen = collect(&mut bob_ws, Duration::from_secs(5), |v| v["type"] == "authorize-error");
    assert!(seen.iter().any(|m| m["type"] == "authorize-error"), "bob saw {seen:?}");
    assert!(seen.iter().all(|m| !m["name"].as_str().unwrap_or("").ends_with(&id3)), "{seen:?}");
}

#[test]
fn a_bad_token_is_refused() {
    let api = Api::start(&[]);
    let mut ws = connect(&api, "not-a-token");
    let seen = collect(&mut ws, common::PATIENCE, |v| v["type"] == "authorize-error");
    assert_eq!(seen.last().map(|m| m["type"].clone()), Some(json!("authorize-error")), "{seen:?}");
}

#[test]
fn step_stderr_lines_stream_live_to_who_may_see_the_task() {
    let mut api = Api::start(&[]);
    let app = api.start_agent("module-agent", "module/app1");
    api.agents[app].0.step("say", "10say", "#!/bin/sh\necho hello-log >&2\necho second-line >&2\necho '{}'\n").unwrap();
    let (admin, _, mut admin_ws, mut bob_ws) = admin_and_bob(&api, "owner:module/app1");

    let r = api.post("/api/module/app1/tasks", &admin, &json!({"action": "say"}));
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.data()["id"].as_str().unwrap().to_owned();
    let seen = collect(&mut admin_ws, common::PATIENCE, completed(&id));
    let lines: Vec<&str> =
        seen.iter().filter(|m| m["type"] == "log").filter_map(|m| m["payload"]["line"].as_str()).collect();
    assert_eq!(lines, ["hello-log", "second-line"], "{seen:?}");
    let log = seen.iter().find(|m| m["type"] == "log").unwrap();
    assert_eq!(log["name"], format!("progress/module/app1/task/{id}"));
    // The whole stderr is also the task's error text.
    assert_eq!(api.wait_task("module/app1", &id, &admin).data()["error"], "hello-log\nsecond-line\n");
    let leaked = collect(&mut bob_ws, Duration::from_secs(1), |_| false);
    assert!(leaked.is_empty(), "bob saw {leaked:?}");
}
