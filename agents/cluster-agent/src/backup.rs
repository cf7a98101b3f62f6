//! Backup destinations (NS8 reference 11.1): checked by node 1 before they are
//! saved, their credentials and restic password sealed under the cluster's key
//! (`secrets.key` in the agent's state directory, 0600), never returned by a read.
//!
//! The id is NS8's: a UUIDv5 of the provider, URL and parameters, so the same
//! destination cannot be added twice.

use std::collections::HashMap;

use agent_runtime::{ActionContext, ActionError, CallError};
use bus::fred::clients::Transaction;
use bus::fred::prelude::*;
use protocol::AgentId;
use protocol::actions::backup::{
    AddBackupRepositoryReply, AddBackupRepositoryRequest, AlterBackupRepositoryRequest, BackupRepositories,
    BackupRepository, DestinationAccess, DestinationId, DestinationRefusal, Location, Parameters, Provider,
    ValidateBackupDestination, ValidateRequest,
};
use protocol::events::{self, DestinationsChanged};
use protocol::keys;
use seal::SealKey;
use serde_json::Value;

/// The cluster's sealing key, in its state directory.
pub const SEAL_KEY_FILE: &str = "secrets.key";

/// The node that checks a destination: the leader (a local destination is its disk).
const CHECKING_NODE: u32 = 1;

pub fn seal_key(ctx: &ActionContext) -> Result<SealKey, ActionError> {
    SealKey::load_or_create(&ctx.state_dir.join(SEAL_KEY_FILE)).map_err(|e| ActionError::failed(e.to_string()))
}

/// What a sealed value of destination `id` is bound to.
fn owner(id: &str, field: &str) -> String {
    format!("backup_destination/{id}/{field}")
}

fn refuse(r: DestinationRefusal, why: impl Into<Value>) -> ActionError {
    ActionError::refuse(r, why.into())
}

/// S3 needs a key pair; a local path nothing.
fn check_parameters(provider: Provider, p: &Parameters) -> Result<(), ActionError> {
    let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    match provider {
        Provider::Local if *p != Parameters::default() => {
            Err(refuse(DestinationRefusal::BadParameters, "a local destination takes no parameters"))
        }
        Provider::Aws | Provider::GenericS3 if !given(&p.aws_access_key_id) || !given(&p.aws_secret_access_key) => {
            Err(refuse(DestinationRefusal::BadParameters, "aws_access_key_id and aws_secret_access_key are required"))
        }
        _ => Ok(()),
    }
}

fn destination_id(provider: Provider, url: &str, p: &Parameters) -> String {
    let canonical = serde_json::json!({"provider": provider, "url": url, "parameters": p}).to_string();
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, canonical.as_bytes()).to_string()
}

fn default_name(location: &Location, provider: Provider) -> String {
    match location {
        Location::Local { path } => format!("Local {path}"),
        Location::S3 { bucket, prefix, .. } => {
            let label = if provider == Provider::Aws { "AWS" } else { "S3" };
            if prefix.is_empty() { format!("{label} {bucket}") } else { format!("{label} {bucket}/{prefix}") }
        }
    }
}

/// The checking node's verdict; its refusals pass through as they are.
async fn validate(ctx: &ActionContext, req: ValidateRequest) -> Result<(), ActionError> {
    let node = AgentId::Node(CHECKING_NODE);
    match ctx.call::<ValidateBackupDestination>(&node, &req).await {
        Ok(_) => Ok(()),
        Err(CallError::Refused { refusal, value, .. }) => Err(ActionError::refuse(refusal, value)),
        Err(e) => Err(ActionError::failed(format!("the destination could not be checked: {e}"))),
    }
}

pub async fn publish_changed(ctx: &ActionContext, id: &str) {
    let payload = DestinationsChanged { destination_ids: vec![id.to_owned()] };
    let payload = serde_json::to_string(&payload).expect("a DestinationsChanged always serializes");
    let channel = keys::event_channel(&AgentId::Cluster, events::BACKUP_DESTINATION_CHANGED);
    if let Err(e) = ctx.redis.publish::<(), _, _>(channel, payload).await {
        tracing::warn!("cannot publish {}: {e}", events::BACKUP_DESTINATION_CHANGED);
    }
}

