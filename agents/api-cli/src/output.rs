//! Printing a task's output: JSON re-indented for people or compacted for scripts,
//! anything else verbatim.

use std::io::Write;

/// What to print for the stored output text: nothing when it is empty, JSON pretty
/// (`pretty`) or on one line, else the raw text (a newline added for a terminal).
///
/// JSON is re-spaced token by token rather than through `serde_json::Value`, so key
/// order and number spelling are those of the action.
pub fn render(raw: &str, pretty: bool) -> String {
    if raw.trim().is_empty() {
        return String::new();
    }
    if serde_json::from_str::<serde_json::Value>(raw).is_ok() {
        let mut text = respace(raw, pretty);
        text.push('\n');
        return text;
    }
    let mut text = raw.to_owned();
    if pretty && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Re-space valid JSON text: two-space indentation and `": "` when `pretty`, no
/// insignificant whitespace otherwise. Empty objects and arrays stay `{}` and `[]`.
fn respace(json: &str, pretty: bool) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut String, depth: usize| {
        if pretty {
            out.push('\n');
            out.extend(std::iter::repeat_n("  ", depth));
        }
    };
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                if let Some(close) = chars.next_if(|c| matches!(c, '}' | ']')) {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => {
                out.push(':');
                if pretty {
                    out.push(' ');
                }
            }
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Stdout could not take the output.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout: {0}")]
pub struct StdoutError(std::io::Error);

/// Write to stdout; a reader that went away (`| head`) is not an error.
pub fn write_stdout(text: &str) -> Result<(), StdoutError> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(StdoutError(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_keeps_order_and_numbers() {
        let raw = "{ \"z\": 1.50, \"a\" : [ 1 , 2 ],\n \"s\": \"a, b: {c} \\\" [\" , \"e\": {}, \"f\": [ ] }\n";
        assert_eq!(render(raw, false), "{\"z\":1.50,\"a\":[1,2],\"s\":\"a, b: {c} \\\" [\",\"e\":{},\"f\":[]}\n");
    }

    #[test]
    fn pretty_json_matches_serde_json_layout() {
        let raw = r#"{"name":"x","list":[1,{"k":null}],"empty":{},"none":[],"n":-2e3}"#;
        let expected = "{\n  \"name\": \"x\",\n  \"list\": [\n    1,\n    {\n      \"k\": null\n    }\n  ],\n  \"empty\": {},\n  \"none\": [],\n  \"n\": -2e3\n}\n";
        assert_eq!(render(raw, true), expected);
        // Same as serde_json's pretty printer where the latter does not reorder.
        let v: serde_json::Value = serde_json::from_str(r#"{"a":[1,{"b":"c"}],"d":{}}"#).unwrap();
        let ours = render(&v.to_string(), true);
        assert_eq!(ours, serde_json::to_string_pretty(&v).unwrap() + "\n");
    }

    #[test]
    fn scalars_raw_and_empty() {
        assert_eq!(render("true\n", false), "true\n");
        assert_eq!(render("\"a  b\"", true), "\"a  b\"\n");
        assert_eq!(render("", true), "");
        assert_eq!(render(" \n", false), "");
        assert_eq!(render("hello\nworld", false), "hello\nworld");
        assert_eq!(render("hello\nworld", true), "hello\nworld\n");
        assert_eq!(render("{broken", false), "{broken");
    }
}
