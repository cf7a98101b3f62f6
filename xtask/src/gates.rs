//! The gates `cargo xtask test` (and so CI) passes before it runs any test: the
//! formatting, clippy's lints as errors, and the tidy rules. Every gate runs, so one
//! failing run reports them all; each failure says which gate and how to fix it.

use std::process::Command;

use anyhow::{Result, bail};

/// One gate: what it checks, and what to do when it fails.
struct Gate {
    name: &'static str,
    fix: &'static str,
    check: fn() -> Result<()>,
}

const GATES: &[Gate] = &[
    Gate {
        name: "fmt",
        fix: "run `cargo fmt --all` and commit the result (rustfmt.toml holds the style)",
        check: || cargo(&["fmt", "--all", "--check"]),
    },
    Gate {
        name: "clippy",
        fix: "fix the warnings printed above; where a lint is wrong for one item, put \
              `#[expect(clippy::NAME, reason = \"...\")]` on it",
        check: || cargo(&["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]),
    },
    Gate {
        name: "tidy",
        fix: "follow the fix each line above gives (the rules: xtask/src/tidy/mod.rs; \
              `cargo xtask tidy` checks them alone)",
        check: || crate::tidy::run(&crate::workspace()),
    },
];

/// `cargo ARGS` in the workspace; fails when it exits unsuccessfully.
fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO")).current_dir(crate::workspace()).args(args).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("`cargo {}` failed ({s})", args.join(" ")),
        Err(e) => bail!(
            "cannot run `cargo {}`: {e} (rustfmt and clippy: `rustup component add rustfmt clippy`)",
            args.join(" ")
        ),
    }
}

/// rustfmt and clippy, added with rustup when the toolchain lacks them (a minimal
/// rustup profile); without rustup, the gate says what is missing.
fn ensure_components() {
    let have =
        |tool: &str| Command::new(env!("CARGO")).args([tool, "--version"]).output().is_ok_and(|o| o.status.success());
    if have("fmt") && have("clippy") {
        return;
    }
    eprintln!("xtask: adding rustfmt and clippy to the toolchain");
    let _ = Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]).status();
}

/// Run every gate; the error names each one that failed and its fix.
pub fn run() -> Result<()> {
    ensure_components();
    let mut failed = Vec::new();
    for gate in GATES {
        eprintln!("xtask: gate {}", gate.name);
        if let Err(e) = (gate.check)() {
            eprintln!("{e:#}");
            failed.push(format!("gate `{}` failed: {}", gate.name, gate.fix));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    eprintln!("xtask: every gate passed ({})", GATES.iter().map(|g| g.name).collect::<Vec<_>>().join(", "));
    Ok(())
}
