//! Redis commands fred has no suitable method for, sent as custom commands.

use std::time::Duration;

use fred::prelude::*;

/// `BLMOVE from to RIGHT LEFT block`: the element moved, or `None` when the server's
/// block ran out with the list still empty. (fred's own `blmove` turns that normal empty
/// answer into a "Request timed out" error, indistinguishable from a real one.)
pub async fn blocking_move(
    client: &Client,
    from: &str,
    to: &str,
    block: Duration,
) -> Result<Option<String>, fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let cmd = CustomCommand::new_static("BLMOVE", ClusterHash::FirstKey, true);
    let secs = format!("{:.3}", block.as_secs_f64());
    client.custom(cmd, vec![from, to, "RIGHT", "LEFT", secs.as_str()]).await
}

/// Every key matching `pattern` (and of `key_type`, e.g. `"stream"`, when given), by
/// `SCAN`: never `KEYS`, which blocks Redis for everyone while it walks the keyspace.
pub async fn scan(client: &Client, pattern: &str, key_type: Option<&str>) -> Result<Vec<String>, fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let cmd = CustomCommand::new_static("SCAN", ClusterHash::Random, false);
    let mut cursor = "0".to_owned();
    let mut found = Vec::new();
    loop {
        let mut args = vec![cursor, "MATCH".to_owned(), pattern.to_owned(), "COUNT".to_owned(), "1000".to_owned()];
        if let Some(t) = key_type {
            args.extend(["TYPE".to_owned(), t.to_owned()]);
        }
        let (next, keys): (String, Vec<String>) = client.custom(cmd.clone(), args).await?;
        found.extend(keys);
        if next == "0" {
            return Ok(found);
        }
        cursor = next;
    }
}
