//! The edge proxy as the office sees it: Traefik installed by `xtask up` on the node,
//! DokuWiki published at a host name with a certificate from a real ACME CA (Pebble,
//! validating HTTP-01 against Traefik for real), plain HTTP redirected, an uploaded
//! certificate taking over, a second module refused the same host with the owner
//! named, the route gone with the module, and the api-server at /cluster-admin/.
//! Headless Chromium opens the wiki through the proxy; its screenshot is kept in
//! `target/test-artifacts/`.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::LocalCluster;
use e2e::modules::{run, traces};
use serde_json::{Value, json};

const HOST: &str = "wiki.example.test";

/// `curl` through the proxy for `HOST` (resolved to loopback): status, body, and the
/// verification error when TLS failed.
fn curl(port: u16, scheme: &str, path: &str, cacert: Option<&std::path::Path>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .arg("--resolve")
        .arg(format!("{HOST}:{port}:127.0.0.1"));
    match cacert {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("-k"),
    };
    let out = cmd.arg(format!("{scheme}://{HOST}:{port}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A CA and a certificate for `HOST` it signed, as PEM (chain, key, CA).
fn custom_certificate() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Acme Office CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    (format!("{}{}", leaf.pem(), ca_cert.pem()), key.serialize_pem(), ca_cert.pem())
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The source of the newest failed login in the audit trail.
fn last_login_fail_source(c: &LocalCluster) -> String {
    let out = c.redis(&["XREVRANGE", protocol::keys::AUDIT_STREAM, "+", "-", "COUNT", "1"]);
    let lines: Vec<&str> = out.lines().collect();
    let at = lines.iter().position(|l| *l == "source").expect("an audit record with a source");
    assert!(out.contains("login-fail"), "{out}");
    lines[at + 1].to_owned()
}

/// `X-Forwarded-For` is believed from the proxy only: it sends the api-server's token,
/// which no local process has; what a client sends through the proxy is replaced.
fn proxied_source_addresses(c: &LocalCluster, https: u16) {
    let login = |via_proxy: bool, interface: &str, headers: &[String]| {
        let url = if via_proxy {
            format!("https://{HOST}:{https}/cluster-admin/api/login")
        } else {
            format!("http://127.0.0.1:{}/api/login", c.api_port)
        };
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-o", "/dev/null", "--interface", interface, "--resolve"])
            .arg(format!("{HOST}:{https}:127.0.0.1"))
            .args([
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"username":"nobody","password":"wrong one"}"#,
            ]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        assert!(cmd.arg(url).status().unwrap().success());
    };
    // Through the proxy, from 127.0.0.2: the proxy's word is taken, a client's is not.
    login(true, "127.0.0.2", &["X-Forwarded-For: 198.51.100.9".into()]);
    assert_eq!(last_login_fail_source(c), "127.0.0.2");
    // A local process posing as the proxy, without the token.
    login(false, "127.0.0.2", &["X-Forwarded-For: 198.51.100.9".into()]);
    assert_eq!(last_login_fail_source(c), "127.0.0.2", "a spoofed X-Forwarded-For was believed");
    // With the token (only root and the proxy can read it), it is the proxy.
    let token = std::fs::read_to_string(c.path().join("api-server/proxy-token")).unwrap();
    login(
        false,
        "127.0.0.1",
        &[
            "X-Forwarded-For: 198.51.100.9".into(),
            format!("{}: {}", protocol::actions::traefik::PROXY_TOKEN_HEADER, token.trim()),
        ],
    );
    assert_eq!(last_login_fail_source(c), "198.51.100.9");
}

#[test]
fn dokuwiki_behind_traefik_with_acme_custom_certificate_conflict_and_removal() {
    let c = LocalCluster::start_with(&["dokuwiki", "traefik"]);
    let (http, https) = (c.http_port, c.https_port);
    let traefik = c.redis(&["GET", &protocol::keys::node_default_instance(1, "traefik")]);
    assert!(traefik.starts_with("traefik"), "xtask up installed no edge proxy: {traefik:?}\n{}", c.log());
    let proxy = format!("module/{traefik}");

    // The api-server through the proxy, at NS8's path.
    let (code, body) = curl(https, "https", "/cluster-admin/api/login", None);
    assert!(code == "405" || code == "400" || code == "401", "GET /cluster-admin/api/login: {code} {body}");
    let routes = run(&c, "list-routes", &proxy, json!({})).unwrap();
    assert_eq!(routes, json!(["cluster-admin"]));
    proxied_source_addresses(&c, https);

    // A real ACME CA: Pebble validates HTTP-01 on the proxy's HTTP port.
    let pebble = testkit::Pebble::start(http, https).unwrap();
    let acme =
        json!({"url": pebble.directory_url(), "email": "admin@example.test", "ca_certificate": pebble.server_ca_pem()});
    run(&c, "set-acme-server", &proxy, acme).unwrap();
    assert_eq!(run(&c, "get-acme-server", &proxy, json!({})).unwrap()["url"], pebble.directory_url());

    let accept = json!({"authorizations": ["traefik@node:routeadm"]});
    let out = run(&c, "add-module", "cluster", json!({"image": "dokuwiki", "node": 1, "accept": accept})).unwrap();
    let wiki = out["module_id"].as_str().unwrap().to_owned();
    let agent = format!("module/{wiki}");

    // Bad host names are refused by the schema, before anything is touched.
    let bad = json!({"title": "W", "admin_user": "boss", "admin_password": "long enough pw", "host": "bad host"});
    let err = run(&c, "configure-module", &agent, bad).unwrap_err();
    assert!(err.contains("host"), "{err}");
    assert_eq!(run(&c, "list-routes", &proxy, json!({})).unwrap(), json!(["cluster-admin"]));

    let conf = json!({"title": "Acme Wiki", "admin_user": "boss", "admin_password": "long enough pw", "host": HOST, "lets_encrypt": true});
    run(&c, "configure-module", &agent, conf).unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let got = run(&c, "get-configuration", &agent, json!(null)).unwrap();
    assert_eq!(got["url"], format!("https://{HOST}/"), "{got}");
    let route = run(&c, "get-route", &proxy, json!({"instance": wiki})).unwrap();
    assert_eq!((route["host"].as_str(), route["owner"].as_str()), (Some(HOST), Some(wiki.as_str())), "{route}");

    // Verified TLS with Pebble's root, once the ACME order went through.
    let root = pebble.issuing_root_file();
    until("the wiki over TLS verified by the ACME CA's root", Duration::from_secs(90), || {
        let (code, body) = curl(https, "https", "/doku.php", Some(&root));
        if code == "200" && body.contains("Acme Wiki") {
            Ok(())
        } else {
            Err(format!("{code}: {}\n{}", pebble.log_tail(), c.log()))
        }
    });
    let (code, _) = curl(http, "http", "/doku.php", None);
    assert!(code == "301" || code == "308", "plain HTTP is redirected: {code}");
    let certs = run(&c, "list-certificates", &proxy, json!({})).unwrap();
    let issued: Vec<&Value> = certs.as_array().unwrap().iter().filter(|c| c["type"] == "acme").collect();
    assert_eq!(issued.len(), 1, "{certs}");
    assert_eq!(issued[0]["names"], json!([HOST]));
    assert_eq!(issued[0]["expiring"], false);
    // The proxy's timer (every minute) tells whoever listens that the name has a new
    // certificate (NS8's certificate-changed), recorded in its event stream.
    let stream = protocol::keys::event_stream(&protocol::AgentId::Module(traefik.clone()));
    until("certificate-changed after the ACME issuance", Duration::from_secs(150), || {
        let events = c.redis(&["XRANGE", &stream, "-", "+"]);
        if events.contains("certificate-changed") && events.contains(HOST) { Ok(()) } else { Err(events) }
    });

    // A certificate for a name no route serves yet (a mail server's, say).
    let err = run(&c, "set-certificate", &proxy, json!({"fqdn": "*.example.test"})).unwrap_err();
    assert!(err.contains("fqdn_invalid"), "{err}");
    let got = run(&c, "set-certificate", &proxy, json!({"fqdn": "mail.example.test", "sync_timeout": 90})).unwrap();
    assert_eq!(got["obtained"], true, "{got}");
    let certs = run(&c, "list-certificates", &proxy, json!({})).unwrap();
    assert!(
        certs.as_array().unwrap().iter().any(|c| c["type"] == "acme" && c["names"] == json!(["mail.example.test"])),
        "{certs}"
    );

    // NS8's lets_encrypt_check: set-route returns once the certificate is there.
    let url = format!("http://127.0.0.1:{}", e2e::modules::port_of(&c, &wiki));
    let check = json!({"instance": format!("{wiki}-check"), "url": url, "host": "check.example.test", "lets_encrypt": true, "lets_encrypt_check": true});
    run(&c, "set-route", &proxy, check).unwrap();
    let certs = run(&c, "list-certificates", &proxy, json!({})).unwrap();
    assert!(certs.as_array().unwrap().iter().any(|c| c["names"] == json!(["check.example.test"])), "{certs}");
    run(&c, "delete-route", &proxy, json!({"instance": format!("{wiki}-check")})).unwrap();

    // An uploaded certificate: checked, then served in place of the ACME one.
    let (chain, key, ca) = custom_certificate();
    let (_, other_key, _) = custom_certificate();
    let err = run(&c, "upload-certificate", &proxy, json!({"certFile": b64(&chain), "keyFile": b64(&other_key)}))
        .unwrap_err();
    assert!(err.contains("keyFile_does_not_match_certFile"), "{err}");
    run(&c, "upload-certificate", &proxy, json!({"certFile": b64(&chain), "keyFile": b64(&key)})).unwrap();
    let ca_file = c.path().join("custom-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let (code, _) = curl(https, "https", "/doku.php", Some(&ca_file));
    assert_eq!(code, "200", "the uploaded certificate is served for {HOST}");

    // The same host for another module: refused, naming the wiki.
    let out = run(
        &c,
        "add-module",
        "cluster",
        json!({"image": "dokuwiki", "node": 1, "accept": {"authorizations": ["traefik@node:routeadm"]}}),
    )
    .unwrap();
    let second = out["module_id"].as_str().unwrap().to_owned();
    let conf = json!({"title": "Other", "admin_user": "boss", "admin_password": "long enough pw", "host": HOST});
    let err = run(&c, "configure-module", &format!("module/{second}"), conf).unwrap_err();
    assert!(err.contains("host_already_routed") && err.contains(&wiki), "{err}");

    // Headless Chromium through the proxy.
    let shot = e2e::artifact_dir().join("dokuwiki-through-traefik.png");
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--window-size=1024,768"])
        .arg(format!("--host-resolver-rules=MAP {HOST} 127.0.0.1"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("https://{HOST}:{https}/doku.php"))
        .output()
        .expect("chromium");
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "no screenshot: {}", String::from_utf8_lossy(&out.stderr));

    // Removing the wiki removes its route.
    run(&c, "remove-module", "cluster", json!({"module_id": wiki})).unwrap();
    until("the route goes with the module", Duration::from_secs(30), || {
        let routes = run(&c, "list-routes", &proxy, json!({})).unwrap();
        if routes.as_array().unwrap().iter().any(|r| r == &json!(wiki)) { Err(format!("{routes}")) } else { Ok(()) }
    });
    let (code, _) = curl(https, "https", "/doku.php", None);
    assert_eq!(code, "404");
    assert!(traces(&c, &wiki).is_empty());
    run(&c, "remove-module", "cluster", json!({"module_id": second})).unwrap();
}
