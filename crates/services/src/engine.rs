//! A module's services on its user's Podman API socket.
//!
//! One rootless `podman system service` per module user, started on demand by the
//! first command that needs it and exiting after [`IDLE_SECS`] without requests (the
//! containers keep running: conmon, not the service, watches them). This is the same
//! code path with or without systemd. A service is a container created from its
//! `.container` file at each start and removed at each stop, as quadlet does
//! (`--rm --replace`), so a changed file or image takes effect at the next start;
//! named volumes persist.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podman_api::Podman;
use podman_api::models::{ContainerMount, NamedVolume, PortMapping};
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts, ContainerRestartPolicy,
    ContainerStopOpts, PullOpts,
};

use crate::quadlet::{self, QuadletError, Restart, Service, Volume};

/// Why a service command failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0} is not set")]
    NoInstallDir(&'static str),
    #[error("XDG_RUNTIME_DIR is not set: the node writes it into the agent's agent.env")]
    NoRuntimeDir,
    #[error("cannot {verb} {}: {source}", path.display())]
    File { verb: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0:?} is not a service name")]
    NotAName(String),
    #[error("the module declares no service {name:?} ({} is missing)", path.display())]
    Undeclared { name: String, path: PathBuf },
    #[error(transparent)]
    Declaration(#[from] QuadletError),
    /// A request to the Podman service failed; `what` says which.
    #[error("{what}: {source}")]
    Podman { what: String, source: podman_api::Error },
    #[error("cannot pull {image}: {error}")]
    Pull { image: String, error: String },
    #[error("cannot open the Podman service log: {0}")]
    ServiceLog(std::io::Error),
    #[error("cannot {what} the Podman service lock: {source}")]
    ServiceLock { what: &'static str, source: std::io::Error },
    #[error("cannot start podman system service: {0}")]
    ServiceSpawn(std::io::Error),
    #[error("podman system service exited ({status}) before answering; see {}", log.display())]
    ServiceExited { status: std::process::ExitStatus, log: PathBuf },
    #[error("podman system service did not answer within 30 s")]
    ServiceSilent,
}

/// How long the Podman service waits for a request before exiting.
pub const IDLE_SECS: u32 = 60;
/// The label that marks a module's service containers.
pub const SERVICE_LABEL: &str = "org.nethserver.service";
/// Where a module's `.container` files are, under its install directory.
pub const SERVICES_DIR: &str = "services";
/// The enabled services, one name per line, under the state directory (so backups and
/// update snapshots carry it).
pub const ENABLED_FILE: &str = "services.enabled";

/// Where a module's files and its Podman socket are.
#[derive(Clone, Debug)]
pub struct Layout {
    pub install_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Layout {
    /// From the agent's environment: `AGENT_INSTALL_DIR`, `AGENT_STATE_DIR` (default
    /// `<install>/state`) and `XDG_RUNTIME_DIR`.
    pub fn from_env() -> Result<Self, ServiceError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let install_dir =
            PathBuf::from(var("AGENT_INSTALL_DIR").ok_or(ServiceError::NoInstallDir("AGENT_INSTALL_DIR"))?);
        let state_dir = var("AGENT_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| install_dir.join("state"));
        let runtime_dir = PathBuf::from(var("XDG_RUNTIME_DIR").ok_or(ServiceError::NoRuntimeDir)?);
        Ok(Layout { install_dir, state_dir, runtime_dir })
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("podman/podman.sock")
    }

    /// The declared services, by name.
    pub fn declared(&self) -> Result<Vec<String>, ServiceError> {
        let dir = self.install_dir.join(SERVICES_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ServiceError::File { verb: "read", path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".container").map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn enabled(&self) -> Vec<String> {
        std::fs::read_to_string(self.state_dir.join(ENABLED_FILE))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Mark `name` enabled or not (written atomically).
    pub fn set_enabled(&self, name: &str, on: bool) -> Result<(), ServiceError> {
        let mut list = self.enabled();
        list.retain(|n| n != name);
        if on {
            list.push(name.to_owned());
        }
        list.sort();
        let path = self.state_dir.join(ENABLED_FILE);
        let tmp = path.with_extension("new");
        let text: String = list.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(&tmp, text).map_err(|source| ServiceError::File { verb: "write", path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| ServiceError::File { verb: "write", path, source })
    }

    /// The variables `${NAME}` expands to: the process environment, then
    /// `state/environment` (re-read each time, as steps do).
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        if let Ok(text) = std::fs::read_to_string(self.state_dir.join("environment")) {
            env.extend(protocol::envfile::parse(&text));
        }
        env
    }

    /// Read and check the declaration of `name`.
    pub fn load(&self, name: &str) -> Result<Service, ServiceError> {
        if !quadlet::valid_name(name) {
            return Err(ServiceError::NotAName(name.to_owned()));
        }
        let path = self.install_dir.join(SERVICES_DIR).join(format!("{name}.container"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ServiceError::Undeclared { name: name.to_owned(), path });
            }
            Err(source) => return Err(ServiceError::File { verb: "read", path, source }),
        };
        Ok(quadlet::parse(name, &text, &self.environment(), &self.state_dir)?)
    }
}

fn api_err(what: impl Into<String>, source: podman_api::Error) -> ServiceError {
    ServiceError::Podman { what: what.into(), source }
}

/// Record in the service log why a reset follows (it is the only log this has).
fn note_in_log(log: &std::path::Path, why: &ServiceError) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = writeln!(f, "module-service: {why}; running podman system migrate, then retrying");
    }
}

/// Start `podman system service` on the layout's socket and wait until it answers.
async fn spawn_service(layout: &Layout, podman: &Podman, log_path: &std::path::Path) -> Result<(), ServiceError> {
    let socket = layout.socket();
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).map_err(ServiceError::ServiceLog)?;
    // setsid: the service outlives the command that started it, and is not killed
    // with the process group of an agent's step. A long-running child with its output
    // in a file, so the seam's std command, spawned here.
    let mut child = hostcmd::Cmd::new("setsid")
        .args(["podman", "system", "service"])
        .arg(format!("--time={IDLE_SECS}"))
        .arg(format!("unix://{}", socket.display()))
        // Not the caller's directory: an update or rollback replaces the state dir,
        // and conmon cannot start containers from a deleted working directory.
        .current_dir(&layout.runtime_dir)
        .to_std()
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(ServiceError::ServiceLog)?)
        .stderr(log)
        .spawn()
        .map_err(ServiceError::ServiceSpawn)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if podman.ping().await.is_ok() {
            // Reap it in the background: it exits on its own when idle.
            std::thread::spawn(move || child.wait());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ServiceError::ServiceExited { status, log: log_path.to_owned() });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(ServiceError::ServiceSilent);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection to the module user's Podman service.
pub struct Engine {
    podman: Podman,
}

impl Engine {
    /// The Podman service if it is running now; never starts it.
    pub async fn running(layout: &Layout) -> Option<Self> {
        let podman = Podman::unix(layout.socket());
        podman.ping().await.is_ok().then_some(Engine { podman })
    }

    /// Connect, starting the Podman service first when it is not running. Two callers
    /// racing to start it are serialised by a lock file.
    pub async fn connect(layout: &Layout) -> Result<Self, ServiceError> {
        let socket = layout.socket();
        let podman = Podman::unix(&socket);
        if podman.ping().await.is_ok() {
            return Ok(Engine { podman });
        }
        let dir = socket.parent().expect("socket has a parent");
        std::fs::create_dir_all(dir).map_err(|source| ServiceError::File {
            verb: "create",
            path: dir.to_owned(),
            source,
        })?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("service.lock"))
            .map_err(|source| ServiceError::ServiceLock { what: "open", source })?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| ServiceError::ServiceLock { what: "lock", source: e.into() })?;
        if podman.ping().await.is_ok() {
            return Ok(Engine { podman });
        }
        let log_path = dir.join("service.log");
        match spawn_service(layout, &podman, &log_path).await {
            Err(e) if std::fs::read_to_string(&log_path).unwrap_or_default().contains("podman system migrate") => {
                // A crash killed the user namespace's pause process and left its pid
                // file: Podman asks for this reset, after which the service starts.
                note_in_log(&log_path, &e);
                let _ = hostcmd::Cmd::new("podman")
                    .args(["system", "migrate"])
                    .current_dir(&layout.runtime_dir)
                    .output_async()
                    .await;
                spawn_service(layout, &podman, &log_path).await?;
            }
            r => r?,
        }
        Ok(Engine { podman })
    }

    /// Pull `image` unless it is present. TLS is verified except for a registry on
    /// loopback (the local repository) and those the node's registries.conf marks
    /// insecure (a LAN registry: an explicit `tlsVerify` would override it). A pull is reported on stderr with its
    /// duration (it lands in the task's log; the install benchmark reads it).
    pub async fn ensure_image(&self, image: &str) -> Result<(), ServiceError> {
        if self.podman.images().get(image).exists().await.unwrap_or(false) {
            return Ok(());
        }
        let started = Instant::now();
        use futures_util::StreamExt;
        let mut opts = PullOpts::builder().reference(image).quiet(true);
        if protocol::image::on_loopback_registry(image) {
            opts = opts.tls_verify(false);
        }
        let opts = opts.build();
        let images = self.podman.images();
        let mut stream = images.pull(&opts);
        while let Some(report) = stream.next().await {
            let report = report.map_err(|e| api_err(format!("cannot pull {image}"), e))?;
            if let Some(error) = report.error {
                return Err(ServiceError::Pull { image: image.to_owned(), error });
            }
        }
        eprintln!("module-service: pulled {image} in {:.3} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Create and start the container of `svc`, replacing a previous one.
    pub async fn start(&self, svc: &Service) -> Result<(), ServiceError> {
        self.ensure_image(&svc.image).await?;
        self.remove(&svc.container_name).await?;
        let mut labels = svc.labels.clone();
        labels.insert(SERVICE_LABEL.to_owned(), svc.name.clone());
        let ports: Vec<PortMapping> = svc
            .publish
            .iter()
            .map(|p| PortMapping {
                container_port: Some(p.container_port),
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host_port),
                protocol: Some(p.protocol.clone()),
                range: None,
            })
            .collect();
        let mut named = Vec::new();
        let mut mounts = Vec::new();
        for v in &svc.volumes {
            match v {
                Volume::Named { name, dest, options } => named.push(NamedVolume {
                    dest: Some(dest.clone()),
                    is_anonymous: None,
                    name: Some(name.clone()),
                    options: Some(options.clone()),
                }),
                Volume::Bind { source, dest, options } => mounts.push(ContainerMount {
                    destination: Some(dest.clone()),
                    options: Some(options.clone()),
                    source: Some(source.display().to_string()),
                    _type: Some("bind".into()),
                    uid_mappings: None,
                    gid_mappings: None,
                }),
            }
        }
        let mut opts = ContainerCreateOpts::builder()
            .name(&svc.container_name)
            .image(&svc.image)
            .env(svc.environment.clone())
            .labels(labels)
            .portmappings(ports)
            .volumes(named)
            .mounts(mounts)
            .restart_policy(match svc.restart {
                Restart::No => ContainerRestartPolicy::No,
                Restart::OnFailure => ContainerRestartPolicy::OnFailure,
                Restart::Always => ContainerRestartPolicy::Always,
            });
        if !svc.exec.is_empty() {
            opts = opts.command(svc.exec.clone());
        }
        if svc.run_init {
            opts = opts.init(true);
        }
        if let Some(t) = svc.stop_timeout {
            opts = opts.stop_timeout(t);
        }
        if let Some(w) = &svc.working_dir {
            opts = opts.work_dir(w);
        }
        if let Some(u) = &svc.user {
            opts = opts.user(u);
        }
        if svc.host_network {
            opts = opts.net_namespace(podman_api::models::Namespace { nsmode: Some("host".into()), value: None });
        }
        let created = self
            .podman
            .containers()
            .create(&opts.build())
            .await
            .map_err(|e| api_err(format!("cannot create the container of {}", svc.name), e))?;
        self.podman
            .containers()
            .get(&created.id)
            .start(None)
            .await
            .map_err(|e| api_err(format!("cannot start {}", svc.name), e))
    }

    /// Stop and remove the container `name`; a missing one is not an error.
    pub async fn remove(&self, name: &str) -> Result<(), ServiceError> {
        let c = self.podman.containers().get(name);
        if !c.exists().await.map_err(|e| api_err("cannot reach Podman", e))? {
            return Ok(());
        }
        // Without a timeout Podman waits the container's own StopTimeout (default 10 s).
        let _ = c.stop(&ContainerStopOpts::builder().ignore(true).build()).await;
        c.delete(&ContainerDeleteOpts::builder().force(true).build())
            .await
            .map_err(|e| api_err(format!("cannot remove container {name}"), e))
    }

    /// `running`, `exited`, ... or `inactive` when there is no container.
    pub async fn state(&self, container: &str) -> Result<String, ServiceError> {
        let c = self.podman.containers().get(container);
        if !c.exists().await.map_err(|e| api_err("cannot reach Podman", e))? {
            return Ok("inactive".into());
        }
        let info = c.inspect().await.map_err(|e| api_err(format!("cannot inspect {container}"), e))?;
        Ok(info.state.and_then(|s| s.status).unwrap_or_else(|| "unknown".into()))
    }

    /// Names of the service containers present (running or not).
    pub async fn containers(&self) -> Result<Vec<String>, ServiceError> {
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter([ContainerListFilter::LabelKey(SERVICE_LABEL.to_owned())])
            .build();
        let list = self.podman.containers().list(&opts).await.map_err(|e| api_err("cannot list containers", e))?;
        Ok(list.into_iter().filter_map(|c| c.names?.into_iter().next()).collect())
    }

    /// Remove every image no container uses (after an update: the previous version's);
    /// the names removed.
    pub async fn prune_images(&self) -> Result<Vec<String>, ServiceError> {
        let opts = podman_api::opts::ImagePruneOpts::builder().all(true).build();
        let reports = self.podman.images().prune(&opts).await.map_err(|e| api_err("cannot prune images", e))?;
        Ok(reports.unwrap_or_default().into_iter().filter_map(|r| r.id).collect())
    }
}
