//! A module image, read from its registry and checked before any node is touched
//! (`add-module`'s first step): its labels must make sense, or the install stops with
//! the label and the value named.

use std::collections::BTreeMap;

use hostcmd::{Cmd, CmdError};
use protocol::image::{on_loopback_registry, parse_reference};
use serde::Deserialize;

/// Why an image cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Reference(#[from] protocol::image::BadImageReference),
    #[error("cannot read image {url} from its registry: {}", reason(.source))]
    Registry { url: String, source: CmdError },
    #[error("skopeo answered no image description for {url}: {source}")]
    Answer { url: String, source: serde_json::Error },
}

/// Skopeo's last line, the cause as a rule; the whole error when it printed nothing.
fn reason(e: &CmdError) -> String {
    match e.stderr().lines().last() {
        Some(l) if !l.trim().is_empty() => l.trim().to_owned(),
        _ => e.to_string(),
    }
}

/// A label that does not make sense, named with its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct LabelError(String);

impl From<String> for LabelError {
    fn from(s: String) -> Self {
        LabelError(s)
    }
}

/// What `skopeo inspect` tells of an image.
#[derive(Deserialize)]
struct Inspected {
    #[serde(rename = "Digest", default)]
    digest: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleImage {
    /// As given: `host/path/name:tag`.
    pub url: String,
    /// The last path element without tag: the base of instance ids (`<name><N>`).
    pub name: String,
    pub tag: String,
    pub digest: String,
    pub labels: BTreeMap<String, String>,
}

/// What the labels say, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    pub images: Vec<String>,
    pub rootfull: bool,
    pub tcp_ports: u16,
    pub udp_ports: u16,
    /// `(selector, roles)` pairs of `org.nethserver.authorizations`, without what is
    /// never granted.
    pub authorizations: Vec<(String, Vec<String>)>,
    /// `selector:role` the image asks for that a module never gets: `owner` of the
    /// cluster or of a node (either runs anything as root).
    pub never_granted: Vec<String>,
    pub flags: Vec<String>,
}

/// What installing an image would give it beyond its own agent, which the
/// administrator must accept: its labels are requests, never grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Consent {
    /// `selector:role` on other agents: the cluster, its node, other modules.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// Running as root.
    #[serde(default)]
    pub rootfull: bool,
}

impl Consent {
    pub fn is_empty(&self) -> bool {
        self.authorizations.is_empty() && !self.rootfull
    }

    /// What of `self` `accepted` does not cover.
    pub fn beyond(&self, accepted: &Consent) -> Consent {
        Consent {
            authorizations: self
                .authorizations
                .iter()
                .filter(|a| !accepted.authorizations.contains(a))
                .cloned()
                .collect(),
            rootfull: self.rootfull && !accepted.rootfull,
        }
    }

    /// In words, for error messages: "rootful mode, node:portsadm, ...".
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.rootfull {
            parts.push("rootful mode (running as root)".into());
        }
        parts.extend(self.authorizations.iter().cloned());
        parts.join(", ")
    }
}

impl Requirements {
    /// What the administrator must accept to install this image: every grant on an
    /// agent other than the module's own (`self:`), and rootful mode.
    pub fn consent(&self) -> Consent {
        let mut authorizations = Vec::new();
        for (selector, roles) in &self.authorizations {
            if selector != "self" {
                authorizations.extend(roles.iter().map(|r| format!("{selector}:{r}")));
            }
        }
        Consent { authorizations, rootfull: self.rootfull }
    }
}

const MAX_PORTS: u16 = 1000;

/// Read the image's manifest and labels with skopeo. TLS is verified except for a
/// registry on loopback (the local repository).
/// It runs off the agent's thread (skopeo waits on the network).
pub async fn inspect(url: &str) -> Result<ModuleImage, InspectError> {
    let (name, tag) = parse_reference(url).map_err(InspectError::Reference)?;
    let mut cmd = Cmd::new("skopeo").args(["inspect", "--command-timeout", "60s"]);
    if on_loopback_registry(url) {
        cmd = cmd.arg("--tls-verify=false");
    }
    let out = cmd
        .arg(format!("docker://{url}"))
        .run_async()
        .await
        .map_err(|source| InspectError::Registry { url: url.to_owned(), source })?;
    let v: Inspected =
        serde_json::from_slice(&out.stdout).map_err(|source| InspectError::Answer { url: url.to_owned(), source })?;
    // Labels are text; anything else is no label.
    let labels =
        v.labels.unwrap_or_default().into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_owned()))).collect();
    Ok(ModuleImage { url: url.to_owned(), name, tag, digest: v.digest, labels })
}

fn ports(labels: &BTreeMap<String, String>, label: &str) -> Result<u16, String> {
    match labels.get(label).map(|v| v.trim()) {
        None | Some("") => Ok(0),
        Some(v) => match v.parse::<u16>() {
            Ok(n) if n <= MAX_PORTS => Ok(n),
            _ => Err(format!("label {label}={v:?}: expected a number of ports from 0 to {MAX_PORTS}")),
        },
    }
}

/// Check the `org.nethserver.*` labels (reference 10.1 and 8).
pub fn requirements(labels: &BTreeMap<String, String>) -> Result<Requirements, LabelError> {
    checked(labels).map_err(LabelError)
}

