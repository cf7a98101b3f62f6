//! The session cache of `api-cli login`: one file per endpoint and user in a directory
//! private to the Unix user (`$XDG_CACHE_HOME/api-cli/`, else `~/.cache/api-cli/`;
//! the directory mode 0700, the files 0600). A file holds the session token and when
//! it was received, never a password.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Name of our directory inside the cache root.
const DIR_NAME: &str = "api-cli";
/// Longest file name we create (most file systems allow 255 bytes).
const MAX_NAME: usize = 250;

/// Why the session cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot find where to keep the session: set HOME (or XDG_CACHE_HOME)")]
    NoHome,
    #[error("the endpoint URL {0} is too long to name a session file")]
    NameTooLong(String),
    /// A file operation failed; `what` names the file ("the session file /x").
    #[error("cannot {verb} {what} {}: {source}", path.display())]
    Io { verb: &'static str, what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the session file {} is damaged ({source}): log in again", path.display())]
    Damaged { path: PathBuf, source: serde_json::Error },
    #[error("cannot encode the session: {0}")]
    Encode(serde_json::Error),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "the session directory {} belongs to uid {owner}, not to you (uid {me}): set XDG_CACHE_HOME or HOME to a directory of yours",
        dir.display()
    )]
    NotOurs { dir: PathBuf, owner: u32, me: u32 },
}

fn io_error(
    verb: &'static str,
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> CacheError {
    move |source| CacheError::Io { verb, what, path: path.to_owned(), source }
}

/// One login: what `run` and `logout` need to act as this user on this endpoint.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The normalized endpoint URL (see `api::normalize_endpoint`).
    pub endpoint: String,
    pub username: String,
    pub token: String,
    /// When the server says the token expires (RFC 3339), for people reading the file.
    #[serde(default)]
    pub expire: String,
    /// Local Unix time the token was received.
    pub obtained: u64,
    /// Seconds the token is valid (its `exp` minus its `iat`); 0 when unknown.
    #[serde(default)]
    pub lifetime: u64,
    /// The `--ca-file` given at login, used again by `run` and `logout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("endpoint", &self.endpoint)
            .field("username", &self.username)
            .field("token", &"<hidden>")
            .field("expire", &self.expire)
            .field("obtained", &self.obtained)
            .field("lifetime", &self.lifetime)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Entry {
    /// A fresh entry for a token just received at local time `now`.
    pub fn new(endpoint: &str, username: &str, token: String, expire: String, now: u64) -> Entry {
        let lifetime = token_lifetime(&token).unwrap_or(0);
        Entry {
            endpoint: endpoint.to_owned(),
            username: username.to_owned(),
            token,
            expire,
            obtained: now,
            lifetime,
            ca_file: None,
        }
    }

    /// Whether the token is within a quarter of its lifetime of expiry (or past it),
    /// measured on the local clock from when it was received, so clock skew between
    /// the client and the server does not matter.
    pub fn refresh_due(&self, now: u64) -> bool {
        self.lifetime > 0 && now.saturating_add(self.lifetime / 4) >= self.obtained.saturating_add(self.lifetime)
    }
}

/// `exp - iat` of a JWT, read from its payload without checking the signature (only
/// the server can, and it does on every request).
pub fn token_lifetime(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let (exp, iat) = (claims.get("exp")?.as_u64()?, claims.get("iat")?.as_u64()?);
    exp.checked_sub(iat)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The cache directory; created only when something is stored.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// `$XDG_CACHE_HOME/api-cli` when that is an absolute path, else `$HOME/.cache/api-cli`.
    pub fn locate() -> Result<Cache, CacheError> {
        Self::locate_in(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
    }

    pub fn locate_in(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Result<Cache, CacheError> {
        let root = match (xdg_cache_home.map(PathBuf::from), home.map(PathBuf::from)) {
            (Some(xdg), _) if xdg.is_absolute() => xdg,
            (_, Some(home)) if home.is_absolute() => home.join(".cache"),
            _ => return Err(CacheError::NoHome),
        };
        Ok(Cache { dir: root.join(DIR_NAME) })
    }

    #[cfg(test)]
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The file of `username`'s login on `endpoint`.
    pub fn path(&self, endpoint: &str, username: &str) -> Result<PathBuf, CacheError> {
        let name = format!("{}@{}.json", escape(username), escape(endpoint));
        if name.len() > MAX_NAME {
            return Err(CacheError::NameTooLong(endpoint.to_owned()));
        }
        Ok(self.dir.join(name))
    }

    /// `username`'s login on `endpoint`, if cached.
    pub fn load(&self, endpoint: &str, username: &str) -> Result<Option<Entry>, CacheError> {
        let path = self.path(endpoint, username)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", "the session file", &path)(e)),
        };
        let entry: Entry = serde_json::from_str(&text).map_err(|source| CacheError::Damaged { path, source })?;
        Ok((entry.endpoint == endpoint && entry.username == username).then_some(entry))
    }

    /// Every login cached for `endpoint`, sorted by user name.
    pub fn logins(&self, endpoint: &str) -> Result<Vec<Entry>, CacheError> {
        let suffix = format!("@{}.json", escape(endpoint));
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("read", "the session directory", &self.dir)(e)),
        };
        let mut found = Vec::new();
        for item in dir.flatten() {
            let name = item.file_name();
            let Some(user) = name.to_str().and_then(|n| n.strip_suffix(&suffix)) else { continue };
            let Some(user) = unescape(user) else { continue };
            if let Some(entry) = self.load(endpoint, &user)? {
                found.push(entry);
            }
        }
        found.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(found)
    }

    /// Write `entry` (replacing the previous one atomically), creating the directory
    /// if needed. Returns the file's path.
    pub fn store(&self, entry: &Entry) -> Result<PathBuf, CacheError> {
        self.private_dir()?;
        let path = self.path(&entry.endpoint, &entry.username)?;
        let tmp = self.dir.join(format!(".{}.{}.tmp", std::process::id(), uuid::Uuid::new_v4().simple()));
        let text = serde_json::to_string_pretty(entry).map_err(CacheError::Encode)? + "\n";
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error("write", "the session file", &path)(e));
        }
        Ok(path)
    }

    /// Forget a login. `Ok(false)` when there was none.
    pub fn remove(&self, endpoint: &str, username: &str) -> Result<bool, CacheError> {
        let path = self.path(endpoint, username)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("remove", "the session file", &path)(e)),
        }
    }

    /// The directory, created with mode 0700, or checked to be ours and made 0700.
    fn private_dir(&self) -> Result<(), CacheError> {
        let dir = &self.dir;
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) => return Err(io_error("create", "the session directory", dir)(e)),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(io_error("inspect", "the session directory", dir))?;
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory(dir.clone()));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(CacheError::NotOurs { dir: dir.clone(), owner: meta.uid(), me });
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error(
                "make private",
                "the session directory",
                dir,
            ))?;
        }
        Ok(())
    }
}

