//! Running one task, from the moment it is popped to its stored result.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::fred::prelude::*;
use protocol::comfd::Command as ComCommand;
use protocol::secrets::{mask_task, mask_validation_errors};
use protocol::task::{Progress, Task, TaskStatus, ValidationError};
use protocol::{AgentId, envfile, exit, keys, stepenv};
use serde_json::Value;

use crate::actions;
use crate::config::AgentConfig;
use crate::native::{ActionContext, ActionError, NativeActions};
use crate::progress::ProgressTracker;
use crate::redis_ops;
use crate::step::{CancelHandle, Reaper, Spawner, StepEvent, StepProcess, StepSpec, merge_env};
use crate::validate::{SchemaCache, SchemaSource, check};

pub(crate) const LIST_ACTIONS: &str = "list-actions";
pub(crate) const CANCEL_TASK: &str = "cancel-task";

/// State shared by every task of one agent.
pub(crate) struct Shared {
    pub cfg: AgentConfig,
    pub redis: Client,
    pub natives: NativeActions,
    pub schemas: SchemaCache,
    /// Running tasks by id, for `cancel-task`.
    pub running: Mutex<HashMap<String, Arc<CancelHandle>>>,
    /// Raw queue items this process holds (popped, result not yet stored), counted:
    /// the same JSON may be queued twice.
    pub held: Mutex<HashMap<String, usize>>,
    pub reaper: Reaper,
    pub spawner: Spawner,
    /// The agent's own environment, the base of every step's.
    pub base_env: Vec<(OsString, OsString)>,
    /// The connection native actions' sub-tasks share.
    pub calls: Arc<crate::native::Calls>,
}

impl Shared {
    pub fn hold(&self, raw: &str) {
        *self.held.lock().expect("held poisoned").entry(raw.to_owned()).or_default() += 1;
    }

    fn release(&self, raw: &str) {
        let mut held = self.held.lock().expect("held poisoned");
        if let Some(n) = held.get_mut(raw) {
            *n -= 1;
            if *n == 0 {
                held.remove(raw);
            }
        }
    }

    pub fn holds(&self, raw: &str) -> bool {
        self.held.lock().expect("held poisoned").contains_key(raw)
    }

    fn agent(&self) -> &AgentId {
        &self.cfg.agent_id
    }

    /// A child's complete environment: the agent's own, its settings, then
    /// `state/environment` as it is now (steps may have changed it), then `extra`.
    pub fn child_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            (stepenv::AGENT_ID.to_owned(), self.cfg.agent_id.to_string()),
            (stepenv::AGENT_INSTALL_DIR.to_owned(), self.cfg.install_dir.display().to_string()),
            (stepenv::AGENT_STATE_DIR.to_owned(), self.cfg.state_dir.display().to_string()),
        ];
        env.extend(read_environment(&self.cfg));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        merge_env(self.base_env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())), env)
    }
}

pub(crate) fn read_environment(cfg: &AgentConfig) -> Vec<(String, String)> {
    std::fs::read_to_string(cfg.state_dir.join("environment")).map(|t| envfile::parse(&t)).unwrap_or_default()
}

/// How a task ended.
pub(crate) struct Outcome {
    pub output: String,
    pub error: String,
    pub exit_code: i32,
    pub status: TaskStatus,
    pub progress: u8,
    /// Copy `state/environment` to Redis (actions do, builtins do not).
    pub copy_env: bool,
    /// The step it ended at, for the log.
    pub step: String,
}

impl Outcome {
    fn new(status: TaskStatus, exit_code: i32, progress: u8) -> Self {
        Outcome {
            output: String::new(),
            error: String::new(),
            exit_code,
            status,
            progress,
            copy_env: true,
            step: String::new(),
        }
    }

    fn validation_failed(errors: &[ValidationError], step: &str) -> Self {
        let json = serde_json::to_string(errors).unwrap_or_else(|_| "[]".into());
        let mut o = Outcome::new(TaskStatus::ValidationFailed, exit::VALIDATION_FAILED, 0);
        o.error = format!("Validation errors: {json}\n");
        o.output = json;
        o.step = step.to_owned();
        o
    }

