//! Where the module's files are, its settings (ports, ACME server), Traefik's static
//! configuration, and starting Traefik.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::fail::Failure;
use crate::{certs, render, sync, validate};

/// Let's Encrypt's production directory: the default ACME server, as NS8's.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The name of the certificate resolver in the static configuration (NS8's).
pub const RESOLVER: &str = "acmeServer";
/// Where the module's state directory is mounted in Traefik's container.
pub const IN_CONTAINER: &str = "/etc/traefik";
/// The service (its `.container` file) that runs Traefik.
pub const SERVICE: &str = "traefik";

/// The step's environment: the module's directories and who asked.
pub struct Env {
    pub state: PathBuf,
    pub module_id: String,
    pub node_id: u32,
    /// `AGENT_TASK_USER`: `module/<id>` for a module, an administrator's name, or empty
    /// (a core agent's task over Redis).
    pub caller: String,
    pub event_source: String,
    /// `TCP_PORT`: the loopback port the node gave the module, for Traefik's API.
    pub api_port: u16,
}

impl Env {
    pub fn from_process() -> Result<Self, Failure> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let state = PathBuf::from(var(protocol::stepenv::AGENT_STATE_DIR));
        if !state.is_absolute() {
            return Err(Failure::failed("AGENT_STATE_DIR is not set: run as a step of the traefik module"));
        }
        let agent = var(protocol::stepenv::AGENT_ID);
        let module_id = agent.strip_prefix("module/").unwrap_or(&agent).to_owned();
        let api_port = var("TCP_PORT").parse().unwrap_or(0);
        Ok(Env {
            state,
            module_id,
            node_id: var("NODE_ID").parse().unwrap_or(0),
            caller: var(protocol::stepenv::AGENT_TASK_USER),
            event_source: var(protocol::stepenv::AGENT_EVENT_SOURCE),
            api_port,
        })
    }

    /// Traefik's own directory (mounted at [`IN_CONTAINER`]).
    pub fn traefik_dir(&self) -> PathBuf {
        self.state.join("traefik")
    }
    pub fn configs(&self) -> PathBuf {
        self.traefik_dir().join("configs")
    }
    pub fn certs(&self) -> PathBuf {
        self.traefik_dir().join("certs")
    }
    pub fn acme_store(&self) -> PathBuf {
        self.traefik_dir().join("acme/acme.json")
    }
    pub fn routes(&self) -> PathBuf {
        self.state.join("routes")
    }
    fn settings_file(&self) -> PathBuf {
        self.state.join("traefik-settings.json")
    }

    /// The module id of the caller when it is a module.
    pub fn calling_module(&self) -> Option<&str> {
        self.caller.strip_prefix("module/")
    }

    /// A core agent (cluster, node) or root over Redis: may set the reserved routes.
    pub fn caller_is_core(&self) -> bool {
        self.caller.is_empty() || self.caller == "cluster" || self.caller.starts_with("node/")
    }

    pub fn load(&self) -> Result<Settings, Failure> {
        match std::fs::read_to_string(self.settings_file()) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Failure::failed(format!("traefik-settings.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(Failure::failed(format!("cannot read traefik-settings.json: {e}"))),
        }
    }

    fn save(&self, s: &Settings) -> Result<(), Failure> {
        write_atomic(&self.settings_file(), &pretty(&serde_json::to_value(s).unwrap_or_default()), 0o600)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub http_port: u16,
    pub https_port: u16,
    pub acme: Acme,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { http_port: 80, https_port: 443, acme: Acme::default() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Acme {
    pub url: String,
    pub email: String,
    /// `HTTP-01` or `TLS-ALPN-01`.
    pub challenge: String,
    /// Whether a CA bundle to trust the ACME server by is installed (a private CA such
    /// as a test one; the public ones are in Traefik's own bundle).
    pub private_ca: bool,
}

impl Default for Acme {
    fn default() -> Self {
        Acme { url: LETS_ENCRYPT.into(), email: String::new(), challenge: "HTTP-01".into(), private_ca: false }
    }
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Write `path` whole or not at all: a temporary file beside it, fsync'd, renamed.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().ok_or_else(|| Failure::failed(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| Failure::failed(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".{}.new", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))
}

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
        &["get-certificate", "list-certificates", "delete-certificate", "upload-certificate"],
    ),
];

fn define_roles(env: &Env) -> Result<(), Failure> {
    let agent = protocol::AgentId::Module(env.module_id.clone());
    let cfg = bus::RedisConfig::from_env(&agent.to_string()).map_err(|e| Failure::failed(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(e.to_string()))?;
    rt.block_on(async {
        use bus::fred::prelude::*;
        let redis = bus::connect(&cfg, &format!("{agent}/create")).await.map_err(|e| Failure::failed(e.to_string()))?;
        for (role, actions) in ROLES {
            let key = protocol::keys::role(&agent, role);
            let _: i64 = redis
                .sadd(&key, actions.to_vec())
                .await
                .map_err(|e| Failure::failed(format!("cannot define the role {key}: {e}")))?;
        }
        let _ = redis.quit().await;
        Ok(())
    })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigureRequest {
    http_port: Option<u16>,
    https_port: Option<u16>,
}

/// `configure-module {http_port, https_port}`: both default to what is set (80, 443).
pub fn configure(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: ConfigureRequest = validate::decode(data)?;
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
    restart(env)?;
    get_configuration(env)
}

pub fn get_configuration(env: &Env) -> Result<Value, Failure> {
    let s = env.load()?;
    Ok(json!({"http_port": s.http_port, "https_port": s.https_port}))
}

/// Start Traefik (enabled: also at every start of the agent) if it is not running.
pub fn up(env: &Env) -> Result<(), Failure> {
    hostcmd::Cmd::new("module-service").args(["enable", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    sync::wait_ready(env, Duration::from_secs(30))
}

/// Restart Traefik so it reads a changed static configuration.
fn restart(env: &Env) -> Result<(), Failure> {
    hostcmd::Cmd::new("module-service")
        .args(["enable", "--no-start", SERVICE])
        .run()
        .map_err(|e| Failure::failed(e.to_string()))?;
    hostcmd::Cmd::new("module-service").args(["restart", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    sync::wait_ready(env, Duration::from_secs(30))
}

/// Run `f` with Traefik stopped, then start it and wait until it answers.
pub fn stopped(env: &Env, f: impl FnOnce() -> Result<(), Failure>) -> Result<(), Failure> {
    hostcmd::Cmd::new("module-service").args(["stop", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    let r = f();
    hostcmd::Cmd::new("module-service").args(["start", SERVICE]).run().map_err(|e| Failure::failed(e.to_string()))?;
    sync::wait_ready(env, Duration::from_secs(30))?;
    r
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
    restart(env)?;
    get_acme_server(env)
}

pub fn get_acme_server(env: &Env) -> Result<Value, Failure> {
    let a = env.load()?.acme;
    Ok(json!({"url": a.url, "email": a.email, "challenge": a.challenge, "private_ca": a.private_ca}))
}
