//! The HTTP transport: `api-cli login`, `api-cli logout`, and `api-cli run --endpoint`,
//! which creates the task through the api-server and polls its status instead of
//! talking to Redis. The session token comes from the cache `login` fills, and is
//! refreshed when it nears its expiry.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::{AgentId, keys, validate_task_id};
use serde_json::{Value, json};

use crate::api::{self, Api, ApiError, Reply};
use crate::cache::{self, Cache, Entry};
use crate::cli::{DEFAULT_USER, LoginArgs, LogoutArgs, RunArgs};
use crate::failure::{EXIT_INTERRUPTED, Failure};
use crate::output;

/// Status polling starts fast (most actions take milliseconds) and slows down to this.
const MAX_POLL: Duration = Duration::from_secs(1);
const FIRST_POLL: Duration = Duration::from_millis(20);
/// How long an unreachable server is retried while waiting for a task (a restart).
const RETRY_UNREACHABLE: Duration = Duration::from_secs(60);

pub fn login(args: &LoginArgs) -> Result<u8, Failure> {
    let endpoint = api::normalize_endpoint(&args.endpoint).map_err(Failure::cli)?;
    let user = args.username.as_str();
    if user.is_empty() {
        return Err(Failure::cli("--username must not be empty"));
    }
    let cache = Cache::locate().map_err(Failure::cli)?;
    cache.path(&endpoint, user).map_err(Failure::cli)?;
    let ca_file = args.ca_file.as_deref().map(absolute).transpose()?;
    let api = Api::new(&endpoint, ca_file.as_deref()).map_err(Failure::cli)?;

    let mut body = json!({"username": user, "password": read_password(args.password_stdin, user, &endpoint)?});
    if let Some(otp) = &args.otp {
        body["otp"] = Value::String(otp.trim().to_owned());
    }
    let previous = cache.load(&endpoint, user).ok().flatten();
    let (entry, path) = new_session(&api, &cache, &endpoint, user, body, ca_file)?;
    // The session this one replaces is of no use any more: have the server revoke it.
    if let Some(old) = previous.filter(|old| old.token != entry.token) {
        let _ = api.post("/api/logout", Some(&old.token), None);
    }
    let until = if entry.expire.is_empty() { String::new() } else { format!(", valid until {}", entry.expire) };
    eprintln!(
        "Logged in to {endpoint} as {user}. The session is kept in {}{until}; api-cli refreshes it while in use.",
        path.display()
    );
    Ok(0)
}

/// One line saying why the server refused a login.
fn login_refused(endpoint: &str, user: &str, reply: &Reply) -> String {
    let message = reply.message();
    match reply.status {
        401 if message.starts_with("OTP required") => format!(
            "login to {endpoint} as {user}: OTP required (two-factor authentication is on): run again with --otp CODE, a code from the authenticator app or a recovery code"
        ),
        401 => format!("login to {endpoint} as {user} failed: {message}"),
        429 => {
            let wait = reply.retry_after.as_deref().map(|s| format!(" (Retry-After: {s} s)")).unwrap_or_default();
            format!("login to {endpoint} as {user} refused: {message}{wait}")
        }
        _ => format!("login to {endpoint} failed: {message}"),
    }
}

/// The password: a line of stdin with --password-stdin, else typed at the terminal
/// without echo.
fn read_password(from_stdin: bool, user: &str, endpoint: &str) -> Result<String, Failure> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::cli(format!("cannot read the password from stdin: {e}")))?;
        line.truncate(line.trim_end_matches(['\n', '\r']).len());
        line
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("Password of {user} on {endpoint}: "))
            .map_err(|e| Failure::cli(format!("cannot read the password from the terminal: {e}")))?
    } else {
        return Err(Failure::cli(
            "stdin is not a terminal to type the password on: pass --password-stdin and write the password on stdin",
        ));
    };
    if password.is_empty() {
        return Err(Failure::cli("empty password"));
    }
    Ok(password)
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| Failure::cli(format!("--ca-file {}: {e}", path.display())))
}

