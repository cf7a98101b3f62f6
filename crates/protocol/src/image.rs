//! Image references, as module labels (`org.nethserver.images`) and repositories name
//! them: `host[:port]/path/name[:tag|@digest]`.

/// A string that is not an image reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an image reference such as registry.example.org/path/name:1.0.0")]
pub struct BadImageReference(pub String);

/// The last path element (the base of instance ids) and the tag (`latest` when none,
/// empty for a digest reference).
pub fn parse_reference(url: &str) -> Result<(String, String), BadImageReference> {
    let bad = || BadImageReference(url.to_owned());
    if url.is_empty() || url.len() > 512 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (path, tag) = match url.rsplit_once('@') {
        Some((p, _digest)) => (p, ""),
        None => match url.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, t),
            _ => (url, "latest"),
        },
    };
    let name = path.rsplit('/').next().unwrap_or("");
    let ok_name = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !ok_name || !path.contains('/') {
        return Err(bad());
    }
    Ok((name.to_owned(), tag.to_owned()))
}

/// Whether the image's registry is on loopback (the local repository), the one case
/// where it is reached without TLS verification.
pub fn on_loopback_registry(url: &str) -> bool {
    let host = url.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(parse_reference("127.0.0.1:15000/ns8rs/hello:1.0.0").unwrap(), ("hello".into(), "1.0.0".into()));
        assert_eq!(parse_reference("ghcr.io/nethserver/mail").unwrap(), ("mail".into(), "latest".into()));
        assert_eq!(parse_reference("ghcr.io/x/y@sha256:abc").unwrap(), ("y".into(), "".into()));
        for bad in ["", "hello", "ghcr.io/x/Upper:1", "a b/c:1", "ghcr.io/x/:1"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        assert!(on_loopback_registry("127.0.0.1:15000/ns8rs/hello:1"));
        assert!(on_loopback_registry("localhost/x/y"));
        assert!(!on_loopback_registry("ghcr.io/x/y:1"));
        assert!(!on_loopback_registry("127.0.0.1.example.org/x/y"));
    }
}
