//! Root's own file operations on trees nobody else can change (the node's staging and
//! state dirs, a module whose processes are all stopped).

use std::path::{Path, PathBuf};

use hostcmd::{Cmd, CmdError};

/// A file operation that failed, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {doing} {}: {source}", path.display())]
pub struct IoError {
    pub doing: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// `map_err(io("create", &dir))`.
pub fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError { doing, path: path.to_owned(), source }
}

/// `cp -a from to`: modes, owners (subordinate ids included) and links kept.
pub fn cp_a(from: &Path, to: &Path) -> Result<(), CmdError> {
    Cmd::new("cp").arg("-a").arg(from).arg(to).run().map(|_| ())
}

/// Remove a directory tree; one that is not there is not an error.
pub fn remove_path(p: &Path) -> Result<(), IoError> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", p)(e)),
        _ => Ok(()),
    }
}