    fn aborted(exit_code: i32, error: String, step: &str) -> Self {
        let mut o = Outcome::new(TaskStatus::Aborted, exit_code, 0);
        o.error = error;
        o.step = step.to_owned();
        o
    }

    pub fn interrupted(agent: &AgentId) -> Self {
        let mut o = Outcome::aborted(
            exit::INTERRUPTED,
            format!(
                "Task interrupted: agent {agent} stopped while running it and was restarted. \
                 The action was not run again because actions are not guaranteed to be idempotent; \
                 check its effects and submit it again if needed.\n"
            ),
            "",
        );
        o.copy_env = false;
        o
    }
}

fn publish(sh: &Shared, task_id: &str, status: TaskStatus, progress: u8) {
    redis_ops::progress(&sh.redis, sh.agent(), task_id, status, progress);
}

fn log_child_output(line: &[u8]) {
    // Raw, so journald still sees a step's own `<N>` priority prefixes.
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line);
    if !line.ends_with(b"\n") {
        let _ = err.write_all(b"\n");
    }
}

/// Run a popped queue item to the end. Never fails: every path stores a result,
/// except an undecodable item, which is dropped (there is no id to store it under).
pub(crate) async fn run_task(sh: Arc<Shared>, raw: String) {
    let agent = sh.agent().clone();
    let (task, value) = match Task::decode(&raw) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{}: task ignored: {e}", keys::tasks(&agent));
            remove_inflight(&sh, &raw).await;
            return;
        }
    };
    let cancel = Arc::new(CancelHandle::default());
    sh.running.lock().expect("running poisoned").insert(task.id.clone(), cancel.clone());

    let native = sh.natives.get(&task.action).cloned();
    let immediate = native.is_some() || task.action == LIST_ACTIONS || task.action == CANCEL_TASK;
    // Steps are found before the task is announced: an action that has steps and no
    // input schema is `running` from the start, in the same command as `pending`.
    let plan = (!immediate).then(|| actions::plan(&sh.cfg.action_dirs, &task.action));
    // The context hides what the input schema declares secret, besides secret names.
    let source = input_source(&sh, native.as_ref(), plan.as_ref());
    let masked =
        mask_task(&value, source.as_ref().map(|s| &s.schema), source.as_ref().and_then(|s| s.definitions.as_ref()));
    let context = serde_json::to_string(&masked).unwrap_or_default();
    let running_now = immediate || plan.as_ref().is_some_and(|p| !p.steps.is_empty() && p.input_schema.is_none());
    let statuses: &[TaskStatus] =
        if running_now { &[TaskStatus::Pending, TaskStatus::Running] } else { &[TaskStatus::Pending] };
    redis_ops::accept(&sh.redis, &agent, &task.id, context, statuses);

    let outcome = match (task.action.as_str(), native, plan) {
        (LIST_ACTIONS, _, _) => list_actions(&sh),
        (CANCEL_TASK, _, _) => cancel_task(&sh, &task.data),
        (_, Some(native), _) => run_native(&sh, &task, native, &cancel).await,
        (_, None, plan) => run_script(&sh, &task, plan.unwrap_or_default(), running_now, &cancel).await,
    };
    {
        let mut running = sh.running.lock().expect("running poisoned");
        if running.get(&task.id).is_some_and(|c| Arc::ptr_eq(c, &cancel)) {
            running.remove(&task.id);
        }
    }
    finish(&sh, &task.id, &task.action, &raw, outcome).await;
    sh.release(&raw);
}

/// The input schema of the action, if it has one that loads (a broken one is reported
/// when the task validates its input).
fn input_source(
    sh: &Shared,
    native: Option<&crate::native::NativeAction>,
    plan: Option<&actions::ActionPlan>,
) -> Option<Arc<SchemaSource>> {
    if let Some(n) = native {
        return n.input_source.clone();
    }
    let path = plan?.input_schema.as_ref()?;
    sh.schemas.get_with_source(path).ok().map(|(_, source)| source)
}

