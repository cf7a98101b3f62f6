//! Software repositories (NS8 10.8): where modules come from.
//!
//! A repository is `cluster/repository/<name>` (`url`, `status`, `testing`); its index
//! is `<url>/repodata.json`, an array of packages each with a `source` (image name
//! without tag) and `versions` (`tag`, `testing`, `labels`). `list-modules` merges the
//! enabled repositories' indexes: when two carry the same source, the alphabetically
//! later repository wins, as in NS8. Indexes are cached in
//! `cluster/repository_cache/<name>` for an hour. Besides NS8's `http(s)://`, a
//! `file://` URL serves a repository from a local directory (the local cluster's).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use agent_runtime::{ActionContext, ActionError};
use bus::fred::prelude::*;
use protocol::actions::cluster;
use protocol::keys;
use serde_json::{Value, json};

const CACHE_TTL_SECS: i64 = 3600;
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// An index bigger than this is not a repository index.
const MAX_INDEX_BYTES: u64 = 32 * 1024 * 1024;

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

pub async fn add(ctx: ActionContext, req: cluster::AddRepositoryRequest) -> Result<(), ActionError> {
    let key = keys::repository(&req.name);
    let fields = vec![
        ("url".to_owned(), req.url.trim_end_matches('/').to_owned() + "/"),
        ("status".to_owned(), flag(req.status).to_owned()),
        ("testing".to_owned(), flag(req.testing).to_owned()),
    ];
    let exists: bool = ctx.redis.exists(&key).await?;
    if exists {
        return Err(ActionError::invalid("name", json!(req.name), "already_exists"));
    }
    let _: () = ctx.redis.hset(&key, fields).await?;
    Ok(())
}

pub async fn alter(ctx: ActionContext, req: cluster::AlterRepositoryRequest) -> Result<(), ActionError> {
    let key = keys::repository(&req.name);
    let exists: bool = ctx.redis.exists(&key).await?;
    if !exists {
        return Err(ActionError::invalid("name", json!(req.name), "not_found"));
    }
    let fields: Vec<(String, String)> = [("status", req.status), ("testing", req.testing)]
        .into_iter()
        .filter_map(|(f, v)| v.map(|b| (f.to_owned(), flag(b).to_owned())))
        .collect();
    if !fields.is_empty() {
        let _: () = ctx.redis.hset(&key, fields).await?;
        let _: i64 = ctx.redis.del(keys::repository_cache(&req.name)).await?;
    }
    Ok(())
}

pub async fn remove(ctx: ActionContext, req: cluster::RepositoryName) -> Result<(), ActionError> {
    let removed: i64 = ctx.redis.del(vec![keys::repository(&req.name), keys::repository_cache(&req.name)]).await?;
    if removed == 0 {
        return Err(ActionError::invalid("name", json!(req.name), "not_found"));
    }
    Ok(())
}

struct Repo {
    name: String,
    url: String,
    enabled: bool,
    testing: bool,
}

async fn repositories(ctx: &ActionContext) -> Result<Vec<Repo>, ActionError> {
    let mut names: Vec<String> = bus::scan(&ctx.redis, &format!("{}*", keys::repository("")), None).await?;
    names.sort();
    let mut out = Vec::new();
    for key in names {
        let h: HashMap<String, String> = ctx.redis.hgetall(&key).await?;
        let name = key.trim_start_matches(&keys::repository("")).to_owned();
        let get = |f: &str| h.get(f).cloned().unwrap_or_default();
        out.push(Repo { name, url: get("url"), enabled: get("status") == "1", testing: get("testing") == "1" });
    }
    Ok(out)
}

pub async fn list(ctx: ActionContext, _: Value) -> Result<Value, ActionError> {
    let repos = repositories(&ctx).await?;
    Ok(Value::Array(
        repos
            .into_iter()
            .map(|r| json!({"name": r.name, "url": r.url, "status": r.enabled, "testing": r.testing}))
            .collect(),
    ))
}

/// `<url>repodata.json`, from the cache or fetched.
/// Why a repository's index cannot be had.
#[derive(Debug, thiserror::Error)]
enum IndexError {
    #[error("redis error: {0}")]
    Redis(#[from] bus::fred::error::Error),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot fetch {url}: {source}")]
    Fetch { url: String, source: Box<ureq::Error> },
    #[error("the fetch of {url} was lost: {source}")]
    Lost { url: String, source: tokio::task::JoinError },
    #[error("repodata.json is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("repodata.json is not an array of packages")]
    NotArray,
}

async fn index(ctx: &ActionContext, repo: &Repo) -> Result<Value, IndexError> {
    let cache = keys::repository_cache(&repo.name);
    let cached: Option<String> = ctx.redis.hget(&cache, "data").await?;
    let text = match cached {
        Some(t) => t,
        None => {
            let url = format!("{}repodata.json", repo.url);
            let u = url.clone();
            // ureq blocks: off the agent's thread.
            let fetched = tokio::task::spawn_blocking(move || fetch(&u))
                .await
                .map_err(|source| IndexError::Lost { url, source })??;
            let _: () = ctx.redis.hset(&cache, ("data", fetched.as_str())).await?;
            let _: bool = ctx.redis.expire(&cache, CACHE_TTL_SECS, None).await?;
            fetched
        }
    };
    let v: Value = serde_json::from_str(&text)?;
    if !v.is_array() {
        return Err(IndexError::NotArray);
    }
    Ok(v)
}

fn fetch(url: &str) -> Result<String, IndexError> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read_to_string(path).map_err(|source| IndexError::Read { path: path.to_owned(), source });
    }
    let failed = |source| IndexError::Fetch { url: url.to_owned(), source: Box::new(source) };
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(FETCH_TIMEOUT)).build().into();
    let mut resp = agent.get(url).call().map_err(failed)?;
    resp.body_mut().with_config().limit(MAX_INDEX_BYTES).read_to_string().map_err(failed)
}

