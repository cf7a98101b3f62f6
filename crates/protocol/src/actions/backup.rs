//! Backup destinations (NS8 reference 11.1): the cluster's `add-`, `alter-`,
//! `remove-` and `list-backup-repositories`, and the node's
//! `validate-backup-destination` that checks one before it is saved.
//!
//! A destination is a local directory of a node (a USB disk, a mounted share) or an
//! S3 bucket (AWS or any S3-compatible endpoint). Its public part is
//! `cluster/backup_repository/<id>` (`name`, `url`, `provider`, `basepath`, as NS8);
//! its credentials and restic password are sealed in `private/backup_destination/<id>`
//! and no read action returns them (NS8's `list-backup-repositories` returns the restic
//! password).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// A directory on the node (`url` is `local:<absolute path>`): NS8 has its
    /// `cluster` provider (a WebDAV volume) instead.
    Local,
    /// Amazon S3 (`s3:s3.amazonaws.com/<bucket>/<path>`).
    Aws,
    /// Any S3-compatible endpoint (`s3:<host[:port]>/<bucket>/<path>`; `s3:http://...`
    /// for a LAN endpoint without TLS).
    GenericS3,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::Aws => "aws",
            Provider::GenericS3 => "generic-s3",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        [Provider::Local, Provider::Aws, Provider::GenericS3].into_iter().find(|p| p.as_str() == s)
    }
}

/// Provider credentials and settings, NS8's field names. `local` takes none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = r"^[^\s]*$"))]
    pub aws_access_key_id: Option<String>,
    /// Empty in `alter-backup-repository`: keep the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = r"^[^\s]*$"), extend("writeOnly" = true))]
    pub aws_secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^[a-z0-9-]*$"))]
    pub aws_default_region: Option<String>,
}

impl Parameters {
    /// The same, with the secret blanked (what a read action shows, as NS8 does).
    pub fn public(&self) -> Parameters {
        Parameters { aws_secret_access_key: self.aws_secret_access_key.as_ref().map(|_| String::new()), ..self.clone() }
    }
}

/// Where a destination's `url` points, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An absolute, normalised directory path.
    Local { path: String },
    /// `endpoint` with its scheme (`https://` unless the URL said `http://`).
    S3 { endpoint: String, bucket: String, prefix: String },
}

/// Why a `url` is not one of its provider's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("a {provider} destination's url starts with {prefix}")]
    Scheme { provider: &'static str, prefix: &'static str },
    #[error("the path must be absolute, without `.`, `..`, empty or control-character components")]
    Path,
    #[error(
        "expected s3:<endpoint>/<bucket>[/<path>], with a bucket of 3-63 lowercase letters, digits, dots and dashes"
    )]
    S3,
}

impl Location {
    pub fn parse(provider: Provider, url: &str) -> Result<Location, UrlError> {
        match provider {
            Provider::Local => {
                let path = url
                    .strip_prefix("local:")
                    .ok_or(UrlError::Scheme { provider: provider.as_str(), prefix: "local:" })?;
                let normal = path.starts_with('/')
                    && path.len() > 1
                    && path
                        .trim_end_matches('/')
                        .split('/')
                        .skip(1)
                        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.chars().any(char::is_control));
                if !normal {
                    return Err(UrlError::Path);
                }
                Ok(Location::Local { path: path.trim_end_matches('/').to_owned() })
            }
            Provider::Aws | Provider::GenericS3 => {
                let rest =
                    url.strip_prefix("s3:").ok_or(UrlError::Scheme { provider: provider.as_str(), prefix: "s3:" })?;
                let (scheme, rest) = match rest.strip_prefix("http://") {
                    Some(r) => ("http://", r),
                    None => ("https://", rest.strip_prefix("https://").unwrap_or(rest)),
                };
                let mut parts = rest.splitn(3, '/');
                let host = parts.next().unwrap_or("");
                let bucket = parts.next().unwrap_or("");
                let prefix = parts.next().unwrap_or("").trim_matches('/');
                let host_ok = !host.is_empty()
                    && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
                let bucket_ok = (3..=63).contains(&bucket.len())
                    && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
                let prefix_ok =
                    prefix.split('/').all(|c| c != "." && c != "..") && !prefix.chars().any(char::is_control);
                if !(host_ok && bucket_ok && prefix_ok) || prefix.contains("//") {
                    return Err(UrlError::S3);
                }
                Ok(Location::S3 {
                    endpoint: format!("{scheme}{host}"),
                    bucket: bucket.to_owned(),
                    prefix: prefix.into(),
                })
            }
        }
    }
}

