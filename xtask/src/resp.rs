//! A minimal blocking RESP2 client for the benchmark: one socket, no tasks, no
//! buffering layers, so round trips measure the agent and Redis rather than a client
//! library (the NS8 baseline used redis-py with hiredis, a similarly thin client).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connect to redis")?;
        stream.set_nodelay(true)?;
        Ok(Conn { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    pub fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&buf)?;
        Ok(())
    }

    pub fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.send(args)?;
        self.read()
    }

    pub fn read(&mut self) -> Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.len() < 3 {
            bail!("connection closed");
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        Ok(match line[0] {
            b'+' => Reply::Simple(body),
            b'-' => bail!("redis error: {body}"),
            b':' => Reply::Int(body.parse()?),
            b'$' => {
                let n: i64 = body.parse()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            }
            b'*' => {
                let n: i64 = body.parse()?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    Reply::Array(Some((0..n).map(|_| self.read()).collect::<Result<_>>()?))
                }
            }
            other => bail!("unexpected RESP type byte {other:?}"),
        })
    }

    /// Next `pmessage` on a PSUBSCRIBEd connection: (channel, payload).
    pub fn pmessage(&mut self) -> Result<(String, String)> {
        loop {
            if let Reply::Array(Some(items)) = self.read()?
                && items.len() == 4
                && items[0].text().as_deref() == Some("pmessage")
            {
                return Ok((items[2].text().unwrap_or_default(), items[3].text().unwrap_or_default()));
            }
        }
    }
}
