//! The route actions. A route is two files written by the module's own user: its
//! record (`routes/<instance>.json`, the request and its owner) and its Traefik
//! configuration (`configs/<instance>.yaml`). The configuration goes in first and is
//! read back from Traefik's API; when Traefik refuses it or does not take it, the
//! previous file comes back and the record is left as it was.

use std::time::Duration;

use protocol::actions::traefik::{
    CLUSTER_ADMIN_PATH, CLUSTER_ADMIN_ROUTE, DeleteRouteRefusal, GetRouteRefusal, InstanceRequest, ListRoutesRequest,
    RouteRecord, SetRouteRefusal, SetRouteReply, SetRouteRequest,
};
use serde_json::{Value, json};

use crate::env::{Env, pretty, write_atomic};
use crate::fail::Failure;
use crate::sync;
use crate::validate;
use crate::{certs, render};

/// How long `lets_encrypt_check` waits for the ACME server.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether Traefik's store holds a certificate for `host` within `timeout`.
fn certificate_within(env: &Env, host: &str, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if certs::acme(env).iter().any(|c| certs::covers(&c.names, host)) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long Traefik may take to serve a changed file before the change is undone.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

fn record_file(env: &Env, instance: &str) -> std::path::PathBuf {
    env.routes().join(format!("{instance}.json"))
}

pub fn load_all(env: &Env) -> Result<Vec<RouteRecord>, Failure> {
    let mut out = Vec::new();
    let dir = match std::fs::read_dir(env.routes()) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Failure::failed(format!("cannot read {}: {e}", env.routes().display()))),
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path())?;
        let rec: RouteRecord =
            serde_json::from_str(&text).map_err(|err| Failure::failed(format!("{}: {err}", e.path().display())))?;
        out.push(rec);
    }
    out.sort_by(|a, b| a.route.instance.cmp(&b.route.instance));
    Ok(out)
}

