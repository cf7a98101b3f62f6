//! Traefik's dynamic configuration, one file per route under `configs/` (JSON, which
//! Traefik's YAML reader takes as it is), and `configs/_tls.yaml` for the certificates.

use protocol::actions::traefik::SetRouteRequest;
use serde_json::{Map, Value, json};

use crate::certs;
use crate::env::{Env, IN_CONTAINER, RESOLVER, pretty, write_atomic};
use crate::fail::Failure;

/// The file of a route's configuration.
pub fn route_file(env: &Env, instance: &str) -> std::path::PathBuf {
    env.configs().join(format!("{instance}.yaml"))
}

/// The Traefik rule of a route. Host and path are checked (no backticks).
pub fn rule(r: &SetRouteRequest) -> String {
    match (&r.host, &r.path) {
        (Some(h), Some(p)) => format!("Host(`{h}`) && PathPrefix(`{p}`)"),
        (Some(h), None) => format!("Host(`{h}`)"),
        (None, Some(p)) => format!("PathPrefix(`{p}`)"),
        (None, None) => String::new(),
    }
}

/// NS8's order (host and path before host before path), longer paths first within one.
pub fn priority(r: &SetRouteRequest) -> u64 {
    let class = match (&r.host, &r.path) {
        (Some(_), Some(_)) => 3,
        (Some(_), None) => 2,
        _ => 1,
    };
    class * 1000 + r.path.as_deref().map(str::len).unwrap_or(0) as u64
}

/// The routers' names in Traefik's API: plain HTTP and HTTPS.
pub fn routers(instance: &str) -> [String; 2] {
    [format!("{instance}-http"), format!("{instance}-https")]
}

/// The middlewares each router uses, in order.
pub fn middlewares(r: &SetRouteRequest) -> (Vec<String>, Vec<String>) {
    let i = &r.instance;
    let mut common = Vec::new();
    if !r.ip_allowlist.is_empty() {
        common.push(format!("{i}-ipallowlist"));
    }
    if r.forward_auth.is_some() {
        common.push(format!("{i}-forwardauth"));
    }
    if r.strip_prefix && r.path.is_some() {
        common.push(format!("{i}-stripprefix"));
    }
    if !r.headers.is_empty() {
        common.push(format!("{i}-headers"));
    }
    let http = if r.http2https { vec![format!("{i}-redirect")] } else { common.clone() };
    (http, common)
}

/// A route's configuration. `uploaded` says an uploaded certificate covers its host:
/// that one is served, and the ACME resolver is not asked (Traefik would otherwise
/// pick either of two certificates for the name).
pub fn route_config(r: &SetRouteRequest, uploaded: bool) -> Value {
    let i = &r.instance;
    let [http_name, https_name] = routers(i);
    let (http_mw, https_mw) = middlewares(r);
    let mut tls = json!({});
    if r.lets_encrypt
        && !uploaded
        && let Some(h) = &r.host
    {
        tls = json!({"certResolver": RESOLVER, "domains": [{"main": h}]});
    }
    let mut mws = Map::new();
    if r.http2https {
        mws.insert(format!("{i}-redirect"), json!({"redirectScheme": {"scheme": "https", "permanent": true}}));
    }
    if !r.ip_allowlist.is_empty() {
        mws.insert(format!("{i}-ipallowlist"), json!({"ipAllowList": {"sourceRange": r.ip_allowlist}}));
    }
    if let Some(fa) = &r.forward_auth {
        mws.insert(
            format!("{i}-forwardauth"),
            json!({"forwardAuth": {
                "address": fa.address,
                "tls": {"insecureSkipVerify": fa.skip_tls_verify},
                "authResponseHeaders": fa.auth_response_headers,
            }}),
        );
    }
    if r.strip_prefix
        && let Some(p) = &r.path
    {
        mws.insert(format!("{i}-stripprefix"), json!({"stripPrefix": {"prefixes": [p]}}));
    }
    if !r.headers.is_empty() {
        // Traefik refuses an empty map here.
        let mut h = Map::new();
        if !r.headers.request.is_empty() {
            h.insert("customRequestHeaders".into(), json!(r.headers.request));
        }
        if !r.headers.response.is_empty() {
            h.insert("customResponseHeaders".into(), json!(r.headers.response));
        }
        mws.insert(format!("{i}-headers"), json!({"headers": h}));
    }
    let mut service = json!({"loadBalancer": {"servers": [{"url": r.url}], "passHostHeader": true}});
    let mut http = json!({
        "routers": {
            http_name: {"rule": rule(r), "priority": priority(r), "entryPoints": ["http"], "service": i, "middlewares": http_mw},
            https_name: {"rule": rule(r), "priority": priority(r), "entryPoints": ["https"], "service": i, "middlewares": https_mw, "tls": tls},
        },
        "services": {},
    });
    if r.skip_cert_verify {
        let transport = format!("{i}-transport");
        service["loadBalancer"]["serversTransport"] = json!(transport);
        http["serversTransports"] = json!({transport: {"insecureSkipVerify": true}});
    }
    http["services"][i] = service;
    if !mws.is_empty() {
        http["middlewares"] = Value::Object(mws);
    }
    json!({"http": http})
}

