//! The cluster's configuration backup and disaster recovery (NS8 reference 11.5).
//!
//! A dump ([`ClusterDump`]) is JSON, gzipped, encrypted with the administrator's
//! passphrase (age, scrypt). It is made for a download (`download-cluster-backup`,
//! kept an hour under a random token for `GET /api/cluster/backup/<path>`) and
//! copied to the plan's destination at each run. On a fresh cluster,
//! `retrieve-cluster-backup` opens one and keeps it sealed, `restore-cluster` loads
//! it, and `restore-modules` brings the modules back from their repositories.
//!
//! The passphrase is sealed under the cluster's key; the dump carries the
//! destinations' secrets in clear inside its encryption, since the cluster that
//! restores it has another key. Only the cluster and administrators run these: a
//! module caller is refused whatever its grants.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use agent_runtime::saga::Sagas;
use agent_runtime::{ActionContext, ActionError};
use base64::Engine as _;
use bus::fred::prelude::*;
use bus::fred::types::Expiration;
use protocol::AgentId;
use protocol::actions::Action;
use protocol::actions::backup::{ClusterCopy, DestinationAccess, RestoreModuleRequest};
use protocol::actions::cluster::{Accept, AuthorizationText};
use protocol::actions::disaster::{
    ClusterDump, DOWNLOAD_FILE, DOWNLOAD_TTL_SECS, DUMP_VERSION, DisasterRefusal, DownloadClusterBackup, DownloadReply,
    DownloadRequest, DumpedModule, DumpedUser, MIN_PASSPHRASE, RestorableModule, RestoreClusterReply, RestoreItem,
    RestoreOutcome, RetrieveReply, RetrieveRequest, RetrieveType, UploadClusterBackup, UploadRequest, dump_file_name,
};
use protocol::keys;
use seal::SealKey;
use serde_json::Value;

/// What the sealed values are bound to.
const PASSPHRASE: &str = "cluster_backup/passphrase";
const RETRIEVED: &str = "cluster_backup/retrieved";
/// The largest dump read back (a configuration, not data).
const MAX_DUMP: u64 = 16 << 20;
/// The node that writes the copies (a local destination is its disk).
const COPYING_NODE: u32 = 1;
/// Profile fields a dump leaves out: the 2FA secret is sealed by the api-server's
/// key, which the new cluster does not have; sessions are this cluster's.
const PROFILE_LEFT_OUT: [&str; 2] = ["2fa", "token_generation"];
/// Plan fields a dump leaves out: module ids (replaced by `uinstances`) and the
/// schedule's last run.
const PLAN_LEFT_OUT: [&str; 2] = ["instances", "scheduled_at"];

fn refuse(r: DisasterRefusal, why: impl Into<Value>) -> ActionError {
    ActionError::refuse(r, why.into())
}

fn failed(what: &str, e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(format!("{what}: {e}"))
}

/// The cluster's UUID, made the first time it is asked for.
async fn cluster_uuid(redis: &Client) -> Result<String, ActionError> {
    let fresh = uuid::Uuid::new_v4().to_string();
    let _: bool = redis.setnx(keys::CLUSTER_UUID, fresh.as_str()).await?;
    let uuid: Option<String> = redis.get(keys::CLUSTER_UUID).await?;
    uuid.ok_or_else(|| ActionError::failed("the cluster's UUID vanished as it was made"))
}

