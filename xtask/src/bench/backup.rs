//! `cargo xtask bench --only backup`: our backup and restore against bare restic, on
//! the same data, side by side in each run.
//!
//! A local cluster of release binaries runs `hello`; about `--backup-mb` MB of mixed
//! files (many small, some medium, a few large; random, so incompressible, from a
//! fixed seed) are generated in its `state/`. Each run, alternating which goes first:
//! * full backup: `run-backup` of a plan to a local destination (the gateway, restic as
//!   the module in its namespaces, retention and statistics) against `restic backup`
//!   of the same directory, as root, into a fresh local repository;
//! * incremental: 1% of the files rewritten, then both again;
//! * restore: the node's `restore-module-data` (services stopped, restic restore as the
//!   module through the gateway, services started) against `restic restore latest`
//!   into an empty directory, as root.
//!
//! Targets (issue 12): full backup within 1.15x of bare restic; the incremental under
//! 10% of the full; the restore within 1.15x.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::measure::median;
use super::modules::{Cluster, install};

#[derive(clap::Args, Clone)]
pub struct BackupArgs {
    /// Megabytes of data generated in the module's state.
    #[arg(long, default_value_t = 1024)]
    pub(super) backup_mb: u64,
}

const PASSWORD: &str = "bench restic password";

/// A small deterministic generator (xorshift64*): the same files every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `mb` MB of files under `dir`: 70% of the count small (1-64 KB), 29% medium (64 KB
/// to 4 MB), 1% large (16-64 MB), until the size is reached. Their paths.
fn generate(dir: &Path, mb: u64) -> Result<Vec<PathBuf>> {
    let mut rng = Random(0x9E37_79B9_7F4A_7C15);
    let target = mb * 1024 * 1024;
    let (mut total, mut files) = (0u64, Vec::new());
    let mut buf = vec![0u8; 64 * 1024 * 1024];
    while total < target {
        let pick = rng.next() % 100;
        let size = match pick {
            0 => 16 * 1024 * 1024 + rng.next() % (48 * 1024 * 1024),
            1..=29 => 64 * 1024 + rng.next() % (4 * 1024 * 1024 - 64 * 1024),
            _ => 1024 + rng.next() % (63 * 1024),
        }
        .min(target - total + 1024) as usize;
        let sub = dir.join(format!("d{:03}", files.len() / 100));
        std::fs::create_dir_all(&sub)?;
        let path = sub.join(format!("f{}.bin", files.len()));
        rng.fill(&mut buf[..size]);
        std::fs::write(&path, &buf[..size])?;
        total += size as u64;
        files.push(path);
    }
    Ok(files)
}

/// Rewrite every hundredth file (new random content, same size).
fn change_one_percent(files: &[PathBuf], seed: u64) -> Result<()> {
    let mut rng = Random(seed);
    for f in files.iter().step_by(100) {
        let mut data = std::fs::read(f)?;
        rng.fill(&mut data);
        std::fs::write(f, data)?;
    }
    Ok(())
}