/// `configs/_tls.yaml`: the default certificate (self-signed unless replaced) and the
/// uploaded ones.
pub fn write_tls(env: &Env) -> Result<(), Failure> {
    let (crt, key) = certs::default_paths();
    let uploaded: Vec<Value> = certs::custom(env)?
        .into_iter()
        .map(|c| {
            json!({
                "certFile": format!("{IN_CONTAINER}/certs/custom/{}.crt", c.id),
                "keyFile": format!("{IN_CONTAINER}/certs/custom/{}.key", c.id),
            })
        })
        .collect();
    let tls = json!({"tls": {
        "stores": {"default": {"defaultCertificate": {
            "certFile": format!("{IN_CONTAINER}/certs/{crt}"),
            "keyFile": format!("{IN_CONTAINER}/certs/{key}"),
        }}},
        "certificates": uploaded,
    }});
    write_atomic(&env.configs().join("_tls.yaml"), &pretty(&tls), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::actions::traefik::Headers;

    #[test]
    fn a_host_route_with_redirect_and_acme() {
        let r = SetRouteRequest {
            instance: "dokuwiki1".into(),
            url: "http://127.0.0.1:20001".into(),
            host: Some("wiki.example.test".into()),
            lets_encrypt: true,
            http2https: true,
            ..Default::default()
        };
        let c = route_config(&r, false);
        let http = &c["http"]["routers"]["dokuwiki1-http"];
        assert_eq!(http["rule"], "Host(`wiki.example.test`)");
        assert_eq!(http["middlewares"], json!(["dokuwiki1-redirect"]));
        let https = &c["http"]["routers"]["dokuwiki1-https"];
        assert_eq!(https["tls"]["certResolver"], RESOLVER);
        assert_eq!(https["priority"], 2000);
        assert_eq!(route_config(&r, true)["http"]["routers"]["dokuwiki1-https"]["tls"], json!({}));
        assert_eq!(c["http"]["services"]["dokuwiki1"]["loadBalancer"]["servers"][0]["url"], "http://127.0.0.1:20001");
    }

    #[test]
    fn a_path_route_strips_its_prefix_and_sets_headers() {
        let mut headers = Headers::default();
        headers.request.insert("X-Forwarded-Prefix".into(), "/app".into());
        let r = SetRouteRequest {
            instance: "app1".into(),
            url: "http://127.0.0.1:1".into(),
            path: Some("/app".into()),
            strip_prefix: true,
            headers,
            ip_allowlist: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        let c = route_config(&r, false);
        assert_eq!(c["http"]["routers"]["app1-https"]["rule"], "PathPrefix(`/app`)");
        assert_eq!(
            c["http"]["routers"]["app1-https"]["middlewares"],
            json!(["app1-ipallowlist", "app1-stripprefix", "app1-headers"])
        );
        assert_eq!(c["http"]["middlewares"]["app1-stripprefix"]["stripPrefix"]["prefixes"], json!(["/app"]));
        assert_eq!(c["http"]["routers"]["app1-https"]["priority"], 1004);
    }
}
