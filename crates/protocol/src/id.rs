//! Typed agent ids: `cluster`, `node/<N>`, `module/<id>`.

use std::fmt;
use std::str::FromStr;

/// Who runs a task: the cluster agent, a node agent or a module agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentId {
    Cluster,
    Node(u32),
    Module(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid agent id {0:?}: expected \"cluster\", \"node/<number>\" or \"module/<module id>\"")]
    Agent(String),
    #[error("invalid node id {0:?}: expected a positive integer without leading zeros")]
    Node(String),
    #[error(
        "invalid module id {0:?}: expected 1-32 characters, a lowercase letter first, then lowercase letters, digits, '-' or '_'"
    )]
    Module(String),
    #[error("invalid task id {0:?}: expected 1-128 characters among letters, digits, '-', '_', '.' and ':'")]
    Task(String),
    #[error(
        "invalid action name {0:?}: expected 1-64 characters among letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    Action(String),
}

/// Module ids double as Unix user names, hence the conservative alphabet and length.
pub fn validate_module_id(id: &str) -> Result<(), IdError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok && id.len() <= 32 { Ok(()) } else { Err(IdError::Module(id.to_owned())) }
}

/// Task ids are embedded verbatim in key and channel names, so `/`, spaces and glob
/// characters are refused. UUIDs (what every NS8 producer sends) pass.
pub fn validate_task_id(id: &str) -> Result<(), IdError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok { Ok(()) } else { Err(IdError::Task(id.to_owned())) }
}

/// An action name is a directory name under the actions roots, so it may not climb out
/// of one, and it is written in keys and logs verbatim: a short conservative alphabet.
pub fn validate_action_name(name: &str) -> Result<(), IdError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(IdError::Action(name.to_owned())) }
}

fn parse_node_id(s: &str) -> Result<u32, IdError> {
    let ok = !s.is_empty() && !s.starts_with('0') && s.chars().all(|c| c.is_ascii_digit());
    match s.parse::<u32>() {
        Ok(n) if ok => Ok(n),
        _ => Err(IdError::Node(s.to_owned())),
    }
}

impl AgentId {
    /// `node/<n>` from the number as text (a path parameter, `NODE_ID`).
    pub fn node(n: &str) -> Result<Self, IdError> {
        parse_node_id(n).map(AgentId::Node)
    }

    pub fn module(id: &str) -> Result<Self, IdError> {
        validate_module_id(id)?;
        Ok(AgentId::Module(id.to_owned()))
    }

    /// Resolve the short forms NS8 tools accept (`agent.resolve_agent_id`):
    /// full ids, `<N>` for a node, a bare module id. `node` needs the local node id.
    pub fn resolve(selector: &str, local_node: Option<u32>) -> Result<Self, IdError> {
        if let Ok(id) = selector.parse() {
            return Ok(id);
        }
        if selector == "node" {
            return local_node.map(AgentId::Node).ok_or_else(|| IdError::Agent(selector.to_owned()));
        }
        if selector.chars().all(|c| c.is_ascii_digit()) {
            return parse_node_id(selector).map(AgentId::Node);
        }
        if selector.contains('/') {
            return Err(IdError::Agent(selector.to_owned()));
        }
        AgentId::module(selector)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, AgentId::Cluster)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentId::Cluster => f.write_str("cluster"),
            AgentId::Node(n) => write!(f, "node/{n}"),
            AgentId::Module(m) => write!(f, "module/{m}"),
        }
    }
}

impl FromStr for AgentId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "cluster" {
            return Ok(AgentId::Cluster);
        }
        if let Some(n) = s.strip_prefix("node/") {
            return parse_node_id(n).map(AgentId::Node);
        }
        if let Some(m) = s.strip_prefix("module/") {
            return AgentId::module(m);
        }
        Err(IdError::Agent(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names() {
        for ok in ["list-actions", "get_info", "a", "v1.2"] {
            assert_eq!(validate_action_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "list-*", long.as_str()] {
            assert!(validate_action_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_and_prints_the_three_kinds() {
        for s in ["cluster", "node/1", "node/42", "module/traefik1", "module/nethvoice-proxy1"] {
            assert_eq!(s.parse::<AgentId>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_malformed_ids() {
        for s in [
            "",
            "clusters",
            "node/",
            "node/0",
            "node/01",
            "node/x",
            "node/-1",
            "module/",
            "module/Traefik1",
            "module/1abc",
            "module/a/b",
            "module/a b",
            "module/*",
            "node/99999999999",
        ] {
            assert!(s.parse::<AgentId>().is_err(), "{s:?} should be refused");
        }
        let long = format!("module/{}", "a".repeat(33));
        assert!(long.parse::<AgentId>().is_err());
    }

    #[test]
    fn resolves_short_forms() {
        assert_eq!(AgentId::resolve("2", None).unwrap(), AgentId::Node(2));
        assert_eq!(AgentId::resolve("node", Some(3)).unwrap(), AgentId::Node(3));
        assert!(AgentId::resolve("node", None).is_err());
        assert_eq!(AgentId::resolve("mail1", None).unwrap(), AgentId::Module("mail1".into()));
        assert_eq!(AgentId::resolve("cluster", None).unwrap(), AgentId::Cluster);
        assert!(AgentId::resolve("foo/bar", None).is_err());
    }

    #[test]
    fn task_ids() {
        validate_task_id("0d3c8a1e-8e1b-4a0b-9d51-1c4f1e2f3a4b").unwrap();
        for bad in ["", "a/b", "a b", "a*", "x\n"] {
            assert!(validate_task_id(bad).is_err());
        }
    }
}
