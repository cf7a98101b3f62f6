//! systemd calendar events (`OnCalendar=`, NS8's backup schedules): parsed, and their
//! next elapse computed, as `systemd-analyze calendar` gives them.
//!
//! The grammar is systemd's: `[weekdays] [date] [time] [UTC]`, the shorthands
//! (`minutely`, `hourly`, `daily`, `weekly`, `monthly`, `quarterly`, `semiannually`,
//! `yearly`/`annually`), and in each field `*`, values, `a..b` ranges, `a/step` and
//! `a..b/step` repetitions and `,` lists. Not taken: the `~` (from the month's end)
//! days, fractional seconds and time zones other than the node's own and `UTC`: such
//! an expression is refused with the reason. Local time is the node's zone
//! (`/etc/localtime`); as in systemd, a time that a DST change skips does not elapse
//! that day, and a repeated one elapses at its first occurrence.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Why an expression is not one: the reason, in words the administrator reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CalendarError(String);

/// A parsed expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    weekdays: Option<Vec<Weekday>>,
    years: Field,
    months: Field,
    days: Field,
    hours: Field,
    minutes: Field,
    seconds: Field,
    utc: bool,
}

/// One field's values, within its bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Field(Vec<u32>);

impl Field {
    fn all(lo: u32, hi: u32) -> Field {
        Field((lo..=hi).collect())
    }

    fn has(&self, v: u32) -> bool {
        self.0.binary_search(&v).is_ok()
    }

    /// `*`, `7`, `1..5`, `*/15`, `0/15`, `1..20/5`, and lists of them.
    fn parse(s: &str, lo: u32, hi: u32, what: &str) -> Result<Field, String> {
        let mut out = Vec::new();
        for item in s.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, st)) => {
                    let st: u32 = st.parse().map_err(|_| format!("bad repetition {item:?} in the {what}"))?;
                    if st == 0 {
                        return Err(format!("a repetition of 0 in the {what}"));
                    }
                    (r, Some(st))
                }
                None => (item, None),
            };
            let num = |t: &str| -> Result<u32, String> {
                let v: u32 = t.parse().map_err(|_| format!("{t:?} is not a number in the {what}"))?;
                if v < lo || v > hi {
                    return Err(format!("{v} is outside {lo}..{hi} in the {what}"));
                }
                Ok(v)
            };
            let (a, b) = if range == "*" {
                (lo, hi)
            } else if let Some((a, b)) = range.split_once("..") {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("the range {range} runs backwards in the {what}"));
                }
                (a, b)
            } else {
                let a = num(range)?;
                // `a/step` repeats to the end of the field, as systemd's.
                (a, if step.is_some() { hi } else { a })
            };
            out.extend((a..=b).step_by(step.unwrap_or(1) as usize));
        }
        out.sort_unstable();
        out.dedup();
        Ok(Field(out))
    }
}

const WEEKDAYS: [(&str, &str, Weekday); 7] = [
    ("mon", "monday", Weekday::Monday),
    ("tue", "tuesday", Weekday::Tuesday),
    ("wed", "wednesday", Weekday::Wednesday),
    ("thu", "thursday", Weekday::Thursday),
    ("fri", "friday", Weekday::Friday),
    ("sat", "saturday", Weekday::Saturday),
    ("sun", "sunday", Weekday::Sunday),
];

fn weekday(s: &str) -> Option<usize> {
    let l = s.to_ascii_lowercase();
    WEEKDAYS.iter().position(|(short, long, _)| l == *short || l == *long)
}

fn parse_weekdays(s: &str) -> Result<Vec<Weekday>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let (a, b) = match item.split_once("..") {
            Some((a, b)) => (a, b),
            None => (item, item),
        };
        let (Some(a), Some(b)) = (weekday(a), weekday(b)) else {
            return Err(format!("{item:?} is not a weekday (Mon..Sun)"));
        };
        if a > b {
            // As systemd: a range does not wrap past Sunday.
            return Err(format!("the weekday range {item} runs backwards (Mon..Sun order)"));
        }
        out.extend(WEEKDAYS[a..=b].iter().map(|w| w.2));
    }
    Ok(out)
}

impl Calendar {
    pub fn parse(expr: &str) -> Result<Calendar, CalendarError> {
        Self::parse_words(expr).map_err(CalendarError)
    }