pub async fn add(ctx: ActionContext, req: AddBackupRepositoryRequest) -> Result<AddBackupRepositoryReply, ActionError> {
    let location =
        Location::parse(req.provider, &req.url).map_err(|e| refuse(DestinationRefusal::BadUrl, e.to_string()))?;
    check_parameters(req.provider, &req.parameters)?;
    let id = destination_id(req.provider, &req.url, &req.parameters);
    let public = keys::backup_repository(&id);
    if ctx.redis.exists::<bool, _>(&public).await? {
        return Err(refuse(DestinationRefusal::Exists, id));
    }
    let key = seal_key(&ctx)?;
    let check = ValidateRequest {
        id: id.clone(),
        provider: req.provider,
        url: req.url.clone(),
        parameters: req.parameters.clone(),
    };
    validate(&ctx, check).await?;
    let password = if req.password.is_empty() { seal::random_hex(32) } else { req.password.clone() };
    let name = if req.name.trim().is_empty() { default_name(&location, req.provider) } else { req.name.trim().into() };
    let access = DestinationAccess { id, provider: req.provider, url: req.url, parameters: req.parameters, password };
    store(&ctx, &key, &access, &name).await?;
    publish_changed(&ctx, &access.id).await;
    Ok(AddBackupRepositoryReply { id: access.id, password: protocol::secrets::MASK.to_owned() })
}

/// Destination `d` saved as `name`, its secrets sealed under `key`, in one transaction.
pub async fn store(ctx: &ActionContext, key: &SealKey, d: &DestinationAccess, name: &str) -> Result<(), ActionError> {
    let tx = ctx.redis.multi();
    stage(&tx, key, d, name).await?;
    let _: () = tx.exec(true).await?;
    Ok(())
}

/// The writes of [`store`], queued on `tx` (a larger transaction may hold them).
pub async fn stage(tx: &Transaction, key: &SealKey, d: &DestinationAccess, name: &str) -> Result<(), ActionError> {
    let id = &d.id;
    let params = serde_json::to_string(&d.parameters).expect("parameters always serialize");
    let _: () = tx
        .hset(
            keys::backup_repository(id),
            [("name", name), ("url", &d.url), ("provider", d.provider.as_str()), ("basepath", "")],
        )
        .await?;
    let _: () = tx
        .hset(
            keys::backup_destination_secrets(id),
            [
                ("password", key.seal(&owner(id, "password"), &d.password)),
                ("parameters", key.seal(&owner(id, "parameters"), &params)),
            ],
        )
        .await?;
    Ok(())
}

/// Every destination's id, sorted.
pub async fn ids(ctx: &ActionContext) -> Result<Vec<String>, ActionError> {
    let prefix = keys::backup_repository("");
    let found: Vec<String> = bus::scan(&ctx.redis, &format!("{prefix}*"), None).await?;
    let mut ids: Vec<String> = found.iter().map(|full| full.trim_start_matches(&prefix).to_owned()).collect();
    ids.sort();
    Ok(ids)
}

/// Destination `id`'s name.
pub async fn name(ctx: &ActionContext, id: &str) -> Result<String, ActionError> {
    let name: Option<String> = ctx.redis.hget(keys::backup_repository(id), "name").await?;
    Ok(name.unwrap_or_default())
}

/// A stored destination, its secrets opened.
struct Stored {
    provider: Provider,
    name: String,
    url: String,
    parameters: Parameters,
}

async fn stored(ctx: &ActionContext, key: &SealKey, id: &str) -> Result<Option<Stored>, ActionError> {
    let h: HashMap<String, String> = ctx.redis.hgetall(keys::backup_repository(id)).await?;
    if h.is_empty() {
        return Ok(None);
    }
    let get = |f: &str| h.get(f).cloned().unwrap_or_default();
    let provider = Provider::parse(&get("provider")).ok_or_else(|| {
        ActionError::failed(format!("destination {id} has an unknown provider {:?}", get("provider")))
    })?;
    let sealed: Option<String> = ctx.redis.hget(keys::backup_destination_secrets(id), "parameters").await?;
    let what = format!("parameters of backup destination {id}");
    let parameters = match sealed {
        Some(s) => {
            let clear =
                key.open_sealed(&owner(id, "parameters"), &s, &what).map_err(|e| ActionError::failed(e.to_string()))?;
            serde_json::from_str(&clear)
                .map_err(|e| ActionError::failed(format!("the stored {what} are not valid: {e}")))?
        }
        None => return Err(ActionError::failed(format!("backup destination {id} has no stored secrets"))),
    };
    Ok(Some(Stored { provider, name: get("name"), url: get("url"), parameters }))
}

