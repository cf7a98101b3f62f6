//! `configure-podman` writes the containers.conf this host needs, and real Podman runs
//! a container with it.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use testkit::agent::Fixture;

/// A BusyBox root filesystem imported as a local image.
fn import_busybox(podman: &dyn Fn() -> Command, work: &Path) -> String {
    let root = work.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/echo")).unwrap();
    let tar = work.join("rootfs.tar");
    let out = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").output().unwrap();
    assert!(out.status.success());
    let image = "localhost/node-agent-test-busybox:latest";
    let out = podman().arg("import").arg(&tar).arg(image).output().unwrap();
    assert!(out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
    image.to_owned()
}

#[tokio::test]
async fn configure_podman_makes_containers_run_here() {
    let node = Fixture::start(Path::new(env!("CARGO_BIN_EXE_node-agent")), "node/1", &[]).await;
    let r = node.run("configure-podman", Value::Null).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let conf = node.tree.state().join("containers.conf");
    assert_eq!(r.output["path"], conf.display().to_string());
    let text = std::fs::read_to_string(&conf).unwrap();

    // What was written matches what this host is.
    let facts = node_agent::podman::probe();
    let settings = node_agent::podman::settings(&facts).unwrap();
    assert_eq!(text, node_agent::podman::containers_conf(&settings));
    assert_eq!(r.output["runtime"], serde_json::json!(settings.runtime));
    if facts.cgroups == node_agent::podman::Cgroups::Hybrid {
        assert!(text.contains("runtime = \"runc\""), "{text}");
    }
    if !facts.cap_sys_resource {
        assert!(text.contains("default_ulimits"), "{text}");
    }

    // Real Podman, its own storage, the written configuration: a container runs.
    let work = tempfile::tempdir().unwrap();
    let podman = || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &conf)
            .arg("--root")
            .arg(work.path().join("root"))
            .arg("--runroot")
            .arg(work.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    let image = import_busybox(&podman, work.path());
    let out =
        podman().args(["run", "--rm", "--network", "none", &image, "/bin/echo", "container ran"]).output().unwrap();
    assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "container ran");
}