    fn parse_words(expr: &str) -> Result<Calendar, String> {
        let mut words: Vec<&str> = expr.split_whitespace().collect();
        if words.is_empty() {
            return Err("an empty schedule".into());
        }
        let utc = matches!(words.last(), Some(w) if w.eq_ignore_ascii_case("utc"));
        if utc {
            words.pop();
        }
        let shorthand = match words.as_slice() {
            [w] => match w.to_ascii_lowercase().as_str() {
                "minutely" => Some("*-*-* *:*:00"),
                "hourly" => Some("*-*-* *:00:00"),
                "daily" => Some("*-*-* 00:00:00"),
                "weekly" => Some("Mon *-*-* 00:00:00"),
                "monthly" => Some("*-*-01 00:00:00"),
                "quarterly" => Some("*-01,04,07,10-01 00:00:00"),
                "semiannually" => Some("*-01,07-01 00:00:00"),
                "yearly" | "annually" => Some("*-01-01 00:00:00"),
                _ => None,
            },
            _ => None,
        };
        if let Some(long) = shorthand {
            let mut c = Calendar::parse_words(long)?;
            c.utc = utc;
            return Ok(c);
        }
        let mut rest = words.as_slice();
        let mut weekdays = None;
        if let Some(first) = rest.first()
            && first.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        {
            weekdays = Some(parse_weekdays(first)?);
            rest = &rest[1..];
        }
        let (mut date, mut time) = (None, None);
        for w in rest {
            if w.contains(':') && time.is_none() {
                time = Some(*w);
            } else if w.contains('-') && date.is_none() && time.is_none() {
                date = Some(*w);
            } else {
                return Err(format!("{w:?} is not a date (Y-M-D) or a time (h:m[:s]) in the schedule"));
            }
        }
        if weekdays.is_none() && date.is_none() && time.is_none() {
            return Err(format!("{expr:?} is not a calendar expression"));
        }
        let date = date.unwrap_or("*-*-*");
        if date.contains('~') {
            return Err("days counted from the month's end (~) are not supported".into());
        }
        let parts: Vec<&str> = date.split('-').collect();
        let (years, months, days) = match parts.as_slice() {
            [y, m, d] => {
                (Field::parse(y, 1970, 2199, "year")?, Field::parse(m, 1, 12, "month")?, Field::parse(d, 1, 31, "day")?)
            }
            [m, d] => (Field::all(1970, 2199), Field::parse(m, 1, 12, "month")?, Field::parse(d, 1, 31, "day")?),
            _ => return Err(format!("{date:?} is not a date (Y-M-D or M-D)")),
        };
        let time = time.unwrap_or("00:00:00");
        if time.replace("..", "").contains('.') {
            return Err("fractional seconds are not supported".into());
        }
        let parts: Vec<&str> = time.split(':').collect();
        let (hours, minutes, seconds) = match parts.as_slice() {
            [h, m, s] => {
                (Field::parse(h, 0, 23, "hour")?, Field::parse(m, 0, 59, "minute")?, Field::parse(s, 0, 59, "second")?)
            }
            [h, m] => (Field::parse(h, 0, 23, "hour")?, Field::parse(m, 0, 59, "minute")?, Field(vec![0])),
            _ => return Err(format!("{time:?} is not a time (h:m or h:m:s)")),
        };
        Ok(Calendar { weekdays, years, months, days, hours, minutes, seconds, utc })
    }

    fn zone(&self) -> TimeZone {
        if self.utc { TimeZone::UTC } else { TimeZone::system() }
    }

    fn date_matches(&self, d: Date) -> bool {
        self.years.has(d.year() as u32)
            && self.months.has(d.month() as u32)
            && self.days.has(d.day() as u32)
            && self.weekdays.as_ref().is_none_or(|w| w.contains(&d.weekday()))
    }

