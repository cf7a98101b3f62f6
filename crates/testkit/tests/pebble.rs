//! The ACME test CA: its directory over verified TLS, its issuing root, and a whole
//! HTTP-01 order validated for real against a challenge responder of the test's own.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use testkit::Pebble;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("run curl")
}

#[test]
fn serves_its_directory_over_verified_tls_and_its_issuing_root() {
    let pebble = Pebble::start(free_port(), free_port()).unwrap();
    let url = pebble.directory_url();
    assert!(url.starts_with("https://127.0.0.1:") && url.ends_with("/dir"), "{url}");

    // An outside client trusts the listener through the CA file alone...
    let ca = pebble.server_ca_file();
    let out = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let directory: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["newNonce", "newAccount", "newOrder"] {
        assert!(directory[key].as_str().is_some_and(|u| u.starts_with("https://127.0.0.1:")), "{directory}");
    }
    // ...and without it is refused by its own check.
    assert!(!curl(&[&url]).status.success());

    // The issuing root is the management API's, and not the listener's CA.
    let root = pebble.issuing_root_pem();
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    assert_ne!(root, pebble.server_ca_pem());
    assert_eq!(std::fs::read_to_string(pebble.issuing_root_file()).unwrap(), root);
    let mut again = pebble.agent().get(format!("{}/roots/0", pebble.management_url())).call().unwrap();
    assert_eq!(again.body_mut().read_to_string().unwrap(), root);
}

#[test]
fn an_http_01_order_is_validated_for_real_and_issued() {
    const NAME: &str = "wiki.example.test";
    // The responder holds its port from before pebble starts.
    let responder = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = responder.local_addr().unwrap().port();
    let answer: Arc<Mutex<Option<(String, String)>>> = Arc::default();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (answer, seen) = (answer.clone(), seen.clone());
        std::thread::spawn(move || serve_challenges(responder, &answer, &seen));
    }
    let pebble = Pebble::start(http_port, free_port()).unwrap();

    let mut acme = Acme::new(&pebble).unwrap();
    acme.new_account().unwrap();
    let (order_url, order) = acme
        .post(&acme.dir("newOrder"), Some(json!({"identifiers": [{"type": "dns", "value": NAME}]})))
        .map(|(_, loc, body)| (loc, body))
        .unwrap();
    let order_url = order_url.expect("an order's Location");
    let order: Value = serde_json::from_str(&order).unwrap();
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz: Value = serde_json::from_str(&acme.post(&authz_url, None).unwrap().2).unwrap();
    let challenge = authz["challenges"].as_array().unwrap().iter().find(|c| c["type"] == "http-01").unwrap();
    let token = challenge["token"].as_str().unwrap().to_owned();
    *answer.lock().unwrap() = Some((token.clone(), format!("{token}.{}", acme.thumbprint())));

    acme.post(challenge["url"].as_str().unwrap(), Some(json!({}))).unwrap();
    let authz = acme.poll(&authz_url, "valid").unwrap();
    assert_eq!(authz["status"], "valid", "{authz}");
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.contains(&format!("/.well-known/acme-challenge/{token}")) && r.contains(NAME)),
        "the validation authority never asked the responder: {requests:?}\n{}",
        pebble.log_tail()
    );

    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![NAME.to_owned()]).unwrap().serialize_request(&key).unwrap();
    acme.post(order["finalize"].as_str().unwrap(), Some(json!({"csr": B64.encode(csr.der())}))).unwrap();
    let order = acme.poll(&order_url, "valid").unwrap();
    let (_, _, chain) = acme.post(order["certificate"].as_str().unwrap(), None).unwrap();
    assert!(chain.matches("-----BEGIN CERTIFICATE-----").count() >= 2, "leaf and intermediate: {chain}");

    // The certificate chains to the issuing root for that name, and not to the
    // listener's CA.
    let dir = tempfile::tempdir().unwrap();
    let chain_file = dir.path().join("chain.pem");
    std::fs::write(&chain_file, &chain).unwrap();
    let verify = |ca: &std::path::Path| {
        Command::new("openssl")
            .args(["verify", "-verify_hostname", NAME, "-CAfile"])
            .arg(ca)
            .arg("-untrusted")
            .arg(&chain_file)
            .arg(&chain_file)
            .output()
            .expect("run openssl")
    };
    let out = verify(&pebble.issuing_root_file());
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!verify(&pebble.server_ca_file()).status.success());
}

