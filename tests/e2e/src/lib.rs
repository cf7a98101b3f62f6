//! End-to-end tests of the whole system live in `tests/`; this library finds the
//! binaries they drive and runs a local cluster for them.

pub mod modules;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the workspace's binaries are: `$NS8RS_BIN_DIR`, or the profile directory this
/// test was built in (`cargo xtask test` builds every binary there first).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NS8RS_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(|deps| deps.parent()).expect("test binary lives in target/<profile>/deps").to_owned()
}

/// Path of one binary, or a clear failure if it was not built.
/// Where tests keep what a person may want to look at afterwards (screenshots):
/// `target/test-artifacts/`, made if missing.
pub fn artifact_dir() -> PathBuf {
    let dir = bin_dir().parent().map(|t| t.join("test-artifacts")).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).expect("create the artifact directory");
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

/// The stdout of a command that must have succeeded; else fail with both outputs.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A local cluster brought up by the real `cargo xtask up` (supervisor, Redis,
/// registry, agents, api-server) on free ports, under a temporary root; `down --purge`
/// on drop removes it with its modules' users, even when the test failed.
pub struct LocalCluster {
    pub root: tempfile::TempDir,
    pub redis_port: u16,
    pub api_port: u16,
    pub registry_port: u16,
    /// The edge proxy's ports (when `traefik` is among the modules).
    pub http_port: u16,
    pub https_port: u16,
    /// What `up` printed.
    pub up_output: String,
    /// The modules `up` builds into the repository.
    pub modules: Vec<String>,
    /// Module ids of this cluster start after this number (see `module_id`).
    pub id_base: u64,
}

/// A base for a test cluster's module ids: Unix user names are machine-wide, and a
/// cluster left running by `cargo xtask up` (or a crashed test) may hold `hello1`.
/// Each cluster takes a block of 1000 numbers that no account's trailing number is in.
fn pick_id_base() -> u64 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static TAKEN: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let used: HashSet<u64> = passwd
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter_map(|name| {
            let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
            digits.parse::<u64>().ok()
        })
        .map(|n| n / 1000)
        .collect();
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    // Start somewhere that depends on the process, so two test processes rarely race.
    let start = u64::from(std::process::id()) % 900 + 1;
    let block = (0..900).map(|i| (start + i) % 900 + 1).find(|b| !used.contains(b) && !taken.contains(b));
    let block = block.expect("a free block of module ids");
    taken.insert(block);
    block * 1000
}

impl LocalCluster {
    /// The `up` arguments for this cluster's ports and the tests' binaries.
    pub fn up_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["up", "--redis-port", &self.redis_port.to_string()].map(str::to_owned).to_vec();
        args.extend(["--api-port".to_owned(), self.api_port.to_string()]);
        args.extend(["--registry-port".to_owned(), self.registry_port.to_string()]);
        args.extend(["--bin-dir".to_owned(), bin_dir().display().to_string()]);
        args.extend(["--modules".to_owned(), self.modules.join(",")]);
        args.extend(["--http-port".to_owned(), self.http_port.to_string()]);
        args.extend(["--https-port".to_owned(), self.https_port.to_string()]);
        args.extend(["--id-base".to_owned(), self.id_base.to_string()]);
        args
    }

    /// Up with only the `hello` module in its repository (quick to build).
    pub fn start() -> Self {
        Self::start_with(&["hello"])
    }

    /// Up with these modules built into its repository.
    pub fn start_with(modules: &[&str]) -> Self {
        Self::start_on(modules, free_port())
    }

    /// The same, its registry on `registry_port`: a cluster that replaces a lost one
    /// finds its images where the lost one's were (as a real cluster finds them in a
    /// public registry).
    pub fn start_on(modules: &[&str], registry_port: u16) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        // Module agents run as their own users from <root>/bin.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut c = LocalCluster {
            root,
            redis_port: free_port(),
            api_port: free_port(),
            registry_port,
            http_port: free_port(),
            https_port: free_port(),
            up_output: String::new(),
            modules: modules.iter().map(|m| m.to_string()).collect(),
            id_base: pick_id_base(),
        };
        let args = c.up_args();
        let out = c.xtask(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if !out.status.success() {
            panic!(
                "xtask up failed: {}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                c.log()
            );
        }
        c.up_output = String::from_utf8_lossy(&out.stdout).into_owned();
        for m in c.modules.clone() {
            c.reserve_ids(&m);
        }
        c
    }

    /// Make this cluster's instances of image `name` take ids above `id_base`; done
    /// for the repository's modules at start, and needed before installing any other.
    pub fn reserve_ids(&self, name: &str) {
        let key = protocol::keys::module_sequence(name);
        self.redis(&["SET", &key, &self.id_base.to_string(), "NX"]);
    }

    /// The id of this cluster's `n`th instance of image `name` (1 for the first).
    pub fn module_id(&self, name: &str, n: u64) -> String {
        self.reserve_ids(name);
        format!("{name}{}", self.id_base + n)
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn redis_address(&self) -> String {
        format!("127.0.0.1:{}", self.redis_port)
    }

    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    pub fn xtask(&self, args: &[&str]) -> Output {
        Command::new(bin("xtask")).args(args).arg("--root").arg(self.root.path()).output().expect("run xtask")
    }

    pub fn api_cli(&self, args: &[&str]) -> Output {
        Command::new(self.root.path().join("bin/api-cli"))
            .args(args)
            .env("REDIS_ADDRESS", self.redis_address())
            .output()
            .expect("run api-cli")
    }

    /// The `REDIS_*` variables of one of the cluster's programs (`cluster`, `node`,
    /// `api-server`), from the credentials file only root can read.
    pub fn credentials(&self, program: &str) -> Vec<(String, String)> {
        let file = match program {
            "cluster" | "node" => self.root.path().join(program).join("state/agent.env"),
            other => self.root.path().join(other).join("agent.env"),
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        protocol::envfile::parse(&text)
    }

    /// `redis-cli` against the cluster's Redis, as the cluster agent's user; stdout.
    pub fn redis(&self, args: &[&str]) -> String {
        let creds = self.credentials("cluster");
        let var = |k: &str| creds.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.redis_port.to_string()])
            .args(["--user", &var("REDIS_USER")])
            .env("REDISCLI_AUTH", var("REDIS_PASSWORD"))
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// SIGKILL the running program started from the cluster's `bin/<binary>` (the
    /// supervisor starts it again).
    pub fn kill9(&self, binary: &str) {
        let exe = self.root.path().join("bin").join(binary).display().to_string();
        let pid = std::fs::read_dir("/proc")
            .expect("read /proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with(&exe))
            })
            .unwrap_or_else(|| panic!("{binary} is not running"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    }

    /// Pids of processes started from the cluster's root.
    pub fn processes(&self) -> Vec<u32> {
        let root = self.root.path().display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&root))
            })
            .collect()
    }

    /// Every log of the cluster, for failure messages.
    pub fn log(&self) -> String {
        let mut all = String::new();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(self.root.path().join("log")).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all.push_str(&format!("--- {}\n", f.display()));
            for l in tail.into_iter().rev() {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.xtask(&["down", "--purge"]);
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