/// One route change at a time (the agent runs tasks in parallel): the conflict check
/// and the write are one step.
fn lock(env: &Env) -> Result<std::fs::File, Failure> {
    std::fs::create_dir_all(env.routes())?;
    let path = env.routes().join(".lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    f.lock().map_err(|e| Failure::failed(format!("cannot lock {}: {e}", path.display())))?;
    Ok(f)
}

fn load(env: &Env, instance: &str) -> Result<Option<RouteRecord>, Failure> {
    match std::fs::read_to_string(record_file(env, instance)) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).map_err(|e| Failure::failed(format!("route {instance}: {e}")))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether module `id` owns route `instance`: its own id, or the id and a separator.
fn owns(id: &str, instance: &str) -> bool {
    instance == id || instance.strip_prefix(id).is_some_and(|rest| rest.starts_with(['-', '_']))
}

/// May the caller touch route `instance`? Modules their own only; the cluster-admin
/// route is the core's.
fn may_change(env: &Env, instance: &str) -> Result<(), (bool, Value)> {
    if instance == CLUSTER_ADMIN_ROUTE && !env.caller_is_core() {
        return Err((true, json!(instance)));
    }
    match env.calling_module() {
        Some(id) if !owns(id, instance) => Err((false, json!(instance))),
        _ => Ok(()),
    }
}

fn check(env: &Env, r: &mut SetRouteRequest) -> Result<(), Failure> {
    if !validate::instance(&r.instance) {
        return Err(Failure::invalid("instance", json!(r.instance), "instance_invalid"));
    }
    if let Err((reserved, v)) = may_change(env, &r.instance) {
        let refusal = if reserved { SetRouteRefusal::Reserved } else { SetRouteRefusal::NotOwnInstance };
        return Err(Failure::refuse(refusal, v));
    }
    if r.url.is_empty() {
        return Err(Failure::refuse(SetRouteRefusal::MissingUrl, json!(r.url)));
    }
    if !validate::backend(&r.url) {
        return Err(Failure::invalid("url", json!(r.url), "url_invalid"));
    }
    r.host = r.host.take().map(|h| h.to_ascii_lowercase()).filter(|h| !h.is_empty());
    r.path = r.path.take().filter(|p| !p.is_empty());
    if r.host.is_none() && r.path.is_none() {
        return Err(Failure::refuse(SetRouteRefusal::MissingPath, Value::Null));
    }
    if let Some(h) = &r.host
        && !validate::host(h)
    {
        return Err(Failure::invalid("host", json!(h), "host_invalid"));
    }
    if let Some(p) = &r.path {
        if !validate::path(p) {
            return Err(Failure::invalid("path", json!(p), "path_invalid"));
        }
        let under_admin = p == CLUSTER_ADMIN_PATH || p.starts_with(&format!("{CLUSTER_ADMIN_PATH}/"));
        if under_admin && r.host.is_none() && r.instance != CLUSTER_ADMIN_ROUTE {
            return Err(Failure::refuse_with(
                SetRouteRefusal::Reserved,
                json!(p),
                &[("detail", "the cluster-admin path is the api-server's".into())],
            ));
        }
    }
    if r.lets_encrypt && r.host.is_none() {
        return Err(Failure::invalid("lets_encrypt", json!(true), "lets_encrypt_requires_host"));
    }
    for (side, map) in [("request", &r.headers.request), ("response", &r.headers.response)] {
        for (k, v) in map {
            if !validate::header_name(k) {
                return Err(Failure::invalid(&format!("headers.{side}"), json!(k), "header_name_invalid"));
            }
            if !validate::header_value(v) {
                return Err(Failure::invalid(&format!("headers.{side}.{k}"), json!(v), "header_value_invalid"));
            }
        }
    }
    for (n, c) in r.ip_allowlist.iter().enumerate() {
        if !validate::cidr(c) {
            return Err(Failure::invalid(&format!("ip_allowlist.{n}"), json!(c), "ip_allowlist_invalid"));
        }
    }
    if let Some(fa) = &r.forward_auth {
        if !validate::backend(&fa.address) {
            return Err(Failure::invalid("forward_auth.address", json!(fa.address), "forward_auth_address_invalid"));
        }
        if let Some(h) = fa.auth_response_headers.iter().find(|h| !validate::header_name(h)) {
            return Err(Failure::invalid("forward_auth.auth_response_headers", json!(h), "header_name_invalid"));
        }
    }
    Ok(())
}

/// A module may send the LAN to this node's loopback only on the ports the node gave
/// it (`TCP_PORT` and `TCP_PORTS_RANGE` in its environment, read from Redis): another
/// module's port, or Redis's, is not its to publish.
fn loopback_port_owned(env: &Env, url: &str) -> Result<(), Failure> {
    let Some(id) = env.calling_module() else { return Ok(()) };
    let Ok(u) = url::Url::parse(url) else { return Ok(()) };
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback() || a.is_unspecified(),
        Some(url::Host::Ipv6(a)) => a.is_loopback() || a.is_unspecified(),
        None => false,
    };
    if !loopback {
        return Ok(());
    }
    let port = u.port_or_known_default().unwrap_or(0);
    let agent = protocol::AgentId::Module(id.to_owned());
    let ports: Vec<Option<String>> = env
        .with_redis(|redis| async move {
            use bus::fred::prelude::*;
            redis.hmget(protocol::keys::environment(&agent), vec!["TCP_PORT", "TCP_PORTS_RANGE"]).await
        })
        .map_err(|e| Failure::failed(format!("cannot read the ports of {id}: {e}")))?;
    let single = ports[0].as_deref().and_then(|p| p.parse::<u16>().ok());
    let range = ports[1]
        .as_deref()
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)));
    let owned = single == Some(port) || range.is_some_and(|(a, b)| (a..=b).contains(&port));
    if owned {
        return Ok(());
    }
    Err(Failure::refuse_with(
        SetRouteRefusal::PortNotOwned,
        json!(url),
        &[("detail", format!("port {port} on this node's loopback is not one of {id}'s"))],
    ))
}

/// Who owns a route set now: the calling module, or the owner it had.
fn owner_of(env: &Env, previous: Option<&RouteRecord>) -> String {
    match env.calling_module() {
        Some(id) => id.to_owned(),
        None => previous.map(|p| p.owner.clone()).unwrap_or_default(),
    }
}

