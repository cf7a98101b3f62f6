//! Rule `string-error`: no `Result<_, String>` in the signature of a function that is
//! not private: `pub`, and `pub(crate)`, `pub(super)`, `pub(in ..)` too. A function
//! another module calls is a boundary, and a `String` error there can only be shown,
//! not matched on (the issue's `e.contains("no snapshot")`). Private helpers may keep
//! a `String` when converting it is pointless. Fix: a `thiserror` enum whose variants
//! name what failed (or an existing error type such as `hostcmd::CmdError`).

use super::source::{Tok, Token};
use super::{Rule, Violation, Workspace};

pub fn check(ws: &Workspace) -> Vec<Violation> {
    let mut out = Vec::new();
    for f in &ws.files {
        let t = &f.source.tokens;
        for i in 0..t.len() {
            if !t[i].is_ident("pub") {
                continue;
            }
            let Some(fn_at) = fn_after_visibility(t, i + 1) else { continue };
            let name = match t.get(fn_at + 1).map(|x| &x.tok) {
                Some(Tok::Ident(n)) => n.clone(),
                _ => continue,
            };
            if let Some(line) = string_error_in_signature(t, fn_at) {
                out.push(Violation {
                    rule: Rule::StringError,
                    file: f.path.clone(),
                    line,
                    message: format!(
                        "`{name}` returns `Result<_, String>`: give it a typed error (a `thiserror` enum naming \
                         what failed), or make it private"
                    ),
                });
            }
        }
    }
    out
}

/// After `pub` at `i`: skip `(crate)`/`(super)`/`(in path)` and the qualifiers, and
/// return the index of `fn` when this is a function.
fn fn_after_visibility(t: &[Token], mut i: usize) -> Option<usize> {
    if t.get(i)?.is_punct("(") {
        while !t.get(i)?.is_punct(")") {
            i += 1;
        }
        i += 1;
    }
    loop {
        let tok = t.get(i)?;
        if tok.is_ident("fn") {
            return Some(i);
        }
        match &tok.tok {
            Tok::Ident(q) if ["const", "async", "unsafe", "extern"].contains(&q.as_str()) => i += 1,
            // The ABI of `extern "C"`.
            Tok::Str(_) => i += 1,
            _ => return None,
        }
    }
}

/// The line of a `Result<.., String>` in the return type of the function whose `fn`
/// is at `fn_at` (up to its body or `;`).
fn string_error_in_signature(t: &[Token], fn_at: usize) -> Option<usize> {
    let mut i = fn_at;
    let mut depth = 0i32;
    // Find `->` outside the parameter list.
    loop {
        let tok = t.get(i)?;
        if tok.is_punct("(") {
            depth += 1;
        } else if tok.is_punct(")") {
            depth -= 1;
        } else if depth == 0 && (tok.is_punct("{") || tok.is_punct(";")) {
            return None;
        } else if depth == 0 && tok.is_punct("->") {
            break;
        }
        i += 1;
    }
    let end = (i..t.len()).find(|&k| t[k].is_punct("{") || t[k].is_punct(";") || t[k].is_ident("where"))?;
    (i..end).find_map(|k| (t[k].is_ident("Result") && error_is_string(&t[k + 1..end])).then_some(t[k].line))
}

/// `<A, String>` right at the start of `t`: the second type argument is `String` (or
/// `std::string::String`).
fn error_is_string(t: &[Token]) -> bool {
    if !t.first().is_some_and(|x| x.is_punct("<")) {
        return false;
    }
    let mut depth = 0;
    let mut args: Vec<Vec<&Token>> = vec![Vec::new()];
    for tok in t {
        if tok.is_punct("<") || tok.is_punct("(") || tok.is_punct("[") {
            depth += 1;
            if depth == 1 {
                continue;
            }
        } else if tok.is_punct(">") || tok.is_punct(")") || tok.is_punct("]") {
            depth -= 1;
            if depth == 0 {
                break;
            }
        } else if depth == 1 && tok.is_punct(",") {
            args.push(Vec::new());
            continue;
        }
        args.last_mut().expect("one argument at least").push(tok);
    }
    let Some(err) = args.get(1) else { return false };
    let path: Vec<&Tok> = err.iter().map(|x| &x.tok).filter(|x| **x != Tok::Punct("::")).collect();
    let string = |p: &[&Tok]| p.last().is_some_and(|x| matches!(x, Tok::Ident(s) if s == "String"));
    string(&path)
        && (path.len() == 1 || matches!(path[..], [Tok::Ident(a), Tok::Ident(b), _] if a == "std" && b == "string"))
}
