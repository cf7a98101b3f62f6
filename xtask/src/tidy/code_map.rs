//! Rule `code-map`: every workspace member (`crates/*`, `agents/*`, `tests/*`,
//! `xtask`) has a heading in ARCHITECTURE.md's code map naming its directory
//! (`` ### `crates/bus` ``, several per heading allowed, a trailing `/` too), and every
//! extra binary of a member (`src/bin/NAME.rs`) is named (`` `NAME` ``) in its
//! member's section. A newcomer finds each program and library there. Fix: add the
//! heading, or the name, with a few lines on what it is for.

use super::{Rule, Violation, Workspace};

pub const DOC: &str = "ARCHITECTURE.md";

/// The `###` sections of the `## Code map` chapter: (heading line number, heading,
/// body).
fn sections(doc: &str) -> Vec<(usize, String, String)> {
    let mut out: Vec<(usize, String, String)> = Vec::new();
    let mut in_map = false;
    for (n, line) in doc.lines().enumerate() {
        if let Some(h) = line.strip_prefix("## ") {
            in_map = h.trim() == "Code map";
            continue;
        }
        if !in_map {
            continue;
        }
        if let Some(h) = line.strip_prefix("### ") {
            out.push((n + 1, h.to_owned(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.2.push_str(line);
            last.2.push('\n');
        }
    }
    out
}

fn names(heading: &str, dir: &str) -> bool {
    heading.contains(&format!("`{dir}`")) || heading.contains(&format!("`{dir}/`"))
}

pub fn check(ws: &Workspace) -> Vec<Violation> {
    let doc = ws.read(DOC).unwrap_or_default();
    let map = sections(&doc);
    let mut out = Vec::new();
    if map.is_empty() {
        out.push(Violation {
            rule: Rule::CodeMap,
            file: DOC.into(),
            line: 0,
            message: "no `## Code map` chapter with `###` sections: add one, a section per workspace member".into(),
        });
        return out;
    }
    for member in &ws.members {
        let Some((line, _, body)) = map.iter().find(|(_, h, _)| names(h, member)) else {
            out.push(Violation {
                rule: Rule::CodeMap,
                file: DOC.into(),
                line: 0,
                message: format!(
                    "`{member}` has no entry in the code map: add a section `### {member}` (the path in backquotes) saying what it is for"
                ),
            });
            continue;
        };
        let bin_dir = ws.root.join(member).join("src/bin");
        let Ok(entries) = std::fs::read_dir(&bin_dir) else { continue };
        let mut bins: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let is_bin = e.path().is_dir() && e.path().join("main.rs").is_file();
                name.strip_suffix(".rs").map(str::to_owned).or(is_bin.then_some(name))
            })
            .collect();
        bins.sort();
        for bin in bins {
            if !body.contains(&format!("`{bin}`")) {
                out.push(Violation {
                    rule: Rule::CodeMap,
                    file: DOC.into(),
                    line: *line,
                    message: format!(
                        "binary `{bin}` ({member}/src/bin) is not named in the `{member}` section: say what it is for"
                    ),
                });
            }
        }
    }
    out
}
