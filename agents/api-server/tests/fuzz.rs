//! Schemathesis against a real api-server (with Redis and a cluster agent): requests
//! generated from `openapi.json`, valid and invalid, must never get a 5xx, a hang or a
//! dropped connection, and every answer must match the document (status, content type,
//! headers, body schema).
//!
//! schemathesis comes from PyPI: `cargo xtask test` installs the pinned version in
//! `target/tools/schemathesis` (xtask/src/packages.rs). `SCHEMATHESIS` names another
//! executable; `FUZZ_SEED` another seed, to explore beyond the fixed one CI runs.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, PASSWORD};

/// A run takes about 25 s on 2 cores; past this it is hung somewhere.
const HARD_TIMEOUT: Duration = Duration::from_secs(180);
/// Test cases per operation and phase: enough to cover every operation's boundaries,
/// bounded so the test stays well under two minutes.
const MAX_EXAMPLES: &str = "50";
/// Fixed, so a CI failure reproduces; set `FUZZ_SEED` to explore.
const DEFAULT_SEED: &str = "20261127";

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/schemathesis/bin/schemathesis")
}

#[test]
fn schemathesis_finds_nothing() {
    let exe = schemathesis();
    assert!(
        exe.is_file(),
        "schemathesis is not installed at {}: run `cargo xtask test`, which installs it \
         (or set SCHEMATHESIS to its executable)",
        exe.display()
    );

    let mut api = Api::start(&[]);
    api.start_agent("cluster-agent", "cluster");
    // Roles on node 1 and on the module the document's examples name, so that task
    // requests there get past authorization to the liveness check.
    api.define_builtin_roles("node/1");
    api.define_builtin_roles("module/traefik1");
    api.add_user("admin", PASSWORD, &["owner:cluster", "owner:node/1", "owner:module/traefik1"]);
    let token = api.token("admin", PASSWORD);

    let seed = std::env::var("FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    // A directory of its own: schemathesis reads a config file from and may write in
    // its working directory.
    let work = tempfile::tempdir().unwrap();
    let log_path = work.path().join("schemathesis.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.current_dir(work.path())
        .arg("run")
        .arg(format!("{}/api/openapi.json", api.url))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Excluded because they end the fuzzer's own session, after which every other
        // operation only answers 401 and tests nothing: logout revokes the token, and
        // refresh revokes it too (trading it for a new one schemathesis would not use).
        // Everything else runs, DELETE /api/2FA and the user and grant writes included:
        // the account has no 2FA to lose, the server refuses to remove the caller's
        // own account, and the last check below makes sure the token still works.
        .args(["--exclude-path", "/api/logout", "--exclude-path", "/api/refresh"])
        // Every check but positive_data_acceptance, which wants a 2xx for any request
        // the schema allows: the server rightly refuses many of those on facts a
        // schema cannot state (a role that is not defined, a TOTP code that does not
        // match, a node that is not running, a user that does not exist).
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
        // A request the server leaves unanswered is a failure, not a stall.
        .args(["--request-timeout", "10", "--request-retries", "0"])
        .args(["--generation-database", "none", "--no-color"])
        // Its own process group, so that a timeout kills whatever it started too.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let command_line = format!("{cmd:?}").replace(&token, "<token>");
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HARD_TIMEOUT {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish within {HARD_TIMEOUT:?} (killed): a request hangs?\n{}\n--- output ---\n{}\n--- api-server log (end) ---\n{}",
                command_line,
                tail(&std::fs::read_to_string(&log_path).unwrap_or_default()),
                tail(&api.server.log())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!("{command_line}\nfinished in {:.1?}: {status}", started.elapsed());
    assert!(
        status.success(),
        "schemathesis found problems ({status}); reproduce with FUZZ_SEED={seed}\n{command_line}\n--- output ---\n{}\n--- api-server log (end) ---\n{}",
        tail(&output),
        tail(&api.server.log())
    );
    assert!(output.contains("Seed: "), "schemathesis ran no test?\n{output}");

    let log = api.server.log();
    assert!(!log.contains("panicked"), "the api-server panicked:\n{}", tail(&log));
    // The run was meaningful: the fuzzer's token still works, with its grant.
    let r = api.get("/api/users", &token);
    assert_eq!(r.status, 200, "after the run: {r:?}");
}

/// The end of a long text (schemathesis prints its failures last).
fn tail(text: &str) -> &str {
    const MAX: usize = 40_000;
    let mut start = text.len().saturating_sub(MAX);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