    /// The first elapse strictly after `after`; `None` if there is none within about
    /// eight years (a 29 February that is also a Monday can wait that long).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.next_after_in(after, &self.zone())
    }

    /// [`next_after`](Self::next_after) with local time in `tz` (unless the expression
    /// says UTC).
    pub fn next_after_in(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let tz = if self.utc { TimeZone::UTC } else { tz.clone() };
        let start = after.to_zoned(tz.clone());
        let mut day = start.date();
        for _ in 0..(366 * 8 + 2) {
            if self.date_matches(day) {
                for &h in &self.hours.0 {
                    for &m in &self.minutes.0 {
                        for &s in &self.seconds.0 {
                            let Ok(t) = Time::new(h as i8, m as i8, s as i8, 0) else { continue };
                            let amb = tz.to_ambiguous_zoned(DateTime::from_parts(day, t));
                            // A time the clock skips does not elapse, as in systemd.
                            if matches!(amb.offset(), jiff::tz::AmbiguousOffset::Gap { .. }) {
                                continue;
                            }
                            let Ok(z) = amb.earlier() else { continue };
                            if z.timestamp() > after {
                                return Some(z.timestamp());
                            }
                        }
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }

    /// The next elapse after now, in the schedule's zone.
    pub fn next(&self) -> Option<Zoned> {
        self.next_after(Timestamp::now()).map(|t| t.to_zoned(self.zone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn shorthands_and_fields() {
        let c = Calendar::parse("daily UTC").unwrap();
        assert_eq!(c.next_after(ts("2026-12-03T10:00:00Z")), Some(ts("2026-12-04T00:00:00Z")));
        let c = Calendar::parse("Mon..Fri *-*-* 02:30 UTC").unwrap();
        assert_eq!(c.next_after(ts("2026-12-04T03:00:00Z")), Some(ts("2026-12-07T02:30:00Z")));
        let c = Calendar::parse("*-*-* *:0/15:00 UTC").unwrap();
        assert_eq!(c.next_after(ts("2026-12-03T10:15:00Z")), Some(ts("2026-12-03T10:30:00Z")));
        let c = Calendar::parse("Sat,Sun 12:00 UTC").unwrap();
        assert_eq!(c.next_after(ts("2026-12-03T10:00:00Z")), Some(ts("2026-12-05T12:00:00Z")));
        let c = Calendar::parse("2027-02-29 UTC");
        assert!(c.unwrap().next_after(ts("2026-01-01T00:00:00Z")).is_none(), "no 29 February in 2027");
        for bad in [
            "",
            "never",
            "*-*-* 25:00",
            "Funday",
            "*-*-~1",
            "*-*-* 10:00:00.5",
            "Sat..Mon 12:00",
            "*-13-01",
            "1..0:00",
            "a b c d",
        ] {
            assert!(Calendar::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// `systemd-analyze calendar`'s elapses of `expr` after `base`, in zone `tz`.
    fn systemd(expr: &str, base: Timestamp, tz: &str, n: usize) -> Vec<Timestamp> {
        let out = std::process::Command::new("systemd-analyze")
            .args(["calendar", &format!("--iterations={n}"), &format!("--base-time=@{}", base.as_second()), expr])
            .env("TZ", tz)
            .output()
            .expect("systemd-analyze (Debian's systemd package) runs");
        assert!(out.status.success(), "systemd-analyze {expr}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("Next elapse: ")
                    .or_else(|| l.trim().split_once(": ").filter(|(k, _)| k.starts_with("Iter.")).map(|(_, v)| v))
            })
            .map(|v| {
                // "Mon 2026-12-07 02:30:00 CET": the weekday and the zone's abbreviation
                // dropped, read in the zone.
                let civil: Vec<&str> = v.split_whitespace().collect();
                let dt: DateTime = format!("{}T{}", civil[1], civil[2]).parse().unwrap();
                let zone = TimeZone::get(tz).unwrap();
                // An abbreviation tells which of a repeated hour.
                let amb = zone.to_ambiguous_zoned(dt);
                let candidates = [amb.clone().earlier().unwrap(), amb.later().unwrap()];
                let pick =
                    candidates.iter().find(|z| z.strftime("%Z").to_string() == civil[3]).unwrap_or(&candidates[0]);
                pick.timestamp()
            })
            .collect()
    }

    #[test]
    fn the_same_elapses_as_systemd_analyze() {
        let bases = ["2026-12-03T10:17:31Z", "2027-02-27T23:59:59Z", "2027-03-28T00:30:00Z", "2027-10-31T00:10:00Z"];
        let exprs = [
            "daily",
            "hourly",
            "weekly",
            "monthly",
            "quarterly",
            "yearly",
            "*-*-* 02:30:00",
            "Mon *-*-* 00:00:00",
            "Sat,Sun 21:00",
            "Mon..Fri 12:00",
            "Sat,Sun,Mon 01:15",
            "*-*-* 02:30:00",
            "*-*-01,15 03:00",
            "*-02-29 04:00",
            "*-*-* *:0/20",
            "*-*-* 0..6/2:45:10",
            "2027-*-* 02:30",
            "*-*-* 02:30 UTC",
        ];
        for tz in ["UTC", "Europe/Rome"] {
            let zone = TimeZone::get(tz).unwrap();
            for base in bases {
                let base = ts(base);
                for expr in exprs {
                    let expected = systemd(expr, base, tz, 4);
                    let c = Calendar::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
                    let mut ours = Vec::new();
                    let mut t = base;
                    for _ in 0..expected.len() {
                        t = c.next_after_in(t, &zone).unwrap();
                        ours.push(t);
                    }
                    assert_eq!(ours, expected, "{expr} after {base} in {tz}");
                }
            }
        }
    }
}
