//! Starting and stopping module agents: systemd units on a server, the supervisor's
//! program files where systemd is not PID 1 (containers, CI, this kind of machine).
//! The node picks the one that works here; nothing else differs between the two.

use std::path::{Path, PathBuf};

use hostcmd::{Cmd, CmdError};
use protocol::supervisor::{Program, Restart};

/// Why a module agent was not started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error("{ENV_SUPERVISOR_DIR} is set but {ENV_SUPERVISOR_PIDFILE} is not")]
    NoPidfile,
    #[error(
        "cannot start module agents: systemd is not running and {ENV_SUPERVISOR_DIR} is not set \
         (run the node agent under the supervisor, see agents/supervisor/README.md)"
    )]
    NoLauncher,
    #[error("cannot {doing} {}: {source}", path.display())]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} holds no pid", .0.display())]
    NoPid(PathBuf),
    #[error("cannot signal the supervisor (pid {pid}): {source}")]
    Signal { pid: i32, source: nix::errno::Errno },
    #[error(transparent)]
    Systemctl(#[from] CmdError),
}

fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LauncherError + 'a {
    move |source| LauncherError::Io { doing, path: path.to_owned(), source }
}

/// How module agents are run on this node.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// `systemctl enable --now module-agent@<id>` (deploy/systemd/module-agent@.service).
    Systemd,
    /// One program file per module in the supervisor's directory, then SIGHUP.
    Supervisor { dir: PathBuf, pidfile: PathBuf, log_dir: Option<PathBuf> },
}

/// The agent's configuration a launcher needs.
pub struct AgentSpec<'a> {
    pub module_id: &'a str,
    /// `None` for a rootful module (runs as root).
    pub user: Option<&'a str>,
    pub binary: &'a Path,
    pub install_dir: &'a Path,
    pub state_dir: &'a Path,
    /// `REDIS_*`, `XDG_RUNTIME_DIR`, `PATH`: read at each start, mode 0600.
    pub env_file: &'a Path,
}

pub const ENV_SUPERVISOR_DIR: &str = "SUPERVISOR_DIR";
pub const ENV_SUPERVISOR_PIDFILE: &str = "SUPERVISOR_PIDFILE";
pub const ENV_SUPERVISOR_LOG_DIR: &str = "SUPERVISOR_LOG_DIR";

impl Launcher {
    /// The supervisor when the node agent was told of one, else systemd when it runs.
    pub fn detect() -> Result<Self, LauncherError> {
        let var = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = var(ENV_SUPERVISOR_DIR) {
            let pidfile = var(ENV_SUPERVISOR_PIDFILE).ok_or(LauncherError::NoPidfile)?;
            return Ok(Launcher::Supervisor { dir, pidfile, log_dir: var(ENV_SUPERVISOR_LOG_DIR) });
        }
        if Path::new("/run/systemd/system").is_dir() {
            return Ok(Launcher::Systemd);
        }
        Err(LauncherError::NoLauncher)
    }

    fn program_file(dir: &Path, id: &str) -> PathBuf {
        // After Redis (10) and the node agent (30), so a restart of everything
        // brings Redis up first.
        dir.join(format!("50-module-{id}.json"))
    }

    fn reload(pidfile: &Path) -> Result<(), LauncherError> {
        let text = std::fs::read_to_string(pidfile).map_err(io("read", pidfile))?;
        let pid: i32 = text.trim().parse().map_err(|_| LauncherError::NoPid(pidfile.to_owned()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP)
            .map_err(|source| LauncherError::Signal { pid, source })
    }

    /// Start the module's agent (and at every boot). Blocking: files, `systemctl`.
    pub fn start(&self, spec: &AgentSpec) -> Result<(), LauncherError> {
        match self {
            Launcher::Systemd => {
                let unit = format!("module-agent@{}.service", spec.module_id);
                if spec.user.is_none() {
                    // The template runs /home/%i as user %i; a rootful module is root
                    // with its own directories.
                    let dir = Path::new(SYSTEMD_DIR).join(format!("{unit}.d"));
                    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                    let dropin = dir.join("rootful.conf");
                    std::fs::write(&dropin, rootful_dropin(spec)).map_err(io("write", &dropin))?;
                    systemctl(&["daemon-reload"])?;
                }
                systemctl(&["enable", "--now", &unit])
            }
            Launcher::Supervisor { dir, pidfile, log_dir } => {
                let s = |p: &Path| p.display().to_string();
                let program = Program {
                    name: format!("module-agent-{}", spec.module_id),
                    command: vec![s(spec.binary), "--agentid".into(), format!("module/{}", spec.module_id)],
                    env: [("AGENT_INSTALL_DIR", spec.install_dir), ("AGENT_STATE_DIR", spec.state_dir)]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), s(v)))
                        .collect(),
                    env_files: vec![s(spec.env_file)],
                    cwd: Some(spec.state_dir.to_owned()),
                    log: log_dir.as_ref().map(|d| d.join(format!("module-{}.log", spec.module_id))),
                    user: spec.user.map(str::to_owned),
                    restart: Restart::Always,
                    stop_signal: None,
                    stop_timeout_secs: Some(30),
                };
                let path = Self::program_file(dir, spec.module_id);
                let tmp = dir.join(format!(".module-{}.json.new", spec.module_id));
                let text = serde_json::to_string_pretty(&program).expect("a program file serializes");
                std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
                std::fs::rename(&tmp, &path).map_err(io("write", &path))?;
                Self::reload(pidfile)
            }
        }
    }

    /// Stop the agent and forget it; stopping one that is not known is not an error.
    /// Blocking: files, `systemctl`.
    pub fn stop(&self, module_id: &str) -> Result<(), LauncherError> {
        match self {
            Launcher::Systemd => {
                let unit = format!("module-agent@{module_id}.service");
                match systemctl(&["disable", "--now", &unit]) {
                    Err(LauncherError::Systemctl(e)) if e.stderr().contains("not loaded") => Ok(()),
                    r => r,
                }
            }
            Launcher::Supervisor { dir, pidfile, .. } => {
                let file = Self::program_file(dir, module_id);
                match std::fs::remove_file(&file) {
                    Ok(()) => Self::reload(pidfile),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io("remove", &file)(e)),
                }
            }
        }
    }
}

