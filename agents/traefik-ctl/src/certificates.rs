//! The certificate actions: list, get, upload (checked whole before anything is
//! written), delete, and the timer's check. Private keys are written mode 0600 and
//! never returned.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::PublicKeyData;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::certs::{
    EXPIRING_DAYS, Info, acme, all, changed, covers, custom, custom_dir, forget_acme, info, now, parse_chain, publish,
};
use crate::env::{Env, write_atomic};
use crate::fail::Failure;
use crate::{render, routes, service, validate};

/// `list-certificates`: every certificate, the expiring ones flagged.
pub fn list(env: &Env, _data: Value) -> Result<Value, Failure> {
    let t = now();
    Ok(Value::Array(all(env)?.iter().map(|i| i.to_json(t)).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FqdnRequest {
    fqdn: String,
}

/// `get-certificate {fqdn}`: the certificate served for a name (NS8's shape, without
/// the private key: it never leaves the module).
pub fn get(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: FqdnRequest = validate::decode(data)?;
    let found: Vec<Info> =
        all(env)?.into_iter().filter(|i| i.kind != "self-signed" && covers(&i.names, &req.fqdn)).collect();
    let kind = found.first().map(|i| i.kind).unwrap_or("selfsigned");
    Ok(json!({
        "fqdn": req.fqdn,
        "obtained": !found.is_empty(),
        "type": if kind == "acme" { "internal" } else { kind },
        "certificates": found.iter().map(|i| json!({"cert": B64.encode(&i.pem)})).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
struct UploadRequest {
    /// Base64 of the PEM chain, leaf first (NS8's names).
    certFile: String,
    keyFile: String,
}

fn decode_b64(field: &str, v: &str) -> Result<String, Failure> {
    let bytes =
        B64.decode(v.trim()).map_err(|_| Failure::invalid(field, json!("(base64)"), format!("{field}_not_base64")))?;
    String::from_utf8(bytes).map_err(|_| Failure::invalid(field, json!("(binary)"), format!("{field}_not_pem")))
}

/// `upload-certificate {certFile, keyFile}`: chain and key checked to parse, to match,
/// to be valid now and to link up; then written, and Traefik serves it before the
/// action returns.
pub fn upload(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: UploadRequest = validate::decode(data)?;
    let cert_pem = decode_b64("certFile", &req.certFile)?;
    let key_pem = decode_b64("keyFile", &req.keyFile)?;
    let chain = parse_chain(&cert_pem)
        .map_err(|m| Failure::refuse_with_field("certFile", "certFile_invalid", &m.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(Failure::invalid("certFile", json!("(PEM)"), "certFile_empty"));
    };
    let pair = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|e| Failure::refuse_with_field("keyFile", "keyFile_invalid", &e.to_string()))?;
    let (_, c) = X509Certificate::from_der(leaf).map_err(|e| Failure::failed(e.to_string()))?;
    if c.public_key().subject_public_key.data.as_ref() != pair.der_bytes() {
        return Err(Failure::invalid("keyFile", json!("(PEM)"), "keyFile_does_not_match_certFile"));
    }
    let t = now();
    for (n, der) in chain.iter().enumerate() {
        let (_, x) = X509Certificate::from_der(der).map_err(|e| Failure::failed(e.to_string()))?;
        let v = x.validity();
        if t < v.not_before.timestamp() || t >= v.not_after.timestamp() {
            return Err(Failure::refuse_with_field(
                "certFile",
                "certFile_not_valid_now",
                &format!("certificate {n} of the chain is valid from {} to {}", v.not_before, v.not_after),
            ));
        }
        if let Some(next) = chain.get(n + 1) {
            let (_, up) = X509Certificate::from_der(next).map_err(|e| Failure::failed(e.to_string()))?;
            if x.issuer() != up.subject() || x.verify_signature(Some(up.public_key())).is_err() {
                return Err(Failure::refuse_with_field(
                    "certFile",
                    "certFile_chain_broken",
                    &format!("certificate {n} is not signed by certificate {}", n + 1),
                ));
            }
        }
    }
    let id: String = Sha256::digest(leaf).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let i = info(leaf, "custom", id.clone()).map_err(|e| Failure::failed(e.to_string()))?;
    let dir = custom_dir(env);
    let files = [dir.join(format!("{id}.key")), dir.join(format!("{id}.crt"))];
    let install = || -> Result<(), Failure> {
        write_atomic(&files[0], &key_pem, 0o600)?;
        write_atomic(&files[1], &cert_pem, 0o644)?;
        render::write_tls(env)?;
        // Routes of these names stop asking the ACME resolver, whose certificate for
        // them leaves the store (with Traefik stopped: it holds the file).
        routes::rerender(env)?;
        if acme(env).iter().any(|a| a.names.iter().any(|n| covers(&i.names, n))) {
            service::stopped(env, || forget_acme(env, &i.names).map(|_| ()))?;
        }
        let https = env.load()?.https_port;
        match i.names.first().map(|n| n.replace("*.", "probe.")) {
            Some(probe) => wait_served(https, &probe, leaf, Duration::from_secs(10)),
            None => Ok(()),
        }
    };
    if let Err(e) = install() {
        // Nothing of it stays: the previous certificates and routes serve again.
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
        let _ = render::write_tls(env);
        let _ = routes::rerender(env);
        return Err(e);
    }
    let _ = changed(env, &i.names);
    Ok(json!({"names": i.names, "serial": i.serial, "valid_to": i.not_after}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteRequest {
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    fqdn: Option<String>,
}

/// `delete-certificate {serial}` or `{fqdn}`: uploaded certificates only (ACME ones
/// go with their route, the self-signed one stays).
pub fn delete(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: DeleteRequest = validate::decode(data)?;
    let gone: Vec<Info> = custom(env)?
        .into_iter()
        .filter(|i| {
            req.serial.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&i.serial))
                || req.fqdn.as_deref().is_some_and(|f| covers(&i.names, f))
        })
        .collect();
    let requested = req.fqdn.as_deref().map(|f| requested_file(env, &f.to_ascii_lowercase()));
    let withdrawn = requested.as_ref().is_some_and(|f| std::fs::remove_file(f).is_ok());
    if gone.is_empty() && withdrawn {
        return Ok(json!({"deleted": [], "withdrawn": req.fqdn}));
    }
    if gone.is_empty() {
        let (field, v) = match (&req.serial, &req.fqdn) {
            (Some(s), _) => ("serial", json!(s)),
            (None, f) => ("fqdn", json!(f)),
        };
        return Err(Failure::invalid(field, v, format!("{field}_not_found")));
    }
    for i in &gone {
        for ext in ["crt", "key"] {
            let _ = std::fs::remove_file(custom_dir(env).join(format!("{}.{ext}", i.id)));
        }
    }
    render::write_tls(env)?;
    // Their routes ask the ACME resolver again, where they had it.
    routes::rerender(env)?;
    let names: Vec<String> = gone.iter().flat_map(|i| i.names.clone()).collect();
    let _ = changed(env, &names);
    Ok(json!({"deleted": gone.iter().map(|i| &i.serial).collect::<Vec<_>>()}))
}

fn sixty() -> u64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCertificateRequest {
    fqdn: String,
    /// Seconds to wait for the ACME server (NS8's default: 60).
    #[serde(default = "sixty")]
    sync_timeout: u64,
}

/// The file of a certificate asked for without a route.
fn requested_file(env: &Env, fqdn: &str) -> std::path::PathBuf {
    env.configs().join(format!("_cert-{}.yaml", fqdn.replace('.', "-")))
}

/// `set-certificate {fqdn, sync_timeout}`: a certificate from the ACME server for a
/// name no route serves yet (NS8's: a router with no backend asks the resolver).
/// Returns when it is obtained; if it is not within `sync_timeout`, the request is
/// withdrawn and the action fails.
pub fn set(env: &Env, data: Value) -> Result<Value, Failure> {
    let req: SetCertificateRequest = validate::decode(data)?;
    let fqdn = req.fqdn.to_ascii_lowercase();
    // HTTP-01 and TLS-ALPN-01 cannot prove a wildcard.
    if fqdn.starts_with("*.") || !validate::host(&fqdn) {
        return Err(Failure::invalid("fqdn", json!(req.fqdn), "fqdn_invalid"));
    }
    if !(1..=600).contains(&req.sync_timeout) {
        return Err(Failure::invalid("sync_timeout", json!(req.sync_timeout), "sync_timeout_invalid"));
    }
    let has = |env: &Env| acme(env).iter().any(|c| covers(&c.names, &fqdn));
    if !has(env) {
        let name = format!("_cert-{}", fqdn.replace('.', "-"));
        let config = json!({"http": {"routers": {name: {
            "rule": format!("Host(`{fqdn}`)"), "entryPoints": ["https"], "service": "noop@internal",
            "tls": {"certResolver": crate::env::RESOLVER, "domains": [{"main": fqdn}]},
        }}}});
        let file = requested_file(env, &fqdn);
        write_atomic(&file, &crate::env::pretty(&config), 0o600)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(req.sync_timeout);
        while !has(env) {
            if std::time::Instant::now() > deadline {
                let _ = std::fs::remove_file(&file);
                return Err(Failure::failed(format!(
                    "the ACME server did not issue a certificate for {fqdn} within {} s (the name must resolve to this node and its HTTP port be reachable; Traefik's log says why): the request is withdrawn",
                    req.sync_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Announced now rather than at the timer's next run.
        check(env, Value::Null)?;
    }
    Ok(json!({"fqdn": fqdn, "obtained": true}))
}

/// What `check-certificates` remembers between runs: the ACME certificates seen
/// (name -> serial) and when each expiring one was last announced.
#[derive(Default, serde::Serialize, Deserialize)]
#[serde(default)]
struct Seen {
    acme: std::collections::BTreeMap<String, String>,
    expiring_announced: std::collections::BTreeMap<String, i64>,
}

const DAY: i64 = 86_400;

/// `check-certificates` (the module's timer, every minute): `certificate-changed` for
/// each ACME certificate issued or renewed since the last run (Traefik writes them in
/// its store, nobody is told), and `certificate-expiring` once a day for each
/// certificate within [`EXPIRING_DAYS`] of its end, until it is renewed or replaced.
pub fn check(env: &Env, _data: Value) -> Result<Value, Failure> {
    let path = env.state.join("certificates-seen.json");
    let mut seen: Seen =
        std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let t = now();
    let mut changed_names = Vec::new();
    let acme_now = acme(env);
    for c in &acme_now {
        let key = c.names.join(",");
        if seen.acme.get(&key) != Some(&c.serial) {
            changed_names.extend(c.names.clone());
        }
    }
    let mut out = json!({"changed": changed_names, "expiring": []});
    if !changed_names.is_empty() && changed(env, &changed_names) {
        seen.acme = acme_now.iter().map(|c| (c.names.join(","), c.serial.clone())).collect();
    }
    let held = all(env)?;
    let mut expiring = Vec::new();
    for c in held.iter().filter(|c| c.kind != "self-signed" && c.not_after - t < EXPIRING_DAYS * DAY) {
        let last = seen.expiring_announced.get(&c.serial).copied().unwrap_or(0);
        if t - last >= DAY && expiring_event(env, c, t) {
            seen.expiring_announced.insert(c.serial.clone(), t);
        }
        expiring.push(json!({"names": c.names, "serial": c.serial, "valid_to": c.not_after}));
    }
    // Certificates that are gone need no more reminders.
    seen.expiring_announced.retain(|s, _| held.iter().any(|c| c.serial == *s));
    out["expiring"] = Value::Array(expiring);
    write_atomic(&path, &crate::env::pretty(&serde_json::to_value(&seen).unwrap_or_default()), 0o600)?;
    Ok(out)
}

fn expiring_event(env: &Env, c: &Info, t: i64) -> bool {
    let payload = protocol::actions::traefik::CertificateExpiring {
        node_id: env.node_id,
        module_id: env.module_id.clone(),
        names: c.names.clone(),
        serial: c.serial.clone(),
        valid_to: c.not_after,
        days_left: (c.not_after - t) / DAY,
        kind: c.kind.to_owned(),
    };
    publish(env, protocol::actions::traefik::CERTIFICATE_EXPIRING, &serde_json::to_value(payload).unwrap_or_default())
}

/// The leaf certificate served on `port` for the name `sni`.
fn served(port: u16, sni: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recorder(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or_else(|| "no certificate".into())
}

fn wait_served(port: u16, sni: &str, leaf: &[u8], timeout: Duration) -> Result<(), Failure> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match served(port, sni) {
            Ok(der) if der == leaf => return Ok(()),
            Ok(_) => last = "another certificate is served".into(),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(Failure::failed(format!(
        "Traefik does not serve the uploaded certificate for {sni} after {} s: {last}",
        timeout.as_secs()
    )))
}

/// Takes any certificate and keeps nothing: only to read which one is served.
#[derive(Debug)]
struct Recorder(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
