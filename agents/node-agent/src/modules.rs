//! The node's half of installing and removing a module (NS8's `node/add-module` and
//! `node/remove-module`): the Unix user, the files, the credentials and the agent.
//!
//! Layout, as NS8's: a rootless module `<id>` is the user `<id>` with home
//! `$HOME_BASEDIR/<id>`; its install dir is `~/.config` (`actions/`, `events/`, `bin/`,
//! `services/` from the image's `imageroot/`), its state `~/.config/state`
//! (`environment`, `agent.env`). Podman reads `~/.config/containers/containers.conf`,
//! where the node puts the settings this host needs. A rootful module lives in
//! `$ROOTFUL_BASEDIR/<id>` (install dir and `state/`), runs as root, and has a Podman
//! storage of its own in `$ROOTFUL_BASEDIR/.containers/<id>`, named to Podman by
//! `CONTAINERS_CONF`/`CONTAINERS_STORAGE_CONF` in its `agent.env`.
//!
//! Failure is atomic: whatever `add-module` made before failing is removed before it
//! answers, and `remove-module` leaves nothing of the module on the node.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_runtime::{ActionContext, ActionError};
use serde_json::{Value, json};

use crate::launcher::{AgentSpec, Launcher};
use crate::{podman, users};

pub const ENV_HOME_BASEDIR: &str = "HOME_BASEDIR";
pub const ENV_ROOTFUL_BASEDIR: &str = "ROOTFUL_BASEDIR";
const RUNTIME_BASE: &str = "/run/user";
const ROOTFUL_RUNTIME_BASE: &str = "/run/nethserver";
/// Names of what the image's `imageroot/` put at the top of the install dir, so an
/// update can replace exactly those.
pub const IMAGEROOT_LIST: &str = ".imageroot.lst";

/// Where this node keeps modules, read from its environment.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    pub home_base: PathBuf,
    pub rootful_base: PathBuf,
    /// The node's own state dir (its containers.conf, preserved data).
    pub state_dir: PathBuf,
    /// Where `module-agent` and `module-service` are: beside this binary.
    pub bin_dir: PathBuf,
    pub redis_address: Option<String>,
}

impl NodeSetup {
    pub fn from_env(state_dir: &Path) -> Self {
        let var = |k| std::env::var(k).ok().filter(|v| !v.is_empty());
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin"));
        NodeSetup {
            home_base: var(ENV_HOME_BASEDIR).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/home")),
            rootful_base: var(ENV_ROOTFUL_BASEDIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/nethserver")),
            state_dir: state_dir.to_path_buf(),
            bin_dir,
            redis_address: var("REDIS_ADDRESS"),
        }
    }
}

/// Where one module's files are.
#[derive(Clone, Debug)]
pub struct ModulePaths {
    pub id: String,
    /// `None` for a rootful module.
    pub user: Option<users::ModuleUser>,
    pub base: PathBuf,
    pub install_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl ModulePaths {
    /// The paths of an installed module, or `None` when nothing of it is on the node.
    pub fn find(setup: &NodeSetup, id: &str) -> Option<Self> {
        if let Some(user) = users::lookup(id, Path::new(RUNTIME_BASE)) {
            let install_dir = user.home.join(".config");
            return Some(ModulePaths {
                id: id.to_owned(),
                base: user.home.clone(),
                state_dir: install_dir.join("state"),
                runtime_dir: user.runtime_dir.clone(),
                install_dir,
                user: Some(user),
            });
        }
        let base = setup.rootful_base.join(id);
        base.is_dir().then(|| Self::rootful(setup, id))
    }

    fn rootful(setup: &NodeSetup, id: &str) -> Self {
        let base = setup.rootful_base.join(id);
        ModulePaths {
            id: id.to_owned(),
            user: None,
            install_dir: base.clone(),
            state_dir: base.join("state"),
            runtime_dir: Path::new(ROOTFUL_RUNTIME_BASE).join(id),
            base,
        }
    }

    /// A rootful module's own Podman storage (images, containers, volumes): beside its
    /// base dir, so that its names never meet root's or another module's.
    pub fn rootful_storage(&self) -> PathBuf {
        self.base.parent().unwrap_or(Path::new("/")).join(".containers").join(&self.id)
    }

    /// Where the module's named volumes are.
    pub fn volumes_dir(&self) -> PathBuf {
        match &self.user {
            Some(u) => u.home.join(".local/share/containers/storage/volumes"),
            None => self.rootful_storage().join("volumes"),
        }
    }

    /// What tells Podman about its settings: rootless Podman reads them from the
    /// user's `~/.config/containers/`; root's would read `/etc`, so a rootful module's
    /// files are named.
    fn podman_env(&self) -> Vec<(String, String)> {
        if self.user.is_some() {
            return Vec::new();
        }
        let dir = self.install_dir.join("containers");
        vec![
            ("CONTAINERS_CONF".to_owned(), dir.join("containers.conf").display().to_string()),
            ("CONTAINERS_STORAGE_CONF".to_owned(), dir.join("storage.conf").display().to_string()),
        ]
    }

    /// The environment the module's own programs (agent, `module-service`) run with.
    fn agent_env(&self, setup: &NodeSetup, password: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("REDIS_USER".to_owned(), format!("module/{}", self.id)),
            ("REDIS_PASSWORD".to_owned(), password.to_owned()),
            ("XDG_RUNTIME_DIR".to_owned(), self.runtime_dir.display().to_string()),
            (
                "PATH".to_owned(),
                format!(
                    "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.install_dir.join("bin").display(),
                    setup.bin_dir.display()
                ),
            ),
        ];
        if let Some(a) = &setup.redis_address {
            env.push(("REDIS_ADDRESS".to_owned(), a.clone()));
        }
        env.extend(self.podman_env());
        env
    }

