//! Hostile module images, pushed to the cluster's real registry and installed through
//! `add-module` on a real local cluster: each is refused with its layer and entry
//! named, nothing of the module stays on the node, and the files the layers aim at (a
//! sentinel dir, the host's account files) are unchanged. A well-behaved image of
//! several layers (inner symlinks, whiteouts) installs and goes.
//!
//! The images are OCI layouts written here, layer by layer as an attacker makes them,
//! and pushed with skopeo. buildah cannot make them: it applies a tar through its own
//! confined copier, so a layer that writes through an earlier layer's symlink comes
//! out as a write at the link's target instead.
//!
//! One test: one cluster for all images, whose module ids are machine-wide user names.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use e2e::LocalCluster;
use e2e::modules::{run, traces};
use serde_json::{Value, json};
use tar::EntryType;

enum E {
    File(String, &'static str, u32),
    Dir(String),
    Sym(String, String),
    Hard(String, String),
    Dev(String, EntryType, u32, u32),
}

fn file(path: &str, body: &'static str) -> E {
    E::File(path.into(), body, 0o644)
}

fn sym(path: &str, target: &str) -> E {
    E::Sym(path.into(), target.into())
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        match e {
            E::File(path, body, mode) => {
                h.set_mode(*mode);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, path, body.as_bytes()).unwrap();
            }
            E::Dir(path) => {
                h.set_entry_type(EntryType::Directory);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            E::Sym(path, target) => {
                h.set_entry_type(EntryType::Symlink);
                b.append_link(&mut h, path, target).unwrap();
            }
            E::Hard(path, target) => {
                h.set_entry_type(EntryType::Link);
                b.append_link(&mut h, path, target).unwrap();
            }
            E::Dev(path, kind, major, minor) => {
                h.set_entry_type(*kind);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Write `layers` as an OCI layout with a module image's labels and push it as
/// `ns8rs/<name>:1.0.0`; its URL and the layers' digests.
fn push(c: &LocalCluster, work: &Path, name: &str, layers: &[Vec<E>]) -> (String, Vec<String>) {
    let labels = json!({
        "org.nethserver.images": format!("{}/ns8rs/hello-server:1.0.0", c.registry()),
        "org.nethserver.tcp-ports-demand": "0",
    });
    let tars: Vec<Vec<u8>> = layers.iter().map(|l| tar_of(l)).collect();
    testkit::push_oci(&c.registry(), work, name, "1.0.0", &labels, &tars).unwrap()
}

/// Type, mode, owner and content hash of each file under `dir` and of the host's
/// account files.
fn sentinels(dir: &Path) -> BTreeMap<String, String> {
    let mut paths: Vec<PathBuf> = ["/etc/passwd", "/etc/shadow", "/etc/group"].map(PathBuf::from).to_vec();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            paths.push(e.path());
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let m = p.symlink_metadata().unwrap();
            let body = if m.is_file() { testkit::oci_digest(&std::fs::read(&p).unwrap()) } else { String::new() };
            (p.display().to_string(), format!("{:o} {}:{} {body}", m.mode(), m.uid(), m.gid()))
        })
        .collect()
}

/// Staging dirs the node left in its state dir.
fn staging_left(c: &LocalCluster) -> Vec<String> {
    std::fs::read_dir(c.path().join("node/state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".extract-"))
        .collect()
}

/// An image refused at `entry` of `layer` (from 1), for `why`.
struct Case {
    name: &'static str,
    layers: Vec<Vec<E>>,
    layer: usize,
    entry: &'static str,
    why: String,
}

#[test]
fn hostile_images_are_refused_and_leave_the_host_untouched() {
    let c = LocalCluster::start();
    let work = tempfile::tempdir().unwrap();
    // What the layers aim at: a root-owned dir any path can reach.
    let target = tempfile::tempdir().unwrap();
    std::fs::set_permissions(target.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = target.path().display().to_string();
    std::fs::create_dir(target.path().join("dir")).unwrap();
    std::fs::write(target.path().join("victim"), "sentinel\n").unwrap();
    std::fs::write(target.path().join("dir/keep"), "keep\n").unwrap();
    std::fs::write(target.path().join("secret"), "root only\n").unwrap();
    std::fs::set_permissions(target.path().join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let up = format!("{}{}", "../".repeat(16), s.trim_start_matches('/'));
    let before = sentinels(target.path());

    let cases = vec![
        Case {
            name: "hostile-symwrite",
            layers: vec![vec![sym("imageroot/x", &s)], vec![file("imageroot/x/victim", "pwned\n")]],
            layer: 1,
            entry: "imageroot/x",
            why: format!("a symlink to the absolute path {s}: symlinks must be relative"),
        },
        Case {
            name: "hostile-dotdot",
            layers: vec![vec![sym("imageroot/x", &up)], vec![file("imageroot/x/victim", "pwned\n")]],
            layer: 1,
            entry: "imageroot/x",
            why: format!("a symlink to {up}, which leaves imageroot/"),
        },
        Case {
            name: "hostile-through",
            layers: vec![
                vec![E::Dir("imageroot/actions".into()), sym("imageroot/x", "actions")],
                vec![file("imageroot/x/victim", "pwned\n")],
            ],
            layer: 2,
            entry: "imageroot/x/victim",
            why: "writes through the symlink imageroot/x planted by layer 1".into(),
        },
        Case {
            name: "hostile-whiteout",
            layers: vec![vec![sym("imageroot/x", &s)], vec![file("imageroot/x/.wh.victim", "")]],
            layer: 1,
            entry: "imageroot/x",
            why: format!("a symlink to the absolute path {s}"),
        },
        Case {
            name: "hostile-opaque",
            layers: vec![vec![sym("imageroot/x", &s)], vec![file("imageroot/x/dir/.wh..wh..opq", "")]],
            layer: 1,
            entry: "imageroot/x",
            why: format!("a symlink to the absolute path {s}"),
        },
        Case {
            name: "hostile-wh-through",
            layers: vec![
                vec![file("imageroot/sub/victim", "v\n"), sym("imageroot/x", "sub")],
                vec![file("imageroot/x/.wh.victim", "")],
            ],
            layer: 2,
            entry: "imageroot/x/.wh.victim",
            why: "deletes through the symlink imageroot/x planted by layer 1".into(),
        },
        Case {
            name: "hostile-opq-through",
            layers: vec![
                vec![file("imageroot/sub/d/f", "f\n"), sym("imageroot/x", "sub")],
                vec![file("imageroot/x/d/.wh..wh..opq", "")],
            ],
            layer: 2,
            entry: "imageroot/x/d/.wh..wh..opq",
            why: "deletes through the symlink imageroot/x planted by layer 1".into(),
        },
        Case {
            name: "hostile-hardlink",
            layers: vec![vec![file("imageroot/a", "a\n"), E::Hard("imageroot/stolen".into(), "/etc/shadow".into())]],
            layer: 1,
            entry: "imageroot/stolen",
            why: "a hardlink to /etc/shadow: hardlinks are refused".into(),
        },
        Case {
            name: "hostile-chardev",
            layers: vec![vec![E::Dev("imageroot/mem".into(), EntryType::Char, 1, 1)]],
            layer: 1,
            entry: "imageroot/mem",
            why: "a character device (1:1): device nodes are refused".into(),
        },
        Case {
            name: "hostile-blockdev",
            layers: vec![vec![E::Dev("imageroot/disk".into(), EntryType::Block, 8, 0)]],
            layer: 1,
            entry: "imageroot/disk",
            why: "a block device (8:0): device nodes are refused".into(),
        },
        Case {
            name: "hostile-fifo",
            layers: vec![vec![E::Dev("imageroot/pipe".into(), EntryType::Fifo, 0, 0)]],
            layer: 1,
            entry: "imageroot/pipe",
            why: "a FIFO".into(),
        },
        Case {
            name: "hostile-setuid",
            layers: vec![vec![E::File("imageroot/bin/su".into(), "#!/bin/sh\nexec sh\n", 0o4755)]],
            layer: 1,
            entry: "imageroot/bin/su",
            why: "mode 4755 has the setuid or setgid bit".into(),
        },
        Case {
            name: "hostile-list",
            layers: vec![vec![
                E::Dir("imageroot/actions".into()),
                sym("imageroot/.imageroot.lst", &format!("{s}/victim")),
            ]],
            layer: 1,
            entry: "imageroot/.imageroot.lst",
            why: ".imageroot.lst is the node's list of the image's files: an image cannot ship one".into(),
        },
    ];
    for Case { name, layers, layer, entry, why } in cases {
        let (url, digests) = push(&c, work.path(), name, &layers);
        let id = c.module_id(name, 1);
        let err = run(&c, "add-module", "cluster", json!({"image": url, "node": 1})).unwrap_err();
        let expected = format!("layer {layer} ({}): entry {entry}: {why}", digests[layer - 1]);
        assert!(err.contains(&expected), "{name}: {err}\nexpected: {expected}\n{}", c.log());
        assert!(err.contains("nothing of it was left behind"), "{name}: {err}");
        assert!(traces(&c, &id).is_empty(), "{name}: {:?}", traces(&c, &id));
        assert_eq!(sentinels(target.path()), before, "{name} changed files outside the module");
        assert!(staging_left(&c).is_empty(), "{name}: {:?}", staging_left(&c));
    }

    // A well-behaved image of three layers: inner symlinks, a whiteout, an opaque dir.
    let (url, _) = push(
        &c,
        work.path(),
        "benign-layers",
        &[
            vec![
                E::File("imageroot/actions/hello/10run".into(), "#!/bin/sh\necho hi\n", 0o777),
                file("imageroot/old", "old\n"),
                file("imageroot/conf/stale", "stale\n"),
            ],
            vec![
                file("imageroot/.wh.old", ""),
                file("imageroot/conf/.wh..wh..opq", ""),
                file("imageroot/conf/fresh", "fresh\n"),
                sym("imageroot/bin/run", "../actions/hello/10run"),
            ],
            vec![sym("imageroot/conf/link", "fresh")],
        ],
    );
    let expected = c.module_id("benign-layers", 1);
    let out = run(&c, "add-module", "cluster", json!({"image": url, "node": 1}))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let id = out["module_id"].as_str().unwrap().to_owned();
    assert_eq!(id, expected);
    let home = PathBuf::from(format!("/home/{id}/.config"));
    assert_eq!(std::fs::read_to_string(home.join(".imageroot.lst")).unwrap(), "actions\nbin\nconf\n");
    assert_eq!(std::fs::read_link(home.join("bin/run")).unwrap(), Path::new("../actions/hello/10run"));
    assert_eq!(std::fs::read_to_string(home.join("conf/link")).unwrap(), "fresh\n");
    assert!(!home.join("old").exists() && !home.join("conf/stale").exists());
    let m = home.join("actions/hello/10run").metadata().unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, e2e::modules::uid_of(&id).unwrap()));
    let listed = run(&c, "list-actions", &format!("module/{id}"), Value::Null).unwrap();
    assert!(listed.to_string().contains("\"hello\""), "{listed}");
    run(&c, "remove-module", "cluster", json!({"module_id": id})).unwrap();
    assert!(traces(&c, &id).is_empty(), "{:?}", traces(&c, &id));
    assert!(staging_left(&c).is_empty(), "{:?}", staging_left(&c));
    assert_eq!(sentinels(target.path()), before);
}