pub fn logout(args: &LogoutArgs) -> Result<u8, Failure> {
    let endpoint = api::normalize_endpoint(&args.endpoint).map_err(Failure::cli)?;
    let cache = Cache::locate().map_err(Failure::cli)?;
    let entries = match &args.username {
        Some(user) => cache.load(&endpoint, user).map_err(Failure::cli)?.into_iter().collect(),
        None => cache.logins(&endpoint).map_err(Failure::cli)?,
    };
    if entries.is_empty() {
        let who = args.username.as_deref().map(|u| format!(" as {u}")).unwrap_or_default();
        eprintln!("Not logged in to {endpoint}{who}: nothing to do.");
        return Ok(0);
    }
    for entry in entries {
        let user = &entry.username;
        let kept = || {
            let path = cache.path(&endpoint, user).map(|p| p.display().to_string()).unwrap_or_default();
            format!("the session of {user} stays cached so that you can log out later (or delete {path})")
        };
        let ca_file = args.ca_file.as_deref().or(entry.ca_file.as_deref());
        let api = Api::new(&endpoint, ca_file).map_err(Failure::cli)?;
        let reply =
            api.post("/api/logout", Some(&entry.token), None).map_err(|e| Failure::cli(format!("{e}; {}", kept())))?;
        if reply.status != 200 {
            return Err(Failure::cli(format!(
                "logout of {user} from {endpoint} failed: {}; {}",
                reply.message(),
                kept()
            )));
        }
        cache.remove(&endpoint, user).map_err(Failure::cli)?;
        eprintln!("Logged out of {endpoint} as {user}: the server no longer accepts that session.");
    }
    Ok(0)
}

/// `POST /api/login` with `body` (which is dropped at once: it holds the password),
/// and the session kept in the cache; the entry and its file.
fn new_session(
    api: &Api,
    cache: &Cache,
    endpoint: &str,
    user: &str,
    body: Value,
    ca_file: Option<PathBuf>,
) -> Result<(Entry, PathBuf), Failure> {
    let reply = api.post("/api/login", None, Some(&body)).map_err(Failure::cli);
    drop(body);
    let reply = reply?;
    if reply.status != 200 {
        return Err(Failure::cli(login_refused(endpoint, user, &reply)));
    }
    let Some(token) = reply.body.get("token").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
        return Err(Failure::cli(format!("the api-server at {endpoint} accepted the login but sent no token")));
    };
    let expire = reply.body.get("expire").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut entry = Entry::new(endpoint, user, token.to_owned(), expire, cache::now());
    entry.ca_file = ca_file;
    match cache.store(&entry) {
        Ok(path) => Ok((entry, path)),
        Err(e) => {
            // A token nobody can use is better revoked at once.
            let _ = api.post("/api/logout", Some(&entry.token), None);
            Err(Failure::cli(e))
        }
    }
}

/// `--as-agent`: a cached session of this agent (REDIS_USER) that is not due for
/// renewal, or a new login with its Redis credentials (which never touch the disk or
/// the command line). The agent's user name.
fn agent_login(endpoint: &str, ca_file: Option<&Path>) -> Result<String, Failure> {
    let endpoint = api::normalize_endpoint(endpoint).map_err(Failure::cli)?;
    let user = std::env::var("REDIS_USER").ok().filter(|u| !u.is_empty());
    let password = std::env::var("REDIS_PASSWORD").ok().filter(|p| !p.is_empty());
    let (Some(user), Some(password)) = (user, password) else {
        return Err(Failure::cli(
            "--as-agent: REDIS_USER and REDIS_PASSWORD are not set (run it from an agent's step)",
        ));
    };
    let cache = Cache::locate().map_err(Failure::cli)?;
    if let Ok(Some(e)) = cache.load(&endpoint, &user)
        && !e.refresh_due(cache::now())
    {
        return Ok(user);
    }
    let api = Api::new(&endpoint, ca_file).map_err(Failure::cli)?;
    let body = json!({"username": user, "password": password});
    new_session(&api, &cache, &endpoint, &user, body, ca_file.map(Path::to_path_buf))?;
    Ok(user)
}

/// Why a request of a logged-in session did not get an answer to act on.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// No answer at all (network, TLS): worth retrying while waiting for a task.
    #[error(transparent)]
    Unreachable(ApiError),
    /// 401: the session is gone; the message says what to do.
    #[error("{0}")]
    NotLoggedIn(String),
}

/// Why waiting for a task's status stopped without its result.
#[derive(Debug, thiserror::Error)]
enum WaitError {
    /// The server answered something else than a status (its message).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Send(#[from] SendError),
}

/// A cached login in use.
struct Session {
    api: Api,
    cache: Cache,
    entry: Entry,
    /// The server refused to refresh (the session reached its maximum age): do not
    /// ask again on every request.
    refresh_refused: bool,
}

fn not_logged_in(endpoint: &str, user: Option<&str>, reason: Option<&str>) -> String {
    let flag = user.filter(|u| *u != DEFAULT_USER).map(|u| format!(" --username {u}")).unwrap_or_default();
    let said = reason.map(|r| format!("; the server said: {r}")).unwrap_or_default();
    format!(
        "not logged in to {endpoint} (or the session expired): run `api-cli login --endpoint {endpoint}{flag}`{said}"
    )
}

