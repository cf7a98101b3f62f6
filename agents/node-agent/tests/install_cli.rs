//! `node-agent install` as `deploy/install.sh` runs it: what it prints, its refusals and
//! exit codes, and the agent's own command line left as it was.

use std::process::{Command, Output};

fn node_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_node-agent")).args(args).output().expect("run node-agent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn install_then_refuse_then_force_keeps_the_passwords() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let out = node_agent(&["install", "--root", root]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(said.matches("(new password)").count(), 3, "{said}");
    let cluster = tmp.path().join("var/lib/nethserver/cluster/state/agent.env");
    let before = std::fs::read_to_string(&cluster).unwrap();
    let password = before.lines().find_map(|l| l.strip_prefix("REDIS_PASSWORD=")).unwrap().to_owned();
    assert!(!said.contains(&password), "no password on stdout");

    let out = node_agent(&["install", "--root", root]);
    assert_eq!(out.status.code(), Some(64), "an installed node is refused");
    assert!(stderr(&out).contains("already installed") && stderr(&out).contains("--force"), "{}", stderr(&out));

    let out = node_agent(&["install", "--root", root, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("(password kept)").count(), 3);
    assert_eq!(std::fs::read_to_string(&cluster).unwrap(), before);
}

#[test]
fn bad_arguments_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    for (args, says) in [(vec!["--redis-address", "no-port"], "--redis-address"), (vec!["--node", "0"], "--node 0")] {
        let mut all = vec!["install", "--root", root];
        all.extend(args);
        let out = node_agent(&all);
        assert_eq!(out.status.code(), Some(64), "{all:?}");
        assert!(stderr(&out).contains(says), "{all:?}: {}", stderr(&out));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "{all:?} wrote nothing");
    }
    let out = node_agent(&["install", "--no-such-flag"]);
    assert!(!out.status.success() && stderr(&out).contains("--no-such-flag"));
}

#[test]
fn the_agent_command_line_is_unchanged() {
    // Without `install` first, the agent's own flags: a cluster id is still refused as
    // before, and `install` elsewhere is not a subcommand.
    let out = node_agent(&["--agentid", "cluster"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("node/<N>"), "{}", stderr(&out));
    let out = node_agent(&["--agentid", "node/1", "install"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(stderr(&out).contains("unexpected argument 'install'"), "{}", stderr(&out));
}
