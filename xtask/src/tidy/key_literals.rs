//! Rule `key-literal`: no Redis key or channel name written outside `crates/protocol`.
//!
//! The key names are the ones `crates/protocol/src/keys.rs` writes: every string
//! literal of its non-test code holding a `/` is a template (`{agent}/tasks`,
//! `cluster/module_sequence/{name}`, `*/event/*`...), so a key added there is checked
//! everywhere at once. A string literal elsewhere (a `format!` string included) is a
//! key when it matches a template segment by segment, or is a prefix of one
//! (`cluster/`, `progress/*`) matching at least one fixed segment of it:
//!
//! * placeholders (`{}`, `{id}`, `*`) match any segment; a template's `{agent}` or
//!   `{source}` matches an agent id (`cluster`, `node/N`, `module/ID`) or a
//!   placeholder, so `state/environment` (a file) is not `{agent}/environment`;
//! * at least one fixed segment must match, so `{}/{}` is nothing;
//! * literals starting with `/` (HTTP routes, absolute paths), holding `://` (URLs)
//!   or whitespace (messages, commands) are not names; the fragments keys.rs parses
//!   with (`/event/`, `/events`) are, when they are the whole literal;
//! * inside a longer literal (a Lua script, JSON text), quoted pieces are checked
//!   too: `'cluster/module_node'`.
//!
//! Keys keys.rs does not name yet are caught by their namespace: a literal starting
//! with the first fixed segment of a template (`cluster/`, `task/`, `progress/`,
//! `user/`, `roles/`, `private/`) and one more segment, or with an agent id and one more
//! segment (`node/1/flags`, `module/{id}/x`, `{agent}/flags`, for a placeholder named
//! `agent..` or `source`). `cluster/actions` and `cluster/state/..` are the cluster
//! agent's directories (NS8's install tree), not keys.
//!
//! A bare agent id or agent pattern (`module/x`, `node/1`, `node/*`) is not a key, and
//! neither is a placeholder named like a path or URL (`{base}/tasks` is an HTTP route).
//! Fix: call the function of `protocol::keys` that names it, or add one there.

use super::source::{Tok, parse};
use super::{Rule, Violation, Workspace};

pub const KEYS_FILE: &str = "crates/protocol/src/keys.rs";
const HOME: &str = "crates/protocol";
/// The directories of an agent's install tree (`<agent>/actions`, `<agent>/state`):
/// paths that start like a `cluster/` key.
const AGENT_TREE_DIRS: &[&str] = &["actions", "state"];
/// Placeholder names that hold a path or URL, never an agent id.
const PATH_LIKE: &[&str] = &["base", "url", "endpoint", "path", "dir", "root", "prefix", "home"];

/// One segment of a template.
#[derive(Clone, Debug, PartialEq)]
enum TSeg {
    /// An agent id: `cluster`, or `node`/`module` and one more segment.
    Agent,
    /// Any one segment.
    Any,
    /// Fixed text, `*` for a placeholder inside it (`*_ports`).
    Text(String),
}

#[derive(Clone, Debug)]
struct Template {
    text: String,
    segs: Vec<TSeg>,
}

/// The templates of keys.rs (its non-test literals with a `/`), and the fragments it
/// parses with (those starting with `/`).
fn templates(keys_rs: &str) -> (Vec<Template>, Vec<String>) {
    let mut templates = Vec::new();
    let mut fragments = Vec::new();
    for t in parse(keys_rs).tokens {
        let Tok::Str(s) = t.tok else { continue };
        if !s.contains('/') || s.contains(char::is_whitespace) {
            continue;
        }
        if s.starts_with('/') {
            fragments.push(s);
            continue;
        }
        let segs = s
            .split('/')
            .enumerate()
            .map(|(i, seg)| match placeholder_name(seg) {
                Some("agent" | "source") => TSeg::Agent,
                // A leading `*` is an agent too (`*/event/*`).
                Some("*") if i == 0 => TSeg::Agent,
                Some(_) => TSeg::Any,
                None => TSeg::Text(normalize(seg)),
            })
            .collect::<Vec<_>>();
        // An agent pattern (`node/*`, `module/*`: every node's keys) names agents, not
        // a key: as a template it would make every agent id a key.
        let agent_pattern = matches!(&segs[..], [TSeg::Text(ns), TSeg::Any] if ns == "node" || ns == "module");
        if agent_pattern {
            continue;
        }
        templates.push(Template { text: s, segs });
    }
    (templates, fragments)
}