fn is_prerelease(tag: &str) -> bool {
    tag.contains('-')
}

pub async fn list_modules(ctx: ActionContext, _: Value) -> Result<Value, ActionError> {
    let installed = installed(&ctx).await?;
    // Alphabetical order, later wins: a BTreeMap by source, overwritten in order.
    let mut packages: BTreeMap<String, Value> = BTreeMap::new();
    for repo in repositories(&ctx).await?.into_iter().filter(|r| r.enabled) {
        let idx = match index(&ctx, &repo).await {
            Ok(i) => i,
            Err(e) => {
                // One unreachable repository must not hide the others.
                tracing::warn!("repository {}: {e}; skipped", repo.name);
                continue;
            }
        };
        for mut p in idx.as_array().cloned().unwrap_or_default() {
            let Some(source) = p["source"].as_str().map(str::to_owned) else { continue };
            let versions: Vec<Value> = p["versions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|v| repo.testing || !is_prerelease(v["tag"].as_str().unwrap_or("")))
                .map(with_consent)
                .collect();
            let rootfull = versions
                .first()
                .and_then(|v| v["labels"]["org.nethserver.rootfull"].as_str())
                .is_some_and(|r| r == "1");
            p["versions"] = Value::Array(versions);
            p["repository"] = json!(repo.name);
            p["rootfull"] = json!(rootfull);
            p["installed"] = json!(installed.get(&source).cloned().unwrap_or_default());
            packages.insert(source, p);
        }
    }
    Ok(Value::Array(packages.into_values().collect()))
}

/// A version with what installing it would need the administrator to accept
/// (`consent`, the shape `add-module`'s `accept` takes) and what it asks for that is
/// never granted; or, for labels that do not parse, why (`consent_error`).
fn with_consent(mut version: Value) -> Value {
    let labels: BTreeMap<String, String> = version["labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    match crate::image::requirements(&labels) {
        Ok(req) => {
            version["consent"] = json!(req.consent());
            version["never_granted"] = json!(req.never_granted);
        }
        Err(e) => version["consent_error"] = json!(e.to_string()),
    }
    version
}

/// Installed instances by image source: `{source: [{id, node, version, ...}]}`.
async fn installed(ctx: &ActionContext) -> Result<BTreeMap<String, Vec<Value>>, ActionError> {
    let nodes: HashMap<String, String> = ctx.redis.hgetall(keys::MODULE_NODE).await?;
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut ids: Vec<&String> = nodes.keys().collect();
    ids.sort();
    for id in ids {
        let Ok(agent) = protocol::AgentId::module(id) else { continue };
        let image: Option<String> = ctx.redis.hget(keys::environment(&agent), "IMAGE_URL").await?;
        let image = image.unwrap_or_default();
        let (source, version) = image.rsplit_once(':').filter(|(s, _)| !s.ends_with('/')).unwrap_or((&image, ""));
        let ui_name: Option<String> = ctx.redis.get(keys::ui_name(&agent)).await?;
        out.entry(source.to_owned()).or_default().push(json!({
            "id": id,
            "node": nodes[id],
            "source": source,
            "version": version,
            "module": source.rsplit('/').next().unwrap_or(""),
            "ui_name": ui_name.unwrap_or_default(),
        }));
    }
    Ok(out)
}

pub async fn list_installed(ctx: ActionContext, _: Value) -> Result<Value, ActionError> {
    Ok(json!(installed(&ctx).await?))
}

/// Forget cached indexes, so the next `list-modules` fetches them again.
pub async fn clean_cache(ctx: ActionContext, _: Value) -> Result<Value, ActionError> {
    let keys_: Vec<String> = bus::scan(&ctx.redis, &format!("{}*", keys::repository_cache("")), None).await?;
    if !keys_.is_empty() {
        let _: i64 = ctx.redis.del(keys_).await?;
    }
    Ok(Value::Null)
}

/// Resolve `image`: a URL when it holds a `/`, else the newest version of the module
/// of that name in the enabled repositories.
pub(crate) async fn resolve(ctx: &ActionContext, image: &str) -> Result<String, ActionError> {
    if image.contains('/') {
        protocol::image::parse_reference(image)
            .map_err(|e| ActionError::invalid("image", json!(image), &e.to_string()))?;
        return Ok(image.to_owned());
    }
    let modules = list_modules(ctx.clone(), Value::Null).await?;
    let found = modules.as_array().into_iter().flatten().find(|m| m["id"] == image || m["name"] == image);
    let Some(m) = found else {
        return Err(ActionError::invalid("image", json!(image), "not_in_repositories"));
    };
    let (Some(source), Some(tag)) = (m["source"].as_str(), m["versions"][0]["tag"].as_str()) else {
        return Err(ActionError::failed(format!("module {image} has no installable version in the repositories")));
    };
    Ok(format!("{source}:{tag}"))
}
