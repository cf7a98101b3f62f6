//! A small blocking client of the api-server: JSON requests, NS8's answer envelope
//! `{code, message, data}` read back whatever the status.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// Longest wait for one request (login hashes a password; a task status is small).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: a task's output can be big.
const MAX_BODY: u64 = 512 * 1024 * 1024;

/// Why a request to the api-server got no answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("--endpoint {0:?} is not an api-server URL: expected http://HOST[:PORT] or https://HOST[:PORT][/PATH]")]
    BadEndpoint(String),
    /// No answer at all (network, TLS); `hint` suggests a fix when one is known.
    #[error("cannot reach the api-server at {endpoint}: {error}{hint}")]
    Unreachable { endpoint: String, error: Box<ureq::Error>, hint: &'static str },
    #[error("cannot read the answer of the api-server at {endpoint}: {error}")]
    Unreadable { endpoint: String, error: Box<ureq::Error> },
    #[error("the api-server at {endpoint} answered {status}, a redirect to {to}: give the final URL as --endpoint")]
    Redirect { endpoint: String, status: u16, to: String },
    #[error("cannot read the --ca-file {}: {source}", file.display())]
    CaUnreadable { file: PathBuf, source: std::io::Error },
    #[error("the --ca-file {} is not valid PEM: {error}", file.display())]
    CaNotPem { file: PathBuf, error: Box<ureq::Error> },
    #[error("the --ca-file {} holds no certificate (PEM \"BEGIN CERTIFICATE\")", .0.display())]
    CaEmpty(PathBuf),
}

/// The endpoint as given, checked and without trailing slashes: requests go to
/// `<endpoint>/api/...`.
pub fn normalize_endpoint(raw: &str) -> Result<String, ApiError> {
    let url = raw.trim().trim_end_matches('/');
    let lower = url.to_ascii_lowercase();
    let rest = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') && !url.contains(['?', '#', ' ']) => {
            Ok(url.to_owned())
        }
        _ => Err(ApiError::BadEndpoint(raw.to_owned())),
    }
}

/// An answer of the api-server.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The JSON body, or `Null` when it was not JSON.
    pub body: Value,
    /// The body's text when it was not JSON (a proxy's error page, say).
    pub text: String,
    pub retry_after: Option<String>,
    pub location: Option<String>,
}

impl Reply {
    /// The envelope's message, else the first line of a non-JSON body, else the
    /// status line.
    pub fn message(&self) -> String {
        if let Some(m) = self.body.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()) {
            return m.to_owned();
        }
        let line = self.text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
        if !line.is_empty() {
            let short: String = line.chars().take(200).collect();
            return format!("HTTP {}: {short}", self.status);
        }
        format!("HTTP {}", self.status)
    }

    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
}

#[derive(Clone)]
pub struct Api {
    endpoint: String,
    agent: ureq::Agent,
}

impl Api {
    /// A client of `endpoint` (normalized), trusting only `ca_file`'s certificates
    /// when one is given, else the usual public roots.
    pub fn new(endpoint: &str, ca_file: Option<&Path>) -> Result<Api, ApiError> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect would turn a POST into a GET: report it instead.
            .max_redirects(0)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .user_agent(concat!("api-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = ca_file {
            let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(read_ca_file(file)?))).build();
            config = config.tls_config(tls);
        }
        Ok(Api { endpoint: endpoint.to_owned(), agent: config.build().into() })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `POST <endpoint><path>` with a JSON body (`None`: empty body).
    pub fn post(&self, path: &str, token: Option<&str>, body: Option<&Value>) -> Result<Reply, ApiError> {
        let mut req = self.agent.post(format!("{}{path}", self.endpoint));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
        self.reply(resp)
    }

    /// `GET <endpoint><path>`.
    pub fn get(&self, path: &str, token: Option<&str>) -> Result<Reply, ApiError> {
        let mut req = self.agent.get(format!("{}{path}", self.endpoint));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.reply(req.call())
    }

    fn reply(&self, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, ApiError> {
        let mut resp = resp.map_err(|e| self.unreachable(e))?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (retry_after, location) = (header("retry-after"), header("location"));
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| ApiError::Unreadable { endpoint: self.endpoint.clone(), error: Box::new(e) })?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let text = if body.is_null() { text } else { String::new() };
        let reply = Reply { status, body, text, retry_after, location };
        if (300..400).contains(&status) {
            let to = reply.location.unwrap_or_else(|| "somewhere else".to_owned());
            return Err(ApiError::Redirect { endpoint: self.endpoint.clone(), status, to });
        }
        Ok(reply)
    }

    fn unreachable(&self, error: ureq::Error) -> ApiError {
        let text = error.to_string();
        let hint = if text.contains("certificate") || text.contains("UnknownIssuer") {
            " (for a server with a self-signed certificate, pass its CA with --ca-file PEM)"
        } else {
            ""
        };
        ApiError::Unreachable { endpoint: self.endpoint.clone(), error: Box::new(error), hint }
    }
}

/// Every certificate in a PEM file; at least one.
fn read_ca_file(file: &Path) -> Result<Vec<Certificate<'static>>, ApiError> {
    let pem = std::fs::read(file).map_err(|source| ApiError::CaUnreadable { file: file.to_owned(), source })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(ApiError::CaNotPem { file: file.to_owned(), error: Box::new(e) }),
        }
    }
    if certs.is_empty() {
        return Err(ApiError::CaEmpty(file.to_owned()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_normalized() {
        assert_eq!(normalize_endpoint("http://127.0.0.1:9311/").unwrap(), "http://127.0.0.1:9311");
        assert_eq!(
            normalize_endpoint(" https://h.example/cluster-admin// ").unwrap(),
            "https://h.example/cluster-admin"
        );
        assert_eq!(normalize_endpoint("HTTPS://H").unwrap(), "HTTPS://H");
        for bad in ["127.0.0.1:9311", "ftp://h", "http://", "http:///x", "http://h/?a=1", ""] {
            assert!(normalize_endpoint(bad).unwrap_err().to_string().contains("is not an api-server URL"), "{bad}");
        }
    }

    #[test]
    fn messages_from_envelopes_or_text() {
        let r = |status, body: Value, text: &str| Reply {
            status,
            body,
            text: text.into(),
            retry_after: None,
            location: None,
        };
        assert_eq!(r(404, serde_json::json!({"code": 404, "message": "no such"}), "").message(), "no such");
        assert_eq!(r(502, Value::Null, "\n<html>Bad gateway</html>\n").message(), "HTTP 502: <html>Bad gateway</html>");
        assert_eq!(r(500, Value::Null, "").message(), "HTTP 500");
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(Api::new("https://h", Some(&missing)).err().unwrap().to_string().contains("cannot read the --ca-file"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        assert!(Api::new("https://h", Some(&empty)).err().unwrap().to_string().contains("holds no certificate"));
    }
}