/// The cluster's configuration now.
pub async fn dump(ctx: &ActionContext) -> Result<ClusterDump, ActionError> {
    let redis = &ctx.redis;
    let ui_name: Option<String> = redis.get(keys::cluster_ui_name()).await?;
    let mut out = ClusterDump {
        version: DUMP_VERSION,
        timestamp: protocol::time::unix_seconds(),
        cluster_uuid: cluster_uuid(redis).await?,
        ui_name: ui_name.unwrap_or_default(),
        ..ClusterDump::default()
    };
    let prefix = keys::repository("");
    let found: Vec<String> = bus::scan(redis, &format!("{prefix}*"), None).await?;
    for key in found {
        let h: BTreeMap<String, String> = redis.hgetall(&key).await?;
        out.repositories.insert(key.trim_start_matches(&prefix).to_owned(), h);
    }
    for id in crate::backup::ids(ctx).await? {
        if let Some(d) = crate::backup::access(ctx, &id).await? {
            out.destination_names.insert(id.clone(), crate::backup::name(ctx, &id).await?);
            out.destinations.push(d);
        }
    }
    let uuids: HashMap<String, String> = redis.hgetall(keys::MODULE_UUID).await?;
    for plan in crate::plans::all(redis).await? {
        let mut h: BTreeMap<String, String> = redis.hgetall(keys::backup_plan(plan.id)).await?;
        h.retain(|k, _| !PLAN_LEFT_OUT.contains(&k.as_str()));
        let pending = h.remove(crate::plans::UINSTANCES).unwrap_or_default();
        let mut u: Vec<String> = plan.instances.iter().filter_map(|m| uuids.get(m).cloned()).collect();
        u.extend(pending.split_whitespace().map(str::to_owned));
        h.insert(crate::plans::UINSTANCES.into(), u.join(" "));
        out.plans.insert(plan.id, h);
    }
    let placed: HashMap<String, String> = redis.hgetall(keys::MODULE_NODE).await?;
    let mut ids: Vec<&String> = placed.keys().collect();
    ids.sort();
    for m in ids {
        let agent = AgentId::module(m).map_err(|e| failed("a module id", e))?;
        let w = crate::plans::whereabouts(redis, m).await?;
        let ui_name: Option<String> = redis.get(keys::ui_name(&agent)).await?;
        let mut authorizations: Vec<String> = redis.smembers(keys::module_authorizations(&agent)).await?;
        authorizations.sort();
        out.modules.push(DumpedModule {
            module_id: m.clone(),
            uuid: w.uuid.unwrap_or_default(),
            image: w.image.unwrap_or_default(),
            node: w.node.unwrap_or(1),
            ui_name: ui_name.unwrap_or_default(),
            authorizations,
        });
    }
    let found: Vec<String> = bus::scan(redis, keys::USER_PATTERN, Some("hash")).await?;
    let mut users: Vec<String> = found.iter().filter_map(|k| keys::parse_user(k).map(str::to_owned)).collect();
    users.sort();
    for name in users {
        let mut profile: BTreeMap<String, String> = redis.hgetall(keys::user(&name)).await?;
        profile.retain(|k, _| !PROFILE_LEFT_OUT.contains(&k.as_str()));
        let grants: BTreeMap<String, String> = redis.hgetall(keys::grants(&name)).await?;
        out.users.push(DumpedUser { name, profile, grants });
    }
    let last: Vec<(String, HashMap<String, String>)> = redis.xrevrange(keys::AUDIT_STREAM, "+", "-", Some(1)).await?;
    out.audit_head = last.into_iter().next().map(|(id, f)| {
        format!(
            "{id} seq={} hash={}",
            f.get("seq").map_or("", String::as_str),
            f.get("hash").map_or("", String::as_str)
        )
    });
    Ok(out)
}

/// Run `f` on a thread of its own with a stack big enough for scrypt and the codecs
/// (the runtime's blocking threads have small stacks, for the step spawns), and wait.
async fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ActionError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cluster-backup".into())
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| failed("cannot start the cluster backup's thread", e))?;
    rx.await.map_err(|e| failed("the cluster backup's thread was lost", e))
}

/// `dump` as JSON, gzipped and encrypted to `passphrase`. scrypt takes about a second
/// on purpose: it runs off the agent's thread.
async fn encrypt(dump: &ClusterDump, passphrase: String) -> Result<Vec<u8>, ActionError> {
    let json = serde_json::to_vec(dump).expect("a ClusterDump always serializes");
    on_own_thread(move || -> std::io::Result<Vec<u8>> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)?;
        let compressed = gz.finish()?;
        let encryptor = age::Encryptor::with_user_passphrase(passphrase.into());
        let mut out = Vec::new();
        let mut w = encryptor.wrap_output(&mut out)?;
        w.write_all(&compressed)?;
        w.finish()?;
        Ok(out)
    })
    .await?
    .map_err(|e| failed("cannot encrypt the cluster backup", e))
}

