//! The certificates the module holds: the default self-signed one made at create, the
//! uploaded ones, and those Traefik's ACME resolver obtained (read from its
//! `acme.json`); and the events that tell of them.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use protocol::actions::traefik::{CERTIFICATE_CHANGED, CertificateChanged};
use serde_json::{Value, json};
use x509_parser::prelude::*;

use crate::env::{Env, write_atomic};
use crate::fail::Failure;

/// A certificate expiring within this many days is flagged.
pub const EXPIRING_DAYS: i64 = 20;

/// The default certificate's files, under `certs/`.
pub fn default_paths() -> (&'static str, &'static str) {
    ("selfsigned.crt", "selfsigned.key")
}

pub fn custom_dir(env: &Env) -> PathBuf {
    env.certs().join("custom")
}

/// Make the default self-signed certificate (once), for this host's name.
pub fn make_default(env: &Env) -> Result<(), Failure> {
    let (crt, key) = default_paths();
    let (crt, key) = (env.certs().join(crt), env.certs().join(key));
    if crt.exists() && key.exists() {
        return Ok(());
    }
    let host = hostname();
    let mut params = rcgen::CertificateParams::new(vec![host.clone()])
        .map_err(|e| Failure::failed(format!("self-signed certificate for {host}: {e}")))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, host.clone());
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let pair = rcgen::KeyPair::generate().map_err(|e| Failure::failed(e.to_string()))?;
    let cert = params.self_signed(&pair).map_err(|e| Failure::failed(e.to_string()))?;
    write_atomic(&key, &pair.serialize_pem(), 0o600)?;
    write_atomic(&crt, &cert.pem(), 0o644)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Why a PEM bundle or a certificate in it cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("not PEM: {0}")]
    NotPem(String),
    #[error("a {0} where a CERTIFICATE was expected")]
    NotACertificate(String),
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
}

/// The DER certificates of a PEM bundle; anything else in it is an error.
pub fn parse_chain(pem: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let mut out = Vec::new();
    for p in Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| PemError::NotPem(e.to_string()))?;
        if p.label != "CERTIFICATE" {
            return Err(PemError::NotACertificate(p.label));
        }
        X509Certificate::from_der(&p.contents).map_err(|e| PemError::NotX509(e.to_string()))?;
        out.push(p.contents);
    }
    Ok(out)
}

/// What `list-certificates` says of one certificate.
#[derive(Clone, Debug)]
pub struct Info {
    /// Uploaded ones: the file name's stem (a digest prefix of the leaf).
    pub id: String,
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub kind: &'static str,
    pub pem: String,
}

impl Info {
    pub fn to_json(&self, now: i64) -> Value {
        let days_left = (self.not_after - now) / 86_400;
        json!({
            "names": self.names, "subject": self.subject, "issuer": self.issuer, "serial": self.serial,
            "valid_from": self.not_before, "valid_to": self.not_after,
            "valid": now >= self.not_before && now < self.not_after,
            "expiring": self.not_after - now < EXPIRING_DAYS * 86_400, "days_left": days_left,
            "type": self.kind, "automatic": self.kind == "acme",
        })
    }
}

