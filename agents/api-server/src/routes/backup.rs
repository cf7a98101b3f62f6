//! The download of the encrypted cluster backup (NS8's `download-cluster-backup`
//! flow): the cluster action stores the dump under a random token for an hour and
//! answers `{"path": "<token>/dump.json.gz.age"}`; the portal then fetches
//! `GET /api/cluster/backup/<token>/dump.json.gz.age`.
//!
//! The caller must hold a session that may run `download-cluster-backup` on the
//! cluster, checked as task creation checks an action. The token is a capability: it
//! is neither echoed in errors nor written to the audit trail or the log.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use fred::prelude::*;
use protocol::actions::Action;
use protocol::actions::disaster::{DOWNLOAD_FILE, DownloadClusterBackup};
use protocol::{AgentId, keys};
use serde_json::json;

use super::extract::Params;
use super::tasks::require_action;
use crate::audit::Entry;
use crate::error::{ApiError, ApiResult};
use crate::state::{Caller, Shared};

/// The audit record's action of a download.
pub const AUDIT_ACTION: &str = "download-cluster-backup-file";

/// The length of a download token: 32 random bytes, lowercase hex.
pub const TOKEN_LEN: usize = 64;

/// Whether `token` has the shape of a download token (64 lowercase hex digits).
pub fn valid_token(token: &str) -> bool {
    token.len() == TOKEN_LEN && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The token and file of the path, checked before anything is read.
fn download_from(p: &Params) -> Result<String, ApiError> {
    let token = p.get("token").map(String::as_str).unwrap_or_default();
    let file = p.get("file").map(String::as_str).unwrap_or_default();
    // The token is not repeated: a near miss of a real one would still be one.
    if !valid_token(token) {
        return Err(ApiError::bad_request(format!(
            "path parameter \"token\": expected {TOKEN_LEN} lowercase hexadecimal characters \
             (the \"path\" answered by the action {}), got {} characters",
            DownloadClusterBackup::NAME,
            token.chars().count()
        )));
    }
    if file != DOWNLOAD_FILE {
        return Err(ApiError::not_found(format!(
            "path parameter \"file\": the only file of a cluster backup download is \"{DOWNLOAD_FILE}\""
        )));
    }
    Ok(token.to_owned())
}

/// `GET /api/cluster/backup/{token}/{file}`: the encrypted dump, as bytes.
pub async fn download(State(s): State<Shared>, caller: Caller, Path(p): Path<Params>) -> ApiResult {
    let token = download_from(&p)?;
    let agent = AgentId::Cluster;
    let session = s.session(&caller, Some(agent.clone())).await?;
    require_action(&s, &session, &agent, DownloadClusterBackup::NAME).await?;
    let dump: Option<Bytes> = s.redis.get(keys::cluster_backup_download(&token)).await?;
    let Some(dump) = dump else {
        return Err(ApiError::not_found("no such cluster backup download (it expires after an hour)"));
    };
    s.audit(Entry {
        user: session.subject.name(),
        source: session.source.to_string(),
        action: AUDIT_ACTION.into(),
        agent: agent.to_string(),
        task: String::new(),
        data: json!({"file": DOWNLOAD_FILE, "bytes": dump.len()}).to_string(),
    })
    .await;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{DOWNLOAD_FILE}\"")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        Body::from(dump),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(token: &str, file: &str) -> Params {
        [("token".to_owned(), token.to_owned()), ("file".to_owned(), file.to_owned())].into()
    }

    #[test]
    fn tokens_and_files() {
        let good = "0123456789abcdef".repeat(4);
        assert_eq!(download_from(&params(&good, DOWNLOAD_FILE)).unwrap(), good);
        for bad in [String::new(), "0123456789ABCDEF".repeat(4), format!("{good}0"), good[1..].to_owned()] {
            let e = download_from(&params(&bad, DOWNLOAD_FILE)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains("\"token\""), "{}", e.message);
            assert!(bad.is_empty() || !e.message.contains(&bad), "the token is not echoed: {}", e.message);
        }
        let g = format!("{}g", &good[1..]);
        assert!(!valid_token(&g));
        for file in ["dump.json.gz", "../dump.json.gz.age", ""] {
            let e = download_from(&params(&good, file)).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND);
            assert!(e.message.contains("\"file\"") && e.message.contains(DOWNLOAD_FILE), "{}", e.message);
        }
    }
}
