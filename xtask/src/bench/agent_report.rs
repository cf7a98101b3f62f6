//! The agent benchmark's report: medians over the runs, against the NS8 baseline's
//! figures and the targets of issue 2.

use super::agent::{AgentArgs, IDLE_GAP, POLL_INTERVAL, RunFigures};
use super::measure::{Latency, median};

pub(super) fn print(runs: &[RunFigures], args: &AgentArgs, module_agent_idle_kb: u64) {
    let med = |f: &dyn Fn(&RunFigures) -> f64| median(runs.iter().map(f).collect());
    let lat = |f: &dyn Fn(&RunFigures) -> &Latency| (med(&|r| f(r).p50), med(&|r| f(r).p95), med(&|r| f(r).p99));
    let bare = lat(&|r| &r.bare);
    let bash = lat(&|r| &r.bash);
    let native = lat(&|r| &r.native);
    let idle_of = |f: &dyn Fn(&RunFigures) -> &Latency| (med(&|r| f(r).p50), med(&|r| f(r).max));
    let bash_idle = idle_of(&|r| &r.bash_idle);
    let native_idle = idle_of(&|r| &r.native_idle);
    let bash_rate = med(&|r| r.bash_rate);
    let native_rate = med(&|r| r.native_rate);
    let idle = med(&|r| r.idle_rss_kb as f64);
    let peak = med(&|r| r.peak_rss_kb as f64);
    let failed: usize = runs.iter().map(|r| r.bash_failed + r.native_failed).sum();
    let ok = |b: bool| if b { "ok" } else { "MISSED" };
    println!(
        "Agent benchmark: medians of {} runs; {} sequential tasks per latency series, bursts of {}.",
        runs.len(),
        args.tasks,
        args.burst
    );
    println!();
    println!("| measure | bash no-op step | native no-op | bare bash step (no agent) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| latency p50 / p95 / p99 | {:.2} / {:.2} / {:.2} ms | {:.3} / {:.3} / {:.3} ms | {:.2} / {:.2} / {:.2} ms |",
        bash.0, bash.1, bash.2, native.0, native.1, native.2, bare.0, bare.1, bare.2
    );
    println!(
        "| latency after {:.1} s idle, p50 / max ({} tasks) | {:.2} / {:.2} ms | {:.3} / {:.3} ms | |",
        IDLE_GAP.as_secs_f64(),
        args.idle_tasks,
        bash_idle.0,
        bash_idle.1,
        native_idle.0,
        native_idle.1
    );
    println!("| burst throughput | {:.0} tasks/s | {:.0} tasks/s | |", bash_rate, native_rate);
    println!(
        "| agent CPU per task (burst) | {:.3} ms | {:.3} ms | |",
        med(&|r| r.bash_cpu_ms),
        med(&|r| r.native_cpu_ms)
    );
    println!(
        "| failed or rejected tasks | {} | {} | |",
        runs.iter().map(|r| r.bash_failed).sum::<usize>(),
        runs.iter().map(|r| r.native_failed).sum::<usize>()
    );
    println!();
    println!(
        "Agent memory: idle RSS {:.1} MB, peak RSS (VmHWM) {:.1} MB; shipped module-agent idle RSS {:.1} MB.",
        idle / 1024.0,
        peak / 1024.0,
        module_agent_idle_kb as f64 / 1024.0
    );
    println!();
    println!("Targets (issue 2) against the NS8 Go agent baseline:");
    println!(
        "  script p50 - bare spawn = {:.2} ms (target <= 0.50; NS8 ~1.05)  {}",
        bash.0 - bare.0,
        ok(bash.0 - bare.0 <= 0.5)
    );
    println!(
        "  script throughput {:.0}/s = {:.2}x NS8's 800/s (target >= 1.5x)  {}",
        bash_rate,
        bash_rate / 800.0,
        ok(bash_rate >= 1200.0)
    );
    println!("  native p50 {:.3} ms (target < 0.25; NS8 builtin 0.40)  {}", native.0, ok(native.0 < 0.25));
    println!(
        "  native throughput {:.0}/s (target >= 10,000; NS8 builtin 7,050)  {}",
        native_rate,
        ok(native_rate >= 10_000.0)
    );
    println!(
        "  after idle (polling interval {POLL_INTERVAL}): script p50 {:+.2} ms, native p50 {:+.3} ms against back-to-back (target within 2 ms, issue 14)  {}",
        bash_idle.0 - bash.0,
        native_idle.0 - native.0,
        ok(bash_idle.0 - bash.0 <= 2.0 && native_idle.0 - native.0 <= 2.0)
    );
    println!("  idle RSS {:.1} MB (target < 6; NS8 9.3)  {}", idle / 1024.0, ok(idle < 6.0 * 1024.0));
    println!("  peak RSS {:.1} MB (target < 12; NS8 16.5)  {}", peak / 1024.0, ok(peak < 12.0 * 1024.0));
    println!("  rejected tasks {failed} (target 0)  {}", ok(failed == 0));
}
