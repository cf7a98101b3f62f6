//! The test of the tidy test: a small fake workspace in a temporary directory is
//! tidy, and each rule fails, naming file and line, once a violation is planted in it.

use std::path::Path;

use super::*;

const KEYS_RS: &str = r#"
pub fn tasks(agent: &AgentId) -> String { format!("{agent}/tasks") }
pub fn environment(agent: &AgentId) -> String { format!("{agent}/environment") }
pub fn repository(name: &str) -> String { format!("cluster/repository/{name}") }
pub const MODULE_NODE: &str = "cluster/module_node";
pub const MODULE_KEYS_PATTERN: &str = "module/*";
pub fn parse_event_channel(c: &str) -> Option<(&str, &str)> { c.rsplit_once("/event/") }
#[cfg(test)]
mod tests { const NOT_A_TEMPLATE: &str = "bogus/thing"; }
"#;

const ARCHITECTURE: &str = "# Architecture\n\n## Code map\n\n### `crates/protocol`\n\nNames.\n\n\
    ### `crates/hostcmd` and `agents/demo`\n\nCommands; the demo (and its `helper` binary).\n\n\
    ### `xtask/`\n\nTasks.\n\n## Flow\n\n### `agents/forgotten`\n\nNot in the code map.\n";

/// A tidy workspace: a schema, the command seam, an agent with a test module, tests
/// and a helper binary, and xtask.
fn fake_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let files: &[(&str, &str)] = &[
        ("Cargo.toml", "[workspace]\nmembers = [\"crates/*\", \"agents/*\", \"xtask\"]\n"),
        ("ARCHITECTURE.md", ARCHITECTURE),
        ("crates/protocol/Cargo.toml", "[package]\n"),
        ("crates/protocol/src/lib.rs", "pub mod keys;\n"),
        ("crates/protocol/src/keys.rs", KEYS_RS),
        ("crates/hostcmd/Cargo.toml", "[package]\n"),
        ("crates/hostcmd/src/lib.rs", "pub fn run() { std::process::Command::new(\"true\"); }\n"),
        ("agents/demo/Cargo.toml", "[package]\n"),
        (
            "agents/demo/src/main.rs",
            "mod a;\nmod b;\n#[cfg(test)]\nmod testing;\n\
             fn main() { let c = clap::Command::new(\"demo\"); let q = protocol::keys::tasks(&id); let s = \"module/x\"; let r = \"/api/node/1/tasks\"; }\n\
             #[cfg(test)]\nmod tests {\n    fn f() -> Result<(), String> { Command::new(\"x\"); Ok(()) }\n    \
             const K: &str = \"cluster/module_node\";\n}\n",
        ),
        ("agents/demo/src/a.rs", "use crate::b::helper;\npub fn f() -> Result<u8, Error> { helper() }\n"),
        (
            "agents/demo/src/b.rs",
            "pub fn helper() -> Result<u8, Error> { Ok(1) }\nfn private() -> Result<(), String> { Ok(()) }\n",
        ),
        (
            "agents/demo/src/testing.rs",
            "pub fn fixture() -> Result<(), String> { let k = \"cluster/module_node\"; Ok(()) }\n",
        ),
        ("agents/demo/src/bin/helper.rs", "fn main() {}\n"),
        ("agents/demo/tests/it.rs", "fn t() { let k = format!(\"{}/environment\", a); Command::new(\"x\"); }\n"),
        ("xtask/Cargo.toml", "[package]\n"),
        ("xtask/src/main.rs", "fn main() { std::process::Command::new(\"cargo\"); }\n"),
    ];
    for (path, text) in files {
        write(dir.path(), path, text);
    }
    dir
}

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn violations(root: &Path) -> Vec<Violation> {
    check(&Workspace::load(root).expect("load the fake workspace"))
}

/// Plant `text` at `path` in a clean workspace: exactly one violation, of `rule`, at
/// `path:line`.
fn planted(rule: Rule, path: &str, text: &str, line: usize) -> Violation {
    let ws = fake_workspace();
    assert!(violations(ws.path()).is_empty(), "the fake workspace starts clean");
    write(ws.path(), path, text);
    let found = violations(ws.path());
    assert_eq!(found.len(), 1, "one violation of {} expected, found {found:#?}", rule.name());
    let v = found.into_iter().next().unwrap();
    assert_eq!((v.rule, v.file.as_str(), v.line), (rule, path, line), "{v}");
    v
}

#[test]
fn a_clean_workspace_is_tidy() {
    let ws = fake_workspace();
    let found = violations(ws.path());
    assert!(found.is_empty(), "{found:#?}");
    assert!(unexpected(&found, &BTreeMap::new()).is_empty());
}

#[test]
fn a_key_literal_fails() {
    let v = planted(
        Rule::KeyLiteral,
        "agents/demo/src/b.rs",
        "pub fn helper() -> u8 {\n    let k = format!(\"module/{id}/environment\");\n    1\n}\n",
        2,
    );
    assert!(v.message.contains("{agent}/environment") && v.message.contains("protocol::keys"), "{v}");
    planted(Rule::KeyLiteral, "agents/demo/src/b.rs", "fn f() { c.split_once(\"/event/\") }\n", 1);
    planted(
        Rule::KeyLiteral,
        "agents/demo/src/b.rs",
        "const LUA: &str = r#\"\nredis.call('HGET', 'cluster/module_node')\"#;\n",
        1,
    );
    planted(Rule::KeyLiteral, "xtask/src/main.rs", "fn main() { let x = \"cluster/repository/local\"; }\n", 1);
}

