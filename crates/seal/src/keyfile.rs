//! Key files: created with random content (mode 0600) when missing, refused when
//! others may read them. The api-server keeps its signing, audit and data keys in its
//! state directory; the cluster agent its sealing key in its own. Never in Redis: a
//! Redis dump or replica alone must not hold what protects Redis's own content.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create the key file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("the key file {path} holds {len} bytes, {expected}: restore the right file, or remove it to start over")]
    Length { path: PathBuf, len: usize, expected: String },
    #[error("the key file {path} may be read by others (mode {mode:03o}): `chmod 600 {path}` (and check who read it)")]
    Permissions { path: PathBuf, mode: u32 },
}

/// The key in `path`, at least `min_len` bytes (exactly `min_len` when `exact`), or a
/// new random one of `min_len` bytes written there.
pub fn load_or_create(path: &Path, min_len: usize, exact: bool) -> Result<Vec<u8>, KeyFileError> {
    let Some(key) = read_private(path)? else { return create(path, min_len) };
    let bad_len = if exact { key.len() != min_len } else { key.len() < min_len };
    if bad_len {
        let expected =
            if exact { format!("expected exactly {min_len}") } else { format!("expected at least {min_len}") };
        return Err(KeyFileError::Length { path: path.to_owned(), len: key.len(), expected });
    }
    Ok(key)
}

/// A token shared with another program (the edge proxy's `X-Ns8rs-Proxy-Token`):
/// the file's text, trimmed, at least 32 visible ASCII characters, in a file only its
/// owner reads. Missing, a new one (64 hex digits) is written there: the proxy's
/// installer reads it back (a unit's dynamic user cannot read a file root made).
pub fn load_or_create_token(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let key = match read_private(path)? {
        Some(key) => key,
        None => write_new(path, crate::random_hex(32).as_bytes())?,
    };
    let text = String::from_utf8_lossy(&key).trim().to_owned();
    if text.len() < 32 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyFileError::Length {
            path: path.to_owned(),
            len: text.len(),
            expected: "expected at least 32 visible ASCII characters".into(),
        });
    }
    Ok(text.into_bytes())
}

/// The content of a file only its owner may read; `None` when it does not exist.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, KeyFileError> {
    let key = match std::fs::read(path) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyFileError::Read { path: path.to_owned(), source }),
    };
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyFileError::Read { path: path.to_owned(), source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.to_owned(), mode: mode & 0o777 });
    }
    Ok(Some(key))
}

fn create(path: &Path, len: usize) -> Result<Vec<u8>, KeyFileError> {
    write_new(path, &(0..len).map(|_| rand::random::<u8>()).collect::<Vec<u8>>())
}

fn write_new(path: &Path, key: &[u8]) -> Result<Vec<u8>, KeyFileError> {
    let err = |source| KeyFileError::Create { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // create_new: two processes starting at once never overwrite each other's key.
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
    f.write_all(key).and_then(|()| f.sync_all()).map_err(err)?;
    Ok(key.to_vec())
}

/// `name` in the directory of `anchor` (the token signing key file).
pub fn beside(anchor: &Path, name: &str) -> PathBuf {
    anchor.parent().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_read_back_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let key = load_or_create(&path, 32, true).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path, 32, true).unwrap(), key);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path, 32, true).unwrap_err().to_string();
        assert!(e.contains("may be read by others (mode 644)") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let e = load_or_create(&path, 32, true).unwrap_err().to_string();
        assert!(e.contains("holds 5 bytes, expected exactly 32"), "{e}");
        assert_eq!(beside(Path::new("/var/lib/x/secret"), "audit-key"), Path::new("/var/lib/x/audit-key"));
    }

    #[test]
    fn token_made_once_as_hex_and_a_short_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy-token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.iter().all(u8::is_ascii_hexdigit));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        std::fs::write(&path, b"  abc\n").unwrap();
        let e = load_or_create_token(&path).unwrap_err().to_string();
        assert!(e.contains("holds 3 bytes, expected at least 32 visible ASCII"), "{e}");
    }
}
