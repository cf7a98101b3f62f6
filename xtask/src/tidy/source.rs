//! A Rust source file as the tidy rules see it: a list of tokens with their line
//! numbers, comments dropped, test-only items (`#[cfg(test)]`) removed. A small lexer
//! rather than a parser: the rules look for short token patterns, and a lexer that
//! knows strings, raw strings, chars, lifetimes and nested comments is enough to
//! never mistake a comment or a string for code, or code for a string.

/// One token. Punctuation is one character each, except `::` and `->`, so that
/// `Vec<Vec<u8>>` closes two angle brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    /// The text of a string literal (`"..."`, `r#"..."#`, `b"..."`), escapes left as
    /// written.
    Str(String),
    Punct(&'static str),
    /// A number, char or lifetime: nothing a rule looks at.
    Other,
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
}

impl Token {
    pub fn is_ident(&self, name: &str) -> bool {
        matches!(&self.tok, Tok::Ident(i) if i == name)
    }

    pub fn is_punct(&self, p: &str) -> bool {
        matches!(&self.tok, Tok::Punct(q) if *q == p)
    }
}

const PUNCTS: &[&str] = &[
    "::", "->", "#", "[", "]", "(", ")", "{", "}", "<", ">", ",", ";", ":", "!", "=", "&", "*", "+", "-", "/", ".",
    "|", "?", "@", "^", "%", "$", "~",
];

/// Split `text` into tokens. Unterminated strings or comments end at the end of the
/// file (the compiler rejects those files anyway).
pub fn lex(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let count_lines = |from: usize, to: usize| b[from..to].iter().filter(|&&c| c == b'\n').count();
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += count_lines(start, i.min(b.len()));
        } else if let Some((body, end)) = raw_string(b, i) {
            out.push(Token { tok: Tok::Str(text[body.0..body.1].to_owned()), line });
            line += count_lines(start, end);
            i = end;
        } else if c == b'"' || ((c == b'b' || c == b'c') && b.get(i + 1) == Some(&b'"')) {
            let open = if c == b'"' { i } else { i + 1 };
            let mut j = open + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = j.min(b.len());
            out.push(Token { tok: Tok::Str(text[open + 1..end].to_owned()), line });
            line += count_lines(start, end);
            i = end + 1;
        } else if c == b'\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a, 'static).
            if b.get(i + 1) == Some(&b'\\') {
                // Past the escaped character, which may be a quote: '\''.
                let mut j = i + 3;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
            } else {
                let ch_len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(i + 1 + ch_len) == Some(&b'\'') {
                    i += 2 + ch_len;
                } else {
                    i += 1;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                }
            }
            out.push(Token { tok: Tok::Other, line });
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            if b[i..].starts_with(b"r#") {
                i += 2;
            }
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            out.push(Token { tok: Tok::Ident(text[s..i].to_owned()), line });
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                // `0..n`: a range, not a decimal point.
                if b[i] == b'.' && b.get(i + 1) == Some(&b'.') {
                    break;
                }
                i += 1;
            }
            out.push(Token { tok: Tok::Other, line });
        } else if let Some(p) = PUNCTS.iter().find(|p| b[i..].starts_with(p.as_bytes())) {
            out.push(Token { tok: Tok::Punct(p), line });
            i += p.len();
        } else {
            i += 1;
        }
    }
    out
}

/// `r"..."`, `r#"..."#`, `br#"..."#`, `cr"..."` at `i`: (body range, end).
fn raw_string(b: &[u8], i: usize) -> Option<((usize, usize), usize)> {
    let mut j = i;
    if b.get(j) == Some(&b'b') || b.get(j) == Some(&b'c') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    if b.get(j) != Some(&b'"') {
        return None;
    }
    // Not a raw identifier (`r#type`): those have no quote after the hashes.
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let body = j + 1;
    let mut k = body;
    while k < b.len() {
        if b[k] == b'"' && b[k + 1..].iter().take(hashes).filter(|&&c| c == b'#').count() == hashes {
            return Some(((body, k), k + 1 + hashes));
        }
        k += 1;
    }
    Some(((body, b.len()), b.len()))
}

/// A lexed file with its test-only items removed, and the names of the modules it
/// declares as test-only (`#[cfg(test)] mod tests;`), whose files are skipped too.
pub struct Source {
    pub tokens: Vec<Token>,
    pub test_modules: Vec<String>,
}

/// Lex `text` and drop every item under `#[cfg(test)]` (or a `cfg` naming `test`
/// outside `not(..)`): the tests' own literals and fixtures are not code.
pub fn parse(text: &str) -> Source {
    let toks = lex(text);
    let mut tokens = Vec::with_capacity(toks.len());
    let mut test_modules = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let Some(end) = cfg_test_attr(&toks, i) {
            let item_end = item_end(&toks, end);
            // `mod NAME;` right after the attributes: the module lives in its own file.
            let mut j = end;
            while let Some(e) = attr_end(&toks, j) {
                j = e;
            }
            if toks.get(j).is_some_and(|t| t.is_ident("pub")) {
                j += 1;
            }
            if toks.get(j).is_some_and(|t| t.is_ident("mod"))
                && let Some(Tok::Ident(name)) = toks.get(j + 1).map(|t| &t.tok)
                && toks.get(j + 2).is_some_and(|t| t.is_punct(";"))
            {
                test_modules.push(name.clone());
            }
            i = item_end;
            continue;
        }
        tokens.push(toks[i].clone());
        i += 1;
    }
    Source { tokens, test_modules }
}

/// The end of an attribute `#[...]` starting at `i`.
fn attr_end(t: &[Token], i: usize) -> Option<usize> {
    if !(t.get(i)?.is_punct("#") && t.get(i + 1)?.is_punct("[")) {
        return None;
    }
    let mut depth = 0;
    for (k, tok) in t.iter().enumerate().skip(i + 1) {
        if tok.is_punct("[") {
            depth += 1;
        } else if tok.is_punct("]") {
            depth -= 1;
            if depth == 0 {
                return Some(k + 1);
            }
        }
    }
    Some(t.len())
}

/// The end of `#[cfg(...test...)]` at `i`, when it is one.
fn cfg_test_attr(t: &[Token], i: usize) -> Option<usize> {
    let end = attr_end(t, i)?;
    if !t.get(i + 2)?.is_ident("cfg") {
        return None;
    }
    let inner = &t[i + 2..end];
    let test = inner.iter().any(|x| x.is_ident("test"));
    let negated = inner.iter().any(|x| x.is_ident("not"));
    (test && !negated).then_some(end)
}

/// The end of the item starting at `i` (after its attribute): its first `;` (or `,`,
/// for a field or an argument) outside brackets, or the `}` closing its first brace.
fn item_end(t: &[Token], i: usize) -> usize {
    let mut depth = 0i32;
    let mut k = i;
    while k < t.len() {
        if let Some(e) = attr_end(t, k) {
            k = e;
            continue;
        }
        let tok = &t[k];
        if tok.is_punct("(") || tok.is_punct("[") || tok.is_punct("{") {
            depth += 1;
        } else if tok.is_punct(")") || tok.is_punct("]") || tok.is_punct("}") {
            depth -= 1;
            if depth <= 0 && tok.is_punct("}") {
                return k + 1;
            }
        } else if depth == 0 && (tok.is_punct(";") || tok.is_punct(",")) {
            return k + 1;
        }
        k += 1;
    }
    t.len()
}
