//! Checks of what callers send. Everything here ends up in a Traefik rule or file, so
//! nothing is passed through that could change a rule's meaning (backticks, quotes,
//! spaces, control characters).

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::fail::Failure;

/// Decode the input; a field of the wrong type or an unknown field is a validation
/// error naming it (its path, `headers.request` for a nested one).
pub fn decode<T: DeserializeOwned>(data: Value) -> Result<T, Failure> {
    serde_path_to_error::deserialize(data.clone()).map_err(|e| {
        let msg = e.inner().to_string();
        let mut path = e.path().to_string();
        let named = msg.split('`').nth(1).unwrap_or("").to_owned();
        let reason = if msg.starts_with("unknown field") {
            "unknown"
        } else if msg.starts_with("missing field") {
            "required"
        } else {
            "invalid_type"
        };
        // The path of a missing field is its object's.
        if reason == "required" {
            path = if path == "." { named } else { format!("{path}.{named}") };
        }
        let value = path.split('.').try_fold(&data, |v, k| v.get(k)).cloned().unwrap_or(Value::Null);
        let leaf = path.rsplit('.').next().unwrap_or("").to_owned();
        let mut f = Failure::invalid(&path, value, format!("{leaf}_{reason}"));
        if let Failure::Invalid(v) = &mut f
            && let Some(o) = v[0].as_object_mut()
        {
            o.insert("detail".into(), json!(msg));
        }
        f
    })
}

/// A route or certificate name: letters, digits, `-` and `_`, starting with a letter
/// or digit; also a file name and a part of Traefik's router names.
pub fn instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A DNS host name (RFC 1123 labels), or `*.` and one; lower case is what is stored.
pub fn host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !name.rsplit('.').next().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
}

/// A URL path prefix: `/` then URL path characters, no `..` segments.
pub fn path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 512
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:@".contains(c))
        && !p.contains('`')
        && !p.split('/').any(|s| s == "..")
}

/// A backend URL: `http` or `https`, a host, nothing after the path.
pub fn backend(u: &str) -> bool {
    match url::Url::parse(u) {
        Ok(url) => {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.username().is_empty()
                && url.password().is_none()
                && url.query().is_none()
                && url.fragment().is_none()
                && !u.contains(|c: char| c.is_whitespace() || c == '`')
        }
        Err(_) => false,
    }
}

/// An HTTP header name (RFC 9110 token).
pub fn header_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 256 && n.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_|~".contains(c))
}

/// A header value: printable, no line breaks.
pub fn header_value(v: &str) -> bool {
    v.len() <= 4096 && v.chars().all(|c| c == '\t' || (!c.is_control()))
}

/// An address or a network, IPv4 or IPv6.
pub fn cidr(c: &str) -> bool {
    c.parse::<ipnet::IpNet>().is_ok() || c.parse::<std::net::IpAddr>().is_ok()
}

pub fn email(e: &str) -> bool {
    match e.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && local.chars().all(|c| c.is_ascii_graphic() && c != '`' && c != '"')
                && host(domain)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in ["wiki.example.test", "a.b", "*.example.org", "x-1.example.com"] {
            assert!(host(ok), "{ok}");
        }
        for bad in ["", "localhost", "a..b", "-a.b", "a.b-", "wiki.example.test`)", "a b.c", "1.2.3.4", "ä.com"] {
            assert!(!host(bad), "{bad}");
        }
    }

    #[test]
    fn paths_urls_headers_cidrs() {
        assert!(path("/wiki") && path("/") && path("/a/b-c_d.e"));
        assert!(!path("wiki") && !path("/a`)||Host(`x") && !path("/a/../b") && !path("/a b"));
        assert!(backend("http://127.0.0.1:20001") && backend("https://host:1/x"));
        assert!(!backend("ftp://x") && !backend("http://u:p@x") && !backend("http://x/?q") && !backend("not a url"));
        assert!(header_name("X-Forwarded-Proto") && !header_name("Bad Header") && !header_name("a:b"));
        assert!(header_value("v 1") && !header_value("a\r\nInjected: 1"));
        assert!(cidr("192.168.1.0/24") && cidr("10.0.0.1") && cidr("fd00::/8"));
        assert!(!cidr("192.168.1.0/33") && !cidr("lan"));
        assert!(instance("dokuwiki1") && instance("mail1-rspamd") && !instance("a/b") && !instance("-x"));
    }
}
