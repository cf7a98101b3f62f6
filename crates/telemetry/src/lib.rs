//! Logging for every binary: to stderr, filtered by `RUST_LOG`.
//!
//! `RUST_LOG` is a level (`debug`) or `target=level` pairs (`info,fred=debug`). It is
//! parsed with `Targets` rather than `EnvFilter`: the same syntax for these forms,
//! without compiling regexes at start-up in every agent (there is one agent per
//! installed module, so their start-up cost and memory multiply). Under systemd
//! (`JOURNAL_STREAM` set) lines carry no timestamp: journald adds its own. No colours: agents
//! log to journald or files, and the colour code costs every agent memory.

pub use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Parse a `RUST_LOG` value; `None` when it is not in the accepted syntax.
pub fn parse_filter(value: &str) -> Option<Targets> {
    value.parse().ok()
}

/// Install the global subscriber. A malformed `RUST_LOG` falls back to `default`
/// and says so.
pub fn init(default: Level) {
    let env = std::env::var("RUST_LOG").ok();
    let parsed = env.as_deref().and_then(parse_filter);
    let filter = parsed.clone().unwrap_or_else(|| Targets::new().with_default(default));
    let fmt = tracing_subscriber::fmt()
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().finish().with(filter).init();
    } else {
        fmt.finish().with(filter).init();
    }
    if let (Some(value), None) = (env, parsed) {
        tracing::warn!("RUST_LOG={value:?} is not a level or target=level list; using {default}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(parse_filter("debug").is_some());
        assert!(parse_filter("info,fred=debug").is_some());
        assert!(parse_filter("fred=nonsense").is_none());
    }
}
