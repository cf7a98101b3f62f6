//! Certificates: the default self-signed one made at create, the uploaded ones
//! (checked whole before anything is written), and those Traefik's ACME resolver
//! obtained (read from its `acme.json`). Private keys are written mode 0600 and never
//! returned by any action.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use protocol::actions::traefik::{CERTIFICATE_CHANGED, CertificateChanged};
use rcgen::PublicKeyData;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::fail::Failure;
use crate::render;
use crate::settings::{Env, write_atomic};
use crate::validate;

/// A certificate expiring within this many days is flagged.
pub const EXPIRING_DAYS: i64 = 20;

/// The default certificate's files, under `certs/`.
pub fn default_paths() -> (&'static str, &'static str) {
    ("selfsigned.crt", "selfsigned.key")
}

fn custom_dir(env: &Env) -> PathBuf {
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

/// The DER certificates of a PEM bundle; anything else in it is an error.
pub fn parse_chain(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for p in Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| format!("not PEM: {e}"))?;
        if p.label != "CERTIFICATE" {
            return Err(format!("a {} where a CERTIFICATE was expected", p.label));
        }
        X509Certificate::from_der(&p.contents).map_err(|e| format!("not an X.509 certificate: {e}"))?;
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
    fn to_json(&self, now: i64) -> Value {
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

fn info(der: &[u8], kind: &'static str, id: String) -> Result<Info, String> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
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

fn now() -> i64 {
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
            out.push(info(leaf, "custom", id.to_owned()).map_err(Failure::failed)?);
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
fn forget_acme(env: &Env, names: &[String]) -> Result<bool, Failure> {
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
        write_atomic(&env.acme_store(), &crate::settings::pretty(&store), 0o600)?;
    }
    Ok(dropped)
}

/// The certificates Traefik's resolver holds.
fn acme(env: &Env) -> Vec<Info> {
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

fn all(env: &Env) -> Result<Vec<Info>, Failure> {
    let mut v = acme(env);
    v.extend(custom(env)?);
    v.extend(self_signed(env));
    Ok(v)
}

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

fn covers(names: &[String], fqdn: &str) -> bool {
    names.iter().any(|n| {
        n.eq_ignore_ascii_case(fqdn)
            || n.strip_prefix("*.")
                .is_some_and(|d| fqdn.split_once('.').is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(d)))
    })
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
    let chain = parse_chain(&cert_pem).map_err(|m| Failure::refuse_with_field("certFile", "certFile_invalid", &m))?;
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
    let i = info(leaf, "custom", id.clone()).map_err(Failure::failed)?;
    let dir = custom_dir(env);
    let files = [dir.join(format!("{id}.key")), dir.join(format!("{id}.crt"))];
    let install = || -> Result<(), Failure> {
        write_atomic(&files[0], &key_pem, 0o600)?;
        write_atomic(&files[1], &cert_pem, 0o644)?;
        render::write_tls(env)?;
        // Routes of these names stop asking the ACME resolver, whose certificate for
        // them leaves the store (with Traefik stopped: it holds the file).
        crate::routes::rerender(env)?;
        if acme(env).iter().any(|a| a.names.iter().any(|n| covers(&i.names, n))) {
            crate::settings::stopped(env, || forget_acme(env, &i.names).map(|_| ()))?;
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
        let _ = crate::routes::rerender(env);
        return Err(e);
    }
    changed(env, &i.names);
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
    crate::routes::rerender(env)?;
    let names: Vec<String> = gone.iter().flat_map(|i| i.names.clone()).collect();
    changed(env, &names);
    Ok(json!({"deleted": gone.iter().map(|i| &i.serial).collect::<Vec<_>>()}))
}

/// Publish `certificate-changed`; a failure to publish is said, not fatal (the
/// certificate is in place).
pub fn changed(env: &Env, names: &[String]) {
    let payload = CertificateChanged { node_id: env.node_id, module_id: env.module_id.clone(), names: names.to_vec() };
    let agent = protocol::AgentId::Module(env.module_id.clone());
    let publish = || -> Result<(), String> {
        let cfg = bus::RedisConfig::from_env(&agent.to_string()).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            use bus::fred::prelude::*;
            let redis = bus::connect(&cfg, &format!("{agent}/event")).await.map_err(|e| e.to_string())?;
            let channel = protocol::keys::event_channel(&agent, CERTIFICATE_CHANGED);
            let text = serde_json::to_string(&payload).unwrap_or_default();
            let r: Result<i64, _> = redis.publish(channel, text).await;
            let _ = redis.quit().await;
            r.map(|_| ()).map_err(|e| e.to_string())
        })
    };
    if let Err(e) = publish() {
        eprintln!("certificate-changed for {names:?} not published: {e}");
    }
}

/// The leaf certificate served on `port` for the name `sni`.
pub fn served(port: u16, sni: &str) -> Result<Vec<u8>, String> {
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
