//! `add-module`: record the module, make its user (or rootful dir), extract its
//! image, write its environment and credentials, and start its agent. What a failure
//! leaves is removed before it answers.

use std::path::PathBuf;

use agent_runtime::{ActionContext, ActionError};
use protocol::actions::node::{AddModuleRefusal, AddModuleReply, AddModuleRequest};
use serde_json::json;

use super::paths::{ModulePaths, RUNTIME_BASE};
use super::remove::cleanup;
use super::setup::{ACCOUNTS, NodeSetup};
use crate::blocking;
use crate::error::ModuleError;
use crate::files::io;
use crate::launcher::Launcher;
use crate::registry::Record;
use crate::{podman, users};

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `node/add-module`. Answers the SHA-256 of the agent's fresh Redis password: the
/// cluster creates the Redis user from the hash, and the agent connects once it
/// exists. The clear password is only in the node's root-only record. An existing Unix
/// account of that name is refused ([`AddModuleRefusal::UnixUserExists`]), never taken
/// over.
pub async fn add(ctx: ActionContext, req: AddModuleRequest, setup: NodeSetup) -> Result<AddModuleReply, ActionError> {
    let AddModuleRequest { module_id: id, image_url: image, is_rootfull: rootful, environment } = req;
    protocol::validate_module_id(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    protocol::image::parse_reference(&image).map_err(|e| failed(format!("image_url: {e}")))?;
    let registry = setup.registry();
    if registry.record(&id).map_err(failed)?.is_some() {
        return Err(failed(ModuleError::AlreadyHere(id)));
    }
    let unix_user_exists = || ActionError::refuse(AddModuleRefusal::UnixUserExists, json!(id));
    if !rootful && nix::unistd::User::from_name(&id).ok().flatten().is_some() {
        return Err(unix_user_exists());
    }
    if let Some((k, _)) = environment.iter().find(|(k, v)| k.contains(['=', '\n']) || k.is_empty() || v.contains('\n'))
    {
        return Err(ActionError::invalid("environment", json!(k), "bad_line"));
    }
    let environment: Vec<(String, String)> = environment.into_iter().collect();
    let launcher = Launcher::detect().map_err(failed)?;

    // Recorded before anything is made, so that whatever a crash leaves can be removed.
    let mut record = Record { id: id.clone(), rootful, uid: None };
    registry.create(&record).map_err(failed)?;
    let made = async {
        if rootful {
            std::fs::create_dir_all(&setup.rootful_base).map_err(io("create", &setup.rootful_base))?;
            return Ok(ModulePaths::rootful(&setup, &id));
        }
        std::fs::create_dir_all(&setup.home_base).map_err(io("create", &setup.home_base))?;
        let user = {
            let _guard = ACCOUNTS.lock().await;
            let (name, home, runtime) = (id.clone(), setup.home_base.clone(), PathBuf::from(RUNTIME_BASE));
            blocking::run(move || users::create(&name, &home, &runtime).map_err(ModuleError::from)).await?
        };
        record.uid = Some(user.uid);
        let (r, rec) = (registry.clone(), record.clone());
        blocking::run(move || r.save(&rec).map_err(ModuleError::from)).await?;
        Ok::<_, ModuleError>(ModulePaths::rootless(user))
    }
    .await;
    let result = match made {
        Ok(paths) => {
            ctx.set_progress(10);
            install(&ctx, &paths, &setup, &launcher, &image, environment).await.map_err(|e| (e, Some(paths)))
        }
        Err(e) => Err((e, None)),
    };
    let (e, paths) = match result {
        Ok(reply) => return Ok(reply),
        Err(failure) => failure,
    };
    tracing::warn!("add-module {id} failed, removing what was made: {e}");
    if e.is_unix_user_exists() {
        // useradd lost a race for the name: the account is someone else's, only the
        // record is ours.
        if let Err(c) = registry.remove(&id) {
            tracing::error!("cleanup of {id} incomplete: {c}");
        }
        return Err(unix_user_exists());
    }
    let paths = match paths {
        Some(p) => Some(p),
        None => ModulePaths::find(&setup, &id).ok().flatten(),
    };
    let cleaned = match paths {
        Some(p) => {
            let _guard = ACCOUNTS.lock().await;
            let s = setup.clone();
            blocking::run(move || cleanup(&p, &s, &launcher, false).map(|_| ())).await
        }
        None => registry.remove(&id).map_err(ModuleError::from),
    };
    if let Err(c) = cleaned {
        tracing::error!("cleanup of {id} incomplete: {c}");
    }
    Err(failed(e))
}

async fn install(
    ctx: &ActionContext,
    paths: &ModulePaths,
    setup: &NodeSetup,
    launcher: &Launcher,
    image: &str,
    environment: Vec<(String, String)>,
) -> Result<AddModuleReply, ModuleError> {
    // The image is validated in a root-only staging dir, never in the module's home;
    // the module's own hands unpack it there (see `Hands`).
    let (img, state, p) = (image.to_owned(), setup.state_dir.clone(), paths.clone());
    let digest = blocking::run(move || -> Result<_, ModuleError> {
        let staging = crate::extract::staging_dir(&state)?;
        let x = crate::extract::imageroot(&img, staging.path())?;
        let hands = p.hands()?;
        // A ~/.config from the skeleton would only hold what the image replaces.
        hands.remove(&p.install_dir)?;
        hands.deliver(&x.tree, &x.top, &p.install_dir)?;
        let top: Vec<String> = x.top.iter().filter(|n| *n != "state").cloned().collect();
        p.write_list(&top)?;
        hands.mkdir(&p.state_dir, 0o700)?;
        Ok(x.digest)
    })
    .await?;
    ctx.set_progress(50);

    let mut env = environment;
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    set("MODULE_ID", paths.id.clone());
    set("IMAGE_URL", image.to_owned());
    set("IMAGE_DIGEST", digest);
    // NS8 uses a UUIDv4 too: 122 random bits.
    let password = uuid::Uuid::new_v4().simple().to_string();
    let credentials = protocol::envfile::render(&paths.agent_env(setup, &password));

    let (p, s) = (paths.clone(), setup.clone());
    let conf = setup.state_dir.join(podman::CONTAINERS_CONF);
    blocking::run(move || -> Result<(), ModuleError> {
        s.registry().write_credentials(&p.id, &credentials)?;
        // What Podman needs on this host, where rootless Podman reads it. Probed at
        // each install: cheap, and a host change (runc installed, a new kernel) is
        // picked up.
        podman::configure(&conf)?;
        let conf_text = std::fs::read(&conf).map_err(io("read", &conf))?;
        let hands = p.hands()?;
        hands.write(&p.state_dir.join("environment"), protocol::envfile::render(&env).as_bytes(), 0o600)?;
        let conf_dir = p.install_dir.join("containers");
        hands.mkdir(&conf_dir, 0o755)?;
        hands.write(&conf_dir.join("containers.conf"), &conf_text, 0o644)?;
        if p.rootful {
            // Its own store; the driver is Podman's choice for this host, as for root's.
            let storage = format!(
                "# Written by the node agent: module {}'s own Podman storage.\n[storage]\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                p.id,
                p.runtime_dir.join("containers").display(),
                p.rootful_storage().display()
            );
            hands.write(&conf_dir.join("storage.conf"), storage.as_bytes(), 0o644)?;
            std::fs::create_dir_all(&p.runtime_dir).map_err(io("create", &p.runtime_dir))?;
        }
        hands.chmod(&p.base, 0o700)?;
        Ok(())
    })
    .await?;
    ctx.set_progress(70);
    let (p, s, l) = (paths.clone(), setup.clone(), launcher.clone());
    blocking::run(move || p.start_agent(&s, &l).map_err(ModuleError::from)).await?;
    ctx.set_progress(100);
    Ok(AddModuleReply { redis_sha256: sha256_hex(&password), install_dir: paths.install_dir.display().to_string() })
}