impl Session {
    /// The cached login for `endpoint`: `username`'s, or the only one there is.
    fn open(endpoint: &str, username: Option<&str>, ca_file: Option<&Path>) -> Result<Session, Failure> {
        let endpoint = api::normalize_endpoint(endpoint).map_err(Failure::cli)?;
        let cache = Cache::locate().map_err(Failure::cli)?;
        let entry = match username {
            Some(user) => cache.load(&endpoint, user).map_err(Failure::cli)?,
            None => {
                let mut all = cache.logins(&endpoint).map_err(Failure::cli)?;
                if all.len() > 1 {
                    let users: Vec<&str> = all.iter().map(|e| e.username.as_str()).collect();
                    return Err(Failure::cli(format!(
                        "logged in to {endpoint} as several users ({}): choose one with --username",
                        users.join(", ")
                    )));
                }
                all.pop()
            }
        };
        let Some(entry) = entry else {
            return Err(Failure::cli(not_logged_in(&endpoint, username, None)));
        };
        let api = Api::new(&endpoint, ca_file.or(entry.ca_file.as_deref())).map_err(Failure::cli)?;
        Ok(Session { api, cache, entry, refresh_refused: false })
    }

    fn post(&mut self, path: &str, body: &Value) -> Result<Reply, SendError> {
        self.refresh_if_due();
        let reply = self.api.post(path, Some(&self.entry.token), Some(body)).map_err(SendError::Unreachable)?;
        self.checked(reply)
    }

    fn get(&mut self, path: &str) -> Result<Reply, SendError> {
        self.refresh_if_due();
        let reply = self.api.get(path, Some(&self.entry.token)).map_err(SendError::Unreachable)?;
        self.checked(reply)
    }

    fn checked(&self, reply: Reply) -> Result<Reply, SendError> {
        if reply.status == 401 {
            let reason = reply.message();
            return Err(SendError::NotLoggedIn(not_logged_in(
                self.api.endpoint(),
                Some(&self.entry.username),
                Some(&reason),
            )));
        }
        Ok(reply)
    }

    /// Trade the token for a fresh one when it is within a quarter of its lifetime
    /// of expiry, and keep the new one in the cache. Failures are left to the request
    /// that follows, which says what is wrong.
    fn refresh_if_due(&mut self) {
        if self.refresh_refused || !self.entry.refresh_due(cache::now()) {
            return;
        }
        let Ok(reply) = self.api.post("/api/refresh", Some(&self.entry.token), None) else { return };
        let token = reply.body.get("token").and_then(Value::as_str).filter(|t| !t.is_empty());
        match (reply.status, token) {
            (200, Some(token)) => {
                let expire = reply.body.get("expire").and_then(Value::as_str).unwrap_or_default().to_owned();
                let mut fresh =
                    Entry::new(self.api.endpoint(), &self.entry.username, token.to_owned(), expire, cache::now());
                fresh.ca_file = self.entry.ca_file.take();
                self.entry = fresh;
                // The old token is revoked now: without the new one in the cache, the
                // next api-cli would find the session gone.
                if let Err(e) = self.cache.store(&self.entry) {
                    eprintln!("api-cli: warning: the session was refreshed but not saved ({e}): log in again later");
                }
            }
            (401, _) => {
                // Another api-cli may have refreshed it first: use its token.
                match self.cache.load(&self.entry.endpoint, &self.entry.username) {
                    Ok(Some(newer)) if newer.token != self.entry.token => self.entry = newer,
                    _ => self.refresh_refused = true,
                }
            }
            _ => self.refresh_refused = true,
        }
    }