/// Answer `GET /.well-known/acme-challenge/<token>` with the key authorization once
/// the test has set it; every request's head is recorded.
fn serve_challenges(listener: TcpListener, answer: &Mutex<Option<(String, String)>>, seen: &Mutex<Vec<String>>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut head = String::new();
        let mut reader = BufReader::new(&stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        seen.lock().unwrap().push(head.clone());
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let reply = match &*answer.lock().unwrap() {
            Some((token, keyauth)) if path == format!("/.well-known/acme-challenge/{token}") => {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{keyauth}", keyauth.len())
            }
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
        };
        let _ = stream.write_all(reply.as_bytes());
    }
}

/// The least ACME client (RFC 8555) an order needs: ES256 JWS over ureq.
struct Acme {
    agent: ureq::Agent,
    directory: Value,
    key: EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    nonce: String,
    kid: Option<String>,
}

impl Acme {
    fn new(pebble: &Pebble) -> Result<Self> {
        let agent = pebble.agent();
        let directory: Value =
            serde_json::from_str(&agent.get(pebble.directory_url()).call()?.body_mut().read_to_string()?)?;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| anyhow!("keygen"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow!("key"))?;
        let mut acme = Acme { agent, directory, key, rng, nonce: String::new(), kid: None };
        let resp = acme.agent.head(acme.dir("newNonce")).call()?;
        acme.nonce = header(&resp, "replay-nonce").context("no Replay-Nonce")?;
        Ok(acme)
    }

    fn dir(&self, key: &str) -> String {
        self.directory[key].as_str().unwrap_or_default().to_owned()
    }

    /// The account key as a JWK, members in the order RFC 7638 hashes them.
    fn jwk(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"crv": "P-256", "kty": "EC", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
    }

    fn thumbprint(&self) -> String {
        use sha2::Digest;
        B64.encode(sha2::Sha256::digest(self.jwk().to_string().as_bytes()))
    }

    fn new_account(&mut self) -> Result<()> {
        let (status, kid, body) = self.post(&self.dir("newAccount"), Some(json!({"termsOfServiceAgreed": true})))?;
        if status != 201 {
            bail!("newAccount answered {status}: {body}");
        }
        self.kid = Some(kid.context("no account Location")?);
        Ok(())
    }

    /// A signed POST (`None`: POST-as-GET): status, Location, body.
    fn post(&mut self, url: &str, payload: Option<Value>) -> Result<(u16, Option<String>, String)> {
        let mut protected = json!({"alg": "ES256", "nonce": self.nonce, "url": url});
        match &self.kid {
            Some(kid) => protected["kid"] = json!(kid),
            None => protected["jwk"] = self.jwk(),
        }
        let protected = B64.encode(protected.to_string());
        let payload = payload.map(|p| B64.encode(p.to_string())).unwrap_or_default();
        let signature = self
            .key
            .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
            .map_err(|_| anyhow!("cannot sign"))?;
        let body = json!({"protected": protected, "payload": payload, "signature": B64.encode(signature.as_ref())});
        let mut resp = self.agent.post(url).header("Content-Type", "application/jose+json").send(body.to_string())?;
        if let Some(nonce) = header(&resp, "replay-nonce") {
            self.nonce = nonce;
        }
        let status = resp.status().as_u16();
        let location = header(&resp, "location");
        let text = resp.body_mut().read_to_string()?;
        if status >= 400 {
            bail!("POST {url} answered {status}: {text}");
        }
        Ok((status, location, text))
    }

    /// POST-as-GET `url` until its status is `want`; fails on `invalid` or after 30 s.
    fn poll(&mut self, url: &str, want: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let object: Value = serde_json::from_str(&self.post(url, None)?.2)?;
            if object["status"] == want {
                return Ok(object);
            }
            if object["status"] == "invalid" || Instant::now() > deadline {
                bail!("{url} is not {want}: {object}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}
