//! Unpack a module image's `imageroot/` (NS8's `extract-image`) so that nothing in the
//! image can reach outside it, though the node does it as root.
//!
//! skopeo copies the image into a private staging dir (root's, mode 0700: nothing else
//! can change it meanwhile, so the `lstat` checks below cannot be raced). Each layer
//! blob is checked against its sha256 digest in the manifest, then read in-process
//! (the `tar` crate, over flate2 for gzip) and applied in order. Only `imageroot/` is
//! written; entries elsewhere are skipped. Within `imageroot/`:
//!
//! * regular files and directories are accepted; ownership is never taken from the
//!   image (everything becomes the module's); modes keep their rwx bits minus group
//!   and other write (at most 0755, the owner can always read and write); sticky and
//!   a directory's setgid are dropped; a file with setuid or setgid is refused (the
//!   image asks for a privilege the node will not give, and silently dropping it
//!   would only hide that from the author);
//! * symlinks are accepted when their target is relative, `..` only leads it
//!   (`../lib/x`, never `a/../b`), and it stays inside `imageroot/` from the link's
//!   directory: as every directory on the way is real (next rule), every link then
//!   resolves inside the tree, wherever the tree is later copied;
//! * nothing is written, and no whiteout applied, through a symlink: each component of
//!   an entry's parent path must be a real directory;
//! * hardlinks (even inside the tree: a copy does the same without the ambiguity),
//!   devices, FIFOs and every other type are refused, as are absolute paths, `..`
//!   components, names that are not UTF-8 or hold control characters, and the name
//!   the node keeps for itself ([`IMAGEROOT_LIST`]);
//! * whiteouts follow OCI: a layer's `.wh.<name>` and `.wh..wh..opq` remove what lower
//!   layers put there, before its own entries are written;
//! * [`MAX_BYTES`] of file data and [`MAX_ENTRIES`] entries over all layers, against
//!   decompression bombs.
//!
//! Each refusal names the layer (index from 1, the bottom one, and digest) and the
//! entry. Extended attributes (file capabilities among them) and times are not kept.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde_json::Value;

use hostcmd::Cmd;

/// Names of what the image's `imageroot/` put at the top of the install dir, so an
/// update can replace exactly those.
pub const IMAGEROOT_LIST: &str = ".imageroot.lst";

/// File data the layers may hold together (in and out of `imageroot/`).
pub const MAX_BYTES: u64 = 1 << 30;
/// Entries the layers may hold together.
pub const MAX_ENTRIES: u64 = 200_000;
/// `.imageroot.lst` is a few names; more is not ours.
const MAX_LIST_BYTES: u64 = 1 << 20;
const TREE: &str = "imageroot";
/// The skopeo copy, in the staging dir beside the tree (no entry can reach it: only
/// `imageroot/` is ever written).
const COPY: &str = ".image";

