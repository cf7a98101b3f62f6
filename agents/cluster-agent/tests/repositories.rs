//! Software repositories through the real cluster agent: file:// and http:// indexes,
//! the later repository winning a shared source, testing versions, the cache, and
//! unreachable or disabled repositories.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::agent::Fixture;

fn package(source: &str, tags: &[&str]) -> Value {
    json!({
        "id": source.rsplit('/').next().unwrap(),
        "name": source,
        "source": source,
        "versions": tags.iter().map(|t| json!({"tag": t, "testing": t.contains('-'), "labels": {"org.nethserver.rootfull": "0"}})).collect::<Vec<_>>(),
    })
}

fn write_index(dir: &Path, packages: Vec<Value>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("repodata.json"), Value::Array(packages).to_string()).unwrap();
}

/// BusyBox httpd serving `dir` on a free loopback port; killed on drop.
struct Httpd(Child);

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn httpd(dir: &Path) -> (Httpd, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("busybox (busybox-static) is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "busybox httpd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Httpd(child), port)
}

fn sources(list: &Value) -> Vec<(String, String, Vec<String>)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let tags =
                p["versions"].as_array().unwrap().iter().map(|v| v["tag"].as_str().unwrap().to_owned()).collect();
            (p["source"].as_str().unwrap().to_owned(), p["repository"].as_str().unwrap().to_owned(), tags)
        })
        .collect()
}

#[tokio::test]
async fn repositories_and_list_modules() {
    let f = Fixture::start(Path::new(env!("CARGO_BIN_EXE_cluster-agent")), "cluster", &[]).await;
    let redis = &f.redis;
    let dirs = tempfile::tempdir().unwrap();
    let (a, b, d) = (dirs.path().join("a"), dirs.path().join("b"), dirs.path().join("d"));
    write_index(&b, vec![package("reg/ns8rs/hello", &["2.0.0", "1.0.0"])]);
    write_index(&d, vec![package("reg/ns8rs/bar", &["1.0.0"])]);
    // An image whose labels ask for more than its own agent: list-modules says what.
    let mut greedy = package("reg/ns8rs/greedy", &["1.0.0"]);
    greedy["versions"][0]["labels"] = json!({
        "org.nethserver.images": "reg/ns8rs/greedy-server:1.0.0",
        "org.nethserver.rootfull": "1",
        "org.nethserver.authorizations": "self:selfadm cluster:owner,reader node:portsadm",
    });
    let mut a_packages =
        vec![package("reg/ns8rs/hello", &["1.0.0"]), package("reg/ns8rs/foo", &["0.2.0-beta", "0.1.0"])];
    a_packages.push(greedy);
    write_index(&a, a_packages);
    let (_httpd, port) = httpd(&b);

    let add = |name: &str, url: String, status: bool| json!({"name": name, "url": url, "status": status});
    for (name, url, status) in [
        ("a-local", format!("file://{}", a.display()), true),
        ("b-http", format!("http://127.0.0.1:{port}"), true),
        ("c-down", "http://127.0.0.1:1".to_owned(), true),
        ("d-off", format!("file://{}", d.display()), false),
    ] {
        let r = f.run("add-repository", add(name, url, status)).await;
        assert_eq!(r.exit_code, 0, "{name}: {r:?}");
    }
    // Bad input: a duplicate name, a scheme we do not fetch, an unknown repository.
    let r = f.run("add-repository", add("a-local", "file:///x".into(), true)).await;
    assert_eq!(r.exit_code, 10, "{r:?}");
    assert!(r.output.to_string().contains("already_exists"), "{r:?}");
    let r = f.run("add-repository", add("e", "ftp://example.org".into(), true)).await;
    assert_eq!(r.exit_code, 10, "{r:?}");
    assert_eq!(redis.cli(&["EXISTS", "cluster/repository/e"]).unwrap(), "0");
    let r = f.run("remove-repository", json!({"name": "nope"})).await;
    assert_eq!(r.exit_code, 10, "{r:?}");

    let r = f.run("list-repositories", Value::Null).await;
    let names: Vec<&str> = r.output.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a-local", "b-http", "c-down", "d-off"]);
    assert_eq!(r.output[3]["status"], false);
    assert_eq!(r.output[1]["url"], format!("http://127.0.0.1:{port}/"));

    // The later repository wins a shared source; prereleases hidden; the unreachable
    // and the disabled repositories contribute nothing (and break nothing).
    let r = f.run("list-modules", Value::Null).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(
        sources(&r.output),
        [
            ("reg/ns8rs/foo".to_owned(), "a-local".to_owned(), vec!["0.1.0".to_owned()]),
            ("reg/ns8rs/greedy".to_owned(), "a-local".to_owned(), vec!["1.0.0".to_owned()]),
            ("reg/ns8rs/hello".to_owned(), "b-http".to_owned(), vec!["2.0.0".to_owned(), "1.0.0".to_owned()]),
        ]
    );
    let greedy = &r.output[1]["versions"][0];
    assert_eq!(greedy["consent"], json!({"authorizations": ["cluster:reader", "node:portsadm"], "rootfull": true}));
    assert_eq!(greedy["never_granted"], json!(["cluster:owner"]));
    assert!(r.output[0]["versions"][0]["consent_error"].as_str().unwrap().contains("org.nethserver.images"));

    // Cached: a changed index shows after the cache is cleaned (or altered).
    write_index(&a, vec![package("reg/ns8rs/foo", &["0.3.0", "0.2.0-beta", "0.1.0"])]);
    let r = f.run("list-modules", Value::Null).await;
    assert_eq!(sources(&r.output)[0].2, ["0.1.0"]);
    let r = f.run("alter-repository", json!({"name": "a-local", "testing": true})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let r = f.run("list-modules", Value::Null).await;
    assert_eq!(sources(&r.output)[0].2, ["0.3.0", "0.2.0-beta", "0.1.0"]);

    // Installed instances appear in both lists.
    redis.cli(&["HSET", "cluster/module_node", "hello1", "1"]).unwrap();
    redis.cli(&["HSET", "module/hello1/environment", "IMAGE_URL", "reg/ns8rs/hello:1.0.0"]).unwrap();
    let r = f.run("list-installed-modules", Value::Null).await;
    assert_eq!(r.output["reg/ns8rs/hello"][0]["id"], "hello1");
    assert_eq!(r.output["reg/ns8rs/hello"][0]["version"], "1.0.0");
    assert_eq!(r.output["reg/ns8rs/hello"][0]["node"], "1");
    let r = f.run("clean-repositories-cache", Value::Null).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let r = f.run("list-modules", Value::Null).await;
    let hello = r.output.as_array().unwrap().iter().find(|p| p["source"] == "reg/ns8rs/hello").unwrap();
    assert_eq!(hello["installed"][0]["id"], "hello1");

    let r = f.run("remove-repository", json!({"name": "b-http"})).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(redis.cli(&["EXISTS", "cluster/repository/b-http", "cluster/repository_cache/b-http"]).unwrap(), "0");
}
