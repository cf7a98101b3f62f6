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

/// The result of opening `/ws` with `query`: the HTTP status of a refused handshake,
/// or the socket.
fn open(api: &Api, query: &str, headers: &[(&str, &str)]) -> Result<Socket, u16> {
    use tungstenite::client::IntoClientRequest;
    let url = format!("{}/ws{query}", api.url.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name: tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    match tungstenite::connect(req) {
        Ok((mut ws, _)) => {
            if let MaybeTlsStream::Plain(s) = ws.get_mut() {
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            }
            Ok(ws)
        }
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// Whether the socket is authorized: it answers a request other than `authorize` with
/// `error` (an unauthorized one, with `authorize-error`).
fn authorized(ws: &mut Socket) -> bool {
    ws.send(Message::text(json!({"action": "ping"}).to_string())).unwrap();
    let seen = collect(ws, common::PATIENCE, |v| v["type"] == "error" || v["type"] == "authorize-error");
    seen.iter().any(|m| m["type"] == "error")
}

fn ticket(api: &Api, token: &str, headers: &[(&str, &str)]) -> common::Reply {
    api.request("POST", "/api/ws-ticket", Some(token), None, headers)
}

#[test]
fn no_token_in_urls_and_one_time_tickets_for_ws() {
    let api = Api::start(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);

    // NS8's ?jwt= is refused everywhere, with the way out.
    let r = api.request("GET", &format!("/api/cluster/tasks?jwt={token}"), None, None, &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("tokens in URLs are not accepted"), "{r:?}");
    assert_eq!(open(&api, &format!("?jwt={token}"), &[]).err(), Some(401));

    // The authorize message still works: it is not in a URL.
    let mut ws = connect(&api, &token);
    assert!(authorized(&mut ws));
    // Without it, the socket is not authorized.
    let mut ws = open(&api, "", &[]).unwrap();
    assert!(!authorized(&mut ws));

    // A ticket opens one socket, once.
    let r = ticket(&api, &token, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let t = r.data()["ticket"].as_str().unwrap().to_owned();
    assert_eq!(r.data()["expires_in"], 30);
    let stored = api.redis.cli(&["KEYS", "private/api/ws_ticket/*"]).unwrap();
    assert_eq!(stored.lines().count(), 1);
    assert!(!stored.contains(&t), "only a hash of the ticket is stored");
    let ttl: i64 = api.redis.cli(&["TTL", stored.trim()]).unwrap().parse().unwrap();
    assert!((1..=30).contains(&ttl), "{ttl}");
    let mut ws = open(&api, &format!("?ticket={t}"), &[]).unwrap();
    assert!(authorized(&mut ws), "the ticket authorized the socket");
    assert_eq!(open(&api, &format!("?ticket={t}"), &[]).err(), Some(401), "a ticket is used once");
    assert_eq!(open(&api, "?ticket=made-up", &[]).err(), Some(401));

    // A ticket is bound to the address that asked for it.
    let t = ticket(&api, &token, &[("X-Forwarded-For", "192.0.2.1")]).data()["ticket"].as_str().unwrap().to_owned();
    assert_eq!(open(&api, &format!("?ticket={t}"), &[("X-Forwarded-For", "192.0.2.2")]).err(), Some(401));

    // And to its session: after a logout it opens nothing.
    let t = ticket(&api, &token, &[]).data()["ticket"].as_str().unwrap().to_owned();
    assert_eq!(api.request("POST", "/api/logout", Some(&token), None, &[]).status, 200);
    assert_eq!(open(&api, &format!("?ticket={t}"), &[]).err(), Some(401));
}

/// `POST /api/ws-ticket` is for any valid session, users and agents alike; anyone
/// else is refused.
#[test]
fn ws_tickets_only_for_valid_sessions() {
    let api = Api::start(&[]);
    api.add_user("bob", PASSWORD, &[]);
    api.add_user("carol", PASSWORD, &[]);
    let bob = api.token("bob", PASSWORD);
    assert_eq!(ticket(&api, &bob, &[]).status, 200, "no role is needed");
    let r = api.request("POST", "/api/ws-ticket", None, None, &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(ticket(&api, "eyJhbGciOiJIUzI1NiJ9.e30.bm90IGEgc2lnbmF0dXJl", &[]).status, 401);
    let carol = api.token("carol", PASSWORD);
    api.redis.cli(&["HSET", "user/carol", "allowed_networks", "192.0.2.0/24"]).unwrap();
    assert_eq!(ticket(&api, &carol, &[]).status, 403, "not from an allowed network");
    assert_eq!(api.request("POST", "/api/logout", Some(&bob), None, &[]).status, 200);
    assert_eq!(ticket(&api, &bob, &[]).status, 401, "revoked");
    assert_eq!(api.redis.cli(&["KEYS", "private/api/ws_ticket/*"]).unwrap().lines().count(), 1);
}
