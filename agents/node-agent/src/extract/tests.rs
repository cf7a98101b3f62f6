//! Hostile layers built with the `tar` crate, applied to a staging dir beside a set of
//! sentinel files that the layers aim at; every refusal names its layer and entry,
//! and the sentinels never change.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use serde_json::json;
use tar::EntryType;

use super::*;

enum E {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    Sym(String, String),
    Hard(String, String),
    Dev(String, EntryType, u32, u32),
    /// A name written into the header as bytes, unchecked (the crate refuses `..`
    /// and absolute names, an attacker's tool does not).
    Raw(Vec<u8>, Vec<u8>),
    /// A regular file whose header claims `size` bytes; the data is cut short.
    Claims(String, u64),
}

fn file(path: &str, body: &str) -> E {
    E::File(path.into(), body.as_bytes().to_vec(), 0o644)
}

fn sym(path: &str, target: &str) -> E {
    E::Sym(path.into(), target.into())
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        match e {
            E::File(path, data, mode) => {
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice()).unwrap();
            }
            E::Dir(path, mode) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(*mode);
                b.append_data(&mut h, path, io::empty()).unwrap();
            }
            E::Sym(path, target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                if target.is_empty() {
                    // The crate will not write an empty target.
                    h.set_path(path).unwrap();
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                } else {
                    b.append_link(&mut h, path, target).unwrap();
                }
            }
            E::Hard(path, target) => {
                h.set_entry_type(EntryType::Link);
                b.append_link(&mut h, path, target).unwrap();
            }
            E::Dev(path, kind, major, minor) => {
                h.set_entry_type(*kind);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, path, io::empty()).unwrap();
            }
            E::Raw(name, data) => {
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
            E::Claims(path, size) => {
                h.set_path(path).unwrap();
                h.set_size(*size);
                h.set_cksum();
                b.get_mut().extend_from_slice(h.as_bytes());
                b.get_mut().extend_from_slice(&[b'x'; 1024]);
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A `dir:` copy as skopeo makes it, a private staging root, and sentinel files
/// outside both, in one temp dir.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture { dir: tempfile::tempdir().unwrap() };
        for d in ["copy", "root", "outside/dir"] {
            std::fs::create_dir_all(f.dir.path().join(d)).unwrap();
        }
        std::fs::set_permissions(f.root(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(f.outside().join("victim"), "sentinel\n").unwrap();
        std::fs::write(f.outside().join("dir/keep"), "keep\n").unwrap();
        std::fs::write(f.outside().join("secret"), "root only\n").unwrap();
        std::fs::set_permissions(f.outside().join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    }

    fn copy(&self) -> PathBuf {
        self.dir.path().join("copy")
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
    fn out(&self) -> String {
        self.outside().display().to_string()
    }

    /// Write blobs and a manifest of these layers (gzip unless said).
    fn image(&self, layers: &[(&str, Vec<u8>)]) -> Vec<String> {
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for (media, tar) in layers {
            let blob = if *media == GZIP { gzip(tar) } else { tar.clone() };
            let hex = hex_sha256(&blob);
            std::fs::write(self.copy().join(&hex), &blob).unwrap();
            descs.push(json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": blob.len()}));
            digests.push(format!("sha256:{hex}"));
        }
        self.manifest(json!(descs));
        digests
    }

    fn manifest(&self, layers: Value) {
        let m =
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": layers});
        std::fs::write(self.copy().join("manifest.json"), m.to_string()).unwrap();
    }

    fn layers(&self, layers: &[Vec<E>]) -> Vec<String> {
        self.image(&layers.iter().map(|l| (GZIP, tar_of(l))).collect::<Vec<_>>())
    }

    fn unpack(&self) -> Result<Vec<String>, ExtractError> {
        self.unpack_with(Limits::DEFAULT)
    }

    fn unpack_with(&self, limits: Limits) -> Result<Vec<String>, ExtractError> {
        let before = self.sentinels();
        let r = unpack("127.0.0.1:1/test/hostile:1", &self.copy(), &self.root(), limits);
        assert_eq!(self.sentinels(), before, "the layers changed files outside the staging dir: {r:?}");
        // Only the tree, never beside it.
        for e in std::fs::read_dir(self.root()).unwrap().flatten() {
            assert_eq!(e.file_name(), "imageroot", "{r:?}");
        }
        r
    }

    /// Type, mode, owner and content (or target) of every file under outside/ and of
    /// the host's account files.
    fn sentinels(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        let mut stack = vec![self.outside()];
        let mut paths: Vec<PathBuf> = ["/etc/passwd", "/etc/shadow", "/etc/group"].map(PathBuf::from).to_vec();
        while let Some(d) = stack.pop() {
            paths.push(d.clone());
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    paths.push(e.path());
                }
            }
        }
        for p in paths {
            let m = p.symlink_metadata().unwrap();
            let body = if m.is_file() { hex_sha256(&std::fs::read(&p).unwrap()) } else { String::new() };
            all.insert(p.display().to_string(), format!("{:o} {}:{} {body}", m.mode(), m.uid(), m.gid()));
        }
        all
    }

    fn tree(&self) -> PathBuf {
        self.root().join("imageroot")
    }
}

/// The refusal of `entry` in layer `layer`, checked in the message too; its reason.
#[track_caller]
fn refused(r: Result<Vec<String>, ExtractError>, digests: &[String], layer: usize, entry: &str) -> Refusal {
    let err = r.expect_err("the layers were refused");
    let msg = err.to_string();
    let prefix = format!("layer {layer} ({}): entry {entry}: ", digests[layer - 1]);
    assert!(msg.starts_with(&prefix), "{msg}\nexpected it to start with {prefix}");
    let Some((i, e, why)) = err.refusal() else { panic!("{msg}") };
    assert_eq!((i, e), (layer, entry));
    why.clone()
}

#[test]
fn layers_apply_in_order_with_whiteouts_modes_and_inner_links() {
    let f = Fixture::new();
    let l1 = vec![
        file("imageroot/actions/a/10a", "old"),
        file("imageroot/gone", "x"),
        file("imageroot/opaque/old", "x"),
        E::Dir("imageroot/sub/".into(), 0o2775),
        file("imageroot/sub/keep", "k"),
        E::File("imageroot/bin/tool".into(), b"#!/bin/sh\n".to_vec(), 0o777),
        E::File("imageroot/private".into(), b"p".to_vec(), 0o400),
        sym("imageroot/gonelink", "actions"),
        // Outside imageroot/: never written, whatever it is.
        file("etc/passwd", "root::0:0::/:/bin/sh\n"),
        E::Dev("dev/null".into(), EntryType::Char, 1, 3),
    ];
    let l2 = vec![
        file("./imageroot/actions/a/10a", "new"),
        file("imageroot/opaque/fresh", "y"),
        // Whiteouts act on lower layers only, wherever they are in the layer.
        file("imageroot/.wh.gone", ""),
        file("imageroot/opaque/.wh..wh..opq", ""),
        file("imageroot/.wh.gonelink", ""),
        E::Dir("imageroot/sticky".into(), 0o1777),
        sym("imageroot/bin/run", "../actions/a/10a"),
        sym("imageroot/link", "actions"),
        sym("imageroot/a/b/up", "../../sub/keep"),
        sym("imageroot/dangling", "not/yet/there"),
        file(".wh.etc", ""),
    ];
    let l3 = vec![file("imageroot/late", "plain tar")];
    let digests = f.image(&[(GZIP, tar_of(&l1)), (GZIP, tar_of(&l2)), (TAR, tar_of(&l3))]);
    assert_eq!(digests.len(), 3);
    let top = f.unpack().unwrap();
    assert_eq!(top, ["a", "actions", "bin", "dangling", "late", "link", "opaque", "private", "sticky", "sub"]);
    let ir = f.tree();
    let read = |p: &str| std::fs::read_to_string(ir.join(p)).unwrap();
    assert_eq!(read("actions/a/10a"), "new");
    assert_eq!(read("bin/run"), "new");
    assert_eq!(read("link/a/10a"), "new");
    assert_eq!(read("a/b/up"), "k");
    assert_eq!(read("late"), "plain tar");
    assert!(ir.join("gone").symlink_metadata().is_err() && ir.join("gonelink").symlink_metadata().is_err());
    assert!(!ir.join(".wh.gone").exists() && !ir.join("opaque/.wh..wh..opq").exists());
    assert!(!ir.join("opaque/old").exists() && read("opaque/fresh") == "y");
    assert!(!f.root().join("etc").exists() && !f.root().join("dev").exists());
    let mode = |p: &str| ir.join(p).symlink_metadata().unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/tool"), 0o755, "no group or other write");
    assert_eq!(mode("private"), 0o600, "the owner can always read and write");
    assert_eq!(mode("actions/a/10a"), 0o644);
    assert_eq!(mode("sub"), 0o755, "a directory's setgid is dropped");
    assert_eq!(mode("sticky"), 0o755, "sticky is dropped");
    assert_eq!(mode("actions"), 0o755, "implicit parents");
    assert_eq!(std::fs::read_link(ir.join("dangling")).unwrap(), Path::new("not/yet/there"));
}

#[test]
fn a_root_whiteout_removes_the_lower_tree() {
    let f = Fixture::new();
    f.layers(&[vec![file("imageroot/old", "x")], vec![file(".wh.imageroot", ""), file("imageroot/new", "y")]]);
    assert_eq!(f.unpack().unwrap(), ["new"]);
}

#[test]
fn symlink_then_write_across_layers() {
    let f = Fixture::new();
    let d = f.layers(&[
        vec![E::Dir("imageroot/sub".into(), 0o755), sym("imageroot/x", "sub")],
        vec![file("imageroot/x/passwd", "pwned")],
    ]);
    let err = f.unpack().unwrap_err();
    assert!(err.to_string().ends_with("writes through the symlink imageroot/x planted by layer 1"), "{err}");
    let why = refused(Err(err), &d, 2, "imageroot/x/passwd");
    assert_eq!(why, Refusal::WritesThroughSymlink { link: "imageroot/x".into(), by: Planted::Layer(1) });
    assert!(!f.tree().join("sub/passwd").exists());

    // The same in one layer, and a directory entry through a link.
    let f = Fixture::new();
    let d = f.layers(&[vec![sym("imageroot/x", "."), E::Dir("imageroot/x/d".into(), 0o755)]]);
    let why = refused(f.unpack(), &d, 1, "imageroot/x/d");
    assert_eq!(why, Refusal::WritesThroughSymlink { link: "imageroot/x".into(), by: Planted::EarlierInThisLayer });
}

#[test]
fn absolute_symlinks_are_refused() {
    let f = Fixture::new();
    let d = f.layers(&[vec![sym("imageroot/x", &f.out())], vec![file("imageroot/x/victim", "pwned")]]);
    assert_eq!(refused(f.unpack(), &d, 1, "imageroot/x"), Refusal::AbsoluteSymlink(f.out()));
    assert!(f.unpack().unwrap_err().to_string().contains("must be relative"));
    // Nothing of a refused layer is written: it is checked whole first.
    assert!(!f.tree().exists());
}

#[test]
fn escaping_symlinks_are_refused() {
    let cases = [
        ("imageroot/x", format!("../../../../../../../../../..{}", "/tmp"), "escape"),
        ("imageroot/x", "..".to_owned(), "escape"),
        ("imageroot/a/x", "../..".to_owned(), "escape"),
        ("imageroot/a/x", "../../a".to_owned(), "escape"),
        ("imageroot/x", "a/../../etc".to_owned(), "inner"),
        ("imageroot/a/x", "b/../..".to_owned(), "inner"),
        ("imageroot/x", "".to_owned(), "empty"),
    ];
    for (link, target, kind) in cases {
        let f = Fixture::new();
        let d = f.layers(&[vec![E::Dir("imageroot/a".into(), 0o755), sym(link, &target)]]);
        let why = refused(f.unpack(), &d, 1, link);
        let expected = match kind {
            "escape" => Refusal::EscapingSymlink(target.clone()),
            "inner" => Refusal::InnerParentSymlink(target.clone()),
            _ => Refusal::EmptySymlink,
        };
        assert_eq!(why, expected, "{link} -> {target}");
    }
    // At the limit: the tree itself, from one level down.
    let f = Fixture::new();
    f.layers(&[vec![sym("imageroot/a/up", ".."), sym("imageroot/a/b/c", "../../a/./up")]]);
    f.unpack().unwrap();
}

#[test]
fn whiteouts_through_a_symlink_are_refused() {
    let f = Fixture::new();
    let d = f.layers(&[
        vec![file("imageroot/sub/victim", "v"), sym("imageroot/x", "sub")],
        vec![file("imageroot/x/.wh.victim", "")],
    ]);
    let why = refused(f.unpack(), &d, 2, "imageroot/x/.wh.victim");
    assert_eq!(why, Refusal::DeletesThroughSymlink { link: "imageroot/x".into(), by: Planted::Layer(1) });
    assert!(
        f.unpack().unwrap_err().to_string().ends_with("deletes through the symlink imageroot/x planted by layer 1")
    );
    assert!(f.tree().join("sub/victim").exists());
}

#[test]
fn opaque_whiteouts_through_a_symlink_are_refused() {
    for (entry, link) in [("imageroot/x/d/.wh..wh..opq", "imageroot/x"), ("imageroot/x/.wh..wh..opq", "imageroot/x")] {
        let f = Fixture::new();
        let d = f.layers(&[vec![file("imageroot/sub/d/f", "f"), sym("imageroot/x", "sub")], vec![file(entry, "")]]);
        let why = refused(f.unpack(), &d, 2, entry);
        assert_eq!(why, Refusal::DeletesThroughSymlink { link: link.into(), by: Planted::Layer(1) });
        assert!(f.tree().join("sub/d/f").exists());
    }
}

#[test]
fn hardlinks_are_refused() {
    for target in ["/etc/shadow", "etc/shadow", "imageroot/a"] {
        let f = Fixture::new();
        let d = f.layers(&[vec![file("imageroot/a", "a"), E::Hard("imageroot/stolen".into(), target.into())]]);
        assert_eq!(refused(f.unpack(), &d, 1, "imageroot/stolen"), Refusal::Hardlink(target.into()));
        assert!(!f.tree().exists());
    }
}

#[test]
fn devices_fifos_and_other_types_are_refused() {
    let cases = [
        (EntryType::Char, Refusal::Device { kind: "character", major: 1, minor: 3 }),
        (EntryType::Block, Refusal::Device { kind: "block", major: 8, minor: 0 }),
        (EntryType::Fifo, Refusal::Fifo),
        (EntryType::new(b'V'), Refusal::UnsupportedType("'V' (volume label)".into())),
        (EntryType::new(b'Z'), Refusal::UnsupportedType("'Z'".into())),
    ];
    for (kind, expected) in cases {
        let f = Fixture::new();
        let (major, minor) = if kind == EntryType::Block { (8, 0) } else { (1, 3) };
        let d = f.layers(&[vec![E::Dev("imageroot/node".into(), kind, major, minor)]]);
        let err = f.unpack().unwrap_err();
        assert_eq!(refused(Err(err), &d, 1, "imageroot/node"), expected);
        assert!(!f.tree().exists());
    }
}

#[test]
fn setuid_and_setgid_files_are_refused() {
    for mode in [0o4755, 0o2755, 0o6711] {
        let f = Fixture::new();
        let d = f.layers(&[vec![E::File("imageroot/bin/su".into(), b"#!/bin/sh\n".to_vec(), mode)]]);
        assert_eq!(refused(f.unpack(), &d, 1, "imageroot/bin/su"), Refusal::SetId(mode));
        assert!(f.unpack().unwrap_err().to_string().contains("chmod u-s,g-s"));
    }
}

#[test]
fn the_node_list_cannot_come_from_the_image() {
    for entry in [sym("imageroot/.imageroot.lst", "actions"), file("imageroot/.imageroot.lst", "state\n")] {
        let f = Fixture::new();
        let d = f.layers(&[vec![entry]]);
        assert_eq!(refused(f.unpack(), &d, 1, "imageroot/.imageroot.lst"), Refusal::Reserved);
    }
}

#[test]
fn bad_names_are_refused() {
    let cases: [(&[u8], &str, Refusal); 6] = [
        (b"/imageroot/x", "/imageroot/x", Refusal::AbsolutePath),
        (b"imageroot/../x", "imageroot/../x", Refusal::ParentComponent),
        (b"etc/../../x", "etc/../../x", Refusal::ParentComponent),
        (b"imageroot/\xff", "imageroot/\u{fffd}", Refusal::NotUtf8),
        (b"imageroot/a\nb", "imageroot/a?b", Refusal::ControlCharacter),
        (b"imageroot/.wh..", "imageroot/.wh..", Refusal::BadWhiteout(".wh..".into())),
    ];
    for (name, shown, expected) in cases {
        let f = Fixture::new();
        let d = f.layers(&[vec![E::Raw(name.to_vec(), b"x".to_vec())]]);
        assert_eq!(refused(f.unpack(), &d, 1, shown), expected, "{shown}");
    }
    let f = Fixture::new();
    let d = f.layers(&[vec![file("imageroot/.wh..wh.plnk", "")]]);
    assert_eq!(refused(f.unpack(), &d, 1, "imageroot/.wh..wh.plnk"), Refusal::BadWhiteout(".wh..wh.plnk".into()));
}

#[test]
fn imageroot_must_be_a_directory() {
    let f = Fixture::new();
    let d = f.layers(&[vec![sym("imageroot", "etc")]]);
    assert_eq!(refused(f.unpack(), &d, 1, "imageroot"), Refusal::TreeNotDirectory("symlink"));
    let f = Fixture::new();
    f.layers(&[vec![file("etc/hostname", "x")]]);
    let err = f.unpack().unwrap_err();
    assert!(matches!(err, ExtractError::NoImageroot { .. }) && err.to_string().contains("not a module image"), "{err}");
}

#[test]
fn limits_stop_a_bomb() {
    // The real limit, from a header that claims more than it: stopped before reading.
    let f = Fixture::new();
    let d = f.layers(&[vec![file("imageroot/a", "a"), E::Claims("imageroot/big".into(), MAX_BYTES + 1)]]);
    let err = f.unpack().unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("layer 1 ({}): the image's layers hold more than 1 GiB", d[0])), "{msg}");
    assert!(msg.contains("at entry imageroot/big"), "{msg}");
    assert!(!f.tree().exists());

    // Data and entries add up over layers and count outside imageroot/ too.
    let f = Fixture::new();
    let body = "z".repeat(600);
    let d = f.layers(&[vec![file("imageroot/a", &body)], vec![file("elsewhere", &body)]]);
    let err = f.unpack_with(Limits { bytes: 1000, entries: 100 }).unwrap_err();
    assert!(err.to_string().starts_with(&format!("layer 2 ({}): the image's layers hold more than 1000 bytes", d[1])));
    let f = Fixture::new();
    let many: Vec<E> = (0..11).map(|i| file(&format!("imageroot/f{i}"), "")).collect();
    let d = f.layers(&[many]);
    let err = f.unpack_with(Limits { bytes: 1000, entries: 10 }).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("layer 1 ({}): the image's layers hold more than 10 entries", d[0])), "{msg}");
    assert!(msg.contains("(reached at entry imageroot/f10)"), "{msg}");
    assert!(!f.tree().exists());
}

