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

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_runtime::{ActionContext, ActionError};
use serde_json::{Value, json};

use crate::hands::Hands;
use crate::launcher::{AgentSpec, Launcher};
use crate::registry::{Operation, Record, Registry};
use crate::{podman, users};

pub const ENV_HOME_BASEDIR: &str = "HOME_BASEDIR";
pub const ENV_ROOTFUL_BASEDIR: &str = "ROOTFUL_BASEDIR";
const RUNTIME_BASE: &str = "/run/user";
const ROOTFUL_RUNTIME_BASE: &str = "/run/nethserver";
/// A rootless module's Podman volumes, under its home.
const VOLUMES: &str = ".local/share/containers/storage/volumes";
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
    /// The node's root-only record of its modules.
    pub fn registry(&self) -> Registry {
        Registry::new(&self.state_dir)
    }

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
    pub rootful: bool,
    /// A rootless module's account; `None` for a rootful module, or when the account
    /// is already gone.
    pub user: Option<users::ModuleUser>,
    pub base: PathBuf,
    pub install_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl ModulePaths {
    /// The paths of a module this node made (its [`Registry`] record), or `None` when
    /// the node has none of that id: node actions touch nothing else, whatever account
    /// of that name exists. A record whose account is not the one the node made (uid
    /// or marker) is an error.
    pub fn find(setup: &NodeSetup, id: &str) -> Result<Option<Self>, String> {
        let Some(record) = setup.registry().record(id).map_err(|e| e.to_string())? else { return Ok(None) };
        if record.rootful {
            return Ok(Some(Self::rootful(setup, id)));
        }
        let paths = match users::lookup(id, Path::new(RUNTIME_BASE)) {
            Some(user) => {
                if record.uid.is_some_and(|uid| uid != user.uid) || !users::is_module_account(id) {
                    return Err(format!(
                        "the Unix user {id} (uid {}) is not the account this node made for module {id} \
                         (uid {:?}): refusing to touch it",
                        user.uid, record.uid
                    ));
                }
                Self::rootless(user)
            }
            // Recorded, but the account is already gone (a removal or an install cut short).
            None => ModulePaths {
                id: id.to_owned(),
                rootful: false,
                user: None,
                base: setup.home_base.join(id),
                install_dir: setup.home_base.join(id).join(".config"),
                state_dir: setup.home_base.join(id).join(".config/state"),
                runtime_dir: PathBuf::new(),
            },
        };
        Ok(Some(paths))
    }

    fn rootless(user: users::ModuleUser) -> Self {
        let install_dir = user.home.join(".config");
        ModulePaths {
            id: user.name.clone(),
            rootful: false,
            base: user.home.clone(),
            state_dir: install_dir.join("state"),
            runtime_dir: user.runtime_dir.clone(),
            install_dir,
            user: Some(user),
        }
    }

    /// Who works on its files (see [`Hands`]): never root for a rootless module.
    pub fn hands(&self) -> Result<Hands<'_>, String> {
        match (&self.user, self.rootful) {
            (Some(u), _) => Ok(Hands::Module(u)),
            (None, true) => Ok(Hands::Root),
            (None, false) => Err(format!("module {} has no Unix user any more", self.id)),
        }
    }

    fn rootful(setup: &NodeSetup, id: &str) -> Self {
        let base = setup.rootful_base.join(id);
        ModulePaths {
            id: id.to_owned(),
            rootful: true,
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
        if self.rootful { self.rootful_storage().join("volumes") } else { self.base.join(VOLUMES) }
    }

    /// What tells Podman about its settings: rootless Podman reads them from the
    /// user's `~/.config/containers/`; root's would read `/etc`, so a rootful module's
    /// files are named.
    fn podman_env(&self) -> Vec<(String, String)> {
        if !self.rootful {
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
        // It reads the module's state/environment itself, as the module: root does not.
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

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `node/add-module`: record the module, make its user (or rootful dir), extract its
/// image, write its environment and credentials, and start its agent. Answers
/// `{redis_sha256}`: the cluster creates the Redis user from the hash, and the agent
/// connects once it exists. The clear password is only in the node's root-only record.
pub async fn add(ctx: ActionContext, data: Value, setup: NodeSetup) -> Result<Value, ActionError> {
    let id = data["module_id"].as_str().unwrap_or_default().to_owned();
    protocol::validate_module_id(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    let image = data["image_url"].as_str().unwrap_or_default().to_owned();
    protocol::image::parse_reference(&image).map_err(|e| failed(format!("image_url: {e}")))?;
    let rootful = data["is_rootfull"].as_bool().unwrap_or(false);
    let registry = setup.registry();
    if registry.record(&id).map_err(failed)?.is_some() {
        return Err(failed(format!("module {id} already exists on this node: refusing to touch it")));
    }
    if !rootful && nix::unistd::User::from_name(&id).ok().flatten().is_some() {
        return Err(failed(format!("a Unix user named {id} already exists: refusing to take it over")));
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

    // Recorded before anything is made, so that whatever a crash leaves can be removed.
    let mut record = Record { id: id.clone(), rootful, uid: None };
    registry.create(&record).map_err(failed)?;
    let made = async {
        if rootful {
            std::fs::create_dir_all(&setup.rootful_base)
                .map_err(|e| format!("cannot create {}: {e}", setup.rootful_base.display()))?;
            return Ok(ModulePaths::rootful(&setup, &id));
        }
        std::fs::create_dir_all(&setup.home_base)
            .map_err(|e| format!("cannot create {}: {e}", setup.home_base.display()))?;
        let user = {
            let _guard = ACCOUNTS.lock().await;
            let (name, home, runtime) = (id.clone(), setup.home_base.clone(), PathBuf::from(RUNTIME_BASE));
            tokio::task::spawn_blocking(move || users::create(&name, &home, &runtime))
                .await
                .map_err(|e| e.to_string())??
        };
        record.uid = Some(user.uid);
        registry.save(&record).map_err(|e| e.to_string())?;
        Ok::<_, String>(ModulePaths::rootless(user))
    }
    .await;
    let result = match made {
        Ok(paths) => {
            ctx.set_progress(10);
            install(&ctx, &paths, &setup, &launcher, &image, &environment).await.map_err(|e| (e, Some(paths)))
        }
        Err(e) => Err((e, None)),
    };
    match result {
        Ok(v) => Ok(v),
        Err((e, paths)) => {
            tracing::warn!("add-module {id} failed, removing what was made: {e}");
            let paths = match paths {
                Some(p) => Some(p),
                None => ModulePaths::find(&setup, &id).ok().flatten(),
            };
            let cleaned = match paths {
                Some(p) => cleanup(&p, &setup, &launcher, false).await.map(|_| ()),
                None => registry.remove(&id).map_err(|e| e.to_string()),
            };
            if let Err(c) = cleaned {
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
    // validated in a root-only staging dir, never in the module's home; the module's
    // own hands unpack it there (see `Hands`).
    let (img, state, p) = (image.to_owned(), setup.state_dir.clone(), paths.clone());
    let conf = setup.state_dir.join(crate::CONTAINERS_CONF);
    let digest = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let staging = crate::extract::staging_dir(&state).map_err(|e| e.to_string())?;
        let x = crate::extract::imageroot(&img, staging.path()).map_err(|e| e.to_string())?;
        let hands = p.hands()?;
        // A ~/.config from the skeleton would only hold what the image replaces.
        hands.remove(&p.install_dir).map_err(|e| e.to_string())?;
        hands.deliver(&x.tree, &x.top, &p.install_dir).map_err(|e| e.to_string())?;
        let top: Vec<String> = x.top.iter().filter(|n| *n != "state").cloned().collect();
        write_list(&p, &top)?;
        hands.mkdir(&p.state_dir, 0o700).map_err(|e| e.to_string())?;
        Ok(x.digest)
    })
    .await
    .map_err(|e| e.to_string())??;
    ctx.set_progress(50);

    let mut env: Vec<(String, String)> = environment.to_vec();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    set("MODULE_ID", paths.id.clone());
    set("IMAGE_URL", image.to_owned());
    set("IMAGE_DIGEST", digest);
    // NS8 uses a UUIDv4 too: 122 random bits.
    let password = uuid::Uuid::new_v4().simple().to_string();
    setup
        .registry()
        .write_credentials(&paths.id, &protocol::envfile::render(&paths.agent_env(setup, &password)))
        .map_err(|e| e.to_string())?;

    // What Podman needs on this host, where rootless Podman reads it.
    // Probed at each install: cheap, and a host change (runc installed, a new kernel)
    // is picked up.
    podman::configure(&conf)?;
    let conf_text = std::fs::read(&conf).map_err(|e| format!("cannot read {}: {e}", conf.display()))?;
    let p = paths.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let hands = p.hands()?;
        let h = |r: Result<(), crate::hands::HandsError>| r.map_err(|e| e.to_string());
        h(hands.write(&p.state_dir.join("environment"), protocol::envfile::render(&env).as_bytes(), 0o600))?;
        let conf_dir = p.install_dir.join("containers");
        h(hands.mkdir(&conf_dir, 0o755))?;
        h(hands.write(&conf_dir.join("containers.conf"), &conf_text, 0o644))?;
        if p.rootful {
            // Its own store; the driver is Podman's choice for this host, as for root's.
            let storage = format!(
                "# Written by the node agent: module {}'s own Podman storage.\n[storage]\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                p.id,
                p.runtime_dir.join("containers").display(),
                p.rootful_storage().display()
            );
            h(hands.write(&conf_dir.join("storage.conf"), storage.as_bytes(), 0o644))?;
            std::fs::create_dir_all(&p.runtime_dir).map_err(|e| e.to_string())?;
        }
        h(hands.chmod(&p.base, 0o700))
    })
    .await
    .map_err(|e| e.to_string())??;
    ctx.set_progress(70);
    let binary = setup.bin_dir.join("module-agent");
    launcher.start(&AgentSpec {
        module_id: &paths.id,
        user: paths.user.as_ref().map(|u| u.name.as_str()),
        binary: &binary,
        install_dir: &paths.install_dir,
        state_dir: &paths.state_dir,
        env_file: &setup.registry().credentials_file(&paths.id),
    })?;
    ctx.set_progress(100);
    Ok(json!({"redis_sha256": sha256_hex(&password), "install_dir": paths.install_dir}))
}

/// Record the names the image put at the top of the install dir, so that an update
/// replaces exactly those. Root writes it only in a rootful module's root-only dir.
pub(crate) fn write_list(p: &ModulePaths, names: &[String]) -> Result<(), String> {
    match p.hands()? {
        Hands::Root => crate::extract::write_imageroot_list(&p.install_dir, names).map_err(|e| e.to_string()),
        hands @ Hands::Module(_) => {
            let text: String = names.iter().map(|n| format!("{n}\n")).collect();
            hands.write(&p.install_dir.join(IMAGEROOT_LIST), text.as_bytes(), 0o644).map_err(|e| e.to_string())
        }
    }
}

/// The names [`write_list`] recorded, each checked (the module may have changed the
/// file: root acts on the names).
pub(crate) fn read_list(p: &ModulePaths) -> Result<Vec<String>, String> {
    match p.hands()? {
        Hands::Root => crate::extract::read_imageroot_list(&p.install_dir).map_err(|e| e.to_string()),
        hands @ Hands::Module(_) => {
            let path = p.install_dir.join(IMAGEROOT_LIST);
            let text = hands.read(&path).map_err(|e| e.to_string())?.unwrap_or_default();
            crate::extract::parse_imageroot_list(&path, &text).map_err(|e| e.to_string())
        }
    }
}

/// Stop the agent and the services, then remove every file, process and account of
/// the module, and its record last. With `preserve`, its state and volumes are copied
/// aside first; their new place is returned.
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
    if (preserve || paths.rootful) && paths.hands().is_ok() {
        let (p, s) = (paths.clone(), setup.clone());
        match tokio::task::spawn_blocking(move || p.module_service(&s, &["down"])).await {
            Ok(Err(e)) => tracing::warn!("module {}: stopping its services: {e}", paths.id),
            Err(e) => tracing::warn!("module {}: {e}", paths.id),
            Ok(Ok(_)) => {}
        }
    }
    let p = paths.clone();
    tokio::task::spawn_blocking(move || {
        stop_processes(&p);
        crate::failpoint("remove:stopped");
    })
    .await
    .map_err(|e| e.to_string())?;
    let preserved = if preserve {
        let (p, s) = (paths.clone(), setup.clone());
        match tokio::task::spawn_blocking(move || preserve_data(&p, &s)).await.map_err(|e| e.to_string())? {
            Ok(kept) => Some(kept),
            Err(e) => {
                // Nothing removed: the module runs again as it was (its agent brings its
                // services up), and no removal is pending.
                let again = launcher.start(&AgentSpec {
                    module_id: &paths.id,
                    user: paths.user.as_ref().map(|u| u.name.as_str()),
                    binary: &setup.bin_dir.join("module-agent"),
                    install_dir: &paths.install_dir,
                    state_dir: &paths.state_dir,
                    env_file: &setup.registry().credentials_file(&paths.id),
                });
                let _ = setup.registry().clear_operation(&paths.id);
                return Err(match again {
                    Ok(()) => format!("{e}; the module was started again"),
                    Err(a) => format!("{e}; and starting the module again failed: {a}"),
                });
            }
        }
    } else {
        None
    };
    let p = paths.clone();
    let removed = tokio::task::spawn_blocking(move || remove_files(&p)).await.map_err(|e| e.to_string())?;
    if let Err(e) = removed {
        errors.push(e);
    }
    if errors.is_empty() {
        setup.registry().remove(&paths.id).map_err(|e| e.to_string())?;
        Ok(preserved)
    } else {
        Err(errors.join("; "))
    }
}

/// Remove every process, file and account of a module whose services are stopped: a
/// rootless module's user with everything it owns; a rootful module's Podman service,
/// mounts, storage, runtime and base dirs.
pub fn remove_files(p: &ModulePaths) -> Result<(), String> {
    if !p.rootful {
        users::remove(&p.id, Path::new(RUNTIME_BASE))?;
        // A home the account no longer names (an install cut short before useradd
        // finished, or after userdel): nobody runs as it, Rust's removal follows no link.
        return remove_path(&p.base);
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
/// rootless module's user and of its containers (its subordinate ids); a rootful
/// module's Podman service (found by its socket's path; it would exit by itself after
/// its idle time).
pub fn stop_processes(p: &ModulePaths) {
    if let Some(u) = &p.user {
        users::kill_all_of(u);
        return;
    }
    if !p.rootful {
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

/// Whether every component of `rel` below `base` (and `base` itself) is a real
/// directory, not a symlink: checked once nothing of the module runs any more, so
/// nothing can change it afterwards.
fn real_dirs(base: &Path, rel: &Path) -> bool {
    let mut at = base.to_path_buf();
    let real = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_dir());
    if !real(&at) {
        return false;
    }
    for c in rel.components() {
        at.push(c);
        if !real(&at) {
            return false;
        }
    }
    true
}

/// Copy the module's state and Podman volumes to `<node state>/preserved/<id>-<time>`,
/// before they are removed with the module. Nothing of the module runs by then (its
/// user's and containers' processes are killed), and a source reached through a
/// symlink is refused: `cp -a` itself copies links as links.
fn preserve_data(paths: &ModulePaths, setup: &NodeSetup) -> Result<PathBuf, String> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dest = setup.state_dir.join("preserved").join(format!("{}-{stamp}", paths.id));
    std::fs::create_dir_all(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    let volumes = paths.volumes_dir();
    for (from, name) in [(&paths.state_dir, "state"), (&volumes, "volumes")] {
        let Ok(rel) = from.strip_prefix(&paths.base) else {
            // A rootful module's storage is root's, beside its base.
            if from.exists() {
                cp_a(from, &dest.join(name)).map_err(|e| format!("cannot preserve {}: {e}", from.display()))?;
            }
            continue;
        };
        if from.symlink_metadata().is_err() {
            continue;
        }
        if !real_dirs(&paths.base, rel) {
            return Err(format!(
                "cannot preserve {}: a part of that path is not a real directory (a symlink?); nothing was removed",
                from.display()
            ));
        }
        cp_a(from, &dest.join(name)).map_err(|e| format!("cannot preserve {}: {e}", from.display()))?;
    }
    Ok(dest)
}

/// `node/remove-module`: nothing of the module stays on the node, except its state and
/// volumes when `preserve_data` asks. Only a module this node made is touched; the
/// removal is recorded first, so that a crash in the middle is finished at the next
/// start of the node agent.
pub async fn remove(ctx: ActionContext, data: Value, setup: NodeSetup) -> Result<Value, ActionError> {
    let id = data["module_id"].as_str().unwrap_or_default().to_owned();
    protocol::validate_module_id(&id).map_err(|e| ActionError::invalid("module_id", json!(id), &e.to_string()))?;
    let preserve = data["preserve_data"].as_bool().unwrap_or(false);
    let launcher = Launcher::detect().map_err(failed)?;
    let Some(paths) = ModulePaths::find(&setup, &id).map_err(failed)? else {
        // An account of that name that the node did not make is never touched.
        if nix::unistd::User::from_name(&id).ok().flatten().is_some() || setup.rootful_base.join(&id).exists() {
            return Err(ActionError::invalid("module_id", json!(id), "not_a_module_of_this_node"));
        }
        // Nothing of it here (a removal a restart finished already): forget its agent.
        launcher.stop(&id).map_err(failed)?;
        return Ok(json!({"removed": false, "preserved": null}));
    };
    let registry = setup.registry();
    if let Some(op) = registry.operation(&id).map_err(failed)?
        && op.task() != ctx.task_id
        && !matches!(op, Operation::Remove { .. })
    {
        return Err(failed(format!("module {id} is busy with task {} ({}); try again later", op.task(), op.name())));
    }
    registry.set_operation(&id, &Operation::Remove { task: ctx.task_id.clone(), preserve }).map_err(failed)?;
    ctx.set_progress(10);
    let _guard = ACCOUNTS.lock().await;
    let preserved = cleanup(&paths, &setup, &launcher, preserve).await.map_err(failed)?;
    Ok(json!({"removed": true, "preserved": preserved}))
}

/// At the node agent's start: finish the removals a crash cut short (the module was
/// recorded as being removed), with what they asked for.
pub async fn recover_removals(setup: &NodeSetup) {
    let registry = setup.registry();
    for id in registry.ids() {
        let Ok(Some(Operation::Remove { preserve, .. })) = registry.operation(&id) else { continue };
        let paths = match ModulePaths::find(setup, &id) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("module {id}: a removal was cut short, and {e}");
                continue;
            }
        };
        let launcher = match Launcher::detect() {
            Ok(l) => l,
            Err(e) => return tracing::error!("cannot finish the removals cut short: {e}"),
        };
        let _guard = ACCOUNTS.lock().await;
        match cleanup(&paths, setup, &launcher, preserve).await {
            Ok(kept) => tracing::warn!("module {id}: finished the removal a restart cut short (kept: {kept:?})"),
            Err(e) => tracing::error!("module {id}: finishing the removal a restart cut short failed: {e}"),
        }
    }
}

/// At the node agent's start: take into the registry the modules an earlier version
/// of the node made before it kept one (their credentials were in the module's own
/// `state/agent.env`, read by root at each start of the agent). A module is adopted
/// only when the cluster places it on this node and its account carries the node's
/// marker (or its rootful dir exists); its credentials move, and its agent restarts
/// reading them from the registry.
pub async fn adopt_unrecorded(setup: &NodeSetup, node: u32, modules: Vec<(String, String)>) {
    let registry = setup.registry();
    for (id, on) in modules {
        if on != node.to_string() || protocol::validate_module_id(&id).is_err() {
            continue;
        }
        if !matches!(registry.record(&id), Ok(None)) {
            continue;
        }
        let rootful = setup.rootful_base.join(&id).join("state").is_dir() && !users::is_module_account(&id);
        let paths = if rootful {
            ModulePaths::rootful(setup, &id)
        } else if users::is_module_account(&id) {
            match users::lookup(&id, Path::new(RUNTIME_BASE)) {
                Some(u) => ModulePaths::rootless(u),
                None => continue,
            }
        } else {
            continue;
        };
        let (p, s) = (paths.clone(), setup.clone());
        let adopted = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let hands = p.hands()?;
            let old = p.state_dir.join("agent.env");
            let text = hands.read(&old).map_err(|e| e.to_string())?.unwrap_or_default();
            let password = protocol::envfile::parse(&text)
                .into_iter()
                .find(|(k, _)| k == "REDIS_PASSWORD")
                .map(|(_, v)| v)
                .ok_or_else(|| format!("{} holds no REDIS_PASSWORD", old.display()))?;
            let registry = s.registry();
            registry
                .create(&Record { id: p.id.clone(), rootful: p.rootful, uid: p.user.as_ref().map(|u| u.uid) })
                .map_err(|e| e.to_string())?;
            registry
                .write_credentials(&p.id, &protocol::envfile::render(&p.agent_env(&s, &password)))
                .map_err(|e| e.to_string())?;
            hands.remove(&old).map_err(|e| e.to_string())?;
            let launcher = Launcher::detect()?;
            launcher.start(&AgentSpec {
                module_id: &p.id,
                user: p.user.as_ref().map(|u| u.name.as_str()),
                binary: &s.bin_dir.join("module-agent"),
                install_dir: &p.install_dir,
                state_dir: &p.state_dir,
                env_file: &registry.credentials_file(&p.id),
            })
        })
        .await;
        match adopted {
            Ok(Ok(())) => tracing::warn!("module {id}: recorded by the node, its credentials moved out of its home"),
            Ok(Err(e)) => tracing::error!("module {id}: cannot record it: {e}"),
            Err(e) => tracing::error!("module {id}: {e}"),
        }
    }
}
