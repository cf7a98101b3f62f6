//! Starting and stopping module agents: systemd units on a server, the supervisor's
//! program files where systemd is not PID 1 (containers, CI, this kind of machine).
//! The node picks the one that works here; nothing else differs between the two.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

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
    pub fn detect() -> Result<Self, String> {
        let var = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = var(ENV_SUPERVISOR_DIR) {
            let pidfile = var(ENV_SUPERVISOR_PIDFILE)
                .ok_or_else(|| format!("{ENV_SUPERVISOR_DIR} is set but {ENV_SUPERVISOR_PIDFILE} is not"))?;
            return Ok(Launcher::Supervisor { dir, pidfile, log_dir: var(ENV_SUPERVISOR_LOG_DIR) });
        }
        if Path::new("/run/systemd/system").is_dir() {
            return Ok(Launcher::Systemd);
        }
        Err(format!(
            "cannot start module agents: systemd is not running and {ENV_SUPERVISOR_DIR} is not set \
             (run the node agent under the supervisor, see agents/supervisor/README.md)"
        ))
    }

    fn program_file(dir: &Path, id: &str) -> PathBuf {
        // After Redis (10) and the node agent (30), so a restart of everything
        // brings Redis up first.
        dir.join(format!("50-module-{id}.json"))
    }

    fn reload(pidfile: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(pidfile).map_err(|e| format!("cannot read {}: {e}", pidfile.display()))?;
        let pid: i32 = text.trim().parse().map_err(|_| format!("{} holds no pid", pidfile.display()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP)
            .map_err(|e| format!("cannot signal the supervisor (pid {pid}): {e}"))
    }

    pub fn start(&self, spec: &AgentSpec) -> Result<(), String> {
        match self {
            Launcher::Systemd => {
                let unit = format!("module-agent@{}.service", spec.module_id);
                if spec.user.is_none() {
                    // The template runs /home/%i as user %i; a rootful module is root
                    // with its own directories.
                    let dir = Path::new(SYSTEMD_DIR).join(format!("{unit}.d"));
                    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    std::fs::write(dir.join("rootful.conf"), rootful_dropin(spec))
                        .map_err(|e| format!("cannot write the drop-in of {unit}: {e}"))?;
                    systemctl(&["daemon-reload"])?;
                }
                systemctl(&["enable", "--now", &unit])
            }
            Launcher::Supervisor { dir, pidfile, log_dir } => {
                let program = json!({
                    "name": format!("module-agent-{}", spec.module_id),
                    "command": [spec.binary, "--agentid", format!("module/{}", spec.module_id)],
                    "env": {
                        "AGENT_INSTALL_DIR": spec.install_dir,
                        "AGENT_STATE_DIR": spec.state_dir,
                    },
                    "env_files": [spec.env_file],
                    "cwd": spec.state_dir,
                    "log": log_dir.as_ref().map(|d| d.join(format!("module-{}.log", spec.module_id))),
                    "user": spec.user,
                    "restart": "always",
                    "stop_timeout_secs": 30,
                });
                let path = Self::program_file(dir, spec.module_id);
                let tmp = dir.join(format!(".module-{}.json.new", spec.module_id));
                std::fs::write(&tmp, serde_json::to_string_pretty(&program).expect("json"))
                    .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                std::fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Self::reload(pidfile)
            }
        }
    }

    /// Stop the agent and forget it; stopping one that is not known is not an error.
    pub fn stop(&self, module_id: &str) -> Result<(), String> {
        match self {
            Launcher::Systemd => {
                let unit = format!("module-agent@{module_id}.service");
                systemctl(&["disable", "--now", &unit])
                    .or_else(|e| if e.contains("not loaded") { Ok(()) } else { Err(e) })
            }
            Launcher::Supervisor { dir, pidfile, .. } => {
                match std::fs::remove_file(Self::program_file(dir, module_id)) {
                    Ok(()) => Self::reload(pidfile),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("cannot remove the program file of {module_id}: {e}")),
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

fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl").args(args).output().map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("systemctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(l.start(&spec).unwrap_err().contains("holds no pid"));
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
