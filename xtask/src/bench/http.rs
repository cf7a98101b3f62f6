//! A minimal blocking HTTP/1.1 client over `TcpStream`, like `crate::resp` for Redis:
//! it costs a few microseconds per request, so the server keeps the machine's cores.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One keep-alive HTTP/1.1 connection: requests written whole, answers framed by
/// `Content-Length`, or by the end of the connection when the server closes it after
/// the answer (`Connection: close`; chunked answers are an error).
pub(super) struct Http {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
    pub(super) body: Vec<u8>,
    /// The last answer said the server closes the connection after it.
    pub(super) closing: bool,
}

impl Http {
    pub(super) fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connect to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Http {
            reader: BufReader::with_capacity(16 * 1024, stream.try_clone()?),
            writer: stream,
            line: Vec::with_capacity(256),
            body: Vec::with_capacity(1024),
            closing: false,
        })
    }

    pub(super) fn send(&mut self, request: &[u8]) -> Result<()> {
        self.writer.write_all(request)?;
        Ok(())
    }

    /// The next answer's status; its body is left in `self.body`.
    pub(super) fn read(&mut self) -> Result<u16> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            bail!("the server closed the connection");
        }
        self.closing = self.line.starts_with(b"HTTP/1.0 ");
        let status = self
            .line
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| self.line.strip_prefix(b"HTTP/1.0 "))
            .and_then(|r| r.get(..3))
            .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
            .with_context(|| format!("not an HTTP/1.x status line: {:?}", String::from_utf8_lossy(&self.line)))?;
        let mut length = None;
        loop {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line)? == 0 {
                bail!("the server closed the connection in the headers");
            }
            let line = self.line.trim_ascii_end();
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<usize>().ok());
            } else if name.eq_ignore_ascii_case(b"connection") {
                self.closing = value.eq_ignore_ascii_case(b"close");
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                bail!("a chunked answer");
            }
        }
        match length {
            Some(length) => {
                self.body.resize(length, 0);
                self.reader.read_exact(&mut self.body)?;
            }
            None if self.closing => {
                self.body.clear();
                self.reader.read_to_end(&mut self.body)?;
            }
            None => bail!("an answer without Content-Length on a kept connection"),
        }
        Ok(status)
    }

    pub(super) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(super) fn get_request(port: u16, path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").into_bytes()
}
