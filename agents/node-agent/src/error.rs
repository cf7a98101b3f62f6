//! Why an operation of the node on a module (install, removal, adoption, update)
//! failed. Each variant names the module or the path and, where there is one, says
//! what to do; the leaves' own errors pass through unchanged.

use std::fmt;
use std::path::PathBuf;

use hostcmd::CmdError;

use crate::extract::ExtractError;
use crate::files::IoError;
use crate::hands::HandsError;
use crate::launcher::LauncherError;
use crate::podman::PodmanError;
use crate::registry::RegistryError;
use crate::users::UserError;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Hands(#[from] HandsError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Launcher(#[from] LauncherError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Podman(#[from] PodmanError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("its thread was lost: {0}")]
    Lost(#[from] tokio::task::JoinError),
    #[error(
        "the Unix user {id} (uid {uid}) is not the account this node made for module {id} (uid {recorded:?}): \
         refusing to touch it"
    )]
    NotOurAccount { id: String, uid: u32, recorded: Option<u32> },
    #[error("module {0} has no Unix user any more")]
    NoUser(String),
    #[error("module {0} already exists on this node: refusing to touch it")]
    AlreadyHere(String),
    #[error("module {id} is busy with task {task} ({operation}){hint}")]
    Busy { id: String, task: String, operation: &'static str, hint: &'static str },
    #[error("{} holds no REDIS_PASSWORD", .0.display())]
    NoPassword(PathBuf),
    #[error("cannot preserve {}: {source}", path.display())]
    Preserve { path: PathBuf, source: Box<ModuleError> },
    #[error("cannot preserve {}: a part of that path is not a real directory (a symlink?); nothing was removed", .0.display())]
    NotRealDir(PathBuf),
    /// A removal that stopped before removing anything; the module was started again.
    #[error("{source}; {}", StartedAgain(.again))]
    NotRemoved { source: Box<ModuleError>, again: Option<Box<ModuleError>> },
    /// A cleanup keeps going: every failure is reported.
    #[error("{}", Joined(.0))]
    Several(Vec<ModuleError>),
}

impl ModuleError {
    /// The account of that name exists and is not the node's to take (add-module).
    pub fn is_unix_user_exists(&self) -> bool {
        matches!(self, ModuleError::User(UserError::Exists(_)))
    }
}

struct StartedAgain<'a>(&'a Option<Box<ModuleError>>);

impl fmt::Display for StartedAgain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("the module was started again"),
            Some(e) => write!(f, "and starting the module again failed: {e}"),
        }
    }
}

struct Joined<'a>(&'a [ModuleError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
