//! End-to-end tests of the whole system live in `tests/`; this library only finds the
//! binaries they drive.

use std::path::PathBuf;

/// Where the workspace's binaries are: `$NS8RS_BIN_DIR`, or the profile directory this
/// test was built in (`cargo xtask test` builds every binary there first).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NS8RS_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(|deps| deps.parent()).expect("test binary lives in target/<profile>/deps").to_owned()
}

/// Path of one binary, or a clear failure if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

/// The stdout of a command that must have succeeded; else fail with both outputs.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
