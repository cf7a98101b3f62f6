//! A private S3 server: moto's (`moto[server]` from PyPI, which `cargo xtask test`
//! installs in `target/tools/moto`; `MOTO_SERVER` names another `moto_server`) on a
//! free loopback port, with request signing and IAM policies enforced, so a wrong
//! secret and a read-only key fail as they do on AWS. Killed on drop.
//!
//! Two users exist: `rw` may do anything, `ro` may list and read (and create a
//! bucket) but not write or delete objects.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct S3Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    keys: HashMap<String, (String, String)>,
}

/// The users made at start, each with its IAM policy's actions.
const USERS: &[(&str, &str)] = &[
    ("rw", r#""*""#),
    ("ro", r#"["s3:ListBucket", "s3:GetObject", "s3:CreateBucket", "s3:ListAllMyBuckets", "s3:GetBucketLocation"]"#),
];

/// The IAM calls before signing is enforced: a user, its policy and its key, each.
const BOOTSTRAP_CALLS: usize = 3 * USERS.len();

fn moto_server() -> PathBuf {
    std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/moto/bin/moto_server"))
}

impl S3Server {
    pub fn start() -> Result<Self> {
        let exe = moto_server();
        if !exe.is_file() {
            bail!(
                "moto_server is not at {}: run `cargo xtask test`, which installs it (or set MOTO_SERVER)",
                exe.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.path().join("moto.log"))?;
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("INITIAL_NO_AUTH_ACTION_COUNT", BOOTSTRAP_CALLS.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut server = S3Server { dir, child: Some(child), port, keys: HashMap::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen on {port} within 30 s: {}", server.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.make_users(&exe)?;
        Ok(server)
    }

    /// The users and their keys, with the venv's boto3 (moto depends on it).
    fn make_users(&mut self, exe: &std::path::Path) -> Result<()> {
        let python = exe.with_file_name("python3");
        let users: Vec<String> = USERS.iter().map(|(u, a)| format!("({u:?}, {a})")).collect();
        let script = format!(
            r#"
import boto3, json
iam = boto3.client("iam", endpoint_url="{endpoint}", region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
for user, actions in [{users}]:
    iam.create_user(UserName=user)
    policy = {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": actions, "Resource": "*"}}]}}
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    print(user, k["AccessKeyId"], k["SecretAccessKey"])
"#,
            endpoint = self.endpoint(),
            users = users.join(", ")
        );
        let out = Command::new(&python)
            .args(["-c", &script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        if !out.status.success() {
            bail!("making moto's users failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let [user, id, secret] = line.split_whitespace().collect::<Vec<_>>()[..] {
                self.keys.insert(user.to_owned(), (id.to_owned(), secret.to_owned()));
            }
        }
        if self.keys.len() != USERS.len() {
            bail!("moto gave keys for {:?} only", self.keys.keys());
        }
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`, as an `s3:` URL names the endpoint.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The access key id and secret of `user` (`rw` or `ro`).
    pub fn key(&self, user: &str) -> (String, String) {
        self.keys.get(user).cloned().unwrap_or_else(|| panic!("no moto user {user}"))
    }

    /// Replace `user`'s access key by a new one (the old one expired or was revoked:
    /// requests signed with it are refused from now on); the new key.
    pub fn rotate_key(&mut self, user: &str) -> Result<(String, String)> {
        // Signed with the `rw` user's key (the bootstrap's free calls are spent).
        let (id, _) = self.key(user);
        let (admin_id, admin_secret) = self.key("rw");
        let python = moto_server().with_file_name("python3");
        let script = format!(
            r#"
import boto3
iam = boto3.client("iam", endpoint_url="{endpoint}", region_name="us-east-1",
                   aws_access_key_id={admin_id:?}, aws_secret_access_key={admin_secret:?})
k = iam.create_access_key(UserName={user:?})["AccessKey"]
iam.delete_access_key(UserName={user:?}, AccessKeyId={id:?})
print(k["AccessKeyId"], k["SecretAccessKey"])
"#,
            endpoint = self.endpoint()
        );
        let out = Command::new(&python).args(["-c", &script]).env_clear().env("PATH", "/usr/bin:/bin").output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some((new_id, secret)) = text.trim().split_once(' ').filter(|_| out.status.success()) else {
            bail!("rotating {user}'s key failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let key = (new_id.to_owned(), secret.to_owned());
        self.keys.insert(user.to_owned(), key.clone());
        Ok(key)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Stop the server (an endpoint that does not answer).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
