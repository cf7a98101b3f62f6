//! Rule `command-new`: no `Command::new` (std's or tokio's) outside the command seam,
//! `crates/hostcmd`, whose `Cmd` gives every failure its argv, exit status and stderr
//! tail, and runs blocking work off the agent's thread.
//!
//! Exempt, because they are not the product: `crates/testkit` (test fixtures start
//! redis-server, registries and the binaries under test, and own those processes'
//! lifetimes) and `xtask` (developer tooling: its commands report through anyhow with
//! the command line, and it has no agent thread to protect). Test code is never
//! read. Fix: `hostcmd::Cmd::new(..)` with `.run()`/`.output()` (or their `_async`
//! forms on an agent), `.to_std()` where a `std::process::Command` is really needed.

use super::{Rule, Violation, Workspace};

const SEAM: &str = "crates/hostcmd";
const EXEMPT: &[&str] = &[SEAM, "crates/testkit", "xtask"];

pub fn check(ws: &Workspace) -> Vec<Violation> {
    let mut out = Vec::new();
    for f in ws.files.iter().filter(|f| !EXEMPT.contains(&f.member.as_str())) {
        let t = &f.source.tokens;
        for (i, w) in t.windows(3).enumerate() {
            // `clap::Command` builds a command line parser, not a process.
            let clap = i >= 2 && t[i - 2].is_ident("clap") && t[i - 1].is_punct("::");
            if w[0].is_ident("Command") && w[1].is_punct("::") && w[2].is_ident("new") && !clap {
                out.push(Violation {
                    rule: Rule::CommandNew,
                    file: f.path.clone(),
                    line: w[0].line,
                    message: "`Command::new` outside the command seam: run it with `hostcmd::Cmd` (typed error with \
                              argv, status and stderr; `_async` off the agent's thread)"
                        .into(),
                });
            }
        }
    }
    out
}