/// A dump opened with `passphrase`: a wrong one and a damaged file are told apart.
async fn decrypt(data: Vec<u8>, passphrase: String) -> Result<ClusterDump, ActionError> {
    on_own_thread(move || {
        let bad = |why: String| refuse(DisasterRefusal::BadFile, why);
        let decryptor = age::Decryptor::new_buffered(&data[..])
            .map_err(|e| bad(format!("not an encrypted cluster backup: {e}")))?;
        if !decryptor.is_scrypt() {
            return Err(bad("not encrypted with a passphrase".into()));
        }
        let identity = age::scrypt::Identity::new(passphrase.into());
        let reader = decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                refuse(DisasterRefusal::WrongPassphrase, "the passphrase does not open this backup")
            }
            other => bad(format!("cannot decrypt it: {other}")),
        })?;
        let mut compressed = Vec::new();
        reader.take(MAX_DUMP).read_to_end(&mut compressed).map_err(|e| bad(format!("it is damaged: {e}")))?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .take(MAX_DUMP)
            .read_to_end(&mut json)
            .map_err(|e| bad(format!("it is not gzip: {e}")))?;
        let dump: ClusterDump =
            serde_json::from_slice(&json).map_err(|e| bad(format!("it is not a cluster backup: {e}")))?;
        if dump.version != DUMP_VERSION {
            return Err(bad(format!("version {} (this cluster reads version {DUMP_VERSION})", dump.version)));
        }
        Ok(dump)
    })
    .await?
}

async fn stored_passphrase(ctx: &ActionContext, key: &SealKey) -> Result<Option<String>, ActionError> {
    let sealed: Option<String> = ctx.redis.hget(keys::CLUSTER_BACKUP, "passphrase").await?;
    sealed
        .map(|s| key.open_sealed(PASSPHRASE, &s, "the cluster backup passphrase").map_err(|e| failed("cannot open", e)))
        .transpose()
}

pub async fn download(ctx: ActionContext, req: DownloadRequest) -> Result<DownloadReply, ActionError> {
    ctx.core_only(DownloadClusterBackup::NAME)?;
    let key = crate::backup::seal_key(&ctx)?;
    let passphrase = match req.password {
        Some(p) if p.chars().count() < MIN_PASSPHRASE => {
            return Err(refuse(DisasterRefusal::ShortPassphrase, format!("at least {MIN_PASSPHRASE} characters")));
        }
        Some(p) => {
            let _: () = ctx.redis.hset(keys::CLUSTER_BACKUP, ("passphrase", key.seal(PASSPHRASE, &p))).await?;
            p
        }
        None => stored_passphrase(&ctx, &key)
            .await?
            .ok_or_else(|| refuse(DisasterRefusal::NoPassphrase, "set a passphrase first"))?,
    };
    let data = encrypt(&dump(&ctx).await?, passphrase).await?;
    let token = seal::random_hex(32);
    let expire = Some(Expiration::EX(DOWNLOAD_TTL_SECS));
    let _: () = ctx.redis.set(keys::cluster_backup_download(&token), data, expire, None, false).await?;
    Ok(DownloadReply { path: format!("{token}/{DOWNLOAD_FILE}") })
}

/// The copy a plan's run leaves in its destination: `None` when no passphrase is set
/// (nothing to encrypt with), else what became of it.
pub async fn upload_copy(ctx: &ActionContext, destination: &DestinationAccess) -> Option<ClusterCopy> {
    let made = async {
        let key = crate::backup::seal_key(ctx)?;
        let Some(passphrase) = stored_passphrase(ctx, &key).await? else { return Ok(None) };
        let dump = dump(ctx).await?;
        let name = dump_file_name(&dump.cluster_uuid);
        let data = base64::engine::general_purpose::STANDARD.encode(encrypt(&dump, passphrase).await?);
        let req = UploadRequest { destination: destination.clone(), name: name.clone(), data };
        ctx.call::<UploadClusterBackup>(&AgentId::Node(COPYING_NODE), &req)
            .await
            .map_err(|e| failed("cannot copy the cluster backup", e))?;
        Ok::<_, ActionError>(Some(name))
    };
    match made.await {
        Ok(None) => None,
        Ok(Some(file)) => Some(ClusterCopy { success: true, file: Some(file), error: None }),
        Err(e) => Some(ClusterCopy { success: false, file: None, error: Some(describe(e)) }),
    }
}