action! {
    /// `add-backup-repository`: check a destination, then save it.
    AddBackupRepository = "add-backup-repository", AddBackupRepositoryRequest => AddBackupRepositoryReply, DestinationRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddBackupRepositoryRequest {
    pub provider: Provider,
    /// Empty: a name made from the provider and the URL.
    #[serde(default)]
    #[schemars(length(max = 128), regex(pattern = "^[^\\u0000-\\u001f]*$"))]
    pub name: String,
    #[schemars(length(min = 4, max = 1024))]
    pub url: String,
    /// The restic password of the destination's repositories; empty: a random one.
    #[serde(default)]
    #[schemars(length(max = 4096), extend("writeOnly" = true))]
    pub password: String,
    #[serde(default)]
    pub parameters: Parameters,
}

/// NS8's `{id, password}`; `password` is always masked (`XXX`): a secret is not
/// returned, not even here. The cluster backup holds it, and an administrator who
/// wants to know it gives their own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddBackupRepositoryReply {
    pub id: String,
    pub password: String,
}

action! {
    /// `alter-backup-repository`: rename it, or change its credentials (checked again).
    AlterBackupRepository = "alter-backup-repository", AlterBackupRepositoryRequest => (), DestinationRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlterBackupRepositoryRequest {
    #[schemars(length(min = 1, max = 64))]
    pub id: String,
    /// Must be the destination's own.
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), regex(pattern = "^[^\\u0000-\\u001f]*$"))]
    pub name: Option<String>,
    /// Given fields replace the stored ones; an empty secret keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

