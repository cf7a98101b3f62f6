//! `openapi.json` documents exactly the routes the server has, and the server serves it.

mod common;

use std::collections::BTreeSet;

use api_server::routes::ROUTES;
use common::{Api, PASSWORD};
use serde_json::Value;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// `(method, path)` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("\"paths\" is an object");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().unwrap_or_else(|| panic!("{path}: not an object"));
        for method in item.keys().filter(|k| METHODS.contains(&k.as_str())) {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

/// Every `$ref` in `v`, with where it was found.
fn refs<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push((at.to_owned(), r)),
                    _ => refs(x, &format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(items) => items.iter().enumerate().for_each(|(i, x)| refs(x, &format!("{at}/{i}"), out)),
        _ => {}
    }
}

#[test]
fn document_lists_exactly_the_routes() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("\"openapi\" version string");
    assert!(version.starts_with("3."), "OpenAPI 3.x expected, found {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string(), "info.title and info.version");

    let documented = operations(&doc);
    let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(routed.len(), ROUTES.len(), "ROUTES lists a route twice");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(unrouted.is_empty(), "openapi.json documents operations the server does not route: {unrouted:?}");
}

#[test]
fn operations_are_complete_and_references_resolve() {
    let doc = document();
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let what = format!("{} {path}", method.to_uppercase());
        assert!(op["summary"].is_string(), "{what}: no summary");
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{what}: no responses"));
        assert!(responses.keys().any(|s| s.starts_with('1') || s.starts_with('2')), "{what}: no success response");
        // Each `{name}` of the path is declared as a path parameter, and nothing else is.
        let in_path: BTreeSet<&str> =
            path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')).collect();
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(in_path, declared, "{what}: path parameters");
        // A token-authenticated operation says how it refuses a caller.
        let security = op.get("security").unwrap_or(&doc["security"]);
        let schemes: Vec<&Value> = security.as_array().map(|s| s.iter().collect()).unwrap_or_default();
        let optional = schemes.is_empty() || schemes.iter().any(|r| r.as_object().is_some_and(|o| o.is_empty()));
        if !optional && schemes.iter().any(|r| r.get("bearerAuth").is_some()) {
            assert!(responses.contains_key("401"), "{what}: authenticated but no 401");
            assert!(responses.contains_key("503"), "{what}: reads Redis but no 503");
        }
    }
    let mut found = Vec::new();
    refs(&doc, "#", &mut found);
    assert!(!found.is_empty());
    for (at, r) in found {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{at}: external reference {r}"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {r} does not resolve");
    }
}

/// A concrete URL path for a route, with valid-looking parameters.
fn concrete(path: &str) -> String {
    path.replace("{node_id}", "1")
        .replace("{module_id}", "traefik1")
        .replace("{task_id}", "0d3c8a1e-8e1b-4a0b-9d51-1c4f1e2f3a4b")
        .replace("{action}", "get-name")
        .replace("{user}", "alice")
        .replace("{token}", &"0".repeat(64))
        .replace("{file}", protocol::actions::disaster::DOWNLOAD_FILE)
}

#[test]
fn served_document_and_every_route_is_routed() {
    let api = Api::start(&[]);
    api.add_user("admin", PASSWORD, &["owner:cluster"]);
    let token = api.token("admin", PASSWORD);

    let served = api.request("GET", "/api/openapi.json", None, None, &[]);
    assert_eq!(served.status, 200, "{served:?}");
    assert!(
        served.header("content-type").is_some_and(|c| c.starts_with("application/json")),
        "content type: {:?}",
        served.header("content-type")
    );
    assert_eq!(served.body, document(), "GET /api/openapi.json differs from openapi.json");

    // What the fallback answers, so the check below means something.
    let unknown = api.get("/api/no-such-route", &token);
    assert_eq!((unknown.status, unknown.message()), (404, "API not found"), "{unknown:?}");

    // Logout last: it revokes the token.
    let mut routes: Vec<&(&str, &str)> = ROUTES.iter().collect();
    routes.sort_by_key(|(_, p)| *p == "/api/logout");
    for (method, path) in routes {
        let url = concrete(path);
        let body = (*method != "get" && *method != "delete").then_some("{}");
        let r = api.request(&method.to_uppercase(), &url, Some(&token), body, &[]);
        assert!(
            !(r.status == 404 && r.message() == "API not found"),
            "{} {url} ({path}) is not routed: {r:?}",
            method.to_uppercase()
        );
        assert_ne!(r.status, 405, "{} {url}: method not allowed", method.to_uppercase());
    }
}