pub fn info(der: &[u8], kind: &'static str, id: String) -> Result<Info, PemError> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| PemError::NotX509(e.to_string()))?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = c.subject().iter_common_name().next().and_then(|a| a.as_str().ok())
    {
        names.push(cn.to_owned());
    }
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        B64.encode(der)
            .as_bytes()
            .chunks(64)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(Info {
        id,
        names,
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial: c.raw_serial_as_string().replace(':', ""),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        kind,
        pem,
    })
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The uploaded certificates.
pub fn custom(env: &Env) -> Result<Vec<Info>, Failure> {
    let mut out = Vec::new();
    let dir = match std::fs::read_dir(custom_dir(env)) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".crt") else { continue };
        let text = std::fs::read_to_string(e.path())?;
        let chain = parse_chain(&text).map_err(|m| Failure::failed(format!("{}: {m}", e.path().display())))?;
        if let Some(leaf) = chain.first() {
            out.push(info(leaf, "custom", id.to_owned()).map_err(|e| Failure::failed(e.to_string()))?);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Whether an uploaded certificate covers the route's host.
pub fn uploaded_for(env: &Env, r: &protocol::actions::traefik::SetRouteRequest) -> Result<bool, Failure> {
    let Some(host) = &r.host else { return Ok(false) };
    Ok(custom(env)?.iter().any(|c| covers(&c.names, host)))
}

/// Drop the certificates of `names` from Traefik's ACME store (Traefik stopped: it
/// rewrites the file itself); whether any was there.
pub fn forget_acme(env: &Env, names: &[String]) -> Result<bool, Failure> {
    let Ok(text) = std::fs::read_to_string(env.acme_store()) else { return Ok(false) };
    let Ok(mut store) = serde_json::from_str::<Value>(&text) else { return Ok(false) };
    let mut dropped = false;
    for resolver in store.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
        if let Some(list) = resolver.get_mut("Certificates").and_then(Value::as_array_mut) {
            let before = list.len();
            list.retain(|c| {
                let main = c["domain"]["main"].as_str().unwrap_or_default();
                !names.iter().any(|n| covers(std::slice::from_ref(n), main))
            });
            dropped |= list.len() != before;
        }
    }
    if dropped {
        write_atomic(&env.acme_store(), &crate::env::pretty(&store), 0o600)?;
    }
    Ok(dropped)
}

/// The certificates Traefik's resolver holds.
pub fn acme(env: &Env) -> Vec<Info> {
    let Ok(text) = std::fs::read_to_string(env.acme_store()) else { return Vec::new() };
    let Ok(store) = serde_json::from_str::<Value>(&text) else { return Vec::new() };
    let mut out = Vec::new();
    for resolver in store.as_object().into_iter().flat_map(|o| o.values()) {
        for c in resolver["Certificates"].as_array().into_iter().flatten() {
            let Some(pem) = c["certificate"].as_str().and_then(|b| B64.decode(b).ok()) else { continue };
            let Ok(chain) = parse_chain(&String::from_utf8_lossy(&pem)) else { continue };
            if let Some(i) = chain.first().and_then(|leaf| info(leaf, "acme", String::new()).ok()) {
                out.push(i);
            }
        }
    }
    out
}

fn self_signed(env: &Env) -> Vec<Info> {
    let text = std::fs::read_to_string(env.certs().join(default_paths().0)).unwrap_or_default();
    parse_chain(&text)
        .ok()
        .and_then(|c| c.first().and_then(|leaf| info(leaf, "self-signed", String::new()).ok()))
        .into_iter()
        .collect()
}

pub fn all(env: &Env) -> Result<Vec<Info>, Failure> {
    let mut v = acme(env);
    v.extend(custom(env)?);
    v.extend(self_signed(env));
    Ok(v)
}

pub fn covers(names: &[String], fqdn: &str) -> bool {
    names.iter().any(|n| {
        n.eq_ignore_ascii_case(fqdn)
            || n.strip_prefix("*.")
                .is_some_and(|d| fqdn.split_once('.').is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(d)))
    })
}

/// Publish `certificate-changed`; a failure to publish is said, not fatal (the
/// certificate is in place). Whether it was published.
pub fn changed(env: &Env, names: &[String]) -> bool {
    let payload = CertificateChanged { node_id: env.node_id, module_id: env.module_id.clone(), names: names.to_vec() };
    publish(env, CERTIFICATE_CHANGED, &serde_json::to_value(&payload).unwrap_or_default())
}

pub fn publish(env: &Env, event: &str, payload: &Value) -> bool {
    let channel = protocol::keys::event_channel(&env.agent(), event);
    let text = serde_json::to_string(payload).unwrap_or_default();
    let sent = env.with_redis(|redis| async move {
        use bus::fred::prelude::*;
        let r: Result<i64, _> = redis.publish(channel, text).await;
        r.map(|_| ())
    });
    match sent {
        Ok(()) => true,
        Err(e) => {
            eprintln!("{event} for {} not published: {e}", payload["names"]);
            false
        }
    }
}
