//! The tidy test: the architecture invariants a machine can check, run by
//! `cargo test --workspace` (the `#[test]` below), by `cargo xtask tidy` and among the
//! gates of `cargo xtask test`.
//!
//! It reads the workspace's non-test Rust sources (each member's `src/`, without any
//! `tests/` directory, `#[cfg(test)]` item or module file, or member under `tests/`)
//! and applies these rules;
//! each violation names the file, the line and the fix:
//!
//! * `key-literal` ([`key_literals`]): no Redis key or channel name written outside
//!   `crates/protocol`.
//! * `string-error` ([`string_errors`]): no `Result<_, String>` in a non-private
//!   function signature.
//! * `code-map` ([`code_map`]): every workspace member, and every extra binary, named
//!   in ARCHITECTURE.md's code map.
//! * `command-new` ([`commands`]): no `Command::new` outside the command seam
//!   (`crates/hostcmd`).
//! * `import-cycle` ([`cycles`]): no two top-level modules of a crate that use each
//!   other, directly or through others.
//!
//! Known violations in code being fixed elsewhere are listed, with their exact count,
//! in `xtask/tidy-allow.txt`: the list may only shrink, and an entry whose count is
//! no longer exact fails too, so it is lowered as soon as the code is fixed.

mod code_map;
mod commands;
mod cycles;
mod key_literals;
pub mod source;
mod string_errors;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use source::Source;

/// The allowlist, relative to the workspace root.
pub const ALLOWLIST: &str = "xtask/tidy-allow.txt";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    KeyLiteral,
    StringError,
    CodeMap,
    CommandNew,
    ImportCycle,
}

impl Rule {
    pub const ALL: [Rule; 5] =
        [Rule::KeyLiteral, Rule::StringError, Rule::CodeMap, Rule::CommandNew, Rule::ImportCycle];

    pub fn name(self) -> &'static str {
        match self {
            Rule::KeyLiteral => "key-literal",
            Rule::StringError => "string-error",
            Rule::CodeMap => "code-map",
            Rule::CommandNew => "command-new",
            Rule::ImportCycle => "import-cycle",
        }
    }
}

/// One broken rule: where, and what to do about it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub rule: Rule,
    /// Relative to the workspace root, `/`-separated.
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: [{}] {}", self.file, self.line, self.rule.name(), self.message)
    }
}

/// A non-test Rust file of a workspace member.
pub struct SourceFile {
    /// Relative to the workspace root, `/`-separated.
    pub path: String,
    /// The member's directory, relative (`crates/bus`, `xtask`).
    pub member: String,
    pub source: Source,
}

/// The workspace as the rules see it.
pub struct Workspace {
    pub root: PathBuf,
    /// Member directories, relative, sorted.
    pub members: Vec<String>,
    pub files: Vec<SourceFile>,
}

impl Workspace {
    /// Read the members named by the root `Cargo.toml` (`members = [...]`, with
    /// `dir/*` globs) and their non-test sources.
    pub fn load(root: &Path) -> Result<Workspace> {
        let manifest = root.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
        let mut members = Vec::new();
        for pattern in workspace_members(&text) {
            match pattern.strip_suffix("/*") {
                Some(dir) => {
                    let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
                    for e in entries.flatten() {
                        if e.path().join("Cargo.toml").is_file() {
                            members.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
                        }
                    }
                }
                None if root.join(&pattern).join("Cargo.toml").is_file() => members.push(pattern),
                None => {}
            }
        }
        members.sort();
        let mut files = Vec::new();
        // Members under `tests/` are test code (the end-to-end suite and its helpers):
        // the code map names them, no other rule reads them.
        for m in members.iter().filter(|m| !m.starts_with("tests/")) {
            files.extend(member_sources(root, m)?);
        }
        Ok(Workspace { root: root.to_owned(), members, files })
    }

    pub fn read(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(relative)).ok()
    }
}