/// Validation errors echo the input: mask what is secret in them first.
fn masked_errors(
    mut errors: Vec<ValidationError>,
    data: &Value,
    source: Option<&SchemaSource>,
) -> Vec<ValidationError> {
    mask_validation_errors(&mut errors, data, source.map(|s| &s.schema), source.and_then(|s| s.definitions.as_ref()));
    errors
}

async fn remove_inflight(sh: &Shared, raw: &str) {
    if let Err(e) = sh.redis.lrem::<i64, _, _>(keys::inflight(sh.agent()), 1, raw).await {
        tracing::warn!("cannot remove a task from {}: {e}", keys::inflight(sh.agent()));
    }
    sh.release(raw);
}

/// Store the result and close the task in one transaction: environment copy, result
/// keys, context TTL, removal from the in-flight list, final progress. A client that
/// sees the final status finds the result; a crash before it leaves the task in flight.
/// Retried until Redis takes it: a result is never dropped.
pub(crate) async fn finish(sh: &Shared, task_id: &str, action: &str, raw: &str, o: Outcome) {
    let agent = sh.agent();
    bus::retry(&format!("task/{agent}/{task_id}: cannot store the result"), || {
        redis_ops::finish(
            &sh.redis,
            agent,
            redis_ops::Finish {
                task_id,
                raw,
                output: &o.output,
                error: &o.error,
                exit_code: o.exit_code,
                final_progress: Progress { status: o.status, progress: o.progress },
                // Read at the very end: the copy is what the task left behind.
                environment: o.copy_env.then(|| read_environment(&sh.cfg)),
            },
        )
    })
    .await;
    let at = if o.step.is_empty() { String::new() } else { format!(" at step {}", o.step) };
    let line = format!(
        "task/{agent}/{task_id}: action \"{action}\" status is \"{}\" ({}){at}",
        o.status.as_str(),
        o.exit_code
    );
    if o.status == TaskStatus::Completed {
        tracing::debug!("{line}");
    } else {
        tracing::info!("{line}");
    }
}

fn list_actions(sh: &Shared) -> Outcome {
    let mut names: BTreeSet<String> = actions::list(&sh.cfg.action_dirs);
    names.extend(sh.natives.names().map(str::to_owned));
    names.insert(LIST_ACTIONS.to_owned());
    names.insert(CANCEL_TASK.to_owned());
    let mut o = Outcome::new(TaskStatus::Completed, exit::SUCCESS, 100);
    o.output = serde_json::to_string(&names).unwrap_or_default();
    o.copy_env = false;
    o
}

fn cancel_task(sh: &Shared, data: &Value) -> Outcome {
    let task = data.get("task").and_then(Value::as_str).filter(|s| !s.is_empty());
    let timeout = match data.get("timeout") {
        None | Some(Value::Null) => Some(0),
        Some(v) => v.as_u64(),
    };
    let (Some(task), Some(timeout)) = (task, timeout) else {
        let mut o = Outcome::new(TaskStatus::ValidationFailed, exit::VALIDATION_FAILED, 0);
        o.error =
            "Action cancel-task validation-failed at step builtin-validation.json: invalid task ID or timeout value"
                .into();
        o.copy_env = false;
        return o;
    };
    let handle = sh.running.lock().expect("running poisoned").get(task).cloned();
    let Some(handle) = handle else {
        let mut o = Outcome::new(TaskStatus::ValidationFailed, exit::TASK_NOT_FOUND, 0);
        o.error = "Action cancel-task validation-failed at step task-lookup: task ID not found".into();
        o.copy_env = false;
        return o;
    };
    handle.cancel();
    if timeout > 0 {
        // Beyond NS8, which parses `timeout` but ignores it: a step that ignores
        // SIGTERM for that many seconds gets SIGKILL.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(timeout)).await;
            handle.signal(nix::sys::signal::Signal::SIGKILL);
        });
    }
    let mut o = Outcome::new(TaskStatus::Completed, exit::SUCCESS, 100);
    o.copy_env = false;
    o
}