pub async fn retrieve(ctx: ActionContext, req: RetrieveRequest) -> Result<RetrieveReply, ActionError> {
    ctx.core_only("retrieve-cluster-backup")?;
    let data = match req.kind {
        RetrieveType::File => {
            let file = req.file.as_deref().filter(|f| !f.is_empty());
            let file = file.ok_or_else(|| refuse(DisasterRefusal::NoFile, "type file needs the backup in `file`"))?;
            base64::engine::general_purpose::STANDARD
                .decode(file.trim().as_bytes())
                .map_err(|e| refuse(DisasterRefusal::BadFile, format!("not base64: {e}")))?
        }
        RetrieveType::Url => {
            let url = req.url.clone().ok_or_else(|| refuse(DisasterRefusal::NoUrl, "type url needs `url`"))?;
            fetch(url, req.tls_verify).await?
        }
    };
    let dump = decrypt(data, req.password.clone()).await?;
    let key = crate::backup::seal_key(&ctx)?;
    let clear = serde_json::to_string(&dump).expect("a ClusterDump always serializes");
    // The passphrase that opened it protects the restored cluster's copies too.
    let fields =
        [("retrieved", key.seal(RETRIEVED, &clear)), ("retrieved_passphrase", key.seal(PASSPHRASE, &req.password))];
    let _: () = ctx.redis.hset(keys::CLUSTER_BACKUP, fields.to_vec()).await?;
    Ok(RetrieveReply {
        timestamp: dump.timestamp,
        cluster: dump.ui_name.clone(),
        vpn: String::new(),
        modules: dump.modules.len() as u32,
        domains: 0,
        backup_repositories: dump.destinations.len() as u32,
        users: dump.users.len() as u32,
        backups: dump.plans.len() as u32,
        restorable: restorable(&dump),
    })
}

/// An HTTP(S) download, at most [`MAX_DUMP`] bytes.
async fn fetch(url: String, tls_verify: bool) -> Result<Vec<u8>, ActionError> {
    let shown = url.clone();
    on_own_thread(move || {
        let tls = ureq::tls::TlsConfig::builder().disable_verification(!tls_verify).build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .tls_config(tls)
            .build()
            .into();
        let mut reply = agent.get(&url).call()?;
        reply.body_mut().with_config().limit(MAX_DUMP).read_to_vec()
    })
    .await?
    .map_err(|e| refuse(DisasterRefusal::Unreachable, format!("{shown}: {e}")))
}

/// The dump's modules, each with the destination of a plan that backs it up.
fn restorable(dump: &ClusterDump) -> Vec<RestorableModule> {
    dump.modules
        .iter()
        .map(|m| {
            let repository = dump
                .plans
                .values()
                .find(|p| p.get(crate::plans::UINSTANCES).is_some_and(|u| u.split_whitespace().any(|x| x == m.uuid)))
                .and_then(|p| p.get("repository").cloned());
            RestorableModule {
                module_id: m.module_id.clone(),
                ui_name: m.ui_name.clone(),
                node: m.node,
                repository,
                path: format!("{}/{}", m.image, m.uuid),
            }
        })
        .collect()
}

async fn retrieved(ctx: &ActionContext) -> Result<ClusterDump, ActionError> {
    let key = crate::backup::seal_key(ctx)?;
    let sealed: Option<String> = ctx.redis.hget(keys::CLUSTER_BACKUP, "retrieved").await?;
    let sealed = sealed.ok_or_else(|| refuse(DisasterRefusal::NotRetrieved, "run retrieve-cluster-backup first"))?;
    let clear = key.open_sealed(RETRIEVED, &sealed, "the retrieved cluster backup").map_err(|e| failed("", e))?;
    serde_json::from_str(&clear).map_err(|e| failed("the retrieved cluster backup is not valid", e))
}

