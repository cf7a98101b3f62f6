//! What modules and administrators ask of a node's edge proxy (`module/traefik<N>`):
//! NS8's Traefik module actions (reference section 12.1), with its field names, so an
//! NS8 module's `set-route` call works unchanged.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Never;

/// The route the api-server is published by, at `/cluster-admin`: no module takes it.
pub const CLUSTER_ADMIN_ROUTE: &str = "cluster-admin";
/// Its path.
pub const CLUSTER_ADMIN_PATH: &str = "/cluster-admin";
/// The header the cluster-admin route adds to every request: the token that proves
/// to the api-server the request came through this node's proxy (`PROXY_TOKEN_FILE`).
pub const PROXY_TOKEN_HEADER: &str = "X-Ns8rs-Proxy-Token";
/// The role of the route actions (NS8's), which a module asks for with
/// `traefik@node:routeadm`.
pub const ROUTEADM: &str = "routeadm";
/// The role of the certificate actions.
pub const CERTADM: &str = "certadm";
/// The event published when a certificate is issued, renewed, uploaded or removed.
pub const CERTIFICATE_CHANGED: &str = "certificate-changed";
/// Beyond NS8: published once a day for each certificate within 20 days of its end,
/// until it is renewed or replaced (`names`, `serial`, `valid_to`, `days_left`).
pub const CERTIFICATE_EXPIRING: &str = "certificate-expiring";

action! {
    /// `set-route`: create or replace the route `instance`. Returns once Traefik serves it.
    SetRoute = "set-route", SetRouteRequest => SetRouteReply, SetRouteRefusal
}

/// A route as NS8 spells it. `host` and/or `path` select the requests; `url` is where
/// they go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRouteRequest {
    /// The route's name: the caller's module id, or that id followed by `-`, `_` or `.`
    /// and more.
    pub instance: String,
    /// The backend, `http://` or `https://`.
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub lets_encrypt: bool,
    #[serde(default)]
    pub http2https: bool,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub skip_cert_verify: bool,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<ForwardAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<String>,
    /// Set by the portal for routes an administrator made by hand.
    #[serde(default)]
    pub user_created: bool,
    /// With `lets_encrypt`: return only once the certificate is obtained, and refuse
    /// the route (the previous one back) when it is not within a minute (NS8's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lets_encrypt_check: bool,
    /// NS8's request to drop certificates no route uses any more: accepted; here
    /// Traefik's store keeps them until they expire.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lets_encrypt_cleanup: bool,
}

/// Headers set on the request to the backend and on the response; an empty value
/// removes the header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: BTreeMap<String, String>,
    #[serde(default)]
    pub response: BTreeMap<String, String>,
}

impl Headers {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Ask another service whether a request may pass (Traefik's forwardAuth).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuth {
    pub address: String,
    #[serde(default)]
    pub skip_tls_verify: bool,
    #[serde(default)]
    pub auth_response_headers: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SetRouteReply {
    pub instance: String,
    /// Who owns the route: the module that set it, or empty for an administrator's.
    #[serde(default)]
    pub owner: String,
}

refusals! {
    /// Why `set-route` refuses a route, beyond the shape of its fields.
    SetRouteRefusal {
        /// Neither `host` nor `path` (NS8's code).
        MissingPath => ("path", "missing_path_argument"),
        /// No `url` (NS8's code).
        MissingUrl => ("url", "missing_url_argument"),
        /// The caller is a module and the instance is not its own.
        NotOwnInstance => ("instance", "instance_not_owned"),
        /// The cluster-admin route, or a path below it.
        Reserved => ("instance", "instance_reserved"),
        /// Another route already has this host and path.
        HostTaken => ("host", "host_already_routed"),
        /// A module's backend on this node's loopback, on a port the node did not give it.
        PortNotOwned => ("url", "url_port_not_owned"),
        /// Traefik refused the configuration; the previous one keeps serving.
        Refused => ("instance", "instance_refused_by_traefik"),
        /// `lets_encrypt_check`: no certificate within the time; the previous route is back.
        CertificateNotObtained => ("lets_encrypt", "lets_encrypt_check_failed"),
    }
}

action! {
    /// `get-route`: one route, as it was set.
    GetRoute = "get-route", InstanceRequest => RouteRecord, GetRouteRefusal
}

/// An action that names one route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRequest {
    pub instance: String,
}

/// A route as stored: the request that set it and its owner.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RouteRecord {
    #[serde(flatten)]
    pub route: SetRouteRequest,
    /// The module that set it; empty for an administrator's or the node's own.
    #[serde(default)]
    pub owner: String,
}

refusals! {
    /// No such route.
    GetRouteRefusal {
        NotFound => ("instance", "instance_not_found"),
    }
}

action! {
    /// `delete-route`: remove a route; returns once Traefik no longer serves it.
    DeleteRoute = "delete-route", InstanceRequest => (), DeleteRouteRefusal
}

refusals! {
    DeleteRouteRefusal {
        NotFound => ("instance", "instance_not_found"),
        NotOwnInstance => ("instance", "instance_not_owned"),
        Reserved => ("instance", "instance_reserved"),
    }
}

action! {
    /// `list-routes`: the route names, or with `expand_list` the routes (NS8's shapes).
    ListRoutes = "list-routes", ListRoutesRequest => serde_json::Value, Never
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRoutesRequest {
    #[serde(default)]
    pub expand_list: bool,
}

action! {
    /// `configure-module` of the proxy: its listening ports (default 80 and 443).
    Configure = "configure-module", ConfigureRequest => ConfigureReply, Never
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigureRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_port: Option<u16>,
}

/// The ports in use (also `get-configuration`'s answer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigureReply {
    pub http_port: u16,
    pub https_port: u16,
}

/// `certificate-expiring`'s payload (ours).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CertificateExpiring {
    pub node_id: u32,
    pub module_id: String,
    pub names: Vec<String>,
    pub serial: String,
    /// Unix time.
    pub valid_to: i64,
    pub days_left: i64,
    /// `acme` or `custom`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `certificate-changed`'s payload (NS8's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CertificateChanged {
    pub node_id: u32,
    pub module_id: String,
    pub names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ns8s_set_route_input_decodes_and_unknown_fields_are_refused() {
        let r: SetRouteRequest = serde_json::from_value(json!({
            "instance": "dokuwiki1", "url": "http://127.0.0.1:20001", "host": "wiki.example.test",
            "lets_encrypt": true, "http2https": true, "headers": {"request": {"X-A": "1"}},
            "lets_encrypt_check": true, "lets_encrypt_cleanup": false, "user_created": false
        }))
        .unwrap();
        assert_eq!(r.host.as_deref(), Some("wiki.example.test"));
        assert!(r.lets_encrypt && r.http2https && !r.strip_prefix);
        let e = serde_json::from_value::<SetRouteRequest>(json!({"instance": "x", "evil": 1})).unwrap_err();
        assert!(e.to_string().contains("evil"), "{e}");
    }

    #[test]
    fn a_route_record_is_the_route_plus_its_owner_flat() {
        let rec = RouteRecord {
            route: SetRouteRequest {
                instance: "hello1".into(),
                url: "http://127.0.0.1:1".into(),
                ..Default::default()
            },
            owner: "hello1".into(),
        };
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["instance"], "hello1");
        assert_eq!(v["owner"], "hello1");
        assert_eq!(serde_json::from_value::<RouteRecord>(v).unwrap(), rec);
    }
}
