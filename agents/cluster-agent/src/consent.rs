//! What an image may get: the administrator's consent to its requests (grants on other
//! agents, rootful mode), the roles it names checked, and its authorizations applied.

use std::collections::HashMap;

use agent_runtime::ActionError;
use bus::fred::prelude::*;
use protocol::actions::cluster::Accept;
use protocol::{AgentId, keys};
use serde_json::json;

use crate::image::{Consent, Requirements};

#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error(
        "label org.nethserver.authorizations asks for the role {role} on {target} ({selector}:{role}), \
         which {target} does not define"
    )]
    Undefined { role: String, target: AgentId, selector: String },
    #[error("redis error: {0}")]
    Redis(#[from] bus::fred::error::Error),
}

/// Refuse, before anything changes, an image whose requests go beyond what was
/// accepted (`before`: what the module already has, for an update). The refusal
/// carries what it would have granted, for the portal to show.
pub fn check(url: &str, req: &Requirements, before: &Consent, accept: Option<&Accept>) -> Result<(), ActionError> {
    let accepted = accept
        .map(|a| Consent {
            authorizations: a.authorizations.iter().map(|x| x.0.clone()).collect(),
            rootfull: a.rootfull,
        })
        .unwrap_or_default();
    let missing = req.consent().beyond(before).beyond(&accepted);
    if missing.is_empty() {
        return Ok(());
    }
    tracing::warn!("{url} refused: it asks for {}, which \"accept\" does not list", missing.describe());
    Err(ActionError::invalid("accept", json!(missing), "consent_required"))
}

/// The installed modules as `(id, node, image name)`, for authorization selectors.
async fn installed_modules(redis: &Client) -> Result<Vec<(String, u32, String)>, bus::fred::error::Error> {
    let nodes: HashMap<String, String> = redis.hgetall(keys::MODULE_NODE).await?;
    let mut installed = Vec::new();
    for (id, n) in nodes {
        let Ok(agent) = AgentId::module(&id) else { continue };
        let url: Option<String> = redis.hget(keys::environment(&agent), "IMAGE_URL").await?;
        let name = url.and_then(|u| protocol::image::parse_reference(&u).ok()).map(|(name, _)| name);
        installed.push((id, n.parse().unwrap_or(0), name.unwrap_or_default()));
    }
    Ok(installed)
}

/// Every role an authorization asks for must exist on the agents it names now (a
/// target installed later is checked by nobody: its roles are its own).
pub async fn check_roles(redis: &Client, node: u32, req: &Requirements) -> Result<(), RolesError> {
    let installed = installed_modules(redis).await?;
    // Not yet installed, so no instance is it.
    let me = AgentId::Module(String::new());
    for (selector, roles) in req.authorizations.iter().filter(|(s, _)| s != "self") {
        for target in selector_targets(selector, &me, node, &installed) {
            for role in roles {
                let defined: bool = redis.exists(keys::role(&target, role)).await?;
                if !defined {
                    return Err(RolesError::Undefined { role: role.clone(), target, selector: selector.clone() });
                }
            }
        }
    }
    Ok(())
}

/// The agents an `org.nethserver.authorizations` selector names, for a module being
/// installed on `node` (NS8 reference 8): `cluster`, `node` (its node), `self`,
/// `<image>@node` (instances of that image on its node), `<image>@cluster` or
/// `<image>` (every instance of that image). `installed` is (id, node, image name).
pub fn selector_targets(selector: &str, me: &AgentId, node: u32, installed: &[(String, u32, String)]) -> Vec<AgentId> {
    match selector {
        "cluster" => vec![AgentId::Cluster],
        "node" => vec![AgentId::Node(node)],
        "self" => vec![me.clone()],
        _ => {
            let (image, scope) = selector.split_once('@').unwrap_or((selector, "cluster"));
            installed
                .iter()
                .filter(|(_, n, name)| name == image && (scope != "node" || *n == node))
                .filter_map(|(id, _, _)| AgentId::module(id).ok())
                .filter(|a| a != me)
                .collect()
        }
    }
}

/// Grant the module the roles its label asks for on the agents its selectors name;
/// the grants made, as `role@agent`.
pub async fn apply_authorizations(
    redis: &Client,
    me: &AgentId,
    node: u32,
    authorizations: &[(String, Vec<String>)],
) -> Result<Vec<String>, bus::fred::error::Error> {
    if authorizations.is_empty() {
        return Ok(Vec::new());
    }
    let installed = installed_modules(redis).await?;
    let mut made = Vec::new();
    for (selector, roles) in authorizations {
        for target in selector_targets(selector, me, node, &installed) {
            for role in roles {
                bus::grants::set_grant(redis, &me.to_string(), &target, role, true).await?;
                made.push(format!("{role}@{target}"));
            }
        }
        // What was granted, as NS8 keeps it (reference 2.4); an update asks consent only
        // for what is not here.
        let entries: Vec<String> = roles.iter().map(|r| format!("{selector}:{r}")).collect();
        let _: i64 = redis.sadd(keys::module_authorizations(me), entries).await?;
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_selectors() {
        let me = AgentId::module("mail1").unwrap();
        let installed = vec![
            ("traefik1".to_owned(), 1, "traefik".to_owned()),
            ("traefik2".to_owned(), 2, "traefik".to_owned()),
            ("mail1".to_owned(), 1, "mail".to_owned()),
        ];
        let t = |s: &str| selector_targets(s, &me, 1, &installed).iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(t("traefik@node"), ["module/traefik1"]);
        assert_eq!(t("traefik@cluster"), ["module/traefik1", "module/traefik2"]);
        assert_eq!(t("traefik"), t("traefik@cluster"));
        assert_eq!(t("node"), ["node/1"]);
        assert_eq!(t("cluster"), ["cluster"]);
        assert_eq!(t("self"), ["module/mail1"]);
        assert_eq!(t("mail@node"), Vec::<String>::new(), "never itself through its image name");
        assert_eq!(t("nothing"), Vec::<String>::new());
    }
}
