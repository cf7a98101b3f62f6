//! Shared helpers of the api-server integration tests: a real redis-server, the real
//! `api-server` binary (and real agents when a test needs one), and a plain HTTP
//! client.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::{AgentProcess, AgentTree, RedisServer, wait_for};

pub const BIN: &str = env!("CARGO_BIN_EXE_api-server");
pub const PATIENCE: Duration = Duration::from_secs(30);
pub const PASSWORD: &str = "correct horse battery staple";

/// Another binary of the workspace, built next to this one (`cargo xtask test` builds
/// them all first).
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(BIN).with_file_name(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first", p.display());
    p
}

pub struct Api {
    pub redis: RedisServer,
    pub tree: AgentTree,
    pub server: AgentProcess,
    pub url: String,
    pub agents: Vec<(AgentTree, AgentProcess)>,
    /// The server's environment, for a restart.
    env: Vec<(String, String)>,
    http: ureq::Agent,
}

fn spawn_server(tree: &AgentTree, redis: &RedisServer, env: &[(String, String)]) -> (AgentProcess, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // The log file is appended to across restarts: wait for this start's line.
    let listening = |log: &str| log.lines().filter(|l| l.contains("listening on ")).count();
    let before = std::fs::read_to_string(tree.log()).map(|l| listening(&l)).unwrap_or(0);
    let server = AgentProcess::spawn_args(Path::new(BIN), &[], tree, redis, &env).expect("spawn api-server");
    let url = wait_for("the api-server to listen", PATIENCE, || {
        let log = server.log();
        if listening(&log) <= before {
            return None;
        }
        let line = log.lines().rev().find(|l| l.contains("listening on "))?;
        Some(line.rsplit("listening on ").next()?.trim().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    (server, url)
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Api {
    /// Redis and an api-server on a free loopback port, with `env` added.
    pub fn start(env: &[(&str, &str)]) -> Api {
        Self::start_on(RedisServer::start().expect("start redis-server"), env)
    }

    /// Like [`start`](Self::start), with the api-server connecting as the Redis user
    /// `api-server` (created here with `api_server::REDIS_ACL_RULES`).
    pub fn start_with_acl(password: &str) -> Api {
        let redis = RedisServer::start().expect("start redis-server");
        let pass = format!(">{password}");
        let mut rules = vec!["ACL", "SETUSER", "api-server", "on", pass.as_str()];
        rules.extend(api_server::REDIS_ACL_RULES.split_whitespace());
        let reply = redis.cli(&rules).unwrap();
        assert_eq!(reply, "OK", "ACL SETUSER: {reply}");
        Self::start_on(redis, &[("REDIS_USER", "api-server"), ("REDIS_PASSWORD", password)])
    }

    pub fn start_on(redis: RedisServer, env: &[(&str, &str)]) -> Api {
        let tree = AgentTree::new().expect("temp dir");
        let secret = tree.root().join("secret");
        let secret = secret.to_str().unwrap();
        let mut all = vec![("LISTEN_ADDRESS", "127.0.0.1:0"), ("API_SECRET_FILE", secret)];
        all.extend_from_slice(env);
        let env: Vec<(String, String)> = all.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (server, url) = spawn_server(&tree, &redis, &env);
        let http =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(PATIENCE)).build().into();
        let api = Api { redis, tree, server, url, agents: Vec::new(), env, http };
        // What the cluster agent does at its start; most tests need no running agent.
        api.define_builtin_roles("cluster");
        api
    }

    /// Stop the api-server and start it again with the same files and settings.
    pub fn restart_server(&mut self) {
        self.server.kill9();
        let (server, url) = spawn_server(&self.tree, &self.redis, &self.env);
        self.server = server;
        self.url = url;
    }

    /// The server's log since its (re)start.
    pub fn log(&self) -> String {
        self.server.log()
    }

    pub fn define_builtin_roles(&self, agent: &str) {
        for (role, patterns) in protocol::keys::BUILTIN_ROLES {
            let key = format!("{agent}/roles/{role}");
            let mut args = vec!["SADD", key.as_str()];
            args.extend(patterns.iter());
            self.redis.cli(&args).unwrap();
        }
    }

    /// Start a real agent binary (`cluster-agent`, `node-agent`, `module-agent`) and
    /// wait until its Redis connection is up.
    pub fn start_agent(&mut self, bin: &str, id: &str) -> usize {
        let tree = AgentTree::new().expect("temp dir");
        let p = AgentProcess::spawn(&sibling(bin), id, &tree, &self.redis, &[]).expect("spawn agent");
        let name = format!("name={id} ");
        wait_for(&format!("agent {id} to connect"), PATIENCE, || {
            self.redis.cli(&["CLIENT", "LIST"]).ok().filter(|l| l.contains(&name)).map(|_| ())
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", p.log()));
        // Its built-in roles are defined once it is up.
        let key = format!("{id}/roles/owner");
        wait_for("built-in roles", PATIENCE, || (self.redis.cli(&["EXISTS", &key]).ok()? == "1").then_some(()))
            .unwrap();
        self.agents.push((tree, p));
        self.agents.len() - 1
    }

    /// Create an admin user through the command line, as the installer does.
    pub fn add_user(&self, name: &str, password: &str, grants: &[&str]) {
        let mut cmd = Command::new(BIN);
        cmd.arg("add-user").arg(name).arg("--password-stdin").env("REDIS_ADDRESS", self.redis.address());
        for g in grants {
            cmd.arg("--grant").arg(g);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "add-user failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.url);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.header("Content-Type", "application/json").body(body.unwrap_or("").to_owned()).unwrap();
        let mut resp = self.http.run(req).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers =
            resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, body, headers }
    }

    /// A GET answered with bytes (a download): status, headers and the raw body.
    pub fn get_bytes(&self, path: &str, token: Option<&str>) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let url = format!("{}{path}", self.url);
        let mut req = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = self.http.run(req.body(()).unwrap()).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let headers =
            resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
        let body = resp.body_mut().with_config().limit(64 * 1024 * 1024).read_to_vec().unwrap();
        (resp.status().as_u16(), headers, body)
    }

    /// Store `value` under `key` as raw bytes (binary-safe, unlike `redis-cli`
    /// arguments), expiring after `ttl_ms`, over the server's socket with the
    /// default user's full rights.
    pub fn set_bytes(&self, key: &str, value: &[u8], ttl_ms: u64) {
        use std::io::Read;
        let ttl = ttl_ms.to_string();
        let args: [&[u8]; 5] = [b"SET", key.as_bytes(), value, b"PX", ttl.as_bytes()];
        let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            cmd.extend_from_slice(a);
            cmd.extend_from_slice(b"\r\n");
        }
        let mut conn = std::os::unix::net::UnixStream::connect(self.redis.socket()).unwrap();
        conn.write_all(&cmd).unwrap();
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n", "SET {key}: {}", String::from_utf8_lossy(&reply));
    }

    pub fn get(&self, path: &str, token: &str) -> Reply {
        self.request("GET", path, Some(token), None, &[])
    }

    pub fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(token), Some(&body.to_string()), &[])
    }

    /// Log in from `from`, as a trusted proxy would forward it (`X-Forwarded-For`).
    pub fn login_from(&self, from: &str, user: &str, password: &str) -> Reply {
        let body = serde_json::json!({"username": user, "password": password}).to_string();
        self.request("POST", "/api/login", None, Some(&body), &[("X-Forwarded-For", from)])
    }

    pub fn login(&self, user: &str, password: &str, otp: Option<&str>) -> Reply {
        let mut body = serde_json::json!({"username": user, "password": password});
        if let Some(o) = otp {
            body["otp"] = o.into();
        }
        self.request("POST", "/api/login", None, Some(&body.to_string()), &[])
    }

    /// Log in and return the token; fails the test otherwise.
    pub fn token(&self, user: &str, password: &str) -> String {
        let r = self.login(user, password, None);
        assert_eq!(r.status, 200, "login {user}: {r:?}");
        r.body["token"].as_str().unwrap().to_owned()
    }

    /// Wait for a task's status (200 once it finished).
    pub fn wait_task(&self, agent_path: &str, id: &str, token: &str) -> Reply {
        let path = format!("/api/{agent_path}/task/{id}/status");
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let r = self.get(&path, token);
            // 404 until the agent has taken the task, 400 while it runs.
            if !matches!(r.status, 400 | 404) || std::time::Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The audit records, newest first.
    pub fn audit(&self, token: &str, query: &str) -> Vec<Value> {
        let r = self.get(&format!("/api/audit?{query}"), token);
        assert_eq!(r.status, 200, "{r:?}");
        r.data()["audits"].as_array().unwrap().clone()
    }
}