#[test]
fn blobs_must_match_their_digests() {
    let f = Fixture::new();
    let d = f.layers(&[vec![file("imageroot/a", "a")]]);
    let hex = d[0].trim_start_matches("sha256:");
    let tampered = gzip(&tar_of(&[file("imageroot/a", "tampered")]));
    std::fs::write(f.copy().join(hex), &tampered).unwrap();
    let err = f.unpack().unwrap_err();
    assert!(
        err.to_string()
            == format!(
                "layer 1 ({}): the blob's sha256 is sha256:{}, not its digest: the copy is corrupt or was tampered with",
                d[0],
                hex_sha256(&tampered)
            ),
        "{err}"
    );
    assert!(!f.tree().exists());

    // A digest is a name in the copy: nothing but sha256 hex.
    for digest in ["sha256:../../../etc/shadow", "sha512:abcd", "", &d[0].to_uppercase()] {
        let f = Fixture::new();
        f.manifest(json!([{"mediaType": GZIP, "digest": digest, "size": 1}]));
        let err = f.unpack().unwrap_err();
        let expected = format!("layer 1 ({digest}): its digest is not sha256:<64 hex digits>");
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn media_types_and_formats() {
    let f = Fixture::new();
    let tar = tar_of(&[file("imageroot/a", "a")]);
    let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
    let d = f.image(&[(GZIP, tar.clone()), (zstd, tar.clone())]);
    let err = f.unpack().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "layer 2 ({}): media type \"{zstd}\" is not supported: layers must be gzip-compressed or plain tar (rebuild or copy the image with gzip compression)",
            d[1]
        )
    );
    assert!(!f.tree().exists(), "checked before any layer is applied");

    // What the manifest says is what is read.
    let f = Fixture::new();
    let hex = hex_sha256(&tar);
    std::fs::write(f.copy().join(&hex), &tar).unwrap();
    f.manifest(json!([{"mediaType": GZIP, "digest": format!("sha256:{hex}"), "size": tar.len()}]));
    let err = f.unpack().unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("layer 1 (sha256:{hex}): not a readable gzip-compressed tar")),
        "{err}"
    );

    let f = Fixture::new();
    std::fs::write(f.copy().join("manifest.json"), r#"{"schemaVersion": 1, "fsLayers": []}"#).unwrap();
    assert!(f.unpack().unwrap_err().to_string().contains("not a schema 2 image manifest"));
}

