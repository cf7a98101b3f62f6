//! Work on a module's own files by the hands that may touch them.
//!
//! A rootless module's home belongs to its user: anything in it may be a symlink the
//! module planted so that root writes, deletes, copies or reads elsewhere (`~/.config`
//! pointing at `/etc`, a volume dir at another module's). So the node never opens a
//! path there itself: it runs a short command as the module's uid, which can reach
//! nothing the module could not reach already, feeding it on stdin and reading its
//! stdout. What the module's containers own (sub-uids) is copied inside its user
//! namespace (`podman unshare`), where the module is root and ownership is kept.
//!
//! A rootful module's files are root's, in a root-only directory, and its processes
//! run as root anyway: the same commands run as root there.
//!
//! Every command is bounded in time (`timeout`), so a FIFO or a stuck mount in the
//! module's tree cannot hang the node agent.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use hostcmd::{Cmd, CmdError};

use crate::users::ModuleUser;

/// Small operations: reading, writing, removing a few files.
const SHORT: Duration = Duration::from_secs(60);
/// Copies of a module's whole tree and volumes.
const LONG: Duration = Duration::from_secs(3600);
/// What a read returns at most: the files read are the module's small text files.
const MAX_READ: usize = 1 << 20;
/// `timeout`'s exit status when the limit was reached.
const TIMED_OUT: i32 = 124;

#[derive(Debug, thiserror::Error)]
pub enum HandsError {
    /// The command did not start, or ended unsuccessfully.
    #[error("{what} as {who} {}", outcome(.source))]
    Cmd { what: String, who: String, source: CmdError },
    #[error("{what} as {who} answered more than {MAX_READ} bytes")]
    TooLarge { what: String, who: String },
    #[error("{what} as {who} failed (no answer)")]
    NoAnswer { what: String, who: String },
}

/// How a command of these hands ended, for a message: its status and the last lines of
/// its stderr (the command line is a fixed script: it says nothing to a reader).
fn outcome(e: &CmdError) -> String {
    match e {
        CmdError::Failed { status, stderr, .. } => {
            let status = match status.code() {
                Some(TIMED_OUT) => "timed out".to_owned(),
                _ => status.to_string(),
            };
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            format!("failed ({status}): {}", tail.into_iter().rev().collect::<Vec<_>>().join(" / "))
        }
        other => format!("could not run: {other}"),
    }
}

/// Who works on a module's files.
#[derive(Clone, Copy, Debug)]
pub enum Hands<'a> {
    /// A rootful module's: root, in root's own directories.
    Root,
    /// A rootless module's: its own uid.
    Module(&'a ModuleUser),
}