/// The quoted entries of the `members = [...]` array.
fn workspace_members(manifest: &str) -> Vec<String> {
    let Some(start) = manifest.find("members") else { return Vec::new() };
    let rest = &manifest[start..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else { return Vec::new() };
    rest[open + 1..close].split(',').map(|s| s.trim().trim_matches('"').to_owned()).filter(|s| !s.is_empty()).collect()
}

/// Every `.rs` file under `<member>/src`, except `tests/` directories and the files
/// of modules declared `#[cfg(test)]`.
fn member_sources(root: &Path, member: &str) -> Result<Vec<SourceFile>> {
    let mut paths = Vec::new();
    collect_rs(&root.join(member).join("src"), &mut paths)?;
    paths.sort();
    let mut parsed = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        parsed.push((p, source::parse(&text)));
    }
    // Test-only module files: `#[cfg(test)] mod NAME;` in F lives in F's module
    // directory, as NAME.rs or NAME/.
    let mut skipped: Vec<PathBuf> = Vec::new();
    for (p, s) in &parsed {
        let dir = module_dir(p);
        for name in &s.test_modules {
            skipped.push(dir.join(format!("{name}.rs")));
            skipped.push(dir.join(name));
        }
    }
    Ok(parsed
        .into_iter()
        .filter(|(p, _)| !skipped.iter().any(|s| p.starts_with(s)))
        .map(|(p, source)| SourceFile { path: relative(root, &p), member: member.to_owned(), source })
        .collect())
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries {
        let path = e?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The directory holding the files of the modules `file` declares: its own for a
/// crate root or `mod.rs` (`src/lib.rs`, `src/bin/x.rs`), else `<dir>/<stem>/`.
pub fn module_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(""));
    let stem = file.file_stem().unwrap_or_default();
    let is_root = stem == "mod" || stem == "lib" || stem == "main" || dir.file_name().is_some_and(|d| d == "bin");
    if is_root { dir.to_owned() } else { dir.join(stem) }
}

pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

/// Every violation of every rule, sorted by file and line.
pub fn check(ws: &Workspace) -> Vec<Violation> {
    let mut all = Vec::new();
    all.extend(key_literals::check(ws));
    all.extend(string_errors::check(ws));
    all.extend(code_map::check(ws));
    all.extend(commands::check(ws));
    all.extend(cycles::check(ws));
    all.sort_by(|a, b| (&a.file, a.line, a.rule).cmp(&(&b.file, b.line, b.rule)));
    all
}

/// The allowlist: `rule file count` per line, `#` comments.
pub fn parse_allowlist(text: &str) -> Result<BTreeMap<(String, String), usize>> {
    let mut allowed = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [rule, file, count] = fields[..] else {
            bail!("{ALLOWLIST}:{}: expected `rule file count`, found {line:?}", n + 1);
        };
        if !Rule::ALL.iter().any(|r| r.name() == rule) {
            bail!("{ALLOWLIST}:{}: unknown rule {rule:?}", n + 1);
        }
        let count = count.parse().with_context(|| format!("{ALLOWLIST}:{}: bad count {count:?}", n + 1))?;
        allowed.insert((rule.to_owned(), file.to_owned()), count);
    }
    Ok(allowed)
}

/// What is wrong once the allowlist is applied: the violations of files it does not
/// cover, and its entries whose count is no longer exact. Empty when tidy.
pub fn unexpected(violations: &[Violation], allowed: &BTreeMap<(String, String), usize>) -> Vec<String> {
    let mut found: BTreeMap<(String, String), Vec<&Violation>> = BTreeMap::new();
    for v in violations {
        found.entry((v.rule.name().to_owned(), v.file.clone())).or_default().push(v);
    }
    let mut problems = Vec::new();
    for (key, list) in &found {
        match allowed.get(key) {
            Some(&n) if n == list.len() => {}
            Some(&n) if n > list.len() => problems.push(format!(
                "{ALLOWLIST}: `{} {} {n}` allows more than the {} left: lower the count to {} (or remove the line at 0)",
                key.0,
                key.1,
                list.len(),
                list.len()
            )),
            _ => problems.extend(list.iter().map(|v| v.to_string())),
        }
    }
    for (key, n) in allowed {
        if !found.contains_key(key) {
            problems
                .push(format!("{ALLOWLIST}: `{} {} {n}`: no such violation is left: remove the line", key.0, key.1));
        }
    }
    problems
}

/// Check the workspace at `root` against its allowlist; the error lists every
/// problem.
pub fn run(root: &Path) -> Result<()> {
    let ws = Workspace::load(root)?;
    let allowed = match ws.read(ALLOWLIST) {
        Some(text) => parse_allowlist(&text)?,
        None => BTreeMap::new(),
    };
    let problems = unexpected(&check(&ws), &allowed);
    if !problems.is_empty() {
        bail!(
            "the tidy rules are broken ({} problems; the rules are in xtask/src/tidy/mod.rs):\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(())
}

#[test]
fn the_workspace_is_tidy() {
    if let Err(e) = run(&crate::workspace()) {
        panic!("{e:#}");
    }
}
