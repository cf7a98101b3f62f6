//! The `state/environment` file: raw `KEY=VALUE` lines, no shell quoting.
//!
//! Steps edit it directly; the agent re-reads it before every step and copies it to
//! `<agent>/environment` after every task. systemd also reads it (`EnvironmentFile=`),
//! which is why values are raw.

/// Parse the file. Lines without `=` and blank lines are skipped, as NS8 does; a later
/// duplicate key wins.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.is_empty() {
            continue;
        }
        if let Some(slot) = out.iter_mut().find(|(key, _)| key == k) {
            slot.1 = v.to_owned();
        } else {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// Render sorted `KEY=VALUE` lines, as NS8's Python helpers write the file.
pub fn render(vars: &[(String, String)]) -> String {
    let mut sorted: Vec<_> = vars.iter().collect();
    sorted.sort();
    sorted.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_junk_and_keeps_raw_values() {
        let vars = parse("A=1\n\nnot a pair\nB=x=y \"q\"\nA=2\n=bad\n");
        assert_eq!(vars, vec![("A".into(), "2".into()), ("B".into(), "x=y \"q\"".into())]);
        assert_eq!(render(&vars), "A=2\nB=x=y \"q\"\n");
    }
}