#[test]
fn staging_must_be_private_and_empty_and_is_left_empty() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("s");
    std::fs::create_dir(&staging).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = imageroot("127.0.0.1:1/test/x:1", &staging).unwrap_err();
    assert!(err.to_string().contains("has mode 0755: it must be private (0700)"), "{err}");
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(staging.join("x"), "").unwrap();
    assert!(imageroot("127.0.0.1:1/test/x:1", &staging).unwrap_err().to_string().ends_with("is not empty"));
    std::fs::remove_file(staging.join("x")).unwrap();
    std::os::unix::fs::symlink(&staging, dir.path().join("l")).unwrap();
    let err = imageroot("127.0.0.1:1/test/x:1", &dir.path().join("l")).unwrap_err();
    assert!(err.to_string().ends_with("is not a directory"), "{err}");
    // A failed pull leaves the staging dir as it was.
    let err = imageroot("127.0.0.1:1/test/x:1", &staging).unwrap_err();
    // skopeo's command line, status and stderr (the registry is not there).
    let text = err.to_string();
    assert!(text.starts_with("cannot pull 127.0.0.1:1/test/x:1: skopeo copy "), "{text}");
    assert!(text.contains("failed (exit status: 1)") && text.contains("connection refused"), "{text}");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    let made = staging_dir(&dir.path().join("state")).unwrap();
    assert_eq!(made.path().symlink_metadata().unwrap().mode() & 0o7777, 0o700);
    check_staging(made.path()).unwrap();
}

