//! The node's own record of its modules, in root-only files under its state dir
//! (`<state>/modules/<id>/`), never in the module's tree:
//!
//! * `module.json`: that the node made module `<id>`, rootless (with its uid) or
//!   rootful. Node actions act only on modules recorded here, so a request naming any
//!   other account (`root`, a person's user) is refused before anything is touched.
//! * `agent.env`: the agent's Redis credentials, which the supervisor or systemd
//!   (PID 1) reads as root at each start: a module cannot point it elsewhere.
//! * `operation.json`: the operation in progress on the module (its phase and task), a
//!   lock against a second one and what the node agent's start hook finishes or undoes
//!   after a crash.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a record the node wrote: {why}", path.display())]
    Bad { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.to_owned(), source }
}

/// What the node made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub rootful: bool,
    /// A rootless module's account, once made.
    pub uid: Option<u32>,
}

/// The phases of an update on the node, in order; each is recorded before it begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// Stopping the services (nothing of the module changed yet).
    Stopping,
    /// Copying the install dir and volumes aside.
    Snapshot,
    /// Replacing the files and the environment (the snapshot is complete).
    Swap,
    /// Swapped: the module's own update steps run; `finish-update` comes next.
    Swapped,
    /// `finish-update` committing: services up, snapshot dropped.
    Commit,
    /// `finish-update` (or a failure) putting the snapshot back.
    Rollback,
}

/// An operation in progress on a module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum Operation {
    Update { task: String, phase: UpdatePhase },
    Remove { task: String, preserve: bool },
}

impl Operation {
    pub fn task(&self) -> &str {
        match self {
            Operation::Update { task, .. } | Operation::Remove { task, .. } => task,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Operation::Update { .. } => "update",
            Operation::Remove { .. } => "removal",
        }
    }
}

const RECORD: &str = "module.json";
const CREDENTIALS: &str = "agent.env";
const OPERATION: &str = "operation.json";

/// `<state>/modules`.
#[derive(Clone, Debug)]
pub struct Registry {
    dir: PathBuf,
}

/// Write `text` as `path` (mode 0600): a fresh file renamed into place, so a crash
/// leaves the old content or the new, never half.
fn write_private(path: &Path, text: &[u8]) -> Result<(), RegistryError> {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(text).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Registry {
    pub fn new(state_dir: &Path) -> Self {
        Registry { dir: state_dir.join("modules") }
    }

    fn module_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where the agent's credentials are (the supervisor's `env_files`, the unit's
    /// `EnvironmentFile=`).
    pub fn credentials_file(&self, id: &str) -> PathBuf {
        self.module_dir(id).join(CREDENTIALS)
    }

    /// Record that the node is making module `record.id` (root-only dirs).
    pub fn create(&self, record: &Record) -> Result<(), RegistryError> {
        for d in [&self.dir, &self.module_dir(&record.id)] {
            std::fs::create_dir_all(d).map_err(io(d))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io(d))?;
        }
        self.save(record)
    }

    pub fn save(&self, record: &Record) -> Result<(), RegistryError> {
        let text = serde_json::to_vec_pretty(record).expect("a record serializes");
        write_private(&self.module_dir(&record.id).join(RECORD), &text)
    }

    /// The record of `id`, `None` when the node did not make such a module.
    pub fn record(&self, id: &str) -> Result<Option<Record>, RegistryError> {
        let path = self.module_dir(id).join(RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let r: Record = serde_json::from_slice(&bytes)
                    .map_err(|e| RegistryError::Bad { path: path.clone(), why: e.to_string() })?;
                if r.id != id {
                    return Err(RegistryError::Bad { path, why: format!("it names {:?}", r.id) });
                }
                Ok(Some(r))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::Io { path, source: e }),
        }
    }

    /// Every recorded module id.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(RECORD).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    pub fn write_credentials(&self, id: &str, text: &str) -> Result<(), RegistryError> {
        write_private(&self.credentials_file(id), text.as_bytes())
    }

    pub fn operation(&self, id: &str) -> Result<Option<Operation>, RegistryError> {
        let path = self.module_dir(id).join(OPERATION);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| RegistryError::Bad { path, why: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::Io { path, source: e }),
        }
    }

    pub fn set_operation(&self, id: &str, op: &Operation) -> Result<(), RegistryError> {
        let text = serde_json::to_vec(op).expect("an operation serializes");
        write_private(&self.module_dir(id).join(OPERATION), &text)
    }

    pub fn clear_operation(&self, id: &str) -> Result<(), RegistryError> {
        let path = self.module_dir(id).join(OPERATION);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RegistryError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// Forget module `id` (its credentials with it).
    pub fn remove(&self, id: &str) -> Result<(), RegistryError> {
        let dir = self.module_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RegistryError::Io { path: dir, source: e }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn records_credentials_and_operations_live_in_root_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        assert_eq!(reg.record("web1").unwrap(), None);
        let mut r = Record { id: "web1".into(), rootful: false, uid: None };
        reg.create(&r).unwrap();
        r.uid = Some(1234);
        reg.save(&r).unwrap();
        assert_eq!(reg.record("web1").unwrap(), Some(r));
        assert_eq!(reg.ids(), ["web1"]);
        reg.write_credentials("web1", "REDIS_PASSWORD=x\n").unwrap();
        let md = std::fs::metadata(reg.credentials_file("web1")).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("modules/web1")).unwrap().mode() & 0o777, 0o700);

        let op = Operation::Update { task: "t1".into(), phase: UpdatePhase::Swap };
        reg.set_operation("web1", &op).unwrap();
        assert_eq!(reg.operation("web1").unwrap(), Some(op));
        let text = std::fs::read_to_string(dir.path().join("modules/web1/operation.json")).unwrap();
        assert_eq!(text, r#"{"operation":"update","task":"t1","phase":"swap"}"#);
        reg.clear_operation("web1").unwrap();
        reg.clear_operation("web1").unwrap();
        assert_eq!(reg.operation("web1").unwrap(), None);

        // A record for another id under this name is not trusted.
        std::fs::create_dir_all(dir.path().join("modules/evil1")).unwrap();
        std::fs::write(dir.path().join("modules/evil1/module.json"), r#"{"id":"root","rootful":true,"uid":null}"#)
            .unwrap();
        assert!(reg.record("evil1").unwrap_err().to_string().contains("it names \"root\""));
        reg.remove("web1").unwrap();
        assert_eq!(reg.record("web1").unwrap(), None);
    }
}