async fn run_native(sh: &Shared, task: &Task, native: crate::native::NativeAction, cancel: &CancelHandle) -> Outcome {
    let source = native.input_source.as_deref();
    if let Some(v) = &native.input {
        let errors = check(v, &task.data);
        if !errors.is_empty() {
            return Outcome::validation_failed(&masked_errors(errors, &task.data, source), "validate-input");
        }
    }
    let ctx = ActionContext {
        agent: sh.agent().clone(),
        task_id: task.id.clone(),
        user: task.user.clone(),
        state_dir: sh.cfg.state_dir.clone(),
        redis: sh.redis.clone(),
        calls: sh.calls.clone(),
    };
    let result = tokio::select! {
        r = (native.handler)(ctx, task.data.clone()) => r,
        _ = cancel.cancelled() => Err(ActionError::Failed { exit_code: exit::SIGNALED, message: "Task cancelled\n".into() }),
    };
    match result {
        Ok(value) => {
            if let Some(v) = &native.output {
                let errors = check(v, &value);
                if !errors.is_empty() {
                    return Outcome::aborted(
                        exit::GENERIC,
                        format!("Output validation failed: {}\n", serde_json::to_string(&errors).unwrap_or_default()),
                        "validate-output",
                    );
                }
            }
            let mut o = Outcome::new(TaskStatus::Completed, exit::SUCCESS, 100);
            o.output = if value.is_null() { String::new() } else { value.to_string() };
            o
        }
        Err(ActionError::Validation(errors)) => {
            Outcome::validation_failed(&masked_errors(errors, &task.data, source), &task.action)
        }
        Err(ActionError::Failed { exit_code, message }) => {
            let mut message = message;
            if !message.ends_with('\n') {
                message.push('\n');
            }
            Outcome::aborted(exit_code, message, &task.action)
        }
    }
}

