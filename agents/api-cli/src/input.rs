//! Turning the command line into a target agent and the task's JSON fields, with
//! errors that say which argument was wrong and where.

use std::io::Read;

use protocol::{AgentId, validate_task_id};
use serde_json::Value;

/// Which argument is wrong, and how.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("--agent node means the local node, but NODE_ID is not set")]
    NoNodeId,
    #[error("--agent node: NODE_ID {0:?} is not a node number")]
    BadNodeId(String),
    #[error(transparent)]
    Agent(#[from] protocol::IdError),
    #[error("cannot read {flag} from stdin: {source}")]
    Stdin { flag: String, source: std::io::Error },
    #[error("cannot read the {flag} file {path:?}: {source}")]
    File { flag: String, path: String, source: std::io::Error },
    /// `what` names the argument and where it came from.
    #[error("{what} is not valid JSON: {source}")]
    Json { what: String, source: serde_json::Error },
}

/// `--agent`: a full id or one of NS8's short forms. `node` means the local node,
/// whose number NS8 keeps in `NODE_ID`.
pub fn resolve_agent(selector: &str, node_id: Option<&str>) -> Result<AgentId, InputError> {
    if selector == "node" {
        let Some(raw) = node_id.filter(|s| !s.is_empty()) else {
            return Err(InputError::NoNodeId);
        };
        return AgentId::node(raw).map_err(|_| InputError::BadNodeId(raw.to_owned()));
    }
    Ok(AgentId::resolve(selector, None)?)
}

/// A JSON argument that may also be `@FILE` or `-` (stdin).
pub fn json_arg(flag: &str, value: &str, stdin: impl Read) -> Result<Value, InputError> {
    if value == "-" {
        let mut text = String::new();
        let mut stdin = stdin;
        stdin.read_to_string(&mut text).map_err(|source| InputError::Stdin { flag: flag.to_owned(), source })?;
        return parse(&text, || format!("{flag} read from stdin"));
    }
    if let Some(path) = value.strip_prefix('@') {
        let text = std::fs::read_to_string(path).map_err(|source| InputError::File {
            flag: flag.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        return parse(&text, || format!("the {flag} file {path:?}"));
    }
    json_inline(flag, value)
}

/// A JSON argument given as text only.
pub fn json_inline(flag: &str, value: &str) -> Result<Value, InputError> {
    parse(value, || format!("the {flag} value"))
}

fn parse(text: &str, what: impl FnOnce() -> String) -> Result<Value, InputError> {
    // serde_json's message ends with "at line L column C".
    serde_json::from_str(text).map_err(|source| InputError::Json { what: what(), source })
}

/// NS8's helpers make a task started from inside a step a child of that step's task
/// (`AGENT_TASK_ID`), so the UI shows the tree. An id the agent would refuse is ignored.
pub fn parent_task(agent_task_id: Option<&str>) -> String {
    agent_task_id.filter(|id| validate_task_id(id).is_ok()).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agents_full_and_short() {
        let r = |s: &str| resolve_agent(s, Some("4"));
        assert_eq!(r("cluster").unwrap(), AgentId::Cluster);
        assert_eq!(r("node/1").unwrap(), AgentId::Node(1));
        assert_eq!(r("1").unwrap(), AgentId::Node(1));
        assert_eq!(r("node").unwrap(), AgentId::Node(4));
        assert_eq!(r("mail1").unwrap(), AgentId::Module("mail1".into()));
        assert_eq!(r("module/mail1").unwrap(), AgentId::Module("mail1".into()));
        assert!(r("foo/bar").unwrap_err().to_string().contains("invalid agent id"));
        assert!(r("Mail1").unwrap_err().to_string().contains("invalid module id"));
    }

    #[test]
    fn local_node_needs_node_id() {
        assert!(resolve_agent("node", None).unwrap_err().to_string().contains("NODE_ID is not set"));
        assert!(resolve_agent("node", Some("")).unwrap_err().to_string().contains("NODE_ID is not set"));
        for bad in ["x", "0", "1/2", "-1"] {
            let e = resolve_agent("node", Some(bad)).unwrap_err().to_string();
            assert!(e.contains("is not a node number"), "{bad}: {e}");
        }
    }

    #[test]
    fn json_from_text_file_and_stdin() {
        let none = std::io::empty();
        assert_eq!(json_arg("--data", r#"{"a":1}"#, none).unwrap(), json!({"a": 1}));
        assert_eq!(json_arg("--data", "-", &b"[1, 2]"[..]).unwrap(), json!([1, 2]));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.json");
        std::fs::write(&file, "{\"b\": true}\n").unwrap();
        let at = format!("@{}", file.display());
        assert_eq!(json_arg("--data", &at, std::io::empty()).unwrap(), json!({"b": true}));
    }

    #[test]
    fn json_errors_name_the_flag_and_position() {
        let e = json_arg("--data", "{\"a\":\n  ", std::io::empty()).unwrap_err().to_string();
        assert!(e.starts_with("the --data value is not valid JSON"), "{e}");
        assert!(e.contains("line 2 column 2"), "{e}");
        let e = json_arg("--data", "-", &b"nope"[..]).unwrap_err().to_string();
        assert!(e.contains("--data read from stdin is not valid JSON"), "{e}");
        let e = json_arg("--data", "@/nonexistent/d.json", std::io::empty()).unwrap_err().to_string();
        assert!(e.contains("cannot read the --data file \"/nonexistent/d.json\""), "{e}");
        assert!(json_inline("--extra", "{").unwrap_err().to_string().contains("--extra"));
    }

    #[test]
    fn parent_only_when_valid() {
        assert_eq!(parent_task(Some("6f0a-1")), "6f0a-1");
        assert_eq!(parent_task(Some("a/b")), "");
        assert_eq!(parent_task(None), "");
    }
}
