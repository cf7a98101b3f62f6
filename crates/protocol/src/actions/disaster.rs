//! Cluster configuration backup and disaster recovery (NS8 reference 11.5):
//! `download-cluster-backup`, `retrieve-cluster-backup`, `restore-cluster` and
//! `restore-modules` of the cluster, and the node's `upload-cluster-backup` that puts a
//! copy in a destination at each run.
//!
//! The dump is a [`ClusterDump`], gzipped and encrypted with a passphrase (age, scrypt);
//! NS8's is GPG. It holds the destinations' secrets in clear inside the encryption,
//! because the fresh cluster that restores it has a new sealing key.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup::{DestinationAccess, REPOSITORY_PATH_PATTERN};
use super::cluster::Accept;

/// The version of [`ClusterDump`] this code writes and reads.
pub const DUMP_VERSION: u32 = 1;

/// The dump's file name in a destination's root (NS8's is
/// `cluster-backup-<uuid>.json.gz.gpg`).
pub fn dump_file_name(cluster_uuid: &str) -> String {
    format!("cluster-backup-{cluster_uuid}.json.gz.age")
}

/// The least length of the passphrase.
pub const MIN_PASSPHRASE: usize = 8;

action! {
    /// `download-cluster-backup`: make the encrypted dump now, for a download at
    /// `GET /api/cluster/backup/<path>` within the hour. A `password` sets the
    /// passphrase (the scheduled copies use it too); without one, the stored one.
    DownloadClusterBackup = "download-cluster-backup", DownloadRequest => DownloadReply, DisasterRefusal
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DownloadRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 1024), extend("writeOnly" = true))]
    pub password: Option<String>,
}

/// NS8's `{path}`: `<64 hex>/dump.json.gz.age`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DownloadReply {
    pub path: String,
}

/// The download's file name after its token.
pub const DOWNLOAD_FILE: &str = "dump.json.gz.age";

/// Seconds a download stays available.
pub const DOWNLOAD_TTL_SECS: i64 = 3600;

/// How `retrieve-cluster-backup` gets the dump, NS8's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetrieveType {
    /// `file`: the dump, base64, in the request.
    File,
    /// `url`: an HTTP(S) URL to fetch it from.
    Url,
}

action! {
    /// `retrieve-cluster-backup`: open a dump (uploaded or fetched) with its passphrase
    /// and keep it, sealed, for `restore-cluster`; reply with what it holds.
    RetrieveClusterBackup = "retrieve-cluster-backup", RetrieveRequest => RetrieveReply, DisasterRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetrieveRequest {
    #[serde(rename = "type")]
    pub kind: RetrieveType,
    #[schemars(length(min = 1, max = 1024), extend("writeOnly" = true))]
    pub password: String,
    /// `type: file`: base64 of the dump (at most 16 MiB decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 22_369_622))]
    pub file: Option<String>,
    /// `type: url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^https?://[^\\s]+$"), length(max = 2048))]
    pub url: Option<String>,
    #[serde(default = "yes")]
    pub tls_verify: bool,
}

fn yes() -> bool {
    true
}

/// NS8's summary (`timestamp`, `cluster`, `vpn`, `modules`, `domains`,
/// `backup_repositories`) and, beyond it, what `restore-modules` can take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetrieveReply {
    pub timestamp: u64,
    pub cluster: String,
    pub vpn: String,
    pub modules: u32,
    pub domains: u32,
    pub backup_repositories: u32,
    pub users: u32,
    pub backups: u32,
    /// The modules the dump names, each with where its backup is.
    pub restorable: Vec<RestorableModule>,
}

/// A module of the dumped cluster and its repository in a destination of the dump.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestorableModule {
    pub module_id: String,
    pub ui_name: String,
    pub node: u32,
    /// The destination id (`repository` of `restore-modules`), if a plan backs it up.
    pub repository: Option<String>,
    /// `<image name>/<MODULE_UUID>`.
    pub path: String,
}