impl Hands<'_> {
    fn who(&self) -> String {
        match self {
            Hands::Root => "root".into(),
            Hands::Module(u) => format!("{} (uid {})", u.name, u.uid),
        }
    }

    /// `timeout <limit> <program> <args>` as these hands, with a clean environment.
    fn command(&self, limit: Duration, program: &str) -> Cmd {
        let cmd = Cmd::new("timeout")
            .args(["--kill-after=5", &format!("{}", limit.as_secs()), program])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .current_dir("/");
        match self {
            Hands::Root => cmd,
            Hands::Module(u) => cmd
                .env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name)
                .env("XDG_RUNTIME_DIR", &u.runtime_dir)
                .uid_gid(u.uid, u.gid),
        }
    }

    fn finish(&self, what: &str, cmd: Cmd, stdin: Option<&[u8]>) -> Result<Vec<u8>, HandsError> {
        let cmd = match stdin {
            Some(data) => cmd.stdin(data),
            None => cmd,
        };
        let out = cmd.run().map_err(|source| HandsError::Cmd { what: what.to_owned(), who: self.who(), source })?;
        Ok(out.stdout)
    }

    /// Run the shell `script` with positional `args` ($1...), `stdin` fed to it.
    pub fn sh(
        &self,
        what: &str,
        limit: Duration,
        script: &str,
        args: &[&OsStr],
        stdin: Option<&[u8]>,
    ) -> Result<Vec<u8>, HandsError> {
        let cmd = self.command(limit, "/bin/sh").arg("-c").arg(script).arg("sh").args(args);
        self.finish(what, cmd, stdin)
    }

    /// Like [`sh`](Self::sh), inside the module's user namespace, where the files its
    /// containers own are its own (a rootful module: plainly as root).
    pub fn sh_unshared(&self, what: &str, script: &str, args: &[&OsStr]) -> Result<Vec<u8>, HandsError> {
        self.finish(what, self.unshared_command(LONG, script, args, &[]), None)
    }

    /// The command of [`sh_unshared`](Self::sh_unshared), not run: for a long job
    /// whose output is read as it comes (a backup), bounded by `limit`. `env` is added
    /// to the clean environment.
    pub fn unshared_command(&self, limit: Duration, script: &str, args: &[&OsStr], env: &[(&str, &str)]) -> Cmd {
        let cmd = match self {
            Hands::Root => self.command(limit, "/bin/sh").args(["-c", script, "sh"]),
            Hands::Module(_) => self.command(limit, "podman").args(["unshare", "/bin/sh", "-c", script, "sh"]),
        };
        env.iter().fold(cmd.args(args), |cmd, (k, v)| cmd.env(k, v))
    }

    /// Write `text` to `path` with `mode` (a fresh file renamed into place).
    pub fn write(&self, path: &Path, text: &[u8], mode: u32) -> Result<(), HandsError> {
        let what = format!("writing {}", path.display());
        let script =
            r#"umask 077; t="$1.new.$$"; cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1" || { rm -f "$t"; exit 1; }"#;
        let mode = format!("{mode:o}");
        self.sh(&what, SHORT, script, &[path.as_os_str(), OsStr::new(&mode)], Some(text)).map(|_| ())
    }

    /// The text of the regular file `path`, `None` when it does not exist.
    pub fn read(&self, path: &Path) -> Result<Option<String>, HandsError> {
        let what = format!("reading {}", path.display());
        // Only a regular file: a FIFO would block the reader.
        let script = r#"if [ -L "$1" ] || { [ -e "$1" ] && [ ! -f "$1" ]; }; then echo "not a regular file" >&2; exit 3; fi
if [ -e "$1" ]; then printf y; exec head -c "$2" -- "$1"; else printf n; fi"#;
        let limit = (MAX_READ + 1).to_string();
        let out = self.sh(&what, SHORT, script, &[path.as_os_str(), OsStr::new(&limit)], None)?;
        match out.split_first() {
            Some((b'n', _)) => Ok(None),
            Some((b'y', body)) if body.len() <= MAX_READ => Ok(Some(String::from_utf8_lossy(body).into_owned())),
            Some((b'y', _)) => Err(HandsError::TooLarge { what, who: self.who() }),
            _ => Err(HandsError::NoAnswer { what, who: self.who() }),
        }
    }

    /// Remove `path` and everything under it; a missing path is fine.
    pub fn remove(&self, path: &Path) -> Result<(), HandsError> {
        let what = format!("removing {}", path.display());
        self.sh(&what, LONG, r#"rm -rf -- "$1""#, &[path.as_os_str()], None).map(|_| ())
    }

    /// `mkdir -p` with `mode` for the last component.
    pub fn mkdir(&self, path: &Path, mode: u32) -> Result<(), HandsError> {
        let what = format!("creating {}", path.display());
        let mode = format!("{mode:o}");
        self.sh(&what, SHORT, r#"mkdir -p -- "$1" && chmod "$2" -- "$1""#, &[path.as_os_str(), OsStr::new(&mode)], None)
            .map(|_| ())
    }

    /// Copy `names` of root's validated `tree` into `dest` (created if missing): root
    /// packs them (its own staging dir), these hands unpack them, owning what they make.
    pub fn deliver(&self, tree: &Path, names: &[String], dest: &Path) -> Result<(), HandsError> {
        let what = format!("unpacking the image's files into {}", dest.display());
        if names.is_empty() {
            return self.mkdir(dest, 0o755);
        }
        let pack = Cmd::new("tar").arg("-c").arg("-C").arg(tree).args(["-f", "-", "--"]).args(names);
        let unpack = self
            .command(LONG, "/bin/sh")
            .arg("-c")
            .arg(r#"mkdir -p -- "$1" && exec tar -x -p --no-same-owner -C "$1" -f -"#)
            .arg("sh")
            .arg(dest);
        // Root packs (the tree is its own staging dir); a failure names whose side it was.
        pack.pipe_to(&unpack).map(|_| ()).map_err(|source| {
            let packing =
                matches!(&source, CmdError::Failed { argv, .. } | CmdError::Spawn { argv, .. } if *argv == pack.argv());
            let who = if packing { "root".to_owned() } else { self.who() };
            HandsError::Cmd { what, who, source }
        })
    }

    pub fn chmod(&self, path: &Path, mode: u32) -> Result<(), HandsError> {
        let what = format!("setting the mode of {}", path.display());
        let mode = format!("{mode:o}");
        self.sh(&what, SHORT, r#"chmod "$2" -- "$1""#, &[path.as_os_str(), OsStr::new(&mode)], None).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_hands_write_read_remove_and_deliver() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hands::Root;
        let f = dir.path().join("a/b/file");
        h.mkdir(f.parent().unwrap(), 0o700).unwrap();
        h.write(&f, b"one\ntwo\n", 0o640).unwrap();
        assert_eq!(h.read(&f).unwrap().as_deref(), Some("one\ntwo\n"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(h.read(&dir.path().join("missing")).unwrap(), None);
        // Not a regular file: refused, never read (a FIFO would block).
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(h.read(&dir.path().join("fifo")).unwrap_err().to_string().contains("not a regular file"));
        std::os::unix::fs::symlink(&f, dir.path().join("link")).unwrap();
        assert!(h.read(&dir.path().join("link")).is_err(), "a symlink is not followed");

        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("actions/x")).unwrap();
        std::fs::write(tree.join("actions/x/10x"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(tree.join("actions/x/10x"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(tree.join("skipped"), "").unwrap();
        let dest = dir.path().join("dest");
        h.deliver(&tree, &["actions".to_owned()], &dest).unwrap();
        assert_eq!(std::fs::metadata(dest.join("actions/x/10x")).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(!dest.join("skipped").exists());
        let err = h.deliver(&tree, &["nope".to_owned()], &dest).unwrap_err().to_string();
        assert!(err.contains("unpacking the image's files"), "{err}");
        h.remove(&dir.path().join("a")).unwrap();
        assert!(!dir.path().join("a").exists());
        h.remove(&dir.path().join("a")).unwrap();
    }
}
