//! The cache of HTTP Basic logins (`/api/module/<id>/http-basic/<action>`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Recently verified HTTP Basic credentials. Traefik asks on every proxied request,
/// and an argon2 check per request would be a denial of service; a success is reused
/// for a minute, keyed by a salted hash so the cache holds no password.
pub struct BasicCache {
    salt: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);

impl BasicCache {
    pub fn new() -> Self {
        BasicCache { salt: rand::random(), entries: Mutex::new(HashMap::new()) }
    }
    pub fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }
    pub fn hit(&self, key: &[u8; 32]) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, t| t.elapsed() < BASIC_CACHE_TTL);
        entries.contains_key(key)
    }
    /// Forget every entry: a password changed.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    pub fn insert(&self, key: [u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() < 10_000 {
            entries.insert(key, Instant::now());
        }
    }
}

impl Default for BasicCache {
    fn default() -> Self {
        Self::new()
    }
}
