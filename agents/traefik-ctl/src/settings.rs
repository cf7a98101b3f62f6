//! The module's own actions: create, the ports (configure-module), the ACME server;
//! Traefik's static configuration.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::env::{Acme, Env, IN_CONTAINER, RESOLVER, Settings, pretty, write_atomic};
use crate::fail::Failure;
use crate::{certs, render, service, validate};

/// Traefik's static configuration (JSON, which its YAML reader takes as it is).
fn static_config(env: &Env, s: &Settings) -> Value {
    let mut acme = json!({
        "storage": format!("{IN_CONTAINER}/acme/acme.json"),
        "caServer": s.acme.url,
    });
    if !s.acme.email.is_empty() {
        acme["email"] = json!(s.acme.email);
    }
    if s.acme.challenge == "TLS-ALPN-01" {
        acme["tlsChallenge"] = json!({});
    } else {
        acme["httpChallenge"] = json!({"entryPoint": "http"});
    }
    json!({
        "global": {"checkNewVersion": false, "sendAnonymousUsage": false},
        "entryPoints": {
            // Headers whose names alias another's (X_Forwarded_For for
            // X-Forwarded-For) are dropped: a PHP or CGI backend reads them as the one
            // they alias, which would let a client spoof what the proxy sets.
            "http": {"address": format!(":{}", s.http_port), "http": {"aliasHeadersStrategy": "delete"}},
            "https": {"address": format!(":{}", s.https_port), "http": {"aliasHeadersStrategy": "delete"}},
            // Traefik's API, read back by the actions: loopback only.
            "traefik": {"address": format!("127.0.0.1:{}", env.api_port), "http": {"aliasHeadersStrategy": "delete"}},
        },
        "api": {"insecure": true, "dashboard": false},
        "ping": {"entryPoint": "traefik"},
        // No throttle (2 s by default): a route is served as soon as its file is.
        "providers": {"providersThrottleDuration": "0s", "file": {"directory": format!("{IN_CONTAINER}/configs"), "watch": true}},
        "certificatesResolvers": {RESOLVER: {"acme": acme}},
        "log": {"level": "INFO"},
    })
}

/// What Traefik's container gets in its environment: the CA bundle the ACME client
/// trusts, when a private one is set.
fn container_env(s: &Settings) -> String {
    let mut t = String::from("# Written by traefik-ctl.\n");
    if s.acme.private_ca {
        t.push_str(&format!("LEGO_CA_CERTIFICATES={IN_CONTAINER}/acme/ca.pem\n"));
    }
    t
}

fn write_static(env: &Env, s: &Settings) -> Result<(), Failure> {
    write_atomic(&env.traefik_dir().join("traefik.yaml"), &pretty(&static_config(env, s)), 0o644)?;
    write_atomic(&env.state.join("traefik.env"), &container_env(s), 0o600)
}

/// The roles other agents are granted on this module (NS8's): `routeadm` for the
/// route actions, `certadm` for the certificates.
const ROLES: [(&str, &[&str]); 2] = [
    (protocol::actions::traefik::ROUTEADM, &["set-route", "get-route", "delete-route", "list-routes"]),
    (
        protocol::actions::traefik::CERTADM,
        // Not upload-certificate: as in NS8 it is the owner's (a module could otherwise
        // serve its own certificate for another module's host name).
        &["set-certificate", "get-certificate", "list-certificates", "delete-certificate"],
    ),
];

fn define_roles(env: &Env) -> Result<(), Failure> {
    let agent = env.agent();
    env.with_redis(|redis| async move {
        use bus::fred::prelude::*;
        for (role, actions) in ROLES {
            let _: i64 = redis.sadd(protocol::keys::role(&agent, role), actions.to_vec()).await?;
        }
        Ok(())
    })
    .map_err(|e| Failure::failed(format!("cannot define the roles of {}: {e}", env.agent())))
}

/// `create-module`.
pub fn create(env: &Env) -> Result<(), Failure> {
    for d in [env.configs(), env.certs(), env.traefik_dir().join("acme"), env.routes()] {
        std::fs::create_dir_all(&d).map_err(|e| Failure::failed(format!("cannot create {}: {e}", d.display())))?;
    }
    let s = env.load()?;
    env.save(&s)?;
    certs::make_default(env)?;
    write_static(env, &s)?;
    render::write_tls(env)?;
    define_roles(env)
}

/// `configure-module {http_port, https_port}`: both default to what is set (80, 443).
pub fn configure(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: protocol::actions::traefik::ConfigureRequest = validate::decode(data)?;
    let mut s = env.load()?;
    for (name, port) in [("http_port", req.http_port), ("https_port", req.https_port)] {
        if port == Some(0) || (port.is_some() && port == Some(env.api_port)) {
            return Err(Failure::invalid(name, json!(port), format!("{name}_invalid")));
        }
    }
    s.http_port = req.http_port.unwrap_or(s.http_port);
    s.https_port = req.https_port.unwrap_or(s.https_port);
    if s.http_port == s.https_port {
        return Err(Failure::invalid("https_port", json!(s.https_port), "https_port_same_as_http_port"));
    }
    env.save(&s)?;
    write_static(env, &s)?;
    service::restart(env)?;
    get_configuration(env)
}

pub fn get_configuration(env: &Env) -> Result<Value, Failure> {
    let s = env.load()?;
    let reply = protocol::actions::traefik::ConfigureReply { http_port: s.http_port, https_port: s.https_port };
    Ok(serde_json::to_value(reply).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcmeRequest {
    url: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    challenge: Option<String>,
    /// Beyond NS8: the PEM bundle of a private ACME server's CA (a test CA, a company
    /// CA); without it the server must have a publicly trusted certificate.
    #[serde(default)]
    ca_certificate: Option<String>,
}

/// `set-acme-server {url, email, challenge}`: Traefik restarts with the new resolver.
pub fn set_acme_server(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: AcmeRequest = validate::decode(data)?;
    let url = url::Url::parse(&req.url).map_err(|_| Failure::invalid("url", json!(req.url), "url_invalid"))?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(Failure::invalid("url", json!(req.url), "url_not_https"));
    }
    if !req.email.is_empty() && !validate::email(&req.email) {
        return Err(Failure::invalid("email", json!(req.email), "email_invalid"));
    }
    let challenge = req.challenge.unwrap_or_else(|| "HTTP-01".into());
    if !matches!(challenge.as_str(), "HTTP-01" | "TLS-ALPN-01") {
        return Err(Failure::invalid("challenge", json!(challenge), "challenge_invalid"));
    }
    let ca_path = env.traefik_dir().join("acme/ca.pem");
    if let Some(pem) = &req.ca_certificate {
        if certs::parse_chain(pem).map(|c| c.is_empty()).unwrap_or(true) {
            return Err(Failure::invalid("ca_certificate", json!("(PEM)"), "ca_certificate_invalid"));
        }
        write_atomic(&ca_path, pem, 0o644)?;
    }
    let mut s = env.load()?;
    let before = s.acme.clone();
    s.acme = Acme { url: req.url, email: req.email, challenge, private_ca: req.ca_certificate.is_some() };
    if s.acme.url != before.url {
        // Certificates of another CA, and its account, are of no use with this one.
        let _ = std::fs::remove_file(env.acme_store());
    }
    env.save(&s)?;
    write_static(env, &s)?;
    service::restart(env)?;
    get_acme_server(env)
}

pub fn get_acme_server(env: &Env) -> Result<Value, Failure> {
    let a = env.load()?.acme;
    Ok(json!({"url": a.url, "email": a.email, "challenge": a.challenge, "private_ca": a.private_ca}))
}