    /// Run `module-service <args>` as the module, with its environment.
    pub fn module_service(&self, setup: &NodeSetup, args: &[&str]) -> Result<String, String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(setup.bin_dir.join("module-service"));
        cmd.args(args)
            .env_clear()
            .env("AGENT_INSTALL_DIR", &self.install_dir)
            .env("AGENT_STATE_DIR", &self.state_dir)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.podman_env())
            .current_dir(&self.runtime_dir);
        if let Some(u) = &self.user {
            cmd.env("HOME", &u.home).env("USER", &u.name).uid(u.uid).gid(u.gid);
        }
        if let Ok(text) = std::fs::read_to_string(self.state_dir.join("environment")) {
            // Only what the services may expand; never the agent's credentials.
            cmd.envs(protocol::envfile::parse(&text));
        }
        let out = cmd.output().map_err(|e| format!("cannot run module-service: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

/// useradd and userdel lock /etc/passwd; concurrent installs take turns here instead
/// of failing on the lock.
static ACCOUNTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn add_schema() -> Value {
    json!({
        "type": "object",
        "required": ["module_id", "image_url", "environment"],
        "properties": {
            "module_id": {"type": "string", "pattern": "^[a-z][a-z0-9_-]*[0-9]+$", "maxLength": 31},
            "image_url": {"type": "string", "minLength": 1},
            "is_rootfull": {"type": "boolean"},
            "environment": {"type": "object", "additionalProperties": {"type": "string"}}
        }
    })
}

pub fn remove_schema() -> Value {
    json!({
        "type": "object",
        "required": ["module_id"],
        "properties": {
            "module_id": {"type": "string", "minLength": 1},
            "preserve_data": {"type": "boolean"}
        }
    })
}

fn failed(e: impl std::fmt::Display) -> ActionError {
    ActionError::failed(e.to_string())
}

/// `cp -a from to`: modes, owners (subordinate ids included) and links kept.
pub(crate) fn cp_a(from: &Path, to: &Path) -> Result<(), String> {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().map_err(|e| format!("cannot run cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("cp -a {} {}: {}", from.display(), to.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Remove a directory tree; one that is not there is not an error.
pub(crate) fn remove_path(p: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("cannot remove {}: {e}", p.display())),
        _ => Ok(()),
    }
}

pub(crate) fn chown_tree(path: &Path, user: &users::ModuleUser) -> Result<(), String> {
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run chown: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("chown {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `node/add-module`: make the module's user (or rootful dir), extract its image,
/// write its environment and credentials, and start its agent. Answers
/// `{redis_sha256}`: the cluster creates the Redis user from the hash, and the agent
/// connects once it exists. The clear password is only in the module's agent.env.
pub async fn add(ctx: ActionContext, data: Value, setup: NodeSetup) -> Result<Value, ActionError> {
    let id = data["module_id"].as_str().unwrap_or_default().to_owned();
    protocol::validate_module_id(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    let image = data["image_url"].as_str().unwrap_or_default().to_owned();
    protocol::image::parse_reference(&image).map_err(|e| failed(format!("image_url: {e}")))?;
    let rootful = data["is_rootfull"].as_bool().unwrap_or(false);
    if ModulePaths::find(&setup, &id).is_some() {
        return Err(failed(format!("module {id} already exists on this node: refusing to touch it")));
    }
    let environment: Vec<(String, String)> = data["environment"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default();
    if let Some((k, _)) = environment.iter().find(|(k, v)| k.contains(['=', '\n']) || k.is_empty() || v.contains('\n'))
    {
        return Err(ActionError::invalid("environment", json!(k), "bad_line"));
    }
    let launcher = Launcher::detect().map_err(failed)?;

    let paths = if rootful {
        std::fs::create_dir_all(&setup.rootful_base)
            .map_err(|e| failed(format!("cannot create {}: {e}", setup.rootful_base.display())))?;
        ModulePaths::rootful(&setup, &id)
    } else {
        std::fs::create_dir_all(&setup.home_base)
            .map_err(|e| failed(format!("cannot create {}: {e}", setup.home_base.display())))?;
        let user = {
            let _guard = ACCOUNTS.lock().await;
            users::create(&id, &setup.home_base, Path::new(RUNTIME_BASE)).map_err(failed)?
        };
        let install_dir = user.home.join(".config");
        ModulePaths {
            id: id.clone(),
            base: user.home.clone(),
            state_dir: install_dir.join("state"),
            runtime_dir: user.runtime_dir.clone(),
            install_dir,
            user: Some(user),
        }
    };
    ctx.set_progress(10);
    let result = install(&ctx, &paths, &setup, &launcher, &image, &environment).await;
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            tracing::warn!("add-module {id} failed, removing what was made: {e}");
            if let Err(c) = cleanup(&paths, &setup, &launcher, false).await {
                tracing::error!("cleanup of {id} incomplete: {c}");
            }
            Err(failed(e))
        }
    }
}

async fn install(
    ctx: &ActionContext,
    paths: &ModulePaths,
    setup: &NodeSetup,
    launcher: &Launcher,
    image: &str,
    environment: &[(String, String)],
) -> Result<Value, String> {
    // Extraction runs skopeo and reads the layers: off the async workers. The image is
    // validated in a root-only staging dir, never in the module's home.
    let (img, dest, state) = (image.to_owned(), paths.install_dir.clone(), setup.state_dir.clone());
    let (digest, top) = tokio::task::spawn_blocking(move || -> Result<_, crate::extract::ExtractError> {
        let staging = crate::extract::staging_dir(&state)?;
        let x = crate::extract::imageroot(&img, staging.path())?;
        // A ~/.config from the skeleton would only hold what the image replaces.
        remove_path(&dest).map_err(|reason| crate::extract::ExtractError::Deliver { dest: dest.clone(), reason })?;
        crate::extract::deliver(&x, &dest)?;
        Ok((x.digest, x.top))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    ctx.set_progress(50);
    let top: Vec<String> = top.into_iter().filter(|n| n != "state").collect();
    crate::extract::write_imageroot_list(&paths.install_dir, &top).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&paths.state_dir).map_err(|e| format!("cannot create the state dir: {e}"))?;
    std::fs::set_permissions(&paths.state_dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;

    let mut env: Vec<(String, String)> = environment.to_vec();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    set("MODULE_ID", paths.id.clone());
    set("IMAGE_URL", image.to_owned());
    set("IMAGE_DIGEST", digest);
    write_private(&paths.state_dir.join("environment"), &protocol::envfile::render(&env))?;
    // NS8 uses a UUIDv4 too: 122 random bits.
    let password = uuid::Uuid::new_v4().simple().to_string();
    write_private(&paths.state_dir.join("agent.env"), &protocol::envfile::render(&paths.agent_env(setup, &password)))?;

    // What Podman needs on this host, where rootless Podman reads it.
    // Probed at each install: cheap, and a host change (runc installed, a new kernel)
    // is picked up.
    let conf = setup.state_dir.join(crate::CONTAINERS_CONF);
    podman::configure(&conf)?;
    let conf_dir = paths.install_dir.join("containers");
    std::fs::create_dir_all(&conf_dir).map_err(|e| e.to_string())?;
    std::fs::copy(&conf, conf_dir.join("containers.conf")).map_err(|e| format!("cannot copy containers.conf: {e}"))?;
    if paths.user.is_none() {
        // Its own store; the driver is Podman's choice for this host, as for root's.
        let storage = format!(
            "# Written by the node agent: module {}'s own Podman storage.\n[storage]\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            paths.id,
            paths.runtime_dir.join("containers").display(),
            paths.rootful_storage().display()
        );
        std::fs::write(conf_dir.join("storage.conf"), storage)
            .map_err(|e| format!("cannot write storage.conf: {e}"))?;
    }

    match &paths.user {
        Some(u) => {
            std::fs::set_permissions(&u.home, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
            chown_tree(&u.home, u)?;
        }
        None => {
            std::fs::create_dir_all(&paths.runtime_dir).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&paths.base, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        }
    }
    ctx.set_progress(70);
    let binary = setup.bin_dir.join("module-agent");
    launcher.start(&AgentSpec {
        module_id: &paths.id,
        user: paths.user.as_ref().map(|u| u.name.as_str()),
        binary: &binary,
        install_dir: &paths.install_dir,
        state_dir: &paths.state_dir,
        env_file: &paths.state_dir.join("agent.env"),
    })?;
    ctx.set_progress(100);
    Ok(json!({"redis_sha256": sha256_hex(&password), "install_dir": paths.install_dir}))
}

/// Stop the agent and the services, then remove every file, process and account of
/// the module. With `preserve`, its state and volumes are moved aside first; their
/// new place is returned.
async fn cleanup(
    paths: &ModulePaths,
    setup: &NodeSetup,
    launcher: &Launcher,
    preserve: bool,
) -> Result<Option<PathBuf>, String> {
    let mut errors = Vec::new();
    if let Err(e) = launcher.stop(&paths.id) {
        errors.push(e);
    }
    // Data to keep is stopped gracefully first; otherwise killing every process of
    // the user below is enough, as everything it wrote goes with its home. A rootful
    // module's containers run as root: they are always stopped through its Podman.
    if (preserve || paths.user.is_none()) && paths.state_dir.exists() {
        let (p, s) = (paths.clone(), setup.clone());
        match tokio::task::spawn_blocking(move || p.module_service(&s, &["down"])).await {
            Ok(Err(e)) => tracing::warn!("module {}: stopping its services: {e}", paths.id),
            Err(e) => tracing::warn!("module {}: {e}", paths.id),
            Ok(Ok(_)) => {}
        }
    }
    let preserved = if preserve { preserve_data(paths, setup).map(Some)? } else { None };
    let p = paths.clone();
    let removed = tokio::task::spawn_blocking(move || remove_files(&p)).await.map_err(|e| e.to_string())?;
    if let Err(e) = removed {
        errors.push(e);
    }
    if errors.is_empty() { Ok(preserved) } else { Err(errors.join("; ")) }
}

/// Remove every process, file and account of a module whose services are stopped: a
/// rootless module's user with everything it owns; a rootful module's Podman service,
/// mounts, storage, runtime and base dirs.
pub fn remove_files(p: &ModulePaths) -> Result<(), String> {
    if p.user.is_some() {
        return users::remove(&p.id, Path::new(RUNTIME_BASE));
    }
    stop_processes(p);
    let storage = p.rootful_storage();
    for dir in [&storage, &p.runtime_dir] {
        unmount_under(dir);
    }
    let errors: Vec<String> =
        [&p.runtime_dir, &storage, &p.base].into_iter().filter_map(|d| remove_path(d).err()).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// Kill what the module still runs once its services are down: every process of a
/// rootless module's user; a rootful module's Podman service (found by its socket's
/// path; it would exit by itself after its idle time).
pub fn stop_processes(p: &ModulePaths) {
    if let Some(u) = &p.user {
        users::kill_all(u.uid);
        return;
    }
    let marker = p.runtime_dir.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Lazily unmount whatever is mounted at or below `dir` (a storage driver's mounts),
/// deepest first, so the directory can be removed.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).map(PathBuf::from).filter(|m| m.starts_with(dir)).collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in points {
        let _ = Command::new("umount").arg("-l").arg(&m).output();
    }
}

/// Copy the module's state and Podman volumes to `<node state>/preserved/<id>-<time>`,
/// before they are removed with the module.
fn preserve_data(paths: &ModulePaths, setup: &NodeSetup) -> Result<PathBuf, String> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dest = setup.state_dir.join("preserved").join(format!("{}-{stamp}", paths.id));
    std::fs::create_dir_all(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    let volumes = paths.volumes_dir();
    for (from, name) in [(&paths.state_dir, "state"), (&volumes, "volumes")] {
        if from.exists() {
            cp_a(from, &dest.join(name)).map_err(|e| format!("cannot preserve {}: {e}", from.display()))?;
        }
    }
    // Credentials of a user that is about to be deleted are worth nothing but a leak.
    let _ = std::fs::remove_file(dest.join("state/agent.env"));
    Ok(dest)
}

/// `node/remove-module`: nothing of the module stays on the node, except its state and
/// volumes when `preserve_data` asks.
pub async fn remove(ctx: ActionContext, data: Value, setup: NodeSetup) -> Result<Value, ActionError> {
    let id = data["module_id"].as_str().unwrap_or_default().to_owned();
    protocol::validate_module_id(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    let preserve = data["preserve_data"].as_bool().unwrap_or(false);
    let launcher = Launcher::detect().map_err(failed)?;
    let Some(paths) = ModulePaths::find(&setup, &id) else {
        // Still forget an agent whose files are already gone.
        launcher.stop(&id).map_err(failed)?;
        return Ok(json!({"removed": false, "preserved": null}));
    };
    ctx.set_progress(10);
    let _guard = ACCOUNTS.lock().await;
    let preserved = cleanup(&paths, &setup, &launcher, preserve).await.map_err(failed)?;
    Ok(json!({"removed": true, "preserved": preserved}))
}
