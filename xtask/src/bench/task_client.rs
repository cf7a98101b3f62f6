//! The agent benchmark's client, NS8-style: one `PSUBSCRIBE progress/<agent>/task/*`
//! before a series; for each task `LPUSH`, its terminal progress message, `MGET` of
//! the result.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use protocol::task::{Progress, Task};
use protocol::{AgentId, keys};

use super::fixture::unique_id;
use super::measure::{Latency, latency_of};
use crate::resp::{Conn, Reply};

/// The benchmark's client, NS8-style: progress subscription first, then for each
/// task LPUSH, wait for its terminal progress message, MGET the result.
pub(super) struct Client {
    cmd: Conn,
    sub: Conn,
    agent: AgentId,
}

fn terminal_id(channel: &str, payload: &str) -> Option<String> {
    let p: Progress = serde_json::from_str(payload).ok()?;
    p.status.is_terminal().then(|| channel.rsplit('/').next().unwrap_or("").to_owned())
}

impl Client {
    pub(super) fn connect(port: u16, agent: AgentId) -> Result<Self> {
        let cmd = Conn::connect(port)?;
        let mut sub = Conn::connect(port)?;
        sub.cmd(&[b"PSUBSCRIBE", keys::progress_pattern(&agent).as_bytes()])?;
        Ok(Client { cmd, sub, agent })
    }

    fn task_json(&self, action: &str) -> (String, String) {
        let mut t = Task::new(action, serde_json::json!({}));
        t.id = unique_id();
        t.queue = keys::tasks(&self.agent);
        t.user = "admin".into();
        t.timestamp = Some("2026-11-26T16:14:49.695761Z".into());
        (t.id.clone(), serde_json::to_string(&t).expect("task serializes"))
    }

    pub(super) fn round_trip(&mut self, action: &str) -> Result<f64> {
        let (id, json) = self.task_json(action);
        let t0 = Instant::now();
        self.cmd.cmd(&[b"LPUSH", keys::tasks(&self.agent).as_bytes(), json.as_bytes()])?;
        loop {
            let (channel, payload) = self.sub.pmessage()?;
            if terminal_id(&channel, &payload).as_deref() == Some(id.as_str()) {
                break;
            }
        }
        let reply = self.cmd.cmd(&[
            b"MGET",
            keys::task_output(&self.agent, &id).as_bytes(),
            keys::task_error(&self.agent, &id).as_bytes(),
            keys::task_exit_code(&self.agent, &id).as_bytes(),
        ])?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let code = match reply {
            Reply::Array(Some(v)) if v.len() == 3 => v[2].text(),
            _ => None,
        };
        if code.as_deref() != Some("0") {
            bail!("task {action} ended with exit code {code:?}");
        }
        Ok(ms)
    }

    pub(super) fn latency(&mut self, action: &str, n: usize) -> Result<Latency> {
        for _ in 0..20 {
            self.round_trip(action)?;
        }
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            ms.push(self.round_trip(action)?);
        }
        Ok(latency_of(ms))
    }

    /// `n` tasks, each sent after the agent has been idle for `gap`: what a person
    /// starting a task from the API or a web page pays.
    pub(super) fn idle_latency(&mut self, action: &str, n: usize, gap: Duration) -> Result<Latency> {
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            std::thread::sleep(gap);
            ms.push(self.round_trip(action)?);
        }
        Ok(latency_of(ms))
    }

    /// (tasks/s, failed count)
    pub(super) fn burst(&mut self, action: &str, n: usize) -> Result<(f64, usize)> {
        let tasks: Vec<(String, String)> = (0..n).map(|_| self.task_json(action)).collect();
        let queue = keys::tasks(&self.agent);
        let mut args: Vec<&[u8]> = vec![b"LPUSH", queue.as_bytes()];
        args.extend(tasks.iter().map(|(_, j)| j.as_bytes()));
        let t0 = Instant::now();
        self.cmd.cmd(&args)?;
        let mut done = 0;
        while done < n {
            let (channel, payload) = self.sub.pmessage()?;
            if terminal_id(&channel, &payload).is_some() {
                done += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut failed = 0;
        for chunk in tasks.chunks(500) {
            let names: Vec<String> = chunk.iter().map(|(id, _)| keys::task_exit_code(&self.agent, id)).collect();
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(names.iter().map(|k| k.as_bytes()));
            if let Reply::Array(Some(codes)) = self.cmd.cmd(&args)? {
                failed += codes.iter().filter(|c| c.text().as_deref() != Some("0")).count();
            }
        }
        Ok((n as f64 / secs, failed))
    }
}