action! {
    /// `remove-backup-repository`.
    RemoveBackupRepository = "remove-backup-repository", DestinationId => (), DestinationRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DestinationId {
    #[schemars(length(min = 1, max = 64))]
    pub id: String,
}

action! {
    /// `list-backup-repositories`: the destinations, without their secrets. Its input
    /// is ignored.
    ListBackupRepositories = "list-backup-repositories", serde_json::Value => BackupRepositories, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupRepositories {
    pub repositories: Vec<BackupRepository>,
    /// Whether a cluster backup passphrase is set (NS8's field).
    pub password_exists: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupRepository {
    pub id: String,
    pub provider: Provider,
    pub name: String,
    pub url: String,
    /// NS8's field; always empty here (it is for NS8's raw rclone destinations).
    pub basepath: String,
    /// With the secret blanked.
    pub parameters: Parameters,
}

action! {
    /// `validate-backup-destination` on a node: it can list, write, read back and
    /// delete there, and has room.
    ValidateBackupDestination = "validate-backup-destination", ValidateRequest => ValidateReply, DestinationRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValidateRequest {
    #[schemars(length(min = 1, max = 64))]
    pub id: String,
    pub provider: Provider,
    #[schemars(length(min = 4, max = 1024))]
    pub url: String,
    #[serde(default)]
    pub parameters: Parameters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValidateReply {
    pub node_id: u32,
    /// Free space at the destination, where it reports it (a local disk does, S3 does
    /// not).
    pub free_bytes: Option<u64>,
}

/// Below this, a destination is refused as full.
pub const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

refusals! {
    /// Why a destination is refused; the value says what failed, in the store's words.
    DestinationRefusal {
        /// The same provider, URL and parameters are a destination already.
        Exists => ("", "backup_repository_exists"),
        NotFound => ("id", "backup_repository_not_found"),
        ProviderMismatch => ("provider", "backup_provider_mismatch"),
        BadUrl => ("url", "url_format"),
        /// `aws_access_key_id` and `aws_secret_access_key` are needed for S3, nothing
        /// for a local path.
        BadParameters => ("parameters", "parameters_format"),
        /// A local path that does not exist (a disk not mounted).
        PathNotFound => ("url", "backup_path_not_found"),
        /// A local path through a symlink, or that someone other than root may change.
        PathUnsafe => ("url", "backup_path_unsafe"),
        NotAccessible => ("parameters", "backup_repository_not_accessible"),
        NoWrite => ("parameters", "no_write_permission"),
        NoRead => ("parameters", "no_read_permission"),
        NoDelete => ("parameters", "no_delete_permission"),
        NoSpace => ("parameters", "not_enough_space"),
    }
}

/// The pattern of a module id in a plan's `instances` (any agent id's module part).
pub const INSTANCE_PATTERN: &str = "^[a-z][a-z0-9_-]*[0-9]+$";

/// When a plan's webhook is called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookWhen {
    /// After every run: success reports too (what NS8 lacks).
    #[default]
    Always,
    Failure,
}

/// What a plan keeps: NS8's `retention` (keep-last), plus restic's calendar rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeepRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_monthly: Option<u32>,
}

action! {
    /// `add-backup`: a plan; its reply is the new id (NS8's bare integer).
    AddBackup = "add-backup", AddBackupRequest => u64, PlanRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddBackupRequest {
    /// Empty: `Backup <id>`.
    #[serde(default)]
    #[schemars(length(max = 128), regex(pattern = "^[^\\u0000-\\u001f]*$"))]
    pub name: String,
    /// The destination's id.
    #[schemars(length(min = 1, max = 64))]
    pub repository: String,
    #[serde(flatten)]
    pub settings: PlanSettings,
}

/// What `add-backup` sets and `alter-backup` changes (all but the name and the
/// destination), NS8's fields and ours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanSettings {
    /// A systemd calendar expression (`OnCalendar=`).
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// The portal's own description of the schedule, kept as given (NS8's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_hint: Option<serde_json::Value>,
    /// Keep the last this many snapshots of each module.
    #[schemars(range(min = 1, max = 1000))]
    pub retention: u32,
    #[serde(default, flatten)]
    pub keep: KeepRules,
    #[schemars(length(max = 256))]
    pub instances: Vec<Instance>,
    pub enabled: bool,
    /// Called with a JSON report of each run (`http(s)://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^https?://[^\\s]+$"), length(max = 2048))]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub webhook_when: WebhookWhen,
    /// When to run a restore drill (a systemd calendar expression); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub drill_schedule: Option<String>,
}

/// A module id in a plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Instance(#[schemars(regex(pattern = INSTANCE_PATTERN), length(max = 64))] pub String);

action! {
    /// `alter-backup`: everything but the destination.
    AlterBackup = "alter-backup", AlterBackupRequest => (), PlanRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlterBackupRequest {
    #[schemars(range(min = 1))]
    pub id: u64,
    #[schemars(length(min = 1, max = 128), regex(pattern = "^[^\\u0000-\\u001f]*$"))]
    pub name: String,
    #[serde(flatten)]
    pub settings: PlanSettings,
}

action! {
    /// `remove-backup`.
    RemoveBackup = "remove-backup", PlanId => (), PlanRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanId {
    #[schemars(range(min = 1))]
    pub id: u64,
}

action! {
    /// `list-backups`: the plans with each module's last run, and the modules in no
    /// plan. Its input is ignored.
    ListBackups = "list-backups", serde_json::Value => BackupPlans, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupPlans {
    pub backups: Vec<BackupPlan>,
    /// Installed modules in no plan (NS8's `{id, ui_name}` items).
    pub unconfigured_instances: Vec<UnconfiguredInstance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupPlan {
    pub id: u64,
    pub name: String,
    pub repository: String,
    pub schedule: String,
    pub schedule_hint: Option<serde_json::Value>,
    pub retention: u32,
    #[serde(flatten)]
    pub keep: KeepRules,
    pub enabled: bool,
    pub instances: Vec<PlanInstance>,
    pub webhook_url: Option<String>,
    pub webhook_when: WebhookWhen,
    /// The next scheduled run (RFC 3339), when enabled.
    pub next_run: Option<String>,
    pub drill_schedule: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanInstance {
    pub module_id: String,
    pub ui_name: String,
    /// `<image name>/<MODULE_UUID>`: where its repository is in the destination.
    pub repository_path: String,
    /// Its last run in this plan; `null` before the first.
    pub status: Option<RunStatus>,
    /// Its last drill, and its last successful one: the proof that it restores.
    pub last_drill: Option<DrillReport>,
    pub last_good_drill: Option<DrillReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnconfiguredInstance {
    pub id: String,
    pub ui_name: String,
}

/// One module's run of a plan (NS8's status fields, and ours: the snapshot, the
/// bytes added and the exact error).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunStatus {
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    pub success: bool,
    /// NS8's count: 0 on success.
    pub errors: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// What the run added to the repository.
    pub data_added: u64,
    /// The latest snapshot's restore size and files.
    pub total_size: u64,
    pub total_file_count: u64,
    pub snapshots_count: u64,
}

refusals! {
    /// Why a plan action is refused.
    PlanRefusal {
        RepositoryNotFound => ("repository", "backup_repository_not_found"),
        BadSchedule => ("schedule", "bad_schedule_format"),
        ModuleNotFound => ("instances", "module_not_found"),
        /// `alter-backup`'s, as NS8 spells it.
        ObjectNotFound => ("id", "backup_object_not_found"),
        NotFound => ("id", "backup_not_found"),
        /// `run-backup` while a run of the same plan goes on: the value names it.
        Running => ("id", "backup_running"),
    }
}

action! {
    /// `run-backup` on the cluster: every module of plan `id`, now, on its node.
    RunBackup = "run-backup", PlanId => RunBackupReply, PlanRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunBackupReply {
    pub id: u64,
    pub modules: Vec<ModuleRun>,
    /// The copy of the cluster's own backup left in the destination; none when no
    /// passphrase is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_backup: Option<ClusterCopy>,
}

/// What became of a run's copy of the cluster backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterCopy {
    pub success: bool,
    /// The file's name in the destination's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModuleRun {
    pub module_id: String,
    pub node_id: u32,
    pub status: RunStatus,
}

/// One module's run as a plan's history keeps it (`cluster/backup_runs/<id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunRecord {
    /// The cluster's `run-backup` task.
    pub task: String,
    #[serde(flatten)]
    pub run: ModuleRun,
}

/// What a plan's webhook receives after a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunReport {
    pub backup_id: u64,
    pub name: String,
    /// The destination's id.
    pub destination: String,
    pub task: String,
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    /// Every module's run succeeded, and the cluster backup's copy if one was made.
    pub success: bool,
    pub modules: Vec<ModuleRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_backup: Option<ClusterCopy>,
}

/// A destination with its secrets, as the cluster hands it to a node for one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DestinationAccess {
    /// Part of a path in the node's state (what it knows of the repositories).
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[A-Za-z0-9-]+$"))]
    pub id: String,
    pub provider: Provider,
    pub url: String,
    #[serde(default)]
    pub parameters: Parameters,
    /// The restic password.
    #[schemars(extend("writeOnly" = true))]
    pub password: String,
}

/// What a plan keeps, for restic's `forget`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Retention {
    #[schemars(range(min = 1))]
    pub keep_last: u32,
    #[serde(default, flatten)]
    pub keep: KeepRules,
}

/// A module to back up, as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModuleToBackUp {
    #[schemars(regex(pattern = INSTANCE_PATTERN))]
    pub module_id: String,
    /// `MODULE_UUID`: its repository is `<image>/<uuid>` in the destination.
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[A-Za-z0-9-]+$"))]
    pub uuid: String,
    #[schemars(length(min = 1, max = 128), regex(pattern = "^[a-z0-9][a-z0-9._-]*$"))]
    pub image: String,
}

action! {
    /// `run-backup` on a node: its modules of a plan, one after the other. Unlike NS8's
    /// (`{id}`, the node reading the plan and the destination's secrets from Redis),
    /// the cluster hands the destination over: only the cluster can open its secrets.
    NodeRunBackup = "run-backup", NodeRunBackupRequest => NodeRunBackupReply, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeRunBackupRequest {
    #[schemars(range(min = 1))]
    pub id: u64,
    pub destination: DestinationAccess,
    pub retention: Retention,
    pub modules: Vec<ModuleToBackUp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeRunBackupReply {
    pub modules: Vec<ModuleRun>,
}

/// restic's summary of a module's run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResticSummary {
    pub snapshot_id: String,
    pub files_new: u64,
    pub files_changed: u64,
    pub data_added: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
}

/// A module repository's path in a destination: `<image name>/<MODULE_UUID>`.
pub const REPOSITORY_PATH_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,127}/[A-Za-z0-9-]{1,64}$";

/// A snapshot id (restic's, short or long), or `latest`.
pub const SNAPSHOT_PATTERN: &str = "^(latest|[0-9a-f]{8,64})$";

action! {
    /// `read-backup-snapshots`: a module repository's snapshots, newest last (NS8's).
    ReadBackupSnapshots = "read-backup-snapshots", ReadSnapshotsRequest => Vec<Snapshot>, DestinationRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReadSnapshotsRequest {
    /// The destination's id.
    #[schemars(length(min = 1, max = 64))]
    pub repository: String,
    #[schemars(regex(pattern = REPOSITORY_PATH_PATTERN))]
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    pub id: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// -1: restic 0.14 records no summary in its snapshots.
    pub total_bytes: i64,
    pub backup_start: String,
    pub backup_end: String,
}

action! {
    /// `read-backup-snapshots` on a node, the destination handed over.
    NodeReadSnapshots = "read-backup-snapshots", NodeSnapshotsRequest => Vec<Snapshot>, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeSnapshotsRequest {
    pub destination: DestinationAccess,
    #[schemars(regex(pattern = REPOSITORY_PATH_PATTERN))]
    pub path: String,
}

action! {
    /// `read-backup-environment` on a node: a snapshot's `state/environment`.
    ReadBackupEnvironment = "read-backup-environment", SnapshotRef => std::collections::BTreeMap<String, String>, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotRef {
    pub destination: DestinationAccess,
    #[schemars(regex(pattern = REPOSITORY_PATH_PATTERN))]
    pub path: String,
    #[schemars(regex(pattern = SNAPSHOT_PATTERN))]
    pub snapshot: String,
}

action! {
    /// `read-backup-repositories`: the module repositories found in every destination,
    /// NS8's shape.
    ReadBackupRepositories = "read-backup-repositories", serde_json::Value => Vec<FoundRepository>, super::Never
}

/// A module's repository in a destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FoundRepository {
    /// The image name.
    pub name: String,
    /// `<name>/<uuid>`.
    pub path: String,
    /// The module id it had, where this cluster (or a retrieved cluster backup) knows it.
    pub instance: String,
    pub uuid: String,
    /// Unix seconds of its newest snapshot.
    pub timestamp: i64,
    pub repository_id: String,
    pub repository_name: String,
    pub repository_provider: Provider,
    pub repository_url: String,
    /// The installed module holding its UUID, if any.
    pub installed_instance: String,
}

action! {
    /// The node's `read-backup-repositories`: the module repositories in one destination.
    NodeReadRepositories = "read-backup-repositories", DestinationOnly => Vec<RepositoryFound>, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DestinationOnly {
    pub destination: DestinationAccess,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RepositoryFound {
    pub path: String,
    pub timestamp: i64,
}

action! {
    /// `determine-restore-eligibility`: the image a snapshot would restore, and which
    /// nodes may take it.
    DetermineRestoreEligibility = "determine-restore-eligibility", EligibilityRequest => Eligibility, RestoreRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EligibilityRequest {
    #[schemars(length(min = 1, max = 64))]
    pub repository: String,
    #[schemars(regex(pattern = REPOSITORY_PATH_PATTERN))]
    pub path: String,
    #[serde(default)]
    #[schemars(regex(pattern = "^(|latest|[0-9a-f]{8,64})$"))]
    pub snapshot: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Eligibility {
    pub image_url: String,
    pub install_destinations: Vec<InstallDestination>,
    pub installed: Vec<InstalledInstance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstallDestination {
    pub node_id: u32,
    pub instances: u32,
    pub eligible: bool,
    pub reject_reason: Option<RejectReason>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectReason {
    pub message: String,
    pub parameter: String,
}

/// An installed instance of the same image, NS8's fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstalledInstance {
    pub id: String,
    pub module: String,
    pub node: String,
    pub node_ui_name: String,
    pub source: String,
    pub digest: String,
    pub flags: Vec<String>,
    pub ui_name: String,
    pub version: String,
    pub logo: String,
}

action! {
    /// `restore-module-data` on a node: a snapshot's `state/` (but its `environment`)
    /// and volumes into an installed module, its services stopped meanwhile.
    RestoreModuleData = "restore-module-data", RestoreDataRequest => RestoreDataReply, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreDataRequest {
    #[schemars(regex(pattern = INSTANCE_PATTERN))]
    pub module_id: String,
    pub from: SnapshotRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreDataReply {
    /// The volumes restored.
    pub volumes: Vec<String>,
}

action! {
    /// `restore-module` on the cluster: a module from a snapshot, as a new instance or
    /// replacing the one of the same `MODULE_UUID`.
    RestoreModule = "restore-module", RestoreModuleRequest => super::cluster::AddModuleReply, RestoreRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreModuleRequest {
    /// The destination's id.
    #[schemars(length(min = 1, max = 64))]
    pub repository: String,
    #[schemars(regex(pattern = REPOSITORY_PATH_PATTERN))]
    pub path: String,
    /// Empty: the latest.
    #[serde(default)]
    #[schemars(regex(pattern = "^(|latest|[0-9a-f]{8,64})$"))]
    pub snapshot: String,
    #[schemars(range(min = 1))]
    pub node: u32,
    /// Remove the modules that hold the snapshot's `MODULE_UUID`, once the restored one
    /// runs, and give it that UUID.
    #[serde(default)]
    pub replace: bool,
    /// What the administrator accepts of the image's requests, as for `add-module`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<super::cluster::Accept>,
}

refusals! {
    /// Why a restore is refused before anything is installed.
    RestoreRefusal {
        RepositoryNotFound => ("repository", "backup_repository_not_found"),
        /// The snapshot holds no `state/environment` naming its image.
        NotAModule => ("path", "not_a_module_backup"),
    }
}

action! {
    /// `run-drill` (beyond NS8): for each module of plan `id`, its repository checked
    /// (`restic check --read-data-subset`), its latest snapshot restored into a
    /// throw-away instance, that instance's `check-health` run, the instance removed,
    /// and the report kept: the proof that the backup restores.
    RunDrill = "run-drill", PlanId => DrillReply, PlanRefusal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DrillReply {
    pub id: u64,
    pub modules: Vec<DrillReport>,
}

/// One module's drill.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DrillReport {
    pub module_id: String,
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The snapshot restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The throw-away instance it was restored into (removed after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// How long the restore took, install included.
    pub restore_seconds: u64,
    /// The repository's size as restic counts it (raw data).
    pub repository_bytes: u64,
    /// What the instance's `check-health` answered; `null` when the module has none
    /// (restored and started, not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<serde_json::Value>,
}

action! {
    /// `check-backup-repository` on a node: `restic check`, reading a share of the
    /// data back.
    CheckBackupRepository = "check-backup-repository", CheckRepositoryRequest => CheckRepositoryReply, super::Never
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckRepositoryRequest {
    pub destination: DestinationAccess,
    #[schemars(regex(pattern = REPOSITORY_PATH_PATTERN))]
    pub path: String,
    /// Percent of the data packs read back.
    #[schemars(range(min = 1, max = 100))]
    pub read_percent: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckRepositoryReply {
    /// The latest snapshot's id.
    pub latest: String,
    pub repository_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{Refusal, schema_of};

    #[test]
    fn locations() {
        let l = |u| Location::parse(Provider::Local, u);
        assert_eq!(l("local:/mnt/usb/"), Ok(Location::Local { path: "/mnt/usb".into() }));
        for bad in ["local:", "local:/", "local:rel", "local:/a/../b", "local:/a//b", "/mnt", "local:/a/./b"] {
            assert!(l(bad).is_err(), "{bad}");
        }
        let s = |u| Location::parse(Provider::GenericS3, u);
        assert_eq!(
            s("s3:http://127.0.0.1:9000/bkt/a/b"),
            Ok(Location::S3 { endpoint: "http://127.0.0.1:9000".into(), bucket: "bkt".into(), prefix: "a/b".into() })
        );
        assert_eq!(
            s("s3:s3.amazonaws.com/my-bucket"),
            Ok(Location::S3 {
                endpoint: "https://s3.amazonaws.com".into(),
                bucket: "my-bucket".into(),
                prefix: "".into()
            })
        );
        for bad in ["s3:", "s3:host", "s3:host/B", "s3:host/ab", "s3:host/bkt/../x", "b2:x/y", "s3:ho st/bkt"] {
            assert!(s(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_and_event_shapes() {
        let run = ModuleRun { module_id: "dokuwiki1".into(), node_id: 1, status: RunStatus::default() };
        let record = serde_json::to_value(RunRecord { task: "t1".into(), run }).unwrap();
        let mut keys: Vec<&str> = record.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["module_id", "node_id", "status", "task"]);
        let report = DrillReport { module_id: "dokuwiki1".into(), success: true, ..DrillReport::default() };
        let event = serde_json::to_value(crate::events::DrillFinished { backup_id: 3, report }).unwrap();
        assert_eq!((event["backup_id"].as_u64(), event["module_id"].as_str()), (Some(3), Some("dokuwiki1")));
    }

    #[test]
    fn ns8_shapes_and_secrets_marked() {
        let req: AddBackupRepositoryRequest = serde_json::from_value(serde_json::json!({
            "provider": "generic-s3", "name": "", "url": "s3:minio.lan/b1", "password": "",
            "parameters": {"aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_default_region": "eu-west-1"},
        }))
        .unwrap();
        assert_eq!(req.provider, Provider::GenericS3);
        assert_eq!(req.parameters.public().aws_secret_access_key.as_deref(), Some(""));
        let s = schema_of::<AddBackupRepositoryRequest>();
        assert_eq!(s["properties"]["password"]["writeOnly"], true);
        let text = s.to_string();
        assert!(text.contains(r#""writeOnly":true"#) && text.contains("aws_secret_access_key"), "{text}");
        assert_eq!(DestinationRefusal::Exists.error(), "backup_repository_exists");
        assert_eq!(DestinationRefusal::NoWrite.field(), "parameters");
    }
}
