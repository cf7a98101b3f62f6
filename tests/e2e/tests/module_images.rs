//! `cargo xtask images` builds the module packages, pushes them to a real registry and
//! writes the repository index; the service image it pushed runs under real Podman.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{bin, ok};
use serde_json::Value;
use testkit::Registry;

fn build(registry: &Registry, out: &Path, version: Option<&str>) {
    let mut cmd = Command::new(bin("xtask"));
    cmd.args(["images", "hello", "--registry", &registry.host(), "--out"]).arg(out);
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    ok(&cmd.output().expect("run xtask images"));
}

fn index(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("repodata.json")).unwrap()).unwrap()
}

/// Podman with its own storage, removed with the test.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-f", "-a", "-t", "0"]).output();
    }
}

fn http_get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

#[test]
fn images_are_pushed_indexed_and_run() {
    let registry = Registry::start().unwrap();
    let out = tempfile::tempdir().unwrap();
    build(&registry, out.path(), None);

    let (status, catalog) = registry.get("/v2/_catalog").unwrap();
    assert_eq!(status, 200);
    assert!(catalog.contains("ns8rs/hello\"") && catalog.contains("ns8rs/hello-server"), "{catalog}");

    // The index has NS8's shape and the labels the registry serves.
    let idx = index(out.path());
    let hello = idx.as_array().unwrap().iter().find(|p| p["id"] == "hello").expect("hello indexed");
    assert_eq!(hello["source"], format!("{}/ns8rs/hello", registry.host()));
    assert_eq!(hello["name"], "Hello");
    assert!(hello["description"]["en"].as_str().unwrap().contains("BusyBox"));
    let labels = &hello["versions"][0]["labels"];
    assert_eq!(hello["versions"][0]["tag"], "1.0.0");
    assert_eq!(labels["org.nethserver.tcp-ports-demand"], "1");
    let service = labels["org.nethserver.images"].as_str().unwrap().to_owned();
    assert_eq!(service, format!("{}/ns8rs/hello-server:1.0.0", registry.host()));

    // The module image holds imageroot/ and nothing else.
    let copy = tempfile::tempdir().unwrap();
    let dest = format!("dir:{}", copy.path().display());
    let src = format!("docker://{}/ns8rs/hello:1.0.0", registry.host());
    ok(&Command::new("skopeo").args(["copy", "--src-tls-verify=false", &src, &dest]).output().unwrap());
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(copy.path().join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let blob = layers[0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let listing = ok(&Command::new("tar").arg("-tzf").arg(copy.path().join(blob)).output().unwrap());
    assert!(
        listing.lines().any(|l| l.trim_start_matches("./") == "imageroot/services/hello-server.container"),
        "{listing}"
    );
    assert!(listing.lines().all(|l| l.trim_start_matches("./").starts_with("imageroot")), "{listing}");

    // What add-module will check first, read back from the registry.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let inspect = |url: &str| rt.block_on(cluster_agent::image::inspect(url));
    let image = inspect(&format!("{}/ns8rs/hello:1.0.0", registry.host())).unwrap();
    assert_eq!((image.name.as_str(), image.tag.as_str()), ("hello", "1.0.0"));
    assert!(image.digest.starts_with("sha256:"), "{image:?}");
    let req = cluster_agent::image::requirements(&image.labels).unwrap();
    assert_eq!((req.tcp_ports, req.rootfull, req.images.clone()), (1, false, vec![service.clone()]));
    let err = inspect(&format!("{}/ns8rs/hello:9.9.9", registry.host())).unwrap_err().to_string();
    assert!(err.contains("cannot read image") && err.contains("hello:9.9.9"), "{err}");
    let server = inspect(&service).unwrap();
    let err = cluster_agent::image::requirements(&server.labels).unwrap_err().to_string();
    assert!(err.contains("not a module image"), "{err}");

    // The node unpacks the module image's imageroot/ in a private staging dir, and its
    // digest is the registry's; then it is delivered where the module will live.
    use node_agent::extract;
    let staging = extract::staging_dir(&out.path().join("node-state")).unwrap();
    let x = extract::imageroot(&format!("{}/ns8rs/hello:1.0.0", registry.host()), staging.path()).unwrap();
    assert_eq!(x.digest, image.digest);
    assert_eq!(x.tree, staging.path().join("imageroot"));
    let names: Vec<String> = std::fs::read_dir(staging.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["imageroot"], "the image copy is gone");
    assert_eq!(x.top, ["actions", "services"]);
    let dest = out.path().join("module-home/hello1");
    extract::deliver(&x, &dest).unwrap();
    let unit = std::fs::read_to_string(dest.join("services/hello-server.container")).unwrap();
    assert!(unit.contains("Image=${HELLO_SERVER_IMAGE}"), "{unit}");
    assert!(extract::deliver(&x, &dest).unwrap_err().to_string().contains("already exists"));
    let other = extract::staging_dir(&out.path().join("node-state")).unwrap();
    let err = extract::imageroot(&service, other.path()).unwrap_err().to_string();
    assert!(err.contains("no imageroot/"), "{err}");
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0, "a failure leaves the staging dir empty");
    let err = extract::imageroot(&service, staging.path()).unwrap_err().to_string();
    assert!(err.contains("is not empty"), "{err}");

    // A newer version joins the index, newest first.
    build(&registry, out.path(), Some("1.1.0"));
    let idx = index(out.path());
    let tags: Vec<&str> = idx[0]["versions"].as_array().unwrap().iter().map(|v| v["tag"].as_str().unwrap()).collect();
    assert_eq!(tags, ["1.1.0", "1.0.0"]);

    // The service image serves its page under Podman (runc and lowered limits, as this
    // kind of host needs; the node will detect that itself).
    let podman = Podman { dir: tempfile::tempdir().unwrap() };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:8080");
    ok(&podman
        .cmd()
        .args(["run", "-d", "--name", "hello-test", "--runtime", "runc"])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
        .args(["--network", "slirp4netns", "-p", &publish, "--tls-verify=false", &service])
        .output()
        .expect("run podman"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        if let Some(reply) = http_get(port).filter(|r| r.contains("200 OK")) {
            break reply;
        }
        assert!(Instant::now() < deadline, "no answer from the hello-server container on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.contains("Hello from an ns8rs module"), "{page}");
}