#[test]
fn a_string_error_fails() {
    let v = planted(
        Rule::StringError,
        "agents/demo/src/b.rs",
        "pub(crate) async fn helper(\n    x: u8,\n) -> std::result::Result<Vec<u8>, String> {\n    Ok(vec![x])\n}\n",
        3,
    );
    assert!(v.message.contains("`helper`") && v.message.contains("thiserror"), "{v}");
    planted(
        Rule::StringError,
        "crates/protocol/src/lib.rs",
        "pub fn parse(s: &str) -> Result<u8, String> { todo }\n",
        1,
    );
}

#[test]
fn a_missing_code_map_entry_fails() {
    // A member named only outside the code map chapter.
    let ws = fake_workspace();
    write(ws.path(), "agents/forgotten/Cargo.toml", "[package]\n");
    let found = violations(ws.path());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!((found[0].rule, found[0].file.as_str()), (Rule::CodeMap, "ARCHITECTURE.md"));
    assert!(found[0].message.contains("`agents/forgotten`"), "{}", found[0]);
    // A binary not named in its member's section.
    let ws = fake_workspace();
    write(ws.path(), "agents/demo/src/bin/stranger.rs", "fn main() {}\n");
    let found = violations(ws.path());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].message.contains("`stranger`") && found[0].line == 9, "{}", found[0]);
}

#[test]
fn a_command_outside_the_seam_fails() {
    let v = planted(
        Rule::CommandNew,
        "agents/demo/src/b.rs",
        "use tokio::process::Command;\nfn f() {\n    Command::new(\"useradd\").status();\n}\n",
        3,
    );
    assert!(v.message.contains("hostcmd::Cmd"), "{v}");
}

#[test]
fn an_import_cycle_fails() {
    let ws = fake_workspace();
    write(ws.path(), "agents/demo/src/b.rs", "use crate::{a::f, x};\npub fn helper() -> u8 { 1 }\n");
    let found = violations(ws.path());
    assert_eq!(found.len(), 2, "both uses of the cycle: {found:#?}");
    assert_eq!((found[0].rule, found[0].file.as_str(), found[0].line), (Rule::ImportCycle, "agents/demo/src/a.rs", 1));
    assert_eq!((found[1].file.as_str(), found[1].line), ("agents/demo/src/b.rs", 1));
    assert!(found[1].message.contains("b -> a -> b"), "{}", found[1]);
    // Through a third module and a nested file, with `super::` from the own file.
    let ws = fake_workspace();
    write(ws.path(), "agents/demo/src/main.rs", "mod a;\nmod b;\nmod c;\n#[cfg(test)]\nmod testing;\nfn main() {}\n");
    write(ws.path(), "agents/demo/src/b.rs", "use super::c;\n");
    write(ws.path(), "agents/demo/src/c/mod.rs", "mod deep;\n");
    write(ws.path(), "agents/demo/src/c/deep.rs", "fn g() { crate::a::f(); }\n");
    let found = violations(ws.path());
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found.iter().any(|v| v.file == "agents/demo/src/c/deep.rs" && v.message.contains("c -> a -> b -> c")));
}

#[test]
fn the_allowlist_must_be_exact() {
    let ws = fake_workspace();
    write(ws.path(), "agents/demo/src/b.rs", "pub fn h() { Command::new(\"a\"); Command::new(\"b\"); }\n");
    let found = violations(ws.path());
    assert_eq!(found.len(), 2);
    let allow = |text: &str| unexpected(&found, &parse_allowlist(text).unwrap());
    assert!(allow("# known\ncommand-new agents/demo/src/b.rs 2 # being fixed\n").is_empty());
    assert_eq!(allow("").len(), 2, "every violation is reported");
    assert!(allow("command-new agents/demo/src/b.rs 3")[0].contains("lower the count to 2"));
    let stale = allow("command-new agents/demo/src/b.rs 2\nkey-literal agents/demo/src/a.rs 1");
    assert!(stale.len() == 1 && stale[0].contains("remove the line"), "{stale:?}");
    assert!(parse_allowlist("no-such-rule a.rs 1").is_err());
    assert!(parse_allowlist("command-new a.rs").is_err());
}

/// The lexer on every file of this workspace: brackets balance, so no string, char,
/// lifetime or comment was misread (a misread one swallows or leaks brackets).
#[test]
fn the_lexer_reads_every_file_of_the_workspace() {
    let root = crate::workspace();
    let mut files = Vec::new();
    for dir in ["crates", "agents", "tests", "xtask"] {
        collect_rs(&root.join(dir), &mut files).unwrap();
    }
    assert!(files.len() > 50, "{} files", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let tokens = source::lex(&text);
        for (open, close) in [("(", ")"), ("[", "]"), ("{", "}")] {
            let n = |p: &str| tokens.iter().filter(|t| t.is_punct(p)).count();
            assert_eq!(n(open), n(close), "{}: {open}{close} do not balance", f.display());
        }
    }
}

#[test]
fn test_items_are_dropped() {
    let s = source::parse(
        "struct S {\n    a: u8,\n    #[cfg(test)]\n    b: u8,\n    c: u8,\n}\n#[cfg(test)]\nmod tests;\n\
         #[cfg(not(test))]\nfn kept() { let c = '\\''; let l: &'static str = \"x\"; }\n",
    );
    let idents: Vec<&str> = s
        .tokens
        .iter()
        .filter_map(|t| if let source::Tok::Ident(i) = &t.tok { Some(i.as_str()) } else { None })
        .collect();
    assert_eq!(
        idents,
        ["struct", "S", "a", "u8", "c", "u8", "cfg", "not", "test", "fn", "kept", "let", "c", "let", "l", "str"]
    );
    assert_eq!(s.test_modules, ["tests"]);
    assert_eq!(s.tokens.last().unwrap().line, 10);
}