const SYSTEMD_DIR: &str = "/etc/systemd/system";

/// The drop-in that turns `module-agent@<id>` into a rootful module's agent.
pub fn rootful_dropin(spec: &AgentSpec) -> String {
    let (install, state) = (spec.install_dir.display(), spec.state_dir.display());
    format!(
        "# Written by the node agent: module {id} is rootful.\n[Service]\nUser=root\n\
         Environment=AGENT_INSTALL_DIR={install} AGENT_STATE_DIR={state}\n\
         EnvironmentFile=\nEnvironmentFile=-/etc/nethserver/agent.env\nEnvironmentFile={env}\n\
         WorkingDirectory={state}\nExecStart=\n\
         ExecStart={bin} --agentid=module/{id} --actionsdir={install}/actions --eventsdir={install}/events\n",
        id = spec.module_id,
        env = spec.env_file.display(),
        bin = spec.binary.display(),
    )
}

fn systemctl(args: &[&str]) -> Result<(), LauncherError> {
    Cmd::new("systemctl").args(args).run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::process::Command;

    #[test]
    fn supervisor_program_files_come_and_go_with_a_reload_each() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in supervisor: SIGHUP ends `sleep`, which proves the reload was sent.
        let mut sup = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfile = dir.path().join("supervisor.pid");
        std::fs::write(&pidfile, sup.id().to_string()).unwrap();
        let l = Launcher::Supervisor { dir: dir.path().to_owned(), pidfile, log_dir: Some(dir.path().join("log")) };
        let spec = AgentSpec {
            module_id: "web3",
            user: Some("web3"),
            binary: Path::new("/usr/local/bin/module-agent"),
            install_dir: Path::new("/home/web3/.config"),
            state_dir: Path::new("/home/web3/.config/state"),
            env_file: Path::new("/home/web3/.config/state/agent.env"),
        };
        l.start(&spec).unwrap();
        let status = sup.wait().unwrap();
        assert!(!status.success(), "the supervisor got SIGHUP");
        let file = dir.path().join("50-module-web3.json");
        let p: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(p["command"], json!(["/usr/local/bin/module-agent", "--agentid", "module/web3"]));
        assert_eq!(p["user"], "web3");
        assert_eq!(p["env_files"], json!(["/home/web3/.config/state/agent.env"]));
        assert!(!p.to_string().contains("PASSWORD"), "no secret in the program file: {p}");

        let mut sup = Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(dir.path().join("supervisor.pid"), sup.id().to_string()).unwrap();
        l.stop("web3").unwrap();
        assert!(!sup.wait().unwrap().success());
        assert!(!file.exists());
        // Stopping an unknown module is not an error and sends nothing.
        l.stop("web3").unwrap();
        std::fs::write(dir.path().join("supervisor.pid"), "not a pid").unwrap();
        assert!(l.start(&spec).unwrap_err().to_string().contains("holds no pid"));
        // What the supervisor reads back is what was meant.
        let p: Program = serde_json::from_value(p).unwrap();
        assert_eq!((p.restart, p.stop_timeout_secs), (Restart::Always, Some(30)));
    }

    #[test]
    fn a_rootful_dropin_resets_what_the_template_sets() {
        let spec = AgentSpec {
            module_id: "samba1",
            user: None,
            binary: Path::new("/usr/local/bin/module-agent"),
            install_dir: Path::new("/var/lib/nethserver/samba1"),
            state_dir: Path::new("/var/lib/nethserver/samba1/state"),
            env_file: Path::new("/var/lib/nethserver/samba1/state/agent.env"),
        };
        let d = rootful_dropin(&spec);
        assert!(d.contains("User=root\n"), "{d}");
        // Empty assignments clear the template's lists before the new values.
        assert!(d.contains("EnvironmentFile=\nEnvironmentFile=-/etc/nethserver/agent.env\n"), "{d}");
        assert!(d.contains("ExecStart=\nExecStart=/usr/local/bin/module-agent --agentid=module/samba1 "), "{d}");
        assert!(d.contains("WorkingDirectory=/var/lib/nethserver/samba1/state\n"), "{d}");
    }
}
