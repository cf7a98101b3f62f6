//! `api-cli` through the api-server: `login`, `run --endpoint`, `logout`, against the
//! real `api-server` and `cluster-agent` binaries on a private redis-server, with the
//! session cached under a temporary HOME.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::bin;
use serde_json::Value;
use testkit::{AgentProcess, AgentTree, Outcome, RedisServer, wait_for};

const PASSWORD: &str = "correct horse battery staple";
const PATIENCE: Duration = Duration::from_secs(30);

/// Redis, the cluster agent (with a failing script action), the api-server, and a
/// HOME for api-cli. Dropping it kills the processes.
struct Stack {
    redis: RedisServer,
    _cluster: (AgentTree, AgentProcess),
    server: (AgentTree, AgentProcess),
    url: String,
    home: tempfile::TempDir,
    http: ureq::Agent,
}

fn start() -> Stack {
    start_with(&[], None)
}

/// With `tls`: the api-server serves HTTPS with this certificate and key (PEM files).
fn start_with(env: &[(&str, &str)], tls: Option<(&Path, &Path)>) -> Stack {
    let redis = RedisServer::start().expect("start redis-server");

    let tree = AgentTree::new().unwrap();
    tree.step("fail", "10fail", "#!/bin/bash\necho 'disk is full' >&2\nexit 3\n").unwrap();
    let agent = AgentProcess::spawn(&bin("cluster-agent"), "cluster", &tree, &redis, &[]).unwrap();
    // Up means connected and its built-in roles defined (the api-server reads them).
    wait_for("the cluster agent", PATIENCE, || {
        let up = redis.cli(&["CLIENT", "LIST"]).ok()?.contains("name=cluster ");
        (up && redis.cli(&["EXISTS", "cluster/roles/owner"]).ok()? == "1").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));

    let server_tree = AgentTree::new().unwrap();
    let secret = server_tree.root().join("secret").display().to_string();
    let mut all = vec![("LISTEN_ADDRESS", "127.0.0.1:0"), ("API_SECRET_FILE", secret.as_str())];
    let tls_paths = tls.map(|(c, k)| (c.display().to_string(), k.display().to_string()));
    if let Some((cert, key)) = &tls_paths {
        all.extend([("TLS_CERT", cert.as_str()), ("TLS_KEY", key.as_str())]);
    }
    all.extend_from_slice(env);
    let server = AgentProcess::spawn_args(&bin("api-server"), &[], &server_tree, &redis, &all).unwrap();
    let url = wait_for("the api-server to listen", PATIENCE, || {
        let log = server.log();
        let line = log.lines().find(|l| l.contains("listening on "))?;
        Some(line.rsplit("listening on ").next()?.trim().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));

    let http = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(PATIENCE)).build().into();
    let stack = Stack {
        redis,
        _cluster: (tree, agent),
        server: (server_tree, server),
        url,
        home: tempfile::tempdir().unwrap(),
        http,
    };
    stack.add_user("admin", &["owner:cluster"]);
    stack
}

impl Stack {
    /// `api-server add-user NAME --password-stdin`, as the installer does.
    fn add_user(&self, name: &str, grants: &[&str]) {
        let mut cmd = Command::new(bin("api-server"));
        cmd.args(["add-user", name, "--password-stdin"]).env("REDIS_ADDRESS", self.redis.address());
        for g in grants {
            cmd.args(["--grant", g]);
        }
        let out = feed(cmd, &format!("{PASSWORD}\n"));
        assert!(out.0.status.success(), "add-user {name}: {out:?}");
    }

    /// api-cli with the stack's HOME (so its own session cache) and Redis address.
    fn api_cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("api-cli"));
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("REDIS_ADDRESS", self.redis.address())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("API_CLI_ENDPOINT")
            .env_remove("REDIS_USER")
            .env_remove("REDIS_PASSWORD")
            .env_remove("NODE_ID")
            .env_remove("AGENT_TASK_ID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Outcome {
        Outcome(self.api_cli(args).output().unwrap())
    }

    /// `api-cli run ARGS --endpoint URL`.
    fn run_http(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend(["--endpoint", self.url.as_str()]);
        self.run(&all)
    }

    /// `api-cli login` with the password on stdin.
    fn login(&self, user: &str, password: &str, extra: &[&str]) -> Outcome {
        let mut args = vec!["login", "--endpoint", self.url.as_str(), "--username", user, "--password-stdin"];
        args.extend_from_slice(extra);
        feed(self.api_cli(&args), &format!("{password}\n"))
    }

    fn cache_dir(&self) -> PathBuf {
        self.home.path().join(".cache/api-cli")
    }

    /// The session files, and the one cached entry's JSON.
    fn cache_entry(&self) -> (PathBuf, Value) {
        let files: Vec<PathBuf> = std::fs::read_dir(self.cache_dir()).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 1, "one session file: {files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        (files[0].clone(), serde_json::from_str(&text).unwrap())
    }

    /// A direct HTTP call: status and message.
    fn get(&self, path: &str, token: &str) -> (u16, String) {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        (resp.status().as_u16(), body["message"].as_str().unwrap_or_default().to_owned())
    }

    fn server_log(&self) -> String {
        self.server.1.log()
    }
}