    /// Poll the task's status until it has a result (the `data` of the answer).
    /// 404 (not accepted by the agent yet) and 400 (not finished) mean "wait".
    fn wait(&mut self, status_path: &str, on_status: impl Fn(&'static str)) -> Result<Value, WaitError> {
        let mut delay = FIRST_POLL;
        let mut unreachable_since: Option<Instant> = None;
        loop {
            match self.get(status_path) {
                Ok(reply) => {
                    unreachable_since = None;
                    match reply.status {
                        200 => return Ok(reply.data().clone()),
                        400 => on_status("running"),
                        404 => on_status("pending"),
                        _ => return Err(WaitError::Refused(reply.message())),
                    }
                }
                Err(SendError::Unreachable(e)) => {
                    if unreachable_since.get_or_insert_with(Instant::now).elapsed() > RETRY_UNREACHABLE {
                        return Err(SendError::Unreachable(e).into());
                    }
                    on_status("waiting for the api-server");
                }
                Err(e) => return Err(e.into()),
            }
            std::thread::sleep(delay);
            delay = (delay * 3 / 2).min(MAX_POLL);
        }
    }
}

/// `api-cli run ACTION --endpoint URL`: what the Redis transport does, through the
/// api-server.
pub async fn run(args: RunArgs, endpoint: &str) -> Result<u8, Failure> {
    let (agent, data, extra, parent) = crate::task::task_input(&args)?;
    let agent_user = if args.as_agent { Some(agent_login(endpoint, args.ca_file.as_deref())?) } else { None };
    let username = agent_user.as_deref().or(args.username.as_deref());
    let mut session = Session::open(endpoint, username, args.ca_file.as_deref())?;
    let base = format!("/api/{agent}");
    let mut body = json!({"action": args.action, "data": data, "extra": extra});
    if !parent.is_empty() {
        body["parent"] = Value::String(parent);
    }
    let reply = session.post(&format!("{base}/tasks"), &body).map_err(Failure::cli)?;
    if reply.status != 201 {
        // 403 and 404 name the problem (no role for the action, agent not running).
        return Err(Failure::cli(reply.message()));
    }
    let id = reply.data().get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    validate_task_id(&id).map_err(|e| Failure::cli(format!("the api-server answered an invalid task id: {e}")))?;
    let prefix = keys::task_prefix(&agent, &id);
    if args.no_wait {
        output::write_stdout(&format!("{id}\n{prefix}\n")).map_err(Failure::cli)?;
        return Ok(0);
    }

    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| spinner(&agent, &args.action));
    let status_path = format!("{base}/task/{id}/status");
    // After Ctrl-C the poller may still be in a request: it must not draw any more.
    let stopped = Arc::new(AtomicBool::new(false));
    let (shown, stop) = (bar.clone(), stopped.clone());
    let waiter = tokio::task::spawn_blocking(move || {
        session.wait(&status_path, |status| {
            if let Some(bar) = shown.as_ref().filter(|_| !stop.load(Ordering::SeqCst)) {
                bar.set_message(status);
            }
        })
    });
    let result = tokio::select! {
        r = waiter => match r {
            Ok(r) => r.map_err(|e| Failure::cli(format!("{e} (while waiting for {prefix}: the task may still run)"))),
            Err(e) => Err(Failure::cli(format!("the status poller failed: {e}"))),
        },
        // A handler that cannot be installed disables this branch (Ctrl-C then kills).
        Ok(()) = tokio::signal::ctrl_c() => Err(Failure {
            code: EXIT_INTERRUPTED,
            message: format!("interrupted: the task goes on, its result will be under {prefix}/"),
        }),
    };
    stopped.store(true, Ordering::SeqCst);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let status = result?;
    // The server sends the output decoded: JSON as JSON, other text as a string.
    let raw = match status.get("output").unwrap_or(&Value::Null) {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let error = status.get("error").and_then(Value::as_str).unwrap_or_default().to_owned();
    let code = status.get("exit_code").and_then(Value::as_i64).unwrap_or(-1);
    let code = i32::try_from(code).unwrap_or(if code < 0 { -1 } else { 255 });
    crate::task::finish(&agent, &args.action, &id, &raw, code, error)
}

/// No percentage comes with polling: a spinner with the task's state.
fn spinner(agent: &AgentId, action: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} {prefix} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(format!("{agent} {action}"));
    bar.set_message("pending");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_logged_in_says_how_to_log_in() {
        let m = not_logged_in("http://h:1", None, None);
        assert_eq!(
            m,
            "not logged in to http://h:1 (or the session expired): run `api-cli login --endpoint http://h:1`"
        );
        let m = not_logged_in("http://h:1", Some("admin"), Some("the session token was revoked"));
        assert!(
            m.ends_with("`api-cli login --endpoint http://h:1`; the server said: the session token was revoked"),
            "{m}"
        );
        assert!(not_logged_in("http://h:1", Some("bob"), None).contains("--endpoint http://h:1 --username bob`"));
    }

    #[test]
    fn login_refusals_are_one_line() {
        let reply = |status, message: &str, retry: Option<&str>| Reply {
            status,
            body: json!({"code": status, "message": message, "data": null}),
            text: String::new(),
            retry_after: retry.map(str::to_owned),
            location: None,
        };
        let m = login_refused("http://h", "admin", &reply(401, "wrong user name or password", None));
        assert_eq!(m, "login to http://h as admin failed: wrong user name or password");
        let m = login_refused("http://h", "admin", &reply(401, "OTP required: send the code in \"otp\"", None));
        assert!(m.contains("OTP required") && m.contains("--otp CODE"), "{m}");
        let m = login_refused("http://h", "admin", &reply(429, "too many failed logins: try again in 4 s", Some("4")));
        assert!(m.ends_with("too many failed logins: try again in 4 s (Retry-After: 4 s)"), "{m}");
        assert!(!m.contains('\n'));
    }
}