/// A file-name-safe, reversible spelling: ASCII letters, digits, `.` and `-` are kept,
/// every other byte becomes `_XX` (hex). `@` never survives, so it can separate parts.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'_' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.signature", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(claims))
    }

    #[test]
    fn lifetime_from_the_token() {
        assert_eq!(token_lifetime(&jwt(r#"{"id":"admin","iat":1000,"exp":4600}"#)), Some(3600));
        assert_eq!(token_lifetime(&jwt(r#"{"iat":1000}"#)), None);
        assert_eq!(token_lifetime(&jwt(r#"{"iat":5000,"exp":4600}"#)), None);
        assert_eq!(token_lifetime("not a token"), None);
    }

    #[test]
    fn refresh_in_the_last_quarter() {
        let mut e = Entry::new("http://h", "admin", jwt(r#"{"iat":1000,"exp":4600}"#), String::new(), 100);
        assert_eq!(e.lifetime, 3600);
        assert!(!e.refresh_due(100));
        assert!(!e.refresh_due(100 + 2699));
        assert!(e.refresh_due(100 + 2700));
        assert!(e.refresh_due(100 + 99_999));
        e.lifetime = 0;
        assert!(!e.refresh_due(100 + 99_999), "unknown lifetime: never refreshed");
    }

    #[test]
    fn file_names_are_safe_and_reversible() {
        for s in ["http://127.0.0.1:9311", "module/mail1", "a_b@c d", "é"] {
            let e = escape(s);
            assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b)), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(escape("http://h:1"), "http_3A_2F_2Fh_3A1");
        assert_eq!(unescape("_4"), None);
    }

    #[test]
    fn location_follows_xdg_then_home() {
        let c = Cache::locate_in(Some("/x/cache".into()), Some("/home/u".into())).unwrap();
        assert_eq!(c.dir(), Path::new("/x/cache/api-cli"));
        let c = Cache::locate_in(Some("relative".into()), Some("/home/u".into())).unwrap();
        assert_eq!(c.dir(), Path::new("/home/u/.cache/api-cli"));
        assert!(Cache::locate_in(None, None).is_err());
    }

    #[test]
    fn store_load_list_remove_with_private_modes() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::locate_in(Some(root.path().as_os_str().to_owned()), None).unwrap();
        let ep = "http://127.0.0.1:9311";
        assert_eq!(cache.load(ep, "admin").unwrap(), None);
        assert!(cache.logins(ep).unwrap().is_empty());
        let a = Entry::new(ep, "admin", jwt(r#"{"iat":1,"exp":61}"#), "later".into(), 5);
        let path = cache.store(&a).unwrap();
        let b = Entry::new(ep, "module/mail1", "t2".into(), String::new(), 5);
        cache.store(&b).unwrap();
        cache.store(&Entry::new("https://other", "admin", "t3".into(), String::new(), 5)).unwrap();

        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(cache.load(ep, "admin").unwrap(), Some(a.clone()));
        let users: Vec<String> = cache.logins(ep).unwrap().into_iter().map(|e| e.username).collect();
        assert_eq!(users, ["admin", "module/mail1"]);

        assert!(cache.remove(ep, "admin").unwrap());
        assert!(!cache.remove(ep, "admin").unwrap());
        assert_eq!(cache.logins(ep).unwrap().len(), 1);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // A directory someone made world-readable is made private again on write.
        std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        cache.store(&a).unwrap();
        assert_eq!(mode(cache.dir()), 0o700);
    }

    #[test]
    fn debug_hides_the_token() {
        let e = Entry::new("http://h", "admin", "secret-token-value".into(), String::new(), 0);
        assert!(!format!("{e:?}").contains("secret-token-value"));
    }
}