async fn run_script(
    sh: &Shared,
    task: &Task,
    plan: actions::ActionPlan,
    announced: bool,
    cancel: &Arc<CancelHandle>,
) -> Outcome {
    let agent = sh.agent();
    let tag = protocol::keys::task_prefix(agent, &task.id);
    if plan.steps.is_empty() {
        return Outcome::aborted(exit::UNDEFINED_ACTION, format!("Action {} is not defined\n", task.action), "");
    }
    if let Some(path) = &plan.input_schema {
        match sh.schemas.get_with_source(path) {
            Ok((v, source)) => {
                let errors = check(&v, &task.data);
                if !errors.is_empty() {
                    let errors = masked_errors(errors, &task.data, Some(&source));
                    return Outcome::validation_failed(&errors, actions::VALIDATE_INPUT);
                }
            }
            Err(e) => {
                return Outcome::aborted(
                    exit::GENERIC,
                    format!("Cannot load the input schema {e}\n"),
                    actions::VALIDATE_INPUT,
                );
            }
        }
    }
    if !announced {
        publish(sh, &task.id, TaskStatus::Running, 0);
    }

    let stdin = serde_json::to_vec(&task.data).unwrap_or_else(|_| b"null".to_vec());
    let mut progress = ProgressTracker::new(plan.steps.iter().map(|(n, _)| n.clone()));
    let mut output: Vec<u8> = Vec::new();
    let mut error: Vec<u8> = Vec::new();
    let mut validation_failed = false;
    let finish_with = |status: TaskStatus, code: i32, pct: u8, output: &[u8], error: &[u8], step: &str| {
        let mut o = Outcome::new(status, code, pct);
        o.output = String::from_utf8_lossy(output).into_owned();
        o.error = String::from_utf8_lossy(error).into_owned();
        o.step = step.to_owned();
        o
    };

    for (index, (name, path)) in plan.steps.iter().enumerate() {
        if cancel.is_cancelled() {
            error.extend_from_slice(format!("Task cancelled before step {name}\n").as_bytes());
            return finish_with(TaskStatus::Aborted, exit::SIGNALED, progress.percent(), &output, &error, name);
        }
        progress.start_step(index);
        let env = sh.child_env(&[
            (stepenv::AGENT_COMFD, "3"),
            (stepenv::AGENT_TASK_ID, &task.id),
            (stepenv::AGENT_TASK_ACTION, &task.action),
            (stepenv::AGENT_TASK_USER, &task.user),
        ]);
        tracing::debug!("{tag}: {}/{name} is starting", task.action);
        let spec = StepSpec { path, cwd: &sh.cfg.state_dir, env, stdin: stdin.clone(), comfd: true };
        let mut process = match StepProcess::spawn(spec, cancel.clone(), &sh.reaper, &sh.spawner).await {
            Ok(p) => p,
            Err(e) => {
                // NS8 keeps non-executable placeholder steps on purpose: skip, count as done.
                tracing::warn!("{tag}: step {name} skipped, it cannot be executed: {e}");
                progress.set_step_progress(100);
                continue;
            }
        };
        let code = loop {
            let heartbeat = tokio::time::sleep(sh.cfg.poll_interval);
            tokio::select! {
                event = process.next() => match event {
                    StepEvent::Stderr(line) => {
                        log_child_output(&line);
                        redis_ops::publish_log(&sh.redis, agent, &task.id, &line);
                        error.extend_from_slice(&line);
                    }
                    StepEvent::Command(ComCommand::SetProgress(p)) => {
                        progress.set_step_progress(p);
                        publish(sh, &task.id, TaskStatus::Running, progress.percent());
                    }
                    StepEvent::Command(ComCommand::SetWeight { step, weight }) => progress.set_weight(step, weight),
                    StepEvent::Command(ComCommand::SetValidationFailed) => validation_failed = true,
                    StepEvent::Command(ComCommand::Unknown(line)) => {
                        tracing::warn!("{tag}: unknown command from step {name}: {line:?}");
                    }
                    StepEvent::Exited { code, stdout } => {
                        output.extend_from_slice(&stdout);
                        break code;
                    }
                },
                _ = heartbeat => {
                    // A long step: keep the context alive and tell clients we are here.
                    redis_ops::refresh_context(&sh.redis, agent, &task.id);
                    publish(sh, &task.id, TaskStatus::Running, progress.percent());
                }
            }
        };
        if code != exit::SUCCESS {
            let status = if validation_failed { TaskStatus::ValidationFailed } else { TaskStatus::Aborted };
            return finish_with(status, code, progress.percent(), &output, &error, name);
        }
        if validation_failed {
            return finish_with(TaskStatus::ValidationFailed, exit::VALIDATION_FAILED, 0, &output, &error, name);
        }
        progress.set_step_progress(100);
        // After the last step the terminal status follows at once.
        if index + 1 < plan.steps.len() {
            publish(sh, &task.id, TaskStatus::Running, progress.percent());
        }
    }

    if let Some(path) = &plan.output_schema {
        let problem = match sh.schemas.get(path) {
            Err(e) => Some(format!("Cannot load the output schema {e}")),
            Ok(v) => match serde_json::from_slice::<Value>(&output) {
                Err(e) => Some(format!("Output validation failed: the output is not JSON: {e}")),
                Ok(value) => {
                    let errors = check(&v, &value);
                    (!errors.is_empty()).then(|| {
                        format!("Output validation failed: {}", serde_json::to_string(&errors).unwrap_or_default())
                    })
                }
            },
        };
        if let Some(problem) = problem {
            error.extend_from_slice(problem.as_bytes());
            error.push(b'\n');
            return finish_with(
                TaskStatus::Aborted,
                exit::GENERIC,
                progress.percent(),
                &output,
                &error,
                actions::VALIDATE_OUTPUT,
            );
        }
    }
    let last = plan.steps.last().map(|(n, _)| n.as_str()).unwrap_or("");
    finish_with(TaskStatus::Completed, exit::SUCCESS, 100, &output, &error, last)
}
