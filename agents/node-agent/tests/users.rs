//! A module's Unix user: created with its ranges and runtime directory, able to run a
//! rootless container with the node's Podman settings, and removed without a trace.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use node_agent::users;

/// Removes the user even when the test fails half-way.
struct Cleanup<'a>(&'a str, &'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = users::remove(self.0, self.1);
    }
}

fn as_user(u: &users::ModuleUser, conf: &Path, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", &u.name, "--", "env"])
        .arg(format!("HOME={}", u.home.display()))
        .arg(format!("XDG_RUNTIME_DIR={}", u.runtime_dir.display()))
        .arg(format!("CONTAINERS_CONF={}", conf.display()))
        .arg("PATH=/usr/local/bin:/usr/bin:/bin")
        .args(args)
        .current_dir(&u.home)
        .output()
        .unwrap()
}

#[test]
fn create_run_a_rootless_container_and_remove() {
    let name = format!("t{}x{}", std::process::id(), rand_suffix());
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (homes, runtime) = (base.path().join("home"), base.path().join("run-user"));
    std::fs::create_dir_all(&homes).unwrap();
    let _cleanup = Cleanup(&name, &runtime);

    let u = users::create(&name, &homes, &runtime).unwrap();
    assert_eq!(u.home, homes.join(&name));
    assert_eq!(std::fs::metadata(&u.home).unwrap().uid(), u.uid);
    let rd = std::fs::metadata(&u.runtime_dir).unwrap();
    assert_eq!((rd.uid(), rd.mode() & 0o777), (u.uid, 0o700));
    assert!(users::has_subordinate_range(Path::new("/etc/subuid"), &name));
    assert!(users::has_subordinate_range(Path::new("/etc/subgid"), &name));
    let err = users::create(&name, &homes, &runtime).unwrap_err();
    assert!(matches!(err, users::UserError::Exists(_)), "{err:?}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(u.home.exists(), "a refused create leaves the existing user alone");

    // Rootless Podman as that user, with the settings the node computes for this host.
    let settings = node_agent::podman::settings(&node_agent::podman::probe()).unwrap();
    let conf = u.home.join("containers.conf");
    std::fs::write(&conf, node_agent::podman::containers_conf(&settings)).unwrap();
    let root = u.home.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    std::os::unix::fs::symlink("busybox", root.join("bin/echo")).unwrap();
    let tar = u.home.join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    Command::new("chown").arg("-R").arg(format!("{}:{}", u.uid, u.gid)).arg(&u.home).status().unwrap();
    let podman = ["podman", "--storage-driver", "vfs"];
    let out = as_user(&u, &conf, &[&podman[..], &["import", tar.to_str().unwrap(), "localhost/bb"]].concat());
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let run = [&podman[..], &["run", "--rm", "--network", "none", "localhost/bb", "/bin/echo", "rootless ok"]].concat();
    let out = as_user(&u, &conf, &run);
    assert!(out.status.success(), "run: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "rootless ok");
    // Something of the user's still running when it is removed.
    let mut sleeper = Command::new("runuser").args(["-u", &name, "--", "sleep", "300"]).spawn().unwrap();
    testkit::wait_for("the user's process to run", std::time::Duration::from_secs(10), || {
        let out = Command::new("pgrep").args(["-U", &u.uid.to_string(), "sleep"]).output().ok()?;
        (!out.stdout.is_empty()).then_some(())
    })
    .unwrap();

    users::remove(&name, &runtime).unwrap();
    sleeper.wait().unwrap();
    assert!(users::lookup(&name, &runtime).is_none());
    assert!(!u.home.exists() && !u.runtime_dir.exists());
    assert!(!users::has_subordinate_range(Path::new("/etc/subuid"), &name));
    assert!(!users::has_subordinate_range(Path::new("/etc/subgid"), &name));
    let left = users::live_processes(u.uid);
    assert!(left.is_empty(), "processes left: {left:?}");
    users::remove(&name, &runtime).unwrap();
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 100_000
}