fn feed(mut cmd: Command, stdin: &str) -> Outcome {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    Outcome(child.wait_with_output().unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn login_run_and_logout() {
    let s = start();
    let url = s.url.clone();

    let out = s.login("admin", PASSWORD, &[]);
    assert_eq!(out.code(), 0, "{out:?}\n{}", s.server_log());
    assert_eq!(out.stdout(), "");
    assert!(out.stderr().contains(&format!("Logged in to {url} as admin")), "{out:?}");

    // The session file: private, holding the token and never the password.
    let (file, entry) = s.cache_entry();
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    assert_eq!(mode(&s.cache_dir()), 0o700);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(PASSWORD), "{text}");
    assert_eq!((entry["endpoint"].as_str(), entry["username"].as_str()), (Some(url.as_str()), Some("admin")));
    let token = entry["token"].as_str().unwrap().to_owned();
    assert!(!out.stderr().contains(&token), "the token is never printed");
    assert_eq!(s.get("/api/cluster/tasks", &token).0, 200);

    // Same output and exit code as the Redis transport.
    let out = s.run_http(&["set-name", "--data", r#"{"name": "Acme HQ"}"#]);
    assert_eq!(out.code(), 0, "{out:?}");
    let http = s.run_http(&["get-name"]);
    let redis = s.run(&["run", "get-name"]);
    assert_eq!(http.code(), 0, "{http:?}");
    assert_eq!(http.stdout(), "{\"name\":\"Acme HQ\"}\n", "{http:?}");
    assert_eq!((http.stdout(), http.stderr()), (redis.stdout(), redis.stderr()), "{http:?}\n{redis:?}");

    // The endpoint may come from the environment.
    let out = Outcome(s.api_cli(&["run", "get-name", "--quiet"]).env("API_CLI_ENDPOINT", &url).output().unwrap());
    assert_eq!((out.code(), out.stdout()), (0, "{\"name\":\"Acme HQ\"}\n".to_owned()), "{out:?}");

    // A failing action's exit code, error text and failure line come through.
    let http = s.run_http(&["fail"]);
    let redis = s.run(&["run", "fail"]);
    assert_eq!(http.code(), 3, "{http:?}");
    assert_eq!(http.stdout(), "");
    let err = http.stderr();
    assert!(err.contains("disk is full\n"), "{err}");
    assert!(err.contains("api-cli: action fail failed on cluster with exit code 3 (task task/cluster/"), "{err}");
    assert_eq!(redis.code(), 3, "{redis:?}");
    let out = s.run_http(&["no-such-action"]);
    assert_eq!(out.code(), 8, "{out:?}");
    assert!(out.stderr().contains("no such action"), "{out:?}");

    // --no-wait: the task id and its key prefix.
    let out = s.run_http(&["get-name", "--no-wait"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let stdout = out.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[1], format!("task/cluster/{}", lines[0]));

    // Logout revokes the token on the server and forgets it here.
    let saved = std::fs::read(&file).unwrap();
    let out = s.run(&["logout", "--endpoint", &url]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stderr().contains(&format!("Logged out of {url} as admin")), "{out:?}");
    assert!(!file.exists());
    let (status, message) = s.get("/api/cluster/tasks", &token);
    assert_eq!(status, 401, "{message}");
    assert!(message.contains("revoked"), "{message}");

    let out = s.run_http(&["get-name"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert_eq!(
        out.stderr(),
        format!("api-cli: not logged in to {url} (or the session expired): run `api-cli login --endpoint {url}`\n")
    );
    // A copy of the revoked session kept aside: the server's refusal is reported as
    // the same advice, with its reason.
    std::fs::write(&file, &saved).unwrap();
    let out = s.run_http(&["get-name"]);
    assert_eq!(out.code(), 2, "{out:?}");
    let err = out.stderr();
    assert!(err.starts_with(&format!("api-cli: not logged in to {url} (or the session expired): run")), "{err}");
    assert!(err.contains("the server said: the session token was revoked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Logging out again is not an error.
    let out = s.run(&["logout", "--endpoint", &url]);
    assert_eq!(out.code(), 0, "{out:?}");
}

#[test]
fn server_refusals_are_printed_as_they_come() {
    let s = start();
    // A grant on a module whose agent is not running (its role defined by hand, as
    // the agent would at its start).
    s.redis.cli(&["SADD", "module/ghost1/roles/owner", "*"]).unwrap();
    s.add_user("ops", &["owner:cluster", "owner:module/ghost1"]);
    let out = s.login("ops", PASSWORD, &[]);
    assert_eq!(out.code(), 0, "{out:?}");

    let out = s.run(&["run", "get-name", "-a", "ghost1", "--endpoint", &s.url, "--username", "ops"]);
    assert_eq!(out.code(), 2, "{out:?}");
    let err = out.stderr();
    assert!(err.starts_with("api-cli: agent module/ghost1 is not running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(s.redis.cli(&["LLEN", "module/ghost1/tasks"]).unwrap(), "0");

    // No role on node 5: the server's 403 names the user, the action and the agent.
    let out = s.run_http(&["get-info", "--agent", "node/5"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("ops may not run action \"get-info\" on node/5"), "{out:?}");

    // A second login on the same endpoint: `run` must be told which one to use.
    assert_eq!(s.login("admin", PASSWORD, &[]).code(), 0);
    let out = s.run_http(&["get-name"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("several users (admin, ops): choose one with --username"), "{out:?}");
    let out = s.run_http(&["get-name", "--username", "admin"]);
    assert_eq!(out.code(), 0, "{out:?}");

    // --check-idle belongs to the Redis transport.
    let out = s.run_http(&["get-name", "--check-idle", "0"]);
    assert_eq!(out.code(), 2, "{out:?}");
}

#[test]
fn refused_logins_exit_2_with_one_line() {
    let s = start();
    let out = s.login("admin", "not the password", &[]);
    assert_eq!(out.code(), 2, "{out:?}");
    let url = &s.url;
    assert_eq!(out.stderr(), format!("api-cli: login to {url} as admin failed: wrong user name or password\n"));
    assert!(!s.cache_dir().exists() || std::fs::read_dir(s.cache_dir()).unwrap().next().is_none());

    // Two-factor authentication on: the password alone is not enough.
    s.add_user("bob", &["owner:cluster"]);
    s.redis.cli(&["HSET", "user/bob", "2fa", "JBSWY3DPEHPK3PXP"]).unwrap();
    let out = s.login("bob", PASSWORD, &[]);
    assert_eq!(out.code(), 2, "{out:?}");
    let err = out.stderr();
    assert!(err.contains("OTP required") && err.contains("--otp CODE"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = s.login("bob", PASSWORD, &["--otp", "000000"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("wrong OTP or recovery code"), "{out:?}");

    // Repeated failures: throttled, with the wait the server asks for.
    let mut throttled = None;
    for _ in 0..12 {
        let out = s.login("carol", "wrong password", &[]);
        assert_eq!(out.code(), 2, "{out:?}");
        if out.stderr().contains("too many failed logins") {
            throttled = Some(out);
            break;
        }
    }
    let out = throttled.expect("throttled after a few failures");
    let err = out.stderr();
    assert!(err.starts_with(&format!("api-cli: login to {url} as carol refused: too many failed logins")), "{err}");
    assert!(err.contains("(Retry-After: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Without a terminal and without --password-stdin there is nothing to read from.
    let out = s.run(&["login", "--endpoint", url]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("--password-stdin"), "{out:?}");
}

#[test]
fn a_token_near_its_expiry_is_refreshed_first() {
    let s = start();
    assert_eq!(s.login("admin", PASSWORD, &[]).code(), 0);
    let (file, mut entry) = s.cache_entry();
    let old = entry["token"].as_str().unwrap().to_owned();
    let lifetime = entry["lifetime"].as_u64().unwrap();
    assert_eq!(lifetime, 3600, "the server's default token lifetime");
    // As if the token had been received 50 minutes ago: in the last quarter of its life.
    entry["obtained"] = (entry["obtained"].as_u64().unwrap() - 3000).into();
    std::fs::write(&file, entry.to_string()).unwrap();

    let out = s.run_http(&["get-name"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let (_, entry) = s.cache_entry();
    let new = entry["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old, "refreshed");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(s.get("/api/cluster/tasks", &new).0, 200);
    let (status, message) = s.get("/api/cluster/tasks", &old);
    assert_eq!(status, 401, "the old token is revoked by the refresh: {message}");
}

#[test]
fn https_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let mut s = start_with(&[], Some((&cert_pem, &key_pem)));
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    // The certificate names localhost.
    s.url = s.url.replace("127.0.0.1", "localhost");

    let out = s.login("admin", PASSWORD, &[]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr().contains("--ca-file"), "a hint for self-signed certificates: {out:?}");

    let ca = cert_pem.display().to_string();
    let out = s.login("admin", PASSWORD, &["--ca-file", &ca]);
    assert_eq!(out.code(), 0, "{out:?}\n{}", s.server_log());
    // The CA file given at login is used again.
    let out = s.run_http(&["get-name"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout().starts_with("{\"name\":"), "{out:?}");
    let out = s.run(&["logout", "--endpoint", &s.url]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(std::fs::read_dir(s.cache_dir()).unwrap().count(), 0, "logged out");
}
