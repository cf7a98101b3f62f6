//! A private ACME certificate authority (Debian's `pebble`) on free loopback ports, for
//! the tests of what gets certificates from Let's Encrypt in production.
//!
//! Validation is real: pebble's validation authority connects to the HTTP-01 and
//! TLS-ALPN-01 ports given to [`Pebble::start`], after resolving every name to
//! 127.0.0.1 through a `pebble-challtestsrv` DNS server of its own. Debian ships no
//! certificate for pebble's HTTPS listener, so one is made here, signed by a fresh
//! throw-away CA ([`Pebble::server_ca_pem`]). Both processes are killed on drop.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Lines of each log quoted when pebble does not come up.
const LOG_TAIL: usize = 30;

pub struct Pebble {
    dir: tempfile::TempDir,
    /// pebble, then its DNS server, by name: killed in this order.
    children: Vec<(&'static str, Child)>,
    acme_port: u16,
    management_port: u16,
    dns_port: u16,
    server_ca: String,
    issuing_root: String,
}

impl Pebble {
    /// Start pebble with its validation authority connecting to `http_port` for
    /// HTTP-01 and to `tls_port` for TLS-ALPN-01 challenges, on 127.0.0.1 whatever the
    /// name validated. Returns once the ACME directory answers and the issuing root is
    /// known.
    pub fn start(http_port: u16, tls_port: u16) -> Result<Self> {
        let mut last = None;
        // Free ports are found by binding and releasing them; another process may take
        // one in between, so try a few times.
        for _ in 0..3 {
            match Self::try_start(http_port, tls_port) {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn try_start(http_port: u16, tls_port: u16) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (server_ca, cert, key) = listener_certificate()?;
        std::fs::write(dir.path().join("server-ca.pem"), &server_ca)?;
        std::fs::write(dir.path().join("cert.pem"), cert)?;
        std::fs::write(dir.path().join("key.pem"), key)?;
        let dns_port = free_udp_and_tcp_port()?;
        let dns_management_port = free_tcp_port()?;
        let acme_port = free_tcp_port()?;
        let management_port = free_tcp_port()?;
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble-config.json"), config.to_string())?;

        let mut pebble = Pebble {
            dir,
            children: Vec::new(),
            acme_port,
            management_port,
            dns_port,
            server_ca,
            issuing_root: String::new(),
        };
        // A DNS server answering A 127.0.0.1 for every name and nothing for AAAA; its
        // challenge servers are switched off (the management API cannot be: an empty
        // address would mean port 80).
        let dns_log = std::fs::File::create(pebble.dir.path().join("challtestsrv.log"))?;
        let dns = Command::new("pebble-challtestsrv")
            .arg("-dns01")
            .arg(format!("127.0.0.1:{dns_port}"))
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-management")
            .arg(format!("127.0.0.1:{dns_management_port}"))
            .stdin(Stdio::null())
            .stdout(dns_log.try_clone()?)
            .stderr(dns_log)
            .spawn()
            .context("cannot start pebble-challtestsrv: is the pebble package installed?")?;
        pebble.children.push(("pebble-challtestsrv", dns));
        pebble.wait("pebble-challtestsrv", || TcpStream::connect(("127.0.0.1", dns_port)).is_ok())?;

        let log = std::fs::File::create(pebble.dir.path().join("pebble.log"))?;
        let mut cmd = Command::new("pebble");
        // Nothing from the test's environment changes pebble's behaviour, in
        // particular no PEBBLE_VA_ALWAYS_VALID: validation must really happen.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PEBBLE_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .arg("-config")
            .arg(pebble.dir.path().join("pebble-config.json"))
            .arg("-dnsserver")
            .arg(pebble.dns_server())
            // No random sleeps before validation, every good nonce accepted, and no
            // authorization reused: every order is validated, every run alike.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(pebble.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start pebble: is the pebble package installed?")?;
        // pebble goes before its DNS server, so it is killed first.
        pebble.children.insert(0, ("pebble", child));

        let agent = pebble.agent();
        let directory = pebble.directory_url();
        pebble.wait("pebble's ACME directory", || agent.get(&directory).call().is_ok_and(|r| r.status() == 200))?;
        let roots = format!("{}/roots/0", pebble.management_url());
        let mut root = String::new();
        pebble.wait("pebble's issuing root", || match agent.get(&roots).call() {
            Ok(mut r) if r.status() == 200 => {
                root = r.body_mut().read_to_string().unwrap_or_default();
                root.contains("-----BEGIN CERTIFICATE-----")
            }
            _ => false,
        })?;
        std::fs::write(pebble.dir.path().join("issuing-root.pem"), &root)?;
        pebble.issuing_root = root;
        Ok(pebble)
    }

    /// Poll `ready` for 15 s; fail early when a process exits, with the logs' tails.
    fn wait(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if ready() {
                return Ok(());
            }
            let mut exited = None;
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    exited = Some((*name, status));
                }
            }
            if let Some((name, status)) = exited {
                bail!("waiting for {what}: {name} exited with {status}\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("{what} did not answer within 15 s\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `https://127.0.0.1:<port>/dir`, the ACME directory.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// `https://127.0.0.1:<port>`, pebble's management API (same listener certificate).
    pub fn management_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.management_port)
    }

    /// `127.0.0.1:<port>`, the DNS server pebble resolves challenge names with.
    pub fn dns_server(&self) -> String {
        format!("127.0.0.1:{}", self.dns_port)
    }

    /// PEM of the CA that signs pebble's HTTPS listeners (valid for `127.0.0.1` and
    /// `localhost`): what an ACME client must trust to talk to pebble.
    pub fn server_ca_pem(&self) -> &str {
        &self.server_ca
    }

    /// [`server_ca_pem`](Self::server_ca_pem) as a file, for `curl --cacert` or
    /// `LEGO_CA_CERTIFICATES`.
    pub fn server_ca_file(&self) -> PathBuf {
        self.dir.path().join("server-ca.pem")
    }

    /// PEM of the root that signs the certificates pebble issues (a new one at every
    /// start; pebble serves the intermediate with each certificate).
    pub fn issuing_root_pem(&self) -> &str {
        &self.issuing_root
    }

    /// [`issuing_root_pem`](Self::issuing_root_pem) as a file, for `curl --cacert`.
    pub fn issuing_root_file(&self) -> PathBuf {
        self.dir.path().join("issuing-root.pem")
    }

    /// An HTTP client trusting only [`server_ca_pem`](Self::server_ca_pem), with
    /// error statuses returned as responses.
    pub fn agent(&self) -> ureq::Agent {
        use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(self.server_ca.as_bytes())
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(certs))).build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    }

    /// What pebble logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The last lines of pebble's log and of its DNS server's.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["pebble.log", "challtestsrv.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} (last {LOG_TAIL} lines)\n"));
            for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A throw-away CA and the listener certificate it signs for `127.0.0.1` and
/// `localhost`: the CA's PEM, the certificate's and its key's.
fn listener_certificate() -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "testkit pebble listener CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    leaf.distinguished_name.push(DnType::CommonName, "pebble");
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port free for both UDP and TCP (a DNS server listens on both).
fn free_udp_and_tcp_port() -> Result<u16> {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1")
}
