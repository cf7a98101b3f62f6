//! The api-server benchmark's report: medians over the runs and the targets.

use anyhow::{Result, bail};

use super::api::{ApiArgs, ApiRun};
use super::measure::median;

/// Targets on the reference 2-core machine.
const READS_TARGET: f64 = 10_000.0;
const LOGIN_TARGET_MS: (f64, f64) = (50.0, 250.0);

pub(super) fn print(runs: &[ApiRun], args: &ApiArgs) {
    let med = |f: &dyn Fn(&ApiRun) -> f64| median(runs.iter().map(f).collect());
    let each = |f: &dyn Fn(&ApiRun) -> f64, prec: usize| {
        runs.iter().map(|r| format!("{:.*}", prec, f(r))).collect::<Vec<_>>().join(" / ")
    };
    let ok = |b: bool| if b { "ok" } else { "MISSED" };
    let rate = med(&|r| r.rate);
    let (login50, login90) = (med(&|r| r.login_p50), med(&|r| r.login_p90));
    let errors: usize = runs.iter().map(|r| r.errors).sum();
    println!();
    println!(
        "api-server benchmark: medians of {} runs; reads: {} keep-alive clients on {} threads, {} s warm-up, {} s measured; {} sequential logins.",
        runs.len(),
        args.api_clients,
        args.api_threads.clamp(1, args.api_clients.max(1)),
        args.api_warmup,
        args.api_secs,
        args.logins
    );
    println!();
    println!("| measure | median | each run |");
    println!("| --- | --- | --- |");
    println!("| task status reads | {:.0} req/s | {} |", rate, each(&|r| r.rate, 0));
    println!(
        "| read latency p50 / p99 | {:.2} / {:.2} ms | p50 {} |",
        med(&|r| r.p50),
        med(&|r| r.p99),
        each(&|r| r.p50, 2)
    );
    println!(
        "| CPU per read: server / redis / client | {:.1} / {:.1} / {:.1} µs | server {} |",
        med(&|r| r.server_us),
        med(&|r| r.redis_us),
        med(&|r| r.client_us),
        each(&|r| r.server_us, 1)
    );
    println!("| machine idle during reads | {:.0}% | {} |", med(&|r| r.idle_pct), each(&|r| r.idle_pct, 0));
    println!("| other processes during reads | {:.0}% | {} |", med(&|r| r.others_pct), each(&|r| r.others_pct, 0));
    println!("| read errors | {errors} | {} |", each(&|r| r.errors as f64, 0));
    println!("| login p50 / p90 | {:.0} / {:.0} ms | p50 {} |", login50, login90, each(&|r| r.login_p50, 0));
    println!("| argon2id hash alone | {:.0} ms | {} |", med(&|r| r.hash_ms), each(&|r| r.hash_ms, 0));
    println!(
        "| api-server RSS idle / peak | {:.1} / {:.1} MB | |",
        med(&|r| r.rss_idle_kb as f64) / 1024.0,
        med(&|r| r.rss_peak_kb as f64) / 1024.0
    );
    println!();
    println!("Targets (2-core machine):");
    println!("  reads {rate:.0}/s (target >= {READS_TARGET:.0})  {}", ok(rate >= READS_TARGET));
    println!("  read errors {errors} (target 0)  {}", ok(errors == 0));
    println!(
        "  login p50 {login50:.0} ms, p90 {login90:.0} ms (target {:.0}-{:.0} ms)  {}",
        LOGIN_TARGET_MS.0,
        LOGIN_TARGET_MS.1,
        ok(login50 >= LOGIN_TARGET_MS.0 && login90 <= LOGIN_TARGET_MS.1)
    );
}

/// A run with a read answered anything but the task's 200 fails the bench.
pub(super) fn fail_on_errors(runs: &[ApiRun]) -> Result<()> {
    let errors: usize = runs.iter().map(|r| r.errors).sum();
    if errors > 0 {
        bail!("{errors} api-server reads were not answered 200 with the task's result");
    }
    Ok(())
}
