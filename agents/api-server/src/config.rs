//! Command line and environment, NS8's variable names where NS8 has one.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::keyfile;
use crate::net::{BadProxy, TrustedProxies};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default: the edge proxy publishes the API.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:9311")]
    pub listen: SocketAddr,
    /// File holding the token signing key; created with a random key (mode 0600) if
    /// missing. Ignored when SECRET is set (NS8's variable).
    #[arg(long, env = "API_SECRET_FILE", default_value = "/var/lib/ns8rs/api-server/secret")]
    pub secret_file: PathBuf,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Issuer shown by authenticator apps for 2FA.
    #[arg(long, env = "ISSUER", default_value = "NethServer")]
    pub issuer: String,
    /// Seconds a session token is valid; refresh it with POST /api/refresh.
    #[arg(long, env = "TOKEN_LIFETIME", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_lifetime: u64,
    /// Seconds after login when a session can no longer be refreshed (NS8's token
    /// lifetime: 14 days).
    #[arg(long, env = "MAX_SESSION", default_value_t = 14 * 86400)]
    pub max_session: u64,
    /// About how many audit records are kept (older ones are trimmed).
    #[arg(long, env = "AUDIT_MAXLEN", default_value_t = 100_000)]
    pub audit_maxlen: u64,
    /// Largest request body accepted, in bytes (login: 16 KiB whatever this says).
    #[arg(long, env = "BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Proxies whose `X-Forwarded-For` is believed: comma-separated IP addresses and
    /// CIDRs, e.g. the edge proxy's `127.0.0.1`. Empty: no forwarding header is ever
    /// believed, and the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = parse_proxies)]
    pub trusted_proxies: TrustedProxies,
    /// A file whose content a trusted proxy sends in `X-Ns8rs-Proxy-Token` (the edge
    /// proxy's cluster-admin route sets it). Set, a trusted address is not enough: on
    /// one machine every local process shares 127.0.0.1 with the proxy. Created
    /// (random, mode 0600) if missing; the proxy's installer reads it from there.
    #[arg(long, env = "PROXY_TOKEN_FILE")]
    pub proxy_token_file: Option<PathBuf>,
    /// Key of the audit chain's HMAC (created, mode 0600, if missing). Default:
    /// `audit-key` beside API_SECRET_FILE.
    #[arg(long, env = "AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// Where this server keeps the audit chain's head it last wrote (the record
    /// number and hash), to see a truncated tail. Default: `audit-head` beside
    /// API_SECRET_FILE.
    #[arg(long, env = "AUDIT_HEAD_FILE")]
    pub audit_head_file: Option<PathBuf>,
    /// Key sealing the secrets stored in Redis (TOTP secrets; created, mode 0600, if
    /// missing). Default: `data-key` beside API_SECRET_FILE.
    #[arg(long, env = "DATA_KEY_FILE")]
    pub data_key_file: Option<PathBuf>,
}

fn parse_proxies(s: &str) -> Result<TrustedProxies, BadProxy> {
    s.parse()
}

impl ServeArgs {
    pub fn audit_key_path(&self) -> PathBuf {
        self.audit_key_file.clone().unwrap_or_else(|| keyfile::beside(&self.secret_file, "audit-key"))
    }
    pub fn audit_head_path(&self) -> PathBuf {
        self.audit_head_file.clone().unwrap_or_else(|| keyfile::beside(&self.secret_file, "audit-head"))
    }
    pub fn data_key_path(&self) -> PathBuf {
        self.data_key_file.clone().unwrap_or_else(|| keyfile::beside(&self.secret_file, "data-key"))
    }
}