/// Why an image was not extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("image {image}: {reason}")]
    Reference { image: String, reason: String },
    #[error("staging dir {}: {why}", path.display())]
    Staging { path: PathBuf, why: String },
    #[error("cannot pull {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("cannot pull {image}: {source}")]
    Skopeo { image: String, source: hostcmd::CmdError },
    #[error("image {image}: bad manifest: {why}")]
    Manifest { image: String, why: String },
    #[error("layer {index} ({digest}): {why}")]
    Layer { index: usize, digest: String, why: Box<LayerError> },
    #[error("image {image} has no imageroot/ directory: it is not a module image")]
    NoImageroot { image: String },
    #[error("cannot copy the image's files to {}: {reason}", dest.display())]
    Deliver { dest: PathBuf, reason: String },
    #[error("{}: {why}", path.display())]
    List { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl ExtractError {
    fn io(path: &Path, source: io::Error) -> Self {
        ExtractError::Io { path: path.to_owned(), source }
    }

    /// The refusal, when a layer's entry was refused.
    pub fn refusal(&self) -> Option<(usize, &str, &Refusal)> {
        match self {
            ExtractError::Layer { index, why, .. } => match why.as_ref() {
                LayerError::Refused { entry, why } => Some((*index, entry, why)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What is wrong with one layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(
        "media type {0:?} is not supported: layers must be gzip-compressed or plain tar (rebuild or copy the image with gzip compression)"
    )]
    MediaType(String),
    #[error("its digest is not sha256:<64 hex digits>")]
    Digest,
    #[error("the blob's sha256 is {actual}, not its digest: the copy is corrupt or was tampered with")]
    Mismatch { actual: String },
    #[error("not a readable {format} archive: {reason}")]
    Unreadable { format: Format, reason: String },
    #[error("entry {entry}: {why}")]
    Refused { entry: String, why: Refusal },
    #[error(
        "the image's layers hold more than {} of file data (reached at entry {entry}): a module image carries scripts and configuration, data belongs in a service image",
        Size(*limit)
    )]
    TooMuchData { limit: u64, entry: String },
    #[error(
        "the image's layers hold more than {limit} entries (reached at entry {entry}): a module image carries scripts and configuration"
    )]
    TooManyEntries { limit: u64, entry: String },
    #[error("entry {entry}: {}: {source}", path.display())]
    Io { entry: String, path: PathBuf, source: io::Error },
}

/// Why an entry was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("an absolute path: entries are relative to the image's root")]
    AbsolutePath,
    #[error("a \"..\" component: entries must stay inside the image")]
    ParentComponent,
    #[error("the name is not UTF-8")]
    NotUtf8,
    #[error("the name holds a control character")]
    ControlCharacter,
    #[error("{IMAGEROOT_LIST} is the node's list of the image's files: an image cannot ship one")]
    Reserved,
    #[error("imageroot must be a directory, not a {0}")]
    TreeNotDirectory(&'static str),
    #[error("a symlink whose target {0:?} is not UTF-8 text without control characters")]
    BadSymlinkTarget(String),
    #[error("a symlink to the absolute path {0}: symlinks must be relative and stay inside imageroot/")]
    AbsoluteSymlink(String),
    #[error("a symlink to {0}, which leaves imageroot/: symlinks must stay inside it")]
    EscapingSymlink(String),
    #[error("a symlink to {0}: \"..\" may only begin a target (../dir/file), not follow a name")]
    InnerParentSymlink(String),
    #[error("a symlink with an empty target")]
    EmptySymlink,
    #[error("a hardlink to {0}: hardlinks are refused, ship a copy of the file instead")]
    Hardlink(String),
    #[error("a {kind} device ({major}:{minor}): device nodes are refused in a module image")]
    Device { kind: &'static str, major: u32, minor: u32 },
    #[error("a FIFO: named pipes are refused in a module image, make it at run time")]
    Fifo,
    #[error("an entry of tar type {0}: only regular files, directories and symlinks are accepted")]
    UnsupportedType(String),
    #[error("mode {0:04o} has the setuid or setgid bit: refused, a module gets no such privilege (chmod u-s,g-s)")]
    SetId(u32),
    #[error("writes through the symlink {link} planted {by}")]
    WritesThroughSymlink { link: String, by: Planted },
    #[error("deletes through the symlink {link} planted {by}")]
    DeletesThroughSymlink { link: String, by: Planted },
    #[error("its parent {0} is not a directory")]
    ParentNotDirectory(String),
    #[error("a whiteout {0:?}: a whiteout must name one entry of its directory (.wh.<name>) or be .wh..wh..opq")]
    BadWhiteout(String),
}

/// Which layer made a symlink, for the refusal of what goes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    Layer(usize),
    EarlierInThisLayer,
}

impl fmt::Display for Planted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Planted::Layer(n) => write!(f, "by layer {n}"),
            Planted::EarlierInThisLayer => f.write_str("earlier in this layer"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Tar,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Gzip => "gzip-compressed tar",
            Format::Tar => "tar",
        })
    }
}

struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 30 && n % (1 << 30) == 0 => write!(f, "{} GiB", n >> 30),
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{} MiB", n >> 20),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// A validated `imageroot/`, in the staging dir it was extracted to.
#[derive(Debug)]
pub struct Extracted {
    /// The image's manifest digest, `sha256:…`.
    pub digest: String,
    /// `<staging>/imageroot`.
    pub tree: PathBuf,
    /// Its top-level names, sorted: what [`IMAGEROOT_LIST`] records.
    pub top: Vec<String>,
}

/// A private staging dir (mode 0700) under `parent`, a root-owned place such as the
/// node's state dir; removed when dropped.
pub fn staging_dir(parent: &Path) -> Result<tempfile::TempDir, ExtractError> {
    std::fs::create_dir_all(parent).map_err(|e| ExtractError::io(parent, e))?;
    let dir =
        tempfile::Builder::new().prefix(".extract-").tempdir_in(parent).map_err(|e| ExtractError::io(parent, e))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ExtractError::io(dir.path(), e))?;
    Ok(dir)
}

/// Copy `image` (verifying TLS except for a loopback registry) and write its validated
/// `imageroot/` in `staging`, an empty directory of this process's user with mode
/// 0700 (see [`staging_dir`]). On failure nothing is left in `staging`.
pub fn imageroot(image: &str, staging: &Path) -> Result<Extracted, ExtractError> {
    protocol::image::parse_reference(image)
        .map_err(|e| ExtractError::Reference { image: image.to_owned(), reason: e.to_string() })?;
    check_staging(staging)?;
    let copy = staging.join(COPY);
    let result = pull(image, &copy).and_then(|digest| {
        let top = unpack(image, &copy.join("image"), staging, Limits::DEFAULT)?;
        Ok(Extracted { digest, tree: staging.join(TREE), top })
    });
    let _ = std::fs::remove_dir_all(&copy);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(staging.join(TREE));
    }
    result
}

/// Copy the validated tree to `dest`, which must not exist yet (modes kept; owners are
/// root's until the caller gives them to the module).
pub fn deliver(x: &Extracted, dest: &Path) -> Result<(), ExtractError> {
    let fail = |reason: String| ExtractError::Deliver { dest: dest.to_owned(), reason };
    if dest.symlink_metadata().is_ok() {
        return Err(fail("it already exists".into()));
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    }
    crate::files::cp_a(&x.tree, dest).map_err(|e| fail(e.to_string()))
}

fn check_staging(staging: &Path) -> Result<(), ExtractError> {
    let bad = |why: String| ExtractError::Staging { path: staging.to_owned(), why };
    let md = staging.symlink_metadata().map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !md.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(bad(format!("belongs to uid {}, not to this process's uid {me}", md.uid())));
    }
    if md.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "has mode {:04o}: it must be private (0700), so that nothing else changes it while layers are applied",
            md.mode() & 0o7777
        )));
    }
    if std::fs::read_dir(staging).map_err(|e| ExtractError::io(staging, e))?.next().is_some() {
        return Err(bad("is not empty".into()));
    }
    Ok(())
}

/// skopeo's `dir:` copy of the image in `work/image`; the manifest digest.
fn pull(image: &str, work: &Path) -> Result<String, ExtractError> {
    let fail = |reason: String| ExtractError::Pull { image: image.to_owned(), reason };
    std::fs::create_dir(work).map_err(|e| ExtractError::io(work, e))?;
    let digest_file = work.join("digest");
    let mut cmd = Cmd::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--command-timeout", "300s", "--digestfile"])
        .arg(&digest_file);
    if protocol::image::on_loopback_registry(image) {
        cmd = cmd.arg("--src-tls-verify=false");
    }
    cmd = cmd.arg(format!("docker://{image}")).arg(format!("dir:{}", work.join("image").display()));
    cmd.run().map_err(|e| ExtractError::Skopeo { image: image.to_owned(), source: e })?;
    let digest = std::fs::read_to_string(&digest_file).map_err(|e| fail(format!("skopeo wrote no digest: {e}")))?;
    Ok(digest.trim().to_owned())
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    bytes: u64,
    entries: u64,
}

