//! HTTPS without a proxy: the server serves a given certificate with rustls, and
//! refuses to start with a broken one.

mod common;

use std::sync::Arc;

use common::{Api, PASSWORD};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

#[test]
fn serves_https_with_the_given_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let api = Api::start(&[("TLS_CERT", cert_path.to_str().unwrap()), ("TLS_KEY", key_path.to_str().unwrap())]);
    assert!(api.url.starts_with("https://127.0.0.1:"), "{}", api.url);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);

    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![Certificate::from_der(cert.cert.der()).to_owned()])))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into();
    let url = api.url.replace("127.0.0.1", "localhost");
    let body = serde_json::json!({"username": "admin", "password": PASSWORD});
    let mut resp = agent.post(format!("{url}/api/login")).send_json(&body).unwrap();
    assert_eq!(resp.status(), 200);
    let reply: serde_json::Value = resp.body_mut().read_json().unwrap();
    assert!(reply["token"].as_str().is_some(), "{reply}");

    // A client that does not trust the certificate is refused by its own TLS check,
    // and plain HTTP on the TLS port gets no answer.
    let strict: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    assert!(strict.post(format!("{url}/api/login")).send_json(&body).is_err());
    let plain = api.url.replace("https://", "http://");
    assert!(strict.get(format!("{plain}/api/openapi.json")).call().is_err());
}

#[test]
fn refuses_to_start_with_a_bad_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let out = std::process::Command::new(common::BIN)
        .env("TLS_CERT", &bad)
        .env("TLS_KEY", &bad)
        .env("LISTEN_ADDRESS", "127.0.0.1:0")
        .env("API_SECRET_FILE", dir.path().join("secret"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.pem"), "{err}");
}
