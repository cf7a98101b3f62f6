//! A minimal blocking HTTP/1.1 client over `TcpStream`, like `crate::resp` for Redis:
//! it costs a few microseconds per request, so the server keeps the machine's cores.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One keep-alive HTTP/1.1 connection: requests written whole, answers framed by
/// `Content-Length` (what the server sends; anything else is an error).
pub(super) struct Http {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
    pub(super) body: Vec<u8>,
}

impl Http {
    pub(super) fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connect to the api-server")?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Http {
            reader: BufReader::with_capacity(16 * 1024, stream.try_clone()?),
            writer: stream,
            line: Vec::with_capacity(256),
            body: Vec::with_capacity(1024),
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
            bail!("the api-server closed the connection");
        }
        let status = self
            .line
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
            .with_context(|| format!("not an HTTP/1.1 status line: {:?}", String::from_utf8_lossy(&self.line)))?;
        let mut length = None;
        loop {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line)? == 0 {
                bail!("the api-server closed the connection in the headers");
            }
            let line = self.line.trim_ascii_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_at_checked(15)
                && name.eq_ignore_ascii_case(b"content-length:")
            {
                length = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            }
        }
        let length = length.context("an answer without Content-Length")?;
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body)?;
        Ok(status)
    }

    pub(super) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(super) fn get_request(port: u16, path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").into_bytes()
}