#[test]
fn the_list_is_written_and_read_without_following_links() {
    let f = Fixture::new();
    let dir = f.dir.path().join("install");
    std::fs::create_dir(&dir).unwrap();
    let names = vec!["actions".to_owned(), "bin".to_owned()];
    // A symlink (or hardlink) planted at the list's name is replaced, not followed.
    std::os::unix::fs::symlink(f.outside().join("victim"), dir.join(IMAGEROOT_LIST)).unwrap();
    let before = f.sentinels();
    write_imageroot_list(&dir, &names).unwrap();
    assert_eq!(f.sentinels(), before);
    assert!(dir.join(IMAGEROOT_LIST).symlink_metadata().unwrap().is_file());
    assert_eq!(std::fs::read_to_string(dir.join(IMAGEROOT_LIST)).unwrap(), "actions\nbin\n");
    assert_eq!(read_imageroot_list(&dir).unwrap(), names);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");

    std::fs::write(dir.join(IMAGEROOT_LIST), "actions\n\n../..\n").unwrap();
    let err = read_imageroot_list(&dir).unwrap_err();
    assert!(err.to_string().ends_with("\"../..\" is not the name of one entry of the install dir"), "{err}");
    for bad in ["a/b", ".", "x\ty"] {
        std::fs::write(dir.join(IMAGEROOT_LIST), format!("{bad}\n")).unwrap();
        assert!(read_imageroot_list(&dir).is_err(), "{bad}");
    }
    std::fs::write(dir.join(IMAGEROOT_LIST), "\nactions\n\n").unwrap();
    assert_eq!(read_imageroot_list(&dir).unwrap(), ["actions"], "blank lines are ignored");

    std::fs::remove_file(dir.join(IMAGEROOT_LIST)).unwrap();
    assert!(read_imageroot_list(&dir).unwrap().is_empty(), "no list: nothing to remove");
    std::os::unix::fs::symlink("/etc/shadow", dir.join(IMAGEROOT_LIST)).unwrap();
    let err = read_imageroot_list(&dir).unwrap_err();
    assert!(err.to_string().ends_with(".imageroot.lst: is a symlink: refusing to follow it"), "{err}");
    std::fs::remove_file(dir.join(IMAGEROOT_LIST)).unwrap();
    nix::unistd::mkfifo(&dir.join(IMAGEROOT_LIST), Mode::from_bits_truncate(0o600)).unwrap();
    assert!(read_imageroot_list(&dir).unwrap_err().to_string().ends_with("is not a regular file"));

    // The install dir itself swapped for a link.
    let link = f.dir.path().join("linked");
    std::os::unix::fs::symlink(f.outside(), &link).unwrap();
    assert!(write_imageroot_list(&link, &names).unwrap_err().to_string().contains("is a symlink"));
    assert!(read_imageroot_list(&link).unwrap_err().to_string().contains("is a symlink"));
    assert_eq!(f.sentinels(), before);
    let err = write_imageroot_list(&dir, &["../x".to_owned()]).unwrap_err();
    assert!(err.to_string().contains("\"../x\" is not the name"), "{err}");
}