/// The modules of the retrieved cluster backup, if one was retrieved.
pub async fn retrieved_modules(ctx: &ActionContext) -> Vec<DumpedModule> {
    retrieved(ctx).await.map(|d| d.modules).unwrap_or_default()
}

pub async fn restore_cluster(ctx: ActionContext, _: Value) -> Result<RestoreClusterReply, ActionError> {
    ctx.core_only("restore-cluster")?;
    let dump = retrieved(&ctx).await?;
    let redis = &ctx.redis;
    // Onto a cluster that has its own destinations or plans, ids and schedules would
    // clash: a disaster recovery starts from a fresh install.
    let have = (crate::backup::ids(&ctx).await?.len(), crate::plans::all(redis).await?.len());
    if have != (0, 0) {
        return Err(refuse(
            DisasterRefusal::NotEmpty,
            format!("this cluster has {} destinations and {} backup plans already", have.0, have.1),
        ));
    }
    // Who is here already is read first; then everything is written in one
    // transaction, so a crash or an error leaves the cluster as it was, and the
    // restore can simply run again.
    let (mut users_added, mut users_kept) = (Vec::new(), Vec::new());
    for u in dump.users.iter().filter(|u| u.profile.get("password_hash").is_some_and(|h| !h.is_empty())) {
        let exists: bool = redis.exists(keys::user(&u.name)).await?;
        if exists { users_kept.push(u.name.clone()) } else { users_added.push(u.name.clone()) }
    }
    let passphrase: Option<String> = redis.hget(keys::CLUSTER_BACKUP, "retrieved_passphrase").await?;
    let seq: Option<u64> = redis.get(keys::BACKUP_SEQUENCE).await?;
    let key = crate::backup::seal_key(&ctx)?;
    let pairs = |h: &BTreeMap<String, String>| h.clone().into_iter().collect::<Vec<_>>();
    let tx = redis.multi();
    if !dump.ui_name.is_empty() {
        let _: () = tx.set(keys::cluster_ui_name(), dump.ui_name.as_str(), None, None, false).await?;
    }
    if !dump.cluster_uuid.is_empty() {
        let _: () = tx.set(keys::CLUSTER_UUID, dump.cluster_uuid.as_str(), None, None, false).await?;
    }
    for (name, h) in dump.repositories.iter().filter(|(_, h)| !h.is_empty()) {
        let _: () = tx.hset(keys::repository(name), pairs(h)).await?;
    }
    for d in &dump.destinations {
        let name = dump.destination_names.get(&d.id).cloned().unwrap_or_default();
        crate::backup::stage(&tx, &key, d, &name).await?;
    }
    for (id, h) in &dump.plans {
        let mut h = h.clone();
        h.retain(|k, _| !PLAN_LEFT_OUT.contains(&k.as_str()));
        h.insert("instances".into(), String::new());
        let _: () = tx.hset(keys::backup_plan(*id), pairs(&h)).await?;
    }
    let backups: Vec<u64> = dump.plans.keys().copied().collect();
    if let Some(max) = backups.iter().max().filter(|max| seq.unwrap_or(0) < **max) {
        let _: () = tx.set(keys::BACKUP_SEQUENCE, *max, None, None, false).await?;
    }
    for u in dump.users.iter().filter(|u| users_added.contains(&u.name)) {
        let _: () = tx.hset(keys::user(&u.name), pairs(&u.profile)).await?;
        if !u.grants.is_empty() {
            let _: () = tx.hset(keys::grants(&u.name), pairs(&u.grants)).await?;
        }
    }
    if let Some(sealed) = passphrase {
        let _: () = tx.hset(keys::CLUSTER_BACKUP, ("passphrase", sealed)).await?;
    }
    if let Some(head) = &dump.audit_head {
        let _: () = tx.hset(keys::CLUSTER_BACKUP, ("restored_audit_head", head.as_str())).await?;
    }
    let _: () = tx.exec(true).await?;
    let destinations: Vec<String> = dump.destinations.iter().map(|d| d.id.clone()).collect();
    for id in &destinations {
        crate::backup::publish_changed(&ctx, id).await;
    }
    if !backups.is_empty() {
        crate::plans::publish_changed(&ctx, &backups).await;
    }
    ctx.set_progress(100);
    Ok(RestoreClusterReply {
        repositories: dump.repositories.keys().cloned().collect(),
        destinations,
        backups,
        users_added,
        users_kept,
        previous_audit_head: dump.audit_head.clone(),
        restorable: restorable(&dump),
    })
}

