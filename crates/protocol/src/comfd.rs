//! The fd-3 command channel between a step and its agent (reference section 4.3).
//!
//! One command per line, fields separated by single spaces, CSV-style double quotes.

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Progress of the current step, 0-100.
    SetProgress(u8),
    /// Weight of a step of this action, by file name.
    SetWeight { step: String, weight: u32 },
    /// `set-status validation-failed`: the only status a step may set.
    SetValidationFailed,
    /// Anything else: the agent logs it and carries on.
    Unknown(String),
}

/// Split a line like Go's `encoding/csv` with `Comma = ' '`.
fn split_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Some(fields);
                }
                Some(' ') => fields.push(field),
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Some(fields);
                    }
                    Some(' ') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

impl Command {
    pub fn parse(line: &str) -> Command {
        let line = line.trim_end_matches(['\r', '\n']);
        let unknown = || Command::Unknown(line.to_owned());
        let Some(fields) = split_fields(line) else {
            return unknown();
        };
        match fields.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["set-progress", p] => match p.parse::<i64>() {
                Ok(p) => Command::SetProgress(p.clamp(0, 100) as u8),
                Err(_) => unknown(),
            },
            ["set-weight", step, w] => match w.parse::<u32>() {
                Ok(weight) => Command::SetWeight { step: (*step).to_owned(), weight },
                Err(_) => unknown(),
            },
            ["set-status", "validation-failed"] => Command::SetValidationFailed,
            _ => unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_commands() {
        assert_eq!(Command::parse("set-progress 50\n"), Command::SetProgress(50));
        assert_eq!(Command::parse("set-progress 150"), Command::SetProgress(100));
        assert_eq!(
            Command::parse("set-weight 20configure 3"),
            Command::SetWeight { step: "20configure".into(), weight: 3 }
        );
        assert_eq!(
            Command::parse(r#"set-weight "20 odd name" 2"#),
            Command::SetWeight { step: "20 odd name".into(), weight: 2 }
        );
        assert_eq!(Command::parse("set-status validation-failed"), Command::SetValidationFailed);
    }

    #[test]
    fn unknown_or_malformed() {
        for line in [
            "set-env A B",
            "set-status completed",
            "set-progress x",
            "set-progress",
            r#"set-weight "x 1"#,
            "dump-env",
            "",
        ] {
            assert_eq!(Command::parse(line), Command::Unknown(line.to_owned()), "{line:?}");
        }
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(split_fields(r#"a "b ""c""" d"#).unwrap(), vec!["a", r#"b "c""#, "d"]);
        assert_eq!(split_fields("a  b").unwrap(), vec!["a", "", "b"]);
    }
}
