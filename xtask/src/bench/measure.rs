//! The statistics and the /proc readings every benchmark part reports with.

#[derive(Default, Clone)]
pub(super) struct Latency {
    pub(super) p50: f64,
    pub(super) p95: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

pub(super) fn latency_of(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    Latency {
        p50: percentile(&ms, 0.5),
        p95: percentile(&ms, 0.95),
        p99: percentile(&ms, 0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

pub(super) fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU times of a process from /proc/<pid>/stat, in ms.
#[derive(Clone, Copy)]
pub(super) struct Cpu {
    pub(super) user: f64,
    pub(super) system: f64,
    /// Reaped children's user + system (the agent's steps).
    pub(super) children: f64,
}

impl Cpu {
    pub(super) fn of(pid: u32) -> Cpu {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // USER_HZ is 100 on Linux; fields counted from the state letter.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) as f64 * 10.0;
        Cpu { user: ticks(11), system: ticks(12), children: ticks(13) + ticks(14) }
    }

    /// The process's own CPU (children excluded).
    pub(super) fn own(self) -> f64 {
        self.user + self.system
    }
}

/// The machine's CPU counters (first line of /proc/stat).
pub(super) fn system_cpu() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect()
}