/// The key two routes conflict on: host (lower case) and path without a final `/`.
fn selector(r: &SetRouteRequest) -> (String, String) {
    let host = r.host.clone().unwrap_or_default().to_ascii_lowercase();
    let path = r.path.clone().unwrap_or_default();
    let path = if path.len() > 1 { path.trim_end_matches('/').to_owned() } else { path };
    (host, path)
}

/// `set-route`.
pub fn set(env: &Env, data: Value) -> Result<Value, Failure> {
    let mut r: SetRouteRequest = validate::decode(data)?;
    check(env, &mut r)?;
    let _lock = lock(env)?;
    let all = load_all(env)?;
    let previous = all.iter().find(|x| x.route.instance == r.instance).cloned();
    if let Some(other) = all.iter().find(|x| x.route.instance != r.instance && selector(&x.route) == selector(&r)) {
        let holder = if other.owner.is_empty() { other.route.instance.clone() } else { other.owner.clone() };
        let value = match &r.host {
            Some(h) => json!(h),
            None => json!(r.path),
        };
        return Err(Failure::refuse_with(
            SetRouteRefusal::HostTaken,
            value,
            &[("owner", holder), ("detail", format!("route {} has it", other.route.instance))],
        ));
    }
    loopback_port_owned(env, &r.url)?;
    let rec = RouteRecord { route: r.clone(), owner: owner_of(env, previous.as_ref()) };
    apply(env, &r.instance, Some(&r))?;
    let host = r.host.clone().unwrap_or_default();
    if r.lets_encrypt_check
        && r.lets_encrypt
        && !certs::uploaded_for(env, &r)?
        && !certificate_within(env, &host, CHECK_TIMEOUT)
    {
        // Not half applied: the route it replaced serves again.
        let _ = apply(env, &r.instance, previous.as_ref().map(|p| &p.route));
        return Err(Failure::refuse_with(
            SetRouteRefusal::CertificateNotObtained,
            json!(host),
            &[(
                "detail",
                format!(
                    "no certificate for {host} from the ACME server within {} s; see Traefik's log",
                    CHECK_TIMEOUT.as_secs()
                ),
            )],
        ));
    }
    write_atomic(&record_file(env, &r.instance), &pretty(&serde_json::to_value(&rec).unwrap_or_default()), 0o600)?;
    Ok(serde_json::to_value(SetRouteReply { instance: r.instance, owner: rec.owner }).unwrap_or_default())
}

/// Put `route`'s configuration in place (or remove it for `None`) and wait until Traefik
/// serves that; on a refusal or a timeout the previous file is put back.
fn apply(env: &Env, instance: &str, route: Option<&SetRouteRequest>) -> Result<(), Failure> {
    let file = render::route_file(env, instance);
    let before = std::fs::read_to_string(&file).ok();
    let result = match route {
        Some(r) => {
            write_atomic(&file, &pretty(&render::route_config(r, certs::uploaded_for(env, r)?)), 0o600)?;
            sync::wait_route(env, r, SYNC_TIMEOUT).map_err(|e| match e {
                sync::RouteError::Refused { .. } => {
                    Failure::refuse_with(SetRouteRefusal::Refused, json!(instance), &[("detail", e.to_string())])
                }
                sync::RouteError::NotTaken(e) => Failure::failed(e.to_string()),
            })
        }
        None => {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Failure::failed(format!("cannot remove {}: {e}", file.display()))),
            }
            sync::wait_gone(env, instance, SYNC_TIMEOUT).map_err(|e| Failure::failed(e.to_string()))
        }
    };
    if let Err(e) = result {
        match &before {
            Some(text) => {
                let _ = write_atomic(&file, text, 0o600);
            }
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
        return Err(e);
    }
    Ok(())
}

/// Write every route's configuration again (the certificates changed) and wait until
/// Traefik serves each.
pub fn rerender(env: &Env) -> Result<(), Failure> {
    let _lock = lock(env)?;
    for rec in load_all(env)? {
        apply(env, &rec.route.instance, Some(&rec.route))?;
    }
    Ok(())
}