/// Destination `id` with its secrets opened, for a node's run.
pub async fn access(ctx: &ActionContext, id: &str) -> Result<Option<DestinationAccess>, ActionError> {
    let key = seal_key(ctx)?;
    let Some(d) = stored(ctx, &key, id).await? else { return Ok(None) };
    let sealed: Option<String> = ctx.redis.hget(keys::backup_destination_secrets(id), "password").await?;
    let sealed =
        sealed.ok_or_else(|| ActionError::failed(format!("backup destination {id} has no restic password")))?;
    let password = key
        .open_sealed(&owner(id, "password"), &sealed, &format!("restic password of backup destination {id}"))
        .map_err(|e| ActionError::failed(e.to_string()))?;
    Ok(Some(DestinationAccess {
        id: id.to_owned(),
        provider: d.provider,
        url: d.url,
        parameters: d.parameters,
        password,
    }))
}

pub async fn alter(ctx: ActionContext, req: AlterBackupRepositoryRequest) -> Result<(), ActionError> {
    let key = seal_key(&ctx)?;
    let Some(old) = stored(&ctx, &key, &req.id).await? else {
        return Err(refuse(DestinationRefusal::NotFound, req.id));
    };
    if old.provider != req.provider {
        return Err(refuse(DestinationRefusal::ProviderMismatch, req.provider.as_str()));
    }
    let mut parameters = old.parameters.clone();
    if let Some(p) = &req.parameters {
        let keep_empty = |new: &Option<String>, old: &Option<String>| match new.as_deref() {
            Some("") | None => old.clone(),
            Some(v) => Some(v.to_owned()),
        };
        parameters = Parameters {
            aws_access_key_id: keep_empty(&p.aws_access_key_id, &old.parameters.aws_access_key_id),
            aws_secret_access_key: keep_empty(&p.aws_secret_access_key, &old.parameters.aws_secret_access_key),
            aws_default_region: p.aws_default_region.clone().or(old.parameters.aws_default_region.clone()),
        };
        check_parameters(req.provider, &parameters)?;
    }
    if parameters != old.parameters {
        let check = ValidateRequest {
            id: req.id.clone(),
            provider: req.provider,
            url: old.url.clone(),
            parameters: parameters.clone(),
        };
        validate(&ctx, check).await?;
    }
    let name = req.name.as_deref().map(str::trim).filter(|n| !n.is_empty()).unwrap_or(&old.name).to_owned();
    let params = serde_json::to_string(&parameters).expect("parameters always serialize");
    let tx = ctx.redis.multi();
    let _: () = tx.hset(keys::backup_repository(&req.id), ("name", name.as_str())).await?;
    let sealed = key.seal(&owner(&req.id, "parameters"), &params);
    let _: () = tx.hset(keys::backup_destination_secrets(&req.id), ("parameters", sealed)).await?;
    let _: () = tx.exec(true).await?;
    publish_changed(&ctx, &req.id).await;
    Ok(())
}

/// The destination and the plans that use it (as NS8).
pub async fn remove(ctx: ActionContext, req: DestinationId) -> Result<(), ActionError> {
    if !ctx.redis.exists::<bool, _>(keys::backup_repository(&req.id)).await? {
        return Err(refuse(DestinationRefusal::NotFound, req.id));
    }
    crate::plans::remove_of_destination(&ctx, &req.id).await?;
    let removed: i64 =
        ctx.redis.del(vec![keys::backup_repository(&req.id), keys::backup_destination_secrets(&req.id)]).await?;
    if removed == 0 {
        return Err(refuse(DestinationRefusal::NotFound, req.id));
    }
    publish_changed(&ctx, &req.id).await;
    Ok(())
}

pub async fn list(ctx: ActionContext, _: Value) -> Result<BackupRepositories, ActionError> {
    let key = seal_key(&ctx)?;
    let mut repositories = Vec::new();
    for id in ids(&ctx).await? {
        if let Some(d) = stored(&ctx, &key, &id).await? {
            repositories.push(BackupRepository {
                id,
                provider: d.provider,
                name: d.name,
                url: d.url,
                basepath: String::new(),
                parameters: d.parameters.public(),
            });
        }
    }
    Ok(BackupRepositories { repositories, password_exists: false })
}