fn restic(repo: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("restic")
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .output()
        .context("cannot run restic")?;
    if !out.status.success() {
        bail!("restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The module's uid, for chown.
fn uid_of(id: &str) -> Result<(u32, u32)> {
    let u = nix::unistd::User::from_name(id)?.with_context(|| format!("no user {id}"))?;
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

#[derive(Default)]
struct Figures {
    ours_full: Vec<f64>,
    bare_full: Vec<f64>,
    ours_incr: Vec<f64>,
    bare_incr: Vec<f64>,
    ours_restore: Vec<f64>,
    bare_restore: Vec<f64>,
}

pub fn bench(release: &Path, args: &BackupArgs, runs: usize) -> Result<()> {
    crate::packages::ensure(&[crate::packages::RESTIC, crate::packages::RCLONE])?;
    let mut f = Figures::default();
    for run in 0..runs {
        eprintln!("xtask: backup: run {}/{runs}", run + 1);
        let c = Cluster::up(release, "hello", &[])?;
        let (_, id) = install(&c, "hello", "/")?;
        let state = PathBuf::from(format!("/home/{id}/.config/state"));
        // The bench's own data, in the module it has just made (trusted here).
        let data = state.join("bench");
        let files = generate(&data, args.backup_mb)?;
        let (uid, gid) = uid_of(&id)?;
        crate::run(Command::new("chown").args(["-R", &format!("{uid}:{gid}")]).arg(&data))?;
        let scratch = tempfile::tempdir()?;
        let dest = scratch.path().join("dest");
        std::fs::create_dir(&dest)?;
        let bare = scratch.path().join("bare");
        restic(&bare, &["init"])?;
        let added = c.api_cli(&[
            "run",
            "add-backup-repository",
            "--data",
            &json!({"provider": "local", "url": format!("local:{}", dest.display()), "password": PASSWORD}).to_string(),
        ])?;
        let dest_id = added["id"].as_str().context("no destination id")?.to_owned();
        let plan =
            json!({"repository": dest_id, "schedule": "yearly", "retention": 10, "instances": [id], "enabled": false});
        let plan_id = c.api_cli(&["run", "add-backup", "--data", &plan.to_string()])?;
        let plan_id = plan_id.as_u64().context("no plan id")?;
        let ours = || c.api_cli(&["run", "run-backup", "--data", &json!({"id": plan_id}).to_string()]).map(|_| ());
        let bare_backup = || restic(&bare, &["backup", "-q", &state.display().to_string()]);
        let ours_first = run % 2 == 0;
        let pair = |a: &dyn Fn() -> Result<()>, b: &dyn Fn() -> Result<()>| -> Result<(f64, f64)> {
            if ours_first {
                let x = timed(a)?;
                Ok((x, timed(b)?))
            } else {
                let y = timed(b)?;
                Ok((timed(a)?, y))
            }
        };
        let (o, b) = pair(&ours, &bare_backup)?;
        f.ours_full.push(o);
        f.bare_full.push(b);
        change_one_percent(&files, 7 + run as u64)?;
        let (o, b) = pair(&ours, &bare_backup)?;
        f.ours_incr.push(o);
        f.bare_incr.push(b);
        // Restores: ours into the module (its data as it is), bare into an empty dir.
        let uuid = c.redis_cli(&["HGET", protocol::keys::MODULE_UUID, &id]);
        let destination = json!({"id": dest_id, "provider": "local", "url": format!("local:{}", dest.display()),
                                 "password": PASSWORD});
        let restore = json!({"module_id": id, "from": {"destination": destination, "path": format!("hello/{uuid}"),
                                                       "snapshot": "latest"}});
        let target = scratch.path().join("restored");
        let ours_restore = || {
            c.api_cli(&["run", "restore-module-data", "--agent", "node/1", "--data", &restore.to_string()]).map(|_| ())
        };
        let bare_restore = || {
            let _ = std::fs::remove_dir_all(&target);
            restic(&bare, &["restore", "latest", "--target", &target.display().to_string()])
        };
        let (o, b) = pair(&ours_restore, &bare_restore)?;
        f.ours_restore.push(o);
        f.bare_restore.push(b);
    }
    report(&f, args);
    Ok(())
}

fn report(f: &Figures, args: &BackupArgs) {
    let m = |v: &Vec<f64>| median(v.clone());
    println!(
        "\n## Backups ({} MB generated, local destination, release build, {} runs)\n",
        args.backup_mb,
        f.ours_full.len()
    );
    println!("| | ours (median) | bare restic (median) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    let row = |name: &str, o: f64, b: f64, target: &str| {
        println!("| {name} | {o:.2} s | {b:.2} s | {:.2}x | {target} |", o / b);
    };
    row("full backup", m(&f.ours_full), m(&f.bare_full), "within 1.15x");
    row("incremental (1% changed)", m(&f.ours_incr), m(&f.bare_incr), "");
    row("restore", m(&f.ours_restore), m(&f.bare_restore), "within 1.15x");
    println!("\nIncremental against full, ours: {:.1}% (target under 10%)", 100.0 * m(&f.ours_incr) / m(&f.ours_full));
}