/// NS8's `restore-modules`: each item as `restore-module`, in turn; the consent is the
/// item's, else the one the dump records for the same module (the administrator gave
/// it when the module was installed).
pub async fn restore_modules(
    ctx: ActionContext,
    items: Vec<RestoreItem>,
    sagas: Sagas,
) -> Result<Vec<RestoreOutcome>, ActionError> {
    ctx.core_only("restore-modules")?;
    if items.is_empty() {
        return Err(refuse(DisasterRefusal::Empty, "nothing to restore"));
    }
    let dumped = retrieved_modules(&ctx).await;
    let mut out = Vec::new();
    let count = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let uuid = item.path.rsplit('/').next().unwrap_or_default();
        let accept = item.accept.clone().or_else(|| {
            dumped.iter().find(|m| m.uuid == uuid).map(|m| Accept {
                authorizations: m.authorizations.iter().cloned().map(AuthorizationText).collect(),
                rootfull: false,
            })
        });
        let req = RestoreModuleRequest {
            repository: item.repository,
            path: item.path.clone(),
            snapshot: item.snapshot,
            node: item.node,
            replace: false,
            accept,
        };
        let outcome = match crate::restore::restore(ctx.clone(), req, sagas.clone()).await {
            Ok(added) => {
                RestoreOutcome { path: item.path, success: true, module_id: Some(added.module_id), error: None }
            }
            Err(e) => RestoreOutcome { path: item.path, success: false, module_id: None, error: Some(describe(e)) },
        };
        out.push(outcome);
        ctx.set_progress(((i + 1) * 100 / count) as u8);
    }
    Ok(out)
}

/// An error's words for an outcome list.
fn describe(e: ActionError) -> String {
    match e {
        ActionError::Failed { message, .. } => message,
        ActionError::Validation(errors) => {
            errors.iter().map(|v| format!("{} {}: {}", v.field, v.error, v.value)).collect::<Vec<_>>().join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(e: ActionError) -> String {
        match e {
            ActionError::Validation(v) => v[0].error.clone(),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dump_opens_with_its_passphrase_only() {
        let dump = ClusterDump { version: DUMP_VERSION, ui_name: "Office".into(), ..ClusterDump::default() };
        let sealed = encrypt(&dump, "right passphrase".into()).await.unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        assert_eq!(decrypt(sealed.clone(), "right passphrase".into()).await.unwrap(), dump);
        let wrong = decrypt(sealed.clone(), "wrong passphrase".into()).await.unwrap_err();
        assert_eq!(refusal(wrong), "cluster_backup_password_wrong");
        let mut damaged = sealed.clone();
        let at = damaged.len() - 5;
        damaged[at] ^= 1;
        assert_eq!(
            refusal(decrypt(damaged, "right passphrase".into()).await.unwrap_err()),
            "cluster_backup_file_invalid"
        );
        assert_eq!(refusal(decrypt(b"junk".to_vec(), "x".into()).await.unwrap_err()), "cluster_backup_file_invalid");
        let future = ClusterDump { version: DUMP_VERSION + 1, ..dump };
        let sealed = encrypt(&future, "right passphrase".into()).await.unwrap();
        assert_eq!(
            refusal(decrypt(sealed, "right passphrase".into()).await.unwrap_err()),
            "cluster_backup_file_invalid"
        );
    }
}