action! {
    /// `restore-cluster`: load the retrieved dump into this cluster: its name,
    /// software repositories, destinations (sealed again under this cluster's key),
    /// plans, and the administrators this cluster does not have. Modules come next,
    /// with `restore-modules`.
    RestoreCluster = "restore-cluster", serde_json::Value => RestoreClusterReply, DisasterRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreClusterReply {
    pub repositories: Vec<String>,
    pub destinations: Vec<String>,
    pub backups: Vec<u64>,
    pub users_added: Vec<String>,
    /// Users this cluster has already: left as they are.
    pub users_kept: Vec<String>,
    /// The dumped cluster's last audit record (`<stream id> <mac>`), if any.
    pub previous_audit_head: Option<String>,
    pub restorable: Vec<RestorableModule>,
}

action! {
    /// `restore-modules`: NS8's list of `{repository, path, snapshot, node}`, each
    /// restored in turn as `restore-module` would. One failing does not stop the rest.
    RestoreModules = "restore-modules", Vec<RestoreItem> => Vec<RestoreOutcome>, DisasterRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreItem {
    #[schemars(length(min = 1, max = 64))]
    pub repository: String,
    #[schemars(regex(pattern = REPOSITORY_PATH_PATTERN))]
    pub path: String,
    #[serde(default)]
    #[schemars(regex(pattern = "^(|latest|[0-9a-f]{8,64})$"))]
    pub snapshot: String,
    #[schemars(range(min = 1))]
    pub node: u32,
    /// What the image may have; none: what the administrator accepted for the same
    /// module before, as the retrieved dump records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreOutcome {
    pub path: String,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

refusals! {
    DisasterRefusal {
        NoPassphrase => ("password", "cluster_backup_password_required"),
        ShortPassphrase => ("password", "cluster_backup_password_too_short"),
        WrongPassphrase => ("password", "cluster_backup_password_wrong"),
        NoFile => ("file", "cluster_backup_file_required"),
        BadFile => ("file", "cluster_backup_file_invalid"),
        NoUrl => ("url", "cluster_backup_url_required"),
        Unreachable => ("url", "cluster_backup_url_unreachable"),
        NotRetrieved => ("", "cluster_backup_not_retrieved"),
        NotEmpty => ("", "cluster_not_empty"),
        Empty => ("", "restore_list_empty"),
    }
}

action! {
    /// The node's `upload-cluster-backup`: write the encrypted dump to a destination's
    /// root as [`dump_file_name`].
    UploadClusterBackup = "upload-cluster-backup", UploadRequest => (), super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadRequest {
    pub destination: DestinationAccess,
    #[schemars(regex(pattern = "^cluster-backup-[A-Za-z0-9-]{1,64}\\.json\\.gz\\.age$"))]
    pub name: String,
    /// The encrypted dump, base64.
    #[schemars(extend("contentEncoding" = "base64"))]
    pub data: String,
}

/// The cluster's configuration as a dump carries it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterDump {
    pub version: u32,
    pub timestamp: u64,
    pub cluster_uuid: String,
    pub ui_name: String,
    /// Software repositories: name -> their hash (`url`, `status`, `testing`).
    pub repositories: BTreeMap<String, BTreeMap<String, String>>,
    /// Destinations with their secrets; `name` in `names`.
    pub destinations: Vec<DestinationAccess>,
    pub destination_names: BTreeMap<String, String>,
    /// Plans: id -> their hash, `instances` replaced by `uinstances` (UUIDs).
    pub plans: BTreeMap<u64, BTreeMap<String, String>>,
    pub modules: Vec<DumpedModule>,
    pub users: Vec<DumpedUser>,
    pub audit_head: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DumpedModule {
    pub module_id: String,
    pub uuid: String,
    pub image: String,
    pub node: u32,
    pub ui_name: String,
    /// The `selector:role` authorizations the administrator accepted for it.
    pub authorizations: Vec<String>,
}

/// An administrator: the profile without 2FA (its secret is sealed by a key the new
/// cluster does not have: 2FA is enrolled again) and the grants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DumpedUser {
    pub name: String,
    pub profile: BTreeMap<String, String>,
    pub grants: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{Refusal, schema_of};

    #[test]
    fn ns8_shapes() {
        let req: RetrieveRequest =
            serde_json::from_value(serde_json::json!({"type": "file", "password": "p", "file": "AAAA"})).unwrap();
        assert_eq!((req.kind, req.tls_verify), (RetrieveType::File, true));
        let items: Vec<RestoreItem> = serde_json::from_value(serde_json::json!([
            {"repository": "48ce000a-79b7-5fe6-8558-177fd70c27b4", "path": "dokuwiki/f5d24fcd-819c", "snapshot": "", "node": 1}
        ]))
        .unwrap();
        assert_eq!(items[0].node, 1);
        let s = schema_of::<DownloadRequest>();
        assert_eq!(s["properties"]["password"]["writeOnly"], true);
        assert_eq!(DisasterRefusal::WrongPassphrase.field(), "password");
        assert_eq!(dump_file_name("u1"), "cluster-backup-u1.json.gz.age");
    }
}