/// What a caller is shown of a route: header values that are secrets (the proxy
/// token of the cluster-admin route) only to the core.
fn shown(env: &Env, mut rec: RouteRecord) -> RouteRecord {
    if !env.caller_is_core() {
        for (k, v) in rec.route.headers.request.iter_mut().chain(rec.route.headers.response.iter_mut()) {
            if protocol::secrets::is_secret_name(k) {
                *v = protocol::secrets::MASK.to_owned();
            }
        }
    }
    rec
}

/// `get-route {instance}`.
pub fn get(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: InstanceRequest = validate::decode(data)?;
    if !validate::instance(&req.instance) {
        return Err(Failure::invalid("instance", json!(req.instance), "instance_invalid"));
    }
    match load(env, &req.instance)? {
        Some(rec) => Ok(serde_json::to_value(shown(env, rec)).unwrap_or_default()),
        None => Err(Failure::refuse(GetRouteRefusal::NotFound, json!(req.instance))),
    }
}

fn remove(env: &Env, instance: &str) -> Result<(), Failure> {
    apply(env, instance, None)?;
    match std::fs::remove_file(record_file(env, instance)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `delete-route {instance}`.
pub fn delete(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: InstanceRequest = validate::decode(data)?;
    if !validate::instance(&req.instance) {
        return Err(Failure::invalid("instance", json!(req.instance), "instance_invalid"));
    }
    if let Err((reserved, v)) = may_change(env, &req.instance) {
        let refusal = if reserved { DeleteRouteRefusal::Reserved } else { DeleteRouteRefusal::NotOwnInstance };
        return Err(Failure::refuse(refusal, v));
    }
    let _lock = lock(env)?;
    if load(env, &req.instance)?.is_none() {
        return Err(Failure::refuse(DeleteRouteRefusal::NotFound, json!(req.instance)));
    }
    remove(env, &req.instance)?;
    Ok(Value::Null)
}

/// `list-routes {expand_list}`: names (NS8's default), or the records.
pub fn list(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: ListRoutesRequest = validate::decode(data)?;
    let all = load_all(env)?;
    Ok(if req.expand_list {
        serde_json::to_value(all.into_iter().map(|r| shown(env, r)).collect::<Vec<_>>()).unwrap_or_default()
    } else {
        json!(all.into_iter().map(|r| r.route.instance).collect::<Vec<_>>())
    })
}

/// The `module-removed` handler: only the cluster's event counts (a module may publish
/// an event of that name on its own channel; it removes nothing).
pub fn module_removed(env: &Env, data: Value) -> Result<Value, Failure> {
    if env.event_source != "cluster" {
        eprintln!("module-removed from {:?} ignored: only the cluster's counts", env.event_source);
        return Ok(Value::Null);
    }
    let ev: protocol::events::ModuleEvent =
        serde_json::from_value(data).map_err(|e| Failure::failed(format!("module-removed payload: {e}")))?;
    let _lock = lock(env)?;
    let mut failed = Vec::new();
    for rec in load_all(env)? {
        let i = &rec.route.instance;
        if rec.owner == ev.module || owns(&ev.module, i) {
            if let Err(e) = remove(env, i) {
                failed.push(format!("{i}: {e:?}"));
            } else {
                eprintln!("route {i} of the removed module {} deleted", ev.module);
            }
        }
    }
    if failed.is_empty() {
        Ok(Value::Null)
    } else {
        Err(Failure::failed(format!("cannot delete the routes of {}: {}", ev.module, failed.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_owns_its_id_and_what_follows_a_separator() {
        assert!(owns("dokuwiki1", "dokuwiki1"));
        assert!(owns("dokuwiki1", "dokuwiki1-admin"));
        assert!(owns("mail1", "mail1_rspamd"));
        assert!(!owns("dokuwiki1", "dokuwiki10"));
        assert!(!owns("dokuwiki1", "hello1"));
        assert!(!owns("dokuwiki1", "dokuwiki"));
    }

    #[test]
    fn selectors_ignore_case_and_a_final_slash() {
        let a =
            SetRouteRequest { host: Some("Wiki.Example.test".into()), path: Some("/a/".into()), ..Default::default() };
        let b =
            SetRouteRequest { host: Some("wiki.example.test".into()), path: Some("/a".into()), ..Default::default() };
        assert_eq!(selector(&a), selector(&b));
    }
}