impl Limits {
    const DEFAULT: Limits = Limits { bytes: MAX_BYTES, entries: MAX_ENTRIES };
}

struct LayerRef {
    index: usize,
    digest: String,
    hex: String,
    format: Format,
}

impl LayerRef {
    fn fail(&self, why: LayerError) -> ExtractError {
        ExtractError::Layer { index: self.index, digest: self.digest.clone(), why: Box::new(why) }
    }
}

/// The layers a manifest lists, each checked for a sha256 digest and a media type we read.
fn layers(image: &str, manifest: &Value) -> Result<Vec<LayerRef>, ExtractError> {
    let bad = |why: &str| ExtractError::Manifest { image: image.to_owned(), why: why.to_owned() };
    if manifest["schemaVersion"] != 2 {
        return Err(bad("not a schema 2 image manifest (OCI or Docker v2)"));
    }
    let list = manifest["layers"].as_array().ok_or_else(|| bad("it lists no layers"))?;
    let mut out = Vec::new();
    for (i, layer) in list.iter().enumerate() {
        let digest = layer["digest"].as_str().unwrap_or("").to_owned();
        let mut r = LayerRef { index: i + 1, hex: String::new(), digest, format: Format::Tar };
        match r.digest.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                r.hex = h.to_owned()
            }
            _ => return Err(r.fail(LayerError::Digest)),
        }
        let media = layer["mediaType"].as_str().unwrap_or("");
        r.format = match media {
            "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Format::Gzip
            }
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => Format::Tar,
            other => return Err(r.fail(LayerError::MediaType(other.to_owned()))),
        };
        out.push(r);
    }
    Ok(out)
}

/// Apply the layers of the `dir:` copy in `copy` to `root/imageroot`; its top names.
fn unpack(image: &str, copy: &Path, root: &Path, limits: Limits) -> Result<Vec<String>, ExtractError> {
    let path = copy.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ExtractError::io(&path, e))?;
    let manifest: Value = serde_json::from_str(&text)
        .map_err(|e| ExtractError::Manifest { image: image.to_owned(), why: format!("not JSON: {e}") })?;
    let layers = layers(image, &manifest)?;
    let mut tree = Tree { root, links: HashMap::new(), layer: 0, entries: 0, bytes: 0, limits };
    for layer in &layers {
        tree.layer = layer.index;
        tree.apply_layer(&copy.join(&layer.hex), layer).map_err(|why| layer.fail(why))?;
    }
    let dir = root.join(TREE);
    if !dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(ExtractError::NoImageroot { image: image.to_owned() });
    }
    let mut top = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| ExtractError::io(&dir, e))? {
        let e = e.map_err(|e| ExtractError::io(&dir, e))?;
        // Every name was checked to be UTF-8 on its way in.
        top.push(e.file_name().to_string_lossy().into_owned());
    }
    top.sort();
    Ok(top)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What an entry does, once its name and type are checked. Paths are components
/// from the layer's root, the first being `imageroot`.
enum Item {
    /// Outside `imageroot/`, or metadata: never written.
    Skip,
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
    },
    Symlink {
        target: String,
    },
    /// `.wh.<name>` in `dir`.
    Whiteout {
        dir: Vec<String>,
        name: String,
    },
    /// `.wh..wh..opq` in `dir`.
    Opaque {
        dir: Vec<String>,
    },
    /// `.wh.imageroot` or `.wh..wh..opq` at the layer's root: the whole tree goes.
    WhiteoutTree,
}

struct Parsed {
    /// For messages: the entry's path as normalized, or as written when it is refused
    /// for its path.
    name: String,
    comps: Vec<String>,
    item: Item,
}