fn checked(labels: &BTreeMap<String, String>) -> Result<Requirements, String> {
    let images_label = "org.nethserver.images";
    let Some(images) = labels.get(images_label) else {
        return Err(format!("the image has no {images_label} label: it is not a module image"));
    };
    let images: Vec<String> = images.split_whitespace().map(str::to_owned).collect();
    for i in &images {
        parse_reference(i).map_err(|e| format!("label {images_label}: {e}"))?;
    }
    let rootfull = match labels.get("org.nethserver.rootfull").map(|v| v.trim()) {
        None | Some("") | Some("0") => false,
        Some("1") => true,
        Some(v) => return Err(format!("label org.nethserver.rootfull={v:?}: expected 0 or 1")),
    };
    let mut authorizations = Vec::new();
    let mut never_granted = Vec::new();
    for a in labels.get("org.nethserver.authorizations").map(|v| v.split_whitespace()).into_iter().flatten() {
        let bad = |why: &str| format!("label org.nethserver.authorizations: {a:?} {why}");
        if a.contains(['*', '[', '?']) {
            return Err(bad("contains a wildcard"));
        }
        let Some((selector, roles)) = a.split_once(':') else { return Err(bad("lacks \"selector:role\"")) };
        let roles: Vec<String> = roles.split(',').map(str::to_owned).collect();
        if selector.is_empty() || roles.iter().any(|r| r.is_empty()) {
            return Err(bad("has an empty selector or role"));
        }
        let name_ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@'));
        if let Some(x) = std::iter::once(selector).chain(roles.iter().map(String::as_str)).find(|s| !name_ok(s)) {
            return Err(bad(&format!("has {x:?}, which is not a selector or role name")));
        }
        // Role by role: `cluster:owner,reader` asks for two things, and gets one.
        let (never, granted): (Vec<String>, Vec<String>) =
            roles.into_iter().partition(|r| r == "owner" && matches!(selector, "cluster" | "node"));
        never_granted.extend(never.into_iter().map(|r| format!("{selector}:{r}")));
        if !granted.is_empty() {
            authorizations.push((selector.to_owned(), granted));
        }
    }
    let flags: Vec<String> = labels
        .get("org.nethserver.flags")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(f) = flags.iter().find(|f| !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
        return Err(format!("label org.nethserver.flags: {f:?} is not a flag name"));
    }
    Ok(Requirements {
        images,
        rootfull,
        tcp_ports: ports(labels, "org.nethserver.tcp-ports-demand")?,
        udp_ports: ports(labels, "org.nethserver.udp-ports-demand")?,
        authorizations,
        never_granted,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn labels_are_checked_and_named() {
        let ok = requirements(&labels(&[
            ("org.nethserver.images", "reg/ns8rs/hello-server:1.0.0"),
            ("org.nethserver.tcp-ports-demand", "2"),
            ("org.nethserver.authorizations", "traefik@node:routeadm node:fwadm,portsadm"),
            ("org.nethserver.flags", "no_data_backup"),
        ]))
        .unwrap();
        assert_eq!(ok.tcp_ports, 2);
        assert_eq!(ok.udp_ports, 0);
        assert!(!ok.rootfull);
        assert_eq!(ok.authorizations[1], ("node".to_owned(), vec!["fwadm".to_owned(), "portsadm".to_owned()]));

        let err = |pairs: &[(&str, &str)]| {
            let mut l = labels(&[("org.nethserver.images", "reg/x/y:1")]);
            l.extend(labels(pairs));
            requirements(&l).unwrap_err().0
        };
        assert!(requirements(&labels(&[])).unwrap_err().0.contains("no org.nethserver.images"));
        assert!(err(&[("org.nethserver.tcp-ports-demand", "lots")]).contains("tcp-ports-demand=\"lots\""));
        assert!(err(&[("org.nethserver.udp-ports-demand", "5000")]).contains("0 to 1000"));
        assert!(err(&[("org.nethserver.rootfull", "yes")]).contains("expected 0 or 1"));
        let asks = |a: &str| {
            let mut l = labels(&[("org.nethserver.images", "reg/x/y:1")]);
            l.insert("org.nethserver.authorizations".into(), a.into());
            requirements(&l).unwrap()
        };
        // Owner of the cluster or of a node is never granted, role by role.
        let r = asks("cluster:owner,reader node:owner self:selfadm traefik@node:routeadm");
        assert_eq!(r.never_granted, ["cluster:owner", "node:owner"]);
        assert_eq!(r.consent().authorizations, ["cluster:reader", "traefik@node:routeadm"], "self needs no consent");
        assert!(!r.consent().rootfull);
        assert!(err(&[("org.nethserver.authorizations", "node:x/y")]).contains("not a selector or role name"));
        assert!(err(&[("org.nethserver.authorizations", "node*:x")]).contains("wildcard"));
        let needed = Consent { authorizations: vec!["node:portsadm".into(), "cluster:reader".into()], rootfull: true };
        let accepted = Consent { authorizations: vec!["cluster:reader".into()], rootfull: false };
        let left = needed.beyond(&accepted);
        assert_eq!(left, Consent { authorizations: vec!["node:portsadm".into()], rootfull: true });
        assert_eq!(left.describe(), "rootful mode (running as root), node:portsadm");
        assert!(needed.beyond(&needed).is_empty());
        assert!(err(&[("org.nethserver.authorizations", "noselector")]).contains("selector:role"));
        assert!(err(&[("org.nethserver.images", "not an image")]).contains("org.nethserver.images"));
    }
}
