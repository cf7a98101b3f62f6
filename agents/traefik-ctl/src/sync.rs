//! Reading Traefik back: an action returns when Traefik's API shows what was written
//! (NS8 sleeps in "waitsync" steps instead). The API listens on loopback only.

use std::time::{Duration, Instant};

use protocol::actions::traefik::SetRouteRequest;
use serde_json::Value;

use crate::env::Env;
use crate::fail::Failure;
use crate::render;

/// Why a route Traefik was given is not served as written.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Traefik loaded it and says what is wrong with it.
    #[error("Traefik refused the route {instance}: {errors}")]
    Refused { instance: String, errors: String },
    #[error(transparent)]
    NotTaken(#[from] NotTaken),
}

/// Traefik did not show the change in time (or did not answer).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotTaken(String);

const POLL: Duration = Duration::from_millis(25);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn api(env: &Env, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", env.api_port)
}

/// `(status, body)` of a GET to Traefik's API; `None` when it does not answer.
fn get(agent: &ureq::Agent, url: &str) -> Option<(u16, Value)> {
    let mut resp = agent.get(url).call().ok()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    Some((status, body))
}

/// Wait until Traefik answers, and is this module's: its `https` entry point is on
/// the configured port (another program on the API port must not pass for it).
pub fn wait_ready(env: &Env, timeout: Duration) -> Result<(), Failure> {
    let a = agent();
    let deadline = Instant::now() + timeout;
    let want = format!(":{}", env.load()?.https_port);
    let mut last = String::from("nothing answers");
    while Instant::now() < deadline {
        match get(&a, &api(env, "/api/entrypoints/https")) {
            Some((200, body)) if body["address"] == want.as_str() => return Ok(()),
            Some((status, body)) => {
                last =
                    format!("what answers there ({status}) has the HTTPS entry point {}, not {want}", body["address"])
            }
            None => {}
        }
        std::thread::sleep(POLL);
    }
    Err(Failure::failed(format!(
        "Traefik does not answer on 127.0.0.1:{} within {} s ({last}): see the module's log (podman logs traefik, as the module's user)",
        env.api_port,
        timeout.as_secs()
    )))
}

fn without_provider(names: &Value) -> Vec<String> {
    names
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(|s| s.trim_end_matches("@file").to_owned()).collect())
        .unwrap_or_default()
}

/// Wait until both routers of `r` are loaded as written and enabled.
pub fn wait_route(env: &Env, r: &SetRouteRequest, timeout: Duration) -> Result<(), RouteError> {
    let a = agent();
    let deadline = Instant::now() + timeout;
    let (http_mw, https_mw) = render::middlewares(r);
    let want_rule = render::rule(r);
    let mut last = String::from("Traefik did not answer");
    while Instant::now() < deadline {
        let mut ready = 0;
        for (name, mw) in render::routers(&r.instance).iter().zip([&http_mw, &https_mw]) {
            match get(&a, &api(env, &format!("/api/http/routers/{name}@file"))) {
                Some((200, body)) => {
                    let errors: Vec<String> = body["error"]
                        .as_array()
                        .map(|e| e.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                        .unwrap_or_default();
                    let loaded = body["rule"] == want_rule.as_str() && without_provider(&body["middlewares"]) == *mw;
                    if loaded && (!errors.is_empty() || body["status"] == "disabled") {
                        return Err(RouteError::Refused { instance: r.instance.clone(), errors: errors.join("; ") });
                    }
                    if loaded && body["status"] == "enabled" {
                        ready += 1;
                    } else {
                        last = format!("router {name} is not loaded yet (status {})", body["status"]);
                    }
                }
                Some((status, _)) => last = format!("router {name}: Traefik answers {status}"),
                None => last = "Traefik does not answer".into(),
            }
        }
        if ready == 2 {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    Err(NotTaken(format!(
        "Traefik did not take the route {} within {} s ({last}); the previous configuration is back",
        r.instance,
        timeout.as_secs()
    ))
    .into())
}

/// Wait until Traefik no longer has the routers of `instance`.
pub fn wait_gone(env: &Env, instance: &str, timeout: Duration) -> Result<(), NotTaken> {
    let a = agent();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let gone = render::routers(instance)
            .iter()
            .all(|name| matches!(get(&a, &api(env, &format!("/api/http/routers/{name}@file"))), Some((404, _))));
        if gone {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    Err(NotTaken(format!(
        "Traefik still serves the route {instance} after {} s; its configuration is back",
        timeout.as_secs()
    )))
}