fn lossy_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim_start_matches("./");
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn classify<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Parsed, (String, Refusal)> {
    use tar::EntryType as T;
    let header = entry.header();
    let kind = header.entry_type();
    let raw = entry.path_bytes();
    let refuse = |why: Refusal| Err((lossy_name(&raw), why));
    if kind == T::XGlobalHeader {
        return Ok(Parsed { name: lossy_name(&raw), comps: Vec::new(), item: Item::Skip });
    }
    if raw.first() == Some(&b'/') {
        return refuse(Refusal::AbsolutePath);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for p in raw.split(|b| *b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => return refuse(Refusal::ParentComponent),
            p => parts.push(p),
        }
    }
    let skip = |item| Ok(Parsed { name: lossy_name(&raw), comps: Vec::new(), item });
    match parts.as_slice() {
        [] => return skip(Item::Skip),
        [b".wh.imageroot"] | [b".wh..wh..opq"] => return skip(Item::WhiteoutTree),
        [first, ..] if *first != TREE.as_bytes() => return skip(Item::Skip),
        _ => {}
    }
    let mut comps = Vec::with_capacity(parts.len());
    for p in parts {
        let Ok(s) = std::str::from_utf8(p) else { return refuse(Refusal::NotUtf8) };
        if s.chars().any(char::is_control) {
            return refuse(Refusal::ControlCharacter);
        }
        comps.push(s.to_owned());
    }
    let name = comps.join("/");
    let refuse = |why: Refusal| Err((name.clone(), why));
    let last = comps.last().map(String::as_str).unwrap_or_default();
    if comps.len() >= 2 && last.starts_with(".wh.") {
        let dir = comps[..comps.len() - 1].to_vec();
        let item = match last {
            ".wh..wh..opq" => Item::Opaque { dir },
            w if w.starts_with(".wh..wh.") => return refuse(Refusal::BadWhiteout(w.to_owned())),
            ".wh." | ".wh.." | ".wh..." => return refuse(Refusal::BadWhiteout(last.to_owned())),
            w => Item::Whiteout { dir, name: w[4..].to_owned() },
        };
        return Ok(Parsed { name, comps, item });
    }
    if comps.len() == 2 && last == IMAGEROOT_LIST {
        return refuse(Refusal::Reserved);
    }
    let top = comps.len() == 1;
    let mode = header.mode().unwrap_or(0) & 0o7777;
    let item = match kind {
        T::Directory => Item::Dir { mode: (mode & 0o755) | 0o700 },
        T::Regular | T::Continuous if top => return refuse(Refusal::TreeNotDirectory("file")),
        T::Regular | T::Continuous if mode & 0o6000 != 0 => return refuse(Refusal::SetId(mode)),
        T::Regular | T::Continuous => Item::File { mode: (mode & 0o755) | 0o600 },
        T::Symlink if top => return refuse(Refusal::TreeNotDirectory("symlink")),
        T::Symlink => {
            let target = entry.link_name_bytes().unwrap_or_default();
            match check_link(&comps, &target) {
                Ok(target) => Item::Symlink { target },
                Err(why) => return refuse(why),
            }
        }
        T::Link => {
            let target = entry.link_name_bytes().unwrap_or_default();
            return refuse(Refusal::Hardlink(lossy_name(&target)));
        }
        T::Char | T::Block => {
            let kind = if kind == T::Char { "character" } else { "block" };
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            return refuse(Refusal::Device { kind, major, minor });
        }
        T::Fifo => return refuse(Refusal::Fifo),
        other => {
            let byte = other.as_byte();
            let what = match byte {
                b'S' => " (GNU sparse file)",
                b'V' => " (volume label)",
                b'M' => " (multi-volume continuation)",
                b'D' => " (GNU dump directory)",
                _ => "",
            };
            let shown = if byte.is_ascii_graphic() { format!("'{}'", byte as char) } else { format!("{byte}") };
            return refuse(Refusal::UnsupportedType(format!("{shown}{what}")));
        }
    };
    Ok(Parsed { name, comps, item })
}

