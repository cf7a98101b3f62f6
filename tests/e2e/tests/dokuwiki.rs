//! DokuWiki, a real application, as a sysadmin uses it: installed from the local
//! repository with one action into rootless Podman, configured (title, administrator),
//! a page edited through the wiki's own API as that administrator, the module crashed
//! and back with the edit, updated to a newer version, a failing update rolled back
//! while the wiki keeps serving the edit, and removed leaving nothing.

use std::io::{Read, Write};
use std::time::Duration;

use e2e::LocalCluster;
use e2e::modules::{build, build_variant, crash, page, port_of, run, traces, update, write_step};
use serde_json::json;

/// One XML-RPC call to DokuWiki's API: the response body and its `Set-Cookie`.
/// `params` are strings; `extra` is appended as raw XML parameters.
fn xmlrpc(port: u16, cookie: &str, method: &str, params: &[&str], extra: &str) -> (String, String) {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
    let mut params: String =
        params.iter().map(|p| format!("<param><value><string>{}</string></value></param>", esc(p))).collect();
    params.push_str(extra);
    let body = format!(
        "<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /lib/exe/xmlrpc.php HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\nCookie: {cookie}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    // The last value of each cookie wins; PHP first expires the old one.
    let mut jar: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for c in head.lines().filter_map(|l| l.strip_prefix("Set-Cookie: ")).filter_map(|c| c.split(';').next()) {
        if let Some((name, value)) = c.split_once('=') {
            if value == "deleted" {
                jar.remove(name);
            } else {
                jar.insert(name, value);
            }
        }
    }
    let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (body.to_owned(), cookies.join("; "))
}

#[test]
fn dokuwiki_install_configure_edit_crash_update_rollback_remove() {
    let c = LocalCluster::start_with(&["dokuwiki"]);
    let reg = c.registry();
    let work = tempfile::tempdir().unwrap();

    // One action installs it, by name, from the repository.
    // It asks to set its route on the node's edge proxy: the administrator accepts.
    let install = json!({"image": "dokuwiki", "node": 1, "accept": {"authorizations": ["traefik@node:routeadm"]}});
    let out = run(&c, "add-module", "cluster", install).unwrap();
    let id = out["module_id"].as_str().unwrap().to_owned();
    let agent = format!("module/{id}");
    let port = port_of(&c, &id);
    assert!(page(port, "/doku.php").contains("<title>start [DokuWiki]</title>"), "{}", c.log());
    let conf = run(&c, "get-configuration", &agent, json!(null)).unwrap();
    assert_eq!(conf["configured"], false, "no administrator before configure-module: {conf}");

    // Bad input is refused by the action's schema and changes nothing.
    let err = run(
        &c,
        "configure-module",
        &agent,
        json!({"title": "x", "admin_user": "Bad User!", "admin_password": "short"}),
    )
    .unwrap_err();
    assert!(err.contains("admin_user") && err.contains("admin_password"), "{err}");
    assert_eq!(run(&c, "get-configuration", &agent, json!(null)).unwrap()["configured"], false);

    let password = "correct horse battery";
    run(
        &c,
        "configure-module",
        &agent,
        json!({"title": "Acme Wiki", "admin_user": "boss", "admin_password": password}),
    )
    .unwrap();
    let conf = run(&c, "get-configuration", &agent, json!(null)).unwrap();
    assert_eq!((conf["title"].as_str(), conf["admin_user"].as_str()), (Some("Acme Wiki"), Some("boss")), "{conf}");
    assert_eq!(conf["url"], format!("http://127.0.0.1:{port}/"));
    assert!(page(port, "/doku.php").contains("<title>start [Acme Wiki]</title>"));
    // The password is nowhere in Redis: task contexts mask it, the wiki hashes it.
    let keys = c.redis(&["--scan", "--pattern", &format!("task/{agent}/*")]);
    assert!(keys.contains("/context"), "{keys}");
    for key in keys.lines() {
        assert!(!c.redis(&["GET", key]).contains(password), "{key} holds the password");
    }
    assert!(!c.redis(&["HGETALL", &format!("{agent}/environment")]).contains(password));
    let state = std::fs::read_to_string(format!("/home/{id}/.config/state/environment")).unwrap();
    assert!(!state.contains(password));

    // Edit a page through the wiki's API as the administrator.
    let (body, cookie) = xmlrpc(port, "", "dokuwiki.login", &["boss", password], "");
    assert!(body.contains("<boolean>1</boolean>"), "login: {body}");
    let (body, _) = xmlrpc(
        port,
        &cookie,
        "wiki.putPage",
        &["start", "Edited by the sysadmin, then kept safe."],
        "<param><value><struct><member><name>sum</name><value><string>by the test</string></value></member></struct></value></param>",
    );
    assert!(body.contains("<boolean>1</boolean>"), "putPage with {cookie:?}: {body}");
    let (wrong, _) = xmlrpc(port, "", "dokuwiki.login", &["boss", "wrong password"], "");
    assert!(wrong.contains("<boolean>0</boolean>"), "{wrong}");
    let edited = "Edited by the sysadmin, then kept safe.";
    assert!(page(port, "/doku.php?id=start").contains(edited));

    // Everything the module runs dies; it comes back with the page.
    crash(&id);
    assert!(page(port, "/doku.php?id=start").contains(edited), "{}", c.log());

    // A newer version: same data, title and account.
    build(&c, "1.1.0", "dokuwiki");
    let out = update(&c, "dokuwiki", "1.1.0", &[&id]).unwrap();
    assert_eq!(out["instances"][0]["previous_image_url"], format!("{reg}/ns8rs/dokuwiki:1.0.0"));
    assert!(page(port, "/doku.php?id=start").contains(edited));
    assert!(page(port, "/doku.php").contains("Acme Wiki"));

    // A version whose update step fails after changing the settings: rolled back, the
    // wiki serves the edit and the old title again, on 1.1.0.
    build_variant(&c, work.path(), "dokuwiki", "1.2.0", |d| {
        write_step(
            d,
            "update-module",
            "60migrate",
            "#!/bin/sh\nset -e\nprintf '{\"title\":\"Broken\",\"admin_user\":\"x\",\"admin_password\":\"xxxxxxxx\"}' \
             | podman exec -i dokuwiki /usr/local/bin/dokuwiki-configure\necho 'schema migration failed' >&2\nexit 1\n",
        );
    });
    let err = update(&c, "dokuwiki", "1.2.0", &[&id]).unwrap_err();
    assert!(err.contains("schema migration failed") && err.contains("rolled back to"), "{err}\n{}", c.log());
    assert!(page(port, "/doku.php?id=start").contains(edited));
    assert!(page(port, "/doku.php").contains("<title>start [Acme Wiki]</title>"));
    assert_eq!(run(&c, "get-configuration", &agent, json!(null)).unwrap()["admin_user"], "boss");
    assert_eq!(c.redis(&["HGET", &format!("{agent}/environment"), "IMAGE_URL"]), format!("{reg}/ns8rs/dokuwiki:1.1.0"));

    // Removed: nothing of it is left.
    run(&c, "remove-module", "cluster", json!({"module_id": id})).unwrap();
    assert!(traces(&c, &id).is_empty(), "{:?}", traces(&c, &id));
    assert!(e2e::modules::http_get(port, "/").is_none());
}