/// `{name}` -> `name`, `{}` -> ``, `*` -> `*`; `None` for a segment with fixed text.
fn placeholder_name(seg: &str) -> Option<&str> {
    if seg == "*" {
        return Some("*");
    }
    let inner = seg.strip_prefix('{')?.strip_suffix('}')?;
    (!inner.contains(['{', '}'])).then(|| inner.split(':').next().unwrap_or(""))
}

/// Placeholders (`{..}`, not `{{`) and `*` runs become one `*`.
fn normalize(seg: &str) -> String {
    let mut out = String::new();
    let mut chars = seg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                }
                if !out.ends_with('*') {
                    out.push('*');
                }
            }
            '*' => {
                if !out.ends_with('*') {
                    out.push('*');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether glob `pattern` (with `*`) matches the fixed text `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether candidate segment `c` (normalized) can be fixed text `t`: `Some(true)` when
/// fixed text matched, `Some(false)` when only a placeholder did.
fn seg_matches(c: &str, t: &str) -> Option<bool> {
    if c == "*" {
        return Some(false);
    }
    let ok = match (c.contains('*'), t.contains('*')) {
        (false, false) | (true, true) => c == t,
        (false, true) => glob(t, c),
        (true, false) => glob(c, t),
    };
    ok.then_some(true)
}

/// Whether candidate `c` matches template `t` from here; `anchored` once a fixed
/// segment matched. A `prefix` candidate may end before the template does.
fn matches(c: &[String], t: &[TSeg], prefix: bool, anchored: bool) -> bool {
    let Some((first, rest)) = t.split_first() else { return c.is_empty() && anchored };
    if c.is_empty() {
        return prefix && anchored;
    }
    match first {
        TSeg::Any => matches(&c[1..], rest, prefix, anchored),
        TSeg::Text(text) => match seg_matches(&c[0], text) {
            Some(fixed) => matches(&c[1..], rest, prefix, anchored || fixed),
            None => false,
        },
        TSeg::Agent => match c[0].as_str() {
            "*" | "cluster" => matches(&c[1..], rest, prefix, anchored),
            "node" | "module" if c.len() > 1 => matches(&c[2..], rest, prefix, anchored),
            _ => false,
        },
    }
}

/// The pieces of a literal that could be names: the whole text, and the quoted
/// pieces inside it.
fn candidates(literal: &str) -> Vec<String> {
    let text = literal.replace("\\\"", "\"").replace("\\'", "'");
    let mut out = vec![text.clone()];
    for q in ['"', '\''] {
        out.extend(text.split(q).skip(1).step_by(2).map(str::to_owned));
    }
    out
}

/// The namespaces of the schema: the first fixed segment of each template.
fn namespaces(templates: &[Template]) -> Vec<String> {
    let mut out: Vec<String> = templates
        .iter()
        .filter_map(|t| match t.segs.first() {
            Some(TSeg::Text(ns)) if !ns.contains('*') => Some(ns.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The namespace `body` (split in segments `segs`) starts in, if it names a key there.
fn in_namespace(body: &str, segs: &[String], prefix: bool, namespaces: &[String]) -> Option<String> {
    let first = body.split('/').next().unwrap_or("");
    let agent_placeholder =
        placeholder_name(first).is_some_and(|n| n.starts_with("agent") || n == "source") && segs.len() >= 2;
    let fixed = |s: &String| !s.is_empty() && s != "*" && s != "<path>";
    let named = match segs[0].as_str() {
        "node" => segs.len() >= 3 && (segs[1] == "*" || segs[1].parse::<u32>().is_ok()),
        "module" => segs.len() >= 3,
        "cluster" => (segs.len() >= 2 && !AGENT_TREE_DIRS.contains(&segs[1].as_str())) || prefix,
        ns if namespaces.iter().any(|n| n == ns) => segs.len() >= 2 || prefix,
        _ => agent_placeholder && fixed(&segs[1]),
    };
    let ns = if agent_placeholder { "<agent>" } else { segs[0].as_str() };
    named.then(|| format!("{ns}/..."))
}

/// The template (or namespace) `literal` names, if any.
fn names_key(literal: &str, templates: &[Template], fragments: &[String]) -> Option<String> {
    for cand in candidates(literal) {
        if fragments.contains(&cand) {
            return Some(cand);
        }
        if cand.starts_with('/') || cand.contains("://") || cand.contains(char::is_whitespace) || !cand.contains('/') {
            continue;
        }
        let (body, prefix) = match cand.strip_suffix("/*").or_else(|| cand.strip_suffix('/')) {
            Some(b) => (b, true),
            None => (cand.as_str(), false),
        };
        // `node/*`, `module/`: agent ids, not keys.
        if prefix && (body == "node" || body == "module") {
            continue;
        }
        let segs: Vec<String> = body
            .split('/')
            .map(|seg| match placeholder_name(seg) {
                // Matches no template's fixed text, and is no agent id.
                Some(name) if PATH_LIKE.contains(&name) => "<path>".to_owned(),
                _ => normalize(seg),
            })
            .collect();
        if let Some(t) = templates.iter().find(|t| matches(&segs, &t.segs, prefix, false)) {
            return Some(t.text.clone());
        }
        if let Some(ns) = in_namespace(body, &segs, prefix, &namespaces(templates)) {
            return Some(ns);
        }
    }
    None
}

pub fn check(ws: &Workspace) -> Vec<Violation> {
    let Some(keys_rs) = ws.read(KEYS_FILE) else {
        return vec![Violation {
            rule: Rule::KeyLiteral,
            file: KEYS_FILE.into(),
            line: 0,
            message: "the key schema is missing: the rule reads its key names from this file".into(),
        }];
    };
    let (templates, fragments) = templates(&keys_rs);
    let mut out = Vec::new();
    for f in ws.files.iter().filter(|f| f.member != HOME) {
        for t in &f.source.tokens {
            let Tok::Str(s) = &t.tok else { continue };
            if let Some(template) = names_key(s, &templates, &fragments) {
                out.push(Violation {
                    rule: Rule::KeyLiteral,
                    file: f.path.clone(),
                    line: t.line,
                    message: format!(
                        "{s:?} names a Redis key or channel ({template:?} in {KEYS_FILE}): use the function of \
                         `protocol::keys` that builds it (add one there if none does)"
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(lit: &str) -> Option<String> {
        let keys_rs = std::fs::read_to_string(crate::workspace().join(KEYS_FILE)).unwrap();
        let (t, f) = templates(&keys_rs);
        names_key(lit, &t, &f)
    }

    #[test]
    fn keys_are_recognised() {
        for lit in [
            "module/{id}/environment",
            "{agent}/tasks",
            "node/1/tasks",
            "cluster/repository/local",
            "cluster/",
            "progress/*",
            "task/{}/{}/output",
            "/event/",
            "*/events",
            "private/api/revoked/{jti}",
            "redis.call('HGET', 'cluster/module_node', ARGV[1])",
            "node/{n}/tcp_ports",
            "user/{}",
            "cluster/installing",
            "{agent}/flags",
            "module/{id}/flags",
            "node/{n}/whatever",
            // keys.rs names `{agent}/flags`: a placeholder may hold an agent id.
            "{id}/flags",
        ] {
            assert!(key(lit).is_some(), "{lit:?} is a key");
        }
    }

    #[test]
    fn other_strings_are_not() {
        for lit in [
            "module/{id}",
            "node/1",
            "module/",
            "state/environment",
            "node/state/agent.env",
            "cluster/state/agent.env",
            "/api/node/{n}/tasks",
            "/var/lib/ns8rs",
            "http://127.0.0.1/cluster/x",
            "{}/{}",
            "actions/noop-bash",
            "events/{name}",
            "cannot read cluster/module_node",
            "ghcr.io/nethserver/dokuwiki:1.0",
            "{base}/tasks",
            "node/*",
            "cluster/actions",
            "cluster/state/environment",
            "node/actions/x",
        ] {
            assert_eq!(key(lit), None, "{lit:?} is not a key");
        }
    }
}