/// A symlink at `link` (components from the root) to `target`: relative, `..` only at
/// its start, and not above `imageroot/`.
fn check_link(link: &[String], target: &[u8]) -> Result<String, Refusal> {
    let shown = lossy_name(target);
    let Ok(t) = std::str::from_utf8(target) else { return Err(Refusal::BadSymlinkTarget(shown)) };
    if t.chars().any(char::is_control) {
        return Err(Refusal::BadSymlinkTarget(shown));
    }
    if t.is_empty() {
        return Err(Refusal::EmptySymlink);
    }
    if t.starts_with('/') {
        return Err(Refusal::AbsoluteSymlink(t.to_owned()));
    }
    let (mut ups, mut named) = (0usize, false);
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." if named => return Err(Refusal::InnerParentSymlink(t.to_owned())),
            ".." => ups += 1,
            _ => named = true,
        }
    }
    // The link's directory is `link` minus its name, `imageroot` itself at depth 0.
    if ups > link.len() - 2 {
        return Err(Refusal::EscapingSymlink(t.to_owned()));
    }
    Ok(t.to_owned())
}

/// Why applying an entry failed, before the entry is named.
enum Fail {
    Refused(Refusal),
    Io(PathBuf, io::Error),
}

impl Fail {
    fn named(self, entry: &str) -> LayerError {
        match self {
            Fail::Refused(why) => LayerError::Refused { entry: entry.to_owned(), why },
            Fail::Io(path, source) => LayerError::Io { entry: entry.to_owned(), path, source },
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Fail + '_ {
    move |e| Fail::Io(path.to_owned(), e)
}

/// The tree being built in the private staging dir `root`.
struct Tree<'a> {
    root: &'a Path,
    /// Every symlink made, with the layer that made it.
    links: HashMap<PathBuf, usize>,
    layer: usize,
    entries: u64,
    bytes: u64,
    limits: Limits,
}

impl Tree<'_> {
    fn open(&self, blob: &Path, format: Format) -> Result<tar::Archive<Box<dyn Read>>, LayerError> {
        let f = std::fs::File::open(blob).map_err(|e| LayerError::Unreadable { format, reason: e.to_string() })?;
        let reader: Box<dyn Read> = match format {
            Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Format::Tar => Box::new(io::BufReader::new(f)),
        };
        Ok(tar::Archive::new(reader))
    }

