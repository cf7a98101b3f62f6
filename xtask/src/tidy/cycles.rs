//! Rule `import-cycle`: the top-level modules of a crate (the `mod`s of `lib.rs`,
//! `main.rs` or `src/bin/*.rs`) form no cycle: if `a` uses `b`, nothing `b` uses
//! leads back to `a`. A module that uses another is read after it; in a cycle neither
//! can be read, changed or tested alone. A use is any path into the other module from
//! any file of this one: `crate::b::..`, `use crate::{b, ..}`, and `super::b` from the
//! module's own file. Fix: move what both need into a module of its own that uses
//! neither (or into the one that is lower), so the uses go one way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::source::{Tok, Token};
use super::{Rule, SourceFile, Violation, Workspace, module_dir};

/// The modules a crate root declares at its top level.
fn top_modules(root: &[Token]) -> Vec<String> {
    let mut depth = 0;
    let mut mods = Vec::new();
    for (i, t) in root.iter().enumerate() {
        if t.is_punct("{") {
            depth += 1;
        } else if t.is_punct("}") {
            depth -= 1;
        } else if depth == 0
            && t.is_ident("mod")
            && let Some(Tok::Ident(name)) = root.get(i + 1).map(|x| &x.tok)
        {
            mods.push(name.clone());
        }
    }
    mods
}

/// The first segments of the paths starting at `t[i]` (just after `crate ::` or
/// `super ::`): one ident, or each first ident of a `{a::x, b, c::{..}}` group.
fn first_segments(t: &[Token], i: usize) -> Vec<(String, usize)> {
    match t.get(i).map(|x| &x.tok) {
        Some(Tok::Ident(name)) => vec![(name.clone(), t[i].line)],
        Some(Tok::Punct("{")) => {
            let mut out = Vec::new();
            let mut depth = 0;
            let mut at_start = true;
            for tok in &t[i..] {
                if tok.is_punct("{") {
                    depth += 1;
                    at_start = depth == 1;
                    continue;
                }
                if tok.is_punct("}") {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                    continue;
                }
                if depth == 1 {
                    if let (true, Tok::Ident(name)) = (at_start, &tok.tok) {
                        out.push((name.clone(), tok.line));
                    }
                    at_start = tok.is_punct(",");
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The crate-root modules `file` (part of module `me`) refers to, with a line each.
fn uses(file: &SourceFile, own_file: bool) -> Vec<(String, usize)> {
    let t = &file.source.tokens;
    let mut out = Vec::new();
    for i in 0..t.len().saturating_sub(2) {
        let root_path = t[i].is_ident("crate") || (own_file && t[i].is_ident("super"));
        // `super::super::x` from the own file would leave the crate: not a use.
        let after_path_sep = i > 0 && t[i - 1].is_punct("::");
        if root_path && !after_path_sep && t[i + 1].is_punct("::") {
            out.extend(first_segments(t, i + 2));
        }
    }
    out
}

/// Every cycle edge of every crate root of `member`.
fn check_member(ws: &Workspace, member: &str, out: &mut Vec<Violation>) {
    let files: Vec<&SourceFile> = ws.files.iter().filter(|f| f.member == member).collect();
    let src = format!("{member}/src");
    let is_root = |p: &str| {
        p == format!("{src}/lib.rs")
            || p == format!("{src}/main.rs")
            || p.strip_prefix(&format!("{src}/bin/")).is_some_and(|r| !r.contains('/') || r.ends_with("/main.rs"))
    };
    for root in files.iter().filter(|f| is_root(&f.path)) {
        let mods = top_modules(&root.source.tokens);
        let dir = module_dir(Path::new(&root.path));
        // (from, to) -> where `from` first uses `to`.
        let mut edges: BTreeMap<(String, String), (String, usize)> = BTreeMap::new();
        for m in &mods {
            let own = [dir.join(format!("{m}.rs")), dir.join(m).join("mod.rs")];
            for f in files.iter().filter(|f| {
                let p = Path::new(&f.path);
                own.iter().any(|o| o == p) || p.starts_with(dir.join(m))
            }) {
                let own_file = own.iter().any(|o| o == Path::new(&f.path));
                for (to, line) in uses(f, own_file) {
                    if &to != m && mods.contains(&to) {
                        edges.entry((m.clone(), to)).or_insert((f.path.clone(), line));
                    }
                }
            }
        }
        for ((from, to), (file, line)) in &edges {
            if let Some(back) = path_between(&edges, to, from) {
                let cycle = std::iter::once(from.as_str()).chain(back.iter().map(String::as_str)).collect::<Vec<_>>();
                out.push(Violation {
                    rule: Rule::ImportCycle,
                    file: file.clone(),
                    line: *line,
                    message: format!(
                        "module `{from}` uses `{to}`, which leads back to it ({}): move what they share into a \
                         module that uses neither, so the uses go one way",
                        cycle.join(" -> ")
                    ),
                });
            }
        }
    }
}

/// A path of modules from `start` to `goal` (both included), by breadth first.
fn path_between(edges: &BTreeMap<(String, String), (String, usize)>, start: &str, goal: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut seen = BTreeSet::from([start]);
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(m) = queue.pop_front() {
        if m == goal {
            let mut path = vec![goal.to_owned()];
            let mut at = goal;
            while let Some(&prev) = came_from.get(at) {
                path.push(prev.to_owned());
                at = prev;
            }
            path.reverse();
            return Some(path);
        }
        for ((from, to), _) in edges.iter().filter(|((f, _), _)| f == m) {
            if seen.insert(to.as_str()) {
                came_from.insert(to.as_str(), from.as_str());
                queue.push_back(to.as_str());
            }
        }
    }
    None
}

pub fn check(ws: &Workspace) -> Vec<Violation> {
    let mut out = Vec::new();
    for m in &ws.members {
        check_member(ws, m, &mut out);
    }
    out
}