    /// Digest, then a first pass that checks every entry and the limits and gathers the
    /// whiteouts, which go first; then the entries are written.
    fn apply_layer(&mut self, blob: &Path, layer: &LayerRef) -> Result<(), LayerError> {
        let format = layer.format;
        let unreadable = |e: io::Error| LayerError::Unreadable { format, reason: e.to_string() };
        let actual = sha256_file(blob).map_err(unreadable)?;
        if actual != layer.hex {
            return Err(LayerError::Mismatch { actual: format!("sha256:{actual}") });
        }
        let mut whiteouts = Vec::new();
        let mut archive = self.open(blob, format)?;
        for entry in archive.entries().map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let p = classify(&entry).map_err(|(entry, why)| LayerError::Refused { entry, why })?;
            self.entries += 1;
            if self.entries > self.limits.entries {
                return Err(LayerError::TooManyEntries { limit: self.limits.entries, entry: p.name });
            }
            // Every entry's data counts, written or skipped: all of it is decompressed.
            self.bytes = self.bytes.saturating_add(entry.size());
            if self.bytes > self.limits.bytes {
                return Err(LayerError::TooMuchData { limit: self.limits.bytes, entry: p.name });
            }
            if matches!(p.item, Item::Whiteout { .. } | Item::Opaque { .. } | Item::WhiteoutTree) {
                whiteouts.push(p);
            }
        }
        for w in whiteouts {
            self.whiteout(&w.item).map_err(|f| f.named(&w.name))?;
        }
        let mut archive = self.open(blob, format)?;
        for entry in archive.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let p = classify(&entry).map_err(|(entry, why)| LayerError::Refused { entry, why })?;
            self.write(&p, &mut entry).map_err(|f| f.named(&p.name))?;
        }
        Ok(())
    }

    fn planted(&self, rel: &Path) -> Planted {
        match self.links.get(rel) {
            Some(&n) if n != self.layer => Planted::Layer(n),
            _ => Planted::EarlierInThisLayer,
        }
    }

    /// Check that each of `dirs` is a real directory (making missing ones when
    /// `create`); the full path, or `None` when one is missing or not a directory and
    /// nothing is to be made.
    fn walk(&self, dirs: &[String], create: bool) -> Result<Option<PathBuf>, Fail> {
        let mut path = self.root.to_path_buf();
        let mut rel = PathBuf::new();
        for c in dirs {
            path.push(c);
            rel.push(c);
            match path.symlink_metadata() {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let (link, by) = (rel.display().to_string(), self.planted(&rel));
                    return Err(Fail::Refused(if create {
                        Refusal::WritesThroughSymlink { link, by }
                    } else {
                        Refusal::DeletesThroughSymlink { link, by }
                    }));
                }
                Ok(_) if create => return Err(Fail::Refused(Refusal::ParentNotDirectory(rel.display().to_string()))),
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => mkdir(&path, 0o755)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Fail::Io(path, e)),
            }
        }
        Ok(Some(path))
    }

    /// Remove `path` (`rel` in the tree) whatever it is, never following it.
    fn remove(&mut self, path: &Path, rel: &Path) -> Result<(), Fail> {
        let m = match path.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Fail::Io(path.to_owned(), e)),
        };
        if m.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }.map_err(io_at(path))?;
        self.links.retain(|l, _| !l.starts_with(rel));
        Ok(())
    }

    fn whiteout(&mut self, item: &Item) -> Result<(), Fail> {
        match item {
            Item::WhiteoutTree => {
                let path = self.root.join(TREE);
                self.remove(&path, Path::new(TREE))
            }
            Item::Whiteout { dir, name } => {
                let Some(d) = self.walk(dir, false)? else { return Ok(()) };
                let rel: PathBuf = dir.iter().chain([name]).collect();
                self.remove(&d.join(name), &rel)
            }
            Item::Opaque { dir } => {
                let Some(d) = self.walk(dir, false)? else { return Ok(()) };
                let rel: PathBuf = dir.iter().collect();
                for e in std::fs::read_dir(&d).map_err(io_at(&d))? {
                    let e = e.map_err(io_at(&d))?;
                    self.remove(&e.path(), &rel.join(e.file_name()))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn write<R: Read>(&mut self, p: &Parsed, data: &mut R) -> Result<(), Fail> {
        if !matches!(p.item, Item::Dir { .. } | Item::File { .. } | Item::Symlink { .. }) {
            return Ok(());
        }
        let (dirs, _) = p.comps.split_at(p.comps.len() - 1);
        let Some(parent) = self.walk(dirs, true)? else { return Ok(()) };
        let path = parent.join(&p.comps[p.comps.len() - 1]);
        let rel: PathBuf = p.comps.iter().collect();
        let existing = path.symlink_metadata().ok();
        match &p.item {
            Item::Dir { mode } => {
                // A directory over a directory merges, as in any layered image.
                if !existing.is_some_and(|m| m.is_dir()) {
                    self.remove(&path, &rel)?;
                    mkdir(&path, *mode)?;
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(io_at(&path))
            }
            Item::File { mode } => {
                self.remove(&path, &rel)?;
                // create_new: O_EXCL, so not even a symlink at the name is followed.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(OFlag::O_NOFOLLOW.bits())
                    .open(&path)
                    .map_err(io_at(&path))?;
                // The first pass counted this entry's size against the limit.
                io::copy(data, &mut f).map_err(io_at(&path))?;
                f.set_permissions(std::fs::Permissions::from_mode(*mode)).map_err(io_at(&path))
            }
            Item::Symlink { target } => {
                self.remove(&path, &rel)?;
                std::os::unix::fs::symlink(target, &path).map_err(io_at(&path))?;
                self.links.insert(rel, self.layer);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), Fail> {
    std::fs::create_dir(path).map_err(io_at(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_at(path))
}

/// A name of [`IMAGEROOT_LIST`]: one entry of the install dir, nothing above or below.
fn check_list_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!("{name:?} is not the name of one entry of the install dir"));
    }
    Ok(())
}

fn open_dir_nofollow(dir: &Path) -> Result<std::os::fd::OwnedFd, ExtractError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::open(dir, flags, Mode::empty()).map_err(|e| ExtractError::List {
        path: dir.to_owned(),
        // O_DIRECTORY makes a symlink ENOTDIR rather than ELOOP.
        why: match e {
            Errno::ELOOP | Errno::ENOTDIR if dir.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) => {
                "is a symlink: refusing to follow it".to_owned()
            }
            e => format!("cannot open the directory: {e}"),
        },
    })
}

/// Write [`IMAGEROOT_LIST`] in `dir`: a fresh file renamed over the old one, through
/// a handle on `dir` itself, so that no symlink (or hardlink) at either name is
/// followed.
pub fn write_imageroot_list(dir: &Path, names: &[String]) -> Result<(), ExtractError> {
    let path = dir.join(IMAGEROOT_LIST);
    let fail = |why: String| ExtractError::List { path: path.clone(), why };
    for n in names {
        check_list_name(n).map_err(fail)?;
    }
    let dirfd = open_dir_nofollow(dir)?;
    let tmp = format!("{IMAGEROOT_LIST}.new-{}", uuid::Uuid::new_v4().simple());
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(&dirfd, tmp.as_str(), flags, Mode::from_bits_truncate(0o644))
        .map_err(|e| fail(format!("cannot create {tmp}: {e}")))?;
    let text: String = names.iter().map(|n| format!("{n}\n")).collect();
    let written = std::fs::File::from(fd)
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|()| nix::fcntl::renameat(&dirfd, tmp.as_str(), &dirfd, IMAGEROOT_LIST).map_err(|e| e.to_string()));
    if let Err(e) = written {
        let _ = nix::unistd::unlinkat(&dirfd, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(fail(format!("cannot write it: {e}")));
    }
    Ok(())
}

/// The names [`IMAGEROOT_LIST`] in `dir` records (none when it is missing), each
/// checked: the list lives in a directory the module owns, and root acts on it.
/// Blank lines are ignored.
pub fn read_imageroot_list(dir: &Path) -> Result<Vec<String>, ExtractError> {
    let path = dir.join(IMAGEROOT_LIST);
    let fail = |why: String| ExtractError::List { path: path.clone(), why };
    let dirfd = open_dir_nofollow(dir)?;
    // O_NONBLOCK: a FIFO put there must not hang the node.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(&dirfd, IMAGEROOT_LIST, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(Errno::ELOOP) => return Err(fail("is a symlink: refusing to follow it".into())),
        Err(e) => return Err(fail(format!("cannot open it: {e}"))),
    };
    let file = std::fs::File::from(fd);
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(fail("is not a regular file".into()));
    }
    let mut text = String::new();
    file.take(MAX_LIST_BYTES + 1).read_to_string(&mut text).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if text.len() as u64 > MAX_LIST_BYTES {
        return Err(fail(format!("is larger than {}", Size(MAX_LIST_BYTES))));
    }
    parse_imageroot_list(&path, &text)
}

/// The names in the text of [`IMAGEROOT_LIST`] (read from `path`), each checked: one
/// entry of the install dir, no `/`, `.` or `..`. Blank lines are ignored.
pub fn parse_imageroot_list(path: &Path, text: &str) -> Result<Vec<String>, ExtractError> {
    let fail = |why: String| ExtractError::List { path: path.to_owned(), why };
    if text.len() as u64 > MAX_LIST_BYTES {
        return Err(fail(format!("is larger than {}", Size(MAX_LIST_BYTES))));
    }
    let mut names = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        check_list_name(line).map_err(fail)?;
        names.push(line.to_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
