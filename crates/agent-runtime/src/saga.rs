//! Sagas: an operation of several steps across agents (install a module: ports, the
//! node's part, Redis records...) that either completes or leaves nothing, even when
//! the agent running it dies in the middle.
//!
//! The contract:
//! - Each step that changes something is a [`Step`] value: the data its undo needs
//!   (serde), and the undo itself. Closures do not survive a crash; a value in Redis
//!   does, and the undo is found again by [`Step::NAME`], so the steps of every saga an
//!   agent runs are registered in its [`Sagas`] at start.
//! - [`Saga::run`] writes the step to the journal (`keys::sagas`, one entry per saga)
//!   *before* it runs the work: a crash during the work leaves the step journaled, so
//!   an undo must be idempotent and must accept a step that did not happen, or only
//!   partly (remove what is there, answer success when nothing is).
//! - On failure [`Saga::abort`] runs the undos in reverse order; each that fails stays
//!   journaled, so that the next start retries it. On success [`Saga::commit`] drops
//!   the entry: from then on a restart keeps what was done.
//! - At start (the agent's `on_start` hook), [`Sagas::pending`] lists the entries a
//!   crash left and [`Sagas::recover`] undoes each as its own failure would have. A
//!   saga that should rather be completed journals a step whose "undo" completes it.
//! - A step without undo (a check, or the last work before the commit) is simply not
//!   run through [`Saga::run`].
//! - The journal is readable by everyone who may read the agent's keys: no secrets in
//!   a step's data.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bus::fred::prelude::*;
use protocol::keys;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ActionContext;

/// Why an undo failed: any error, kept as its message in the saga's report.
pub type UndoError = Box<dyn std::error::Error + Send + Sync>;

/// One step of a saga: the data its undo needs, and the undo.
pub trait Step: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Its name in the journal; unique among the steps an agent registers.
    const NAME: &'static str;
    /// Put back what the step changed (idempotent; see the module's contract).
    fn undo(self, ctx: &ActionContext) -> impl Future<Output = Result<(), UndoError>> + Send;
}

type UndoFuture<'a> = Pin<Box<dyn Future<Output = Result<(), UndoError>> + Send + 'a>>;
type UndoFn = Arc<dyn for<'a> Fn(&'a ActionContext, Value) -> UndoFuture<'a> + Send + Sync>;

/// The steps an agent's sagas use, by name: how an undo is found after a crash.
#[derive(Clone, Default)]
pub struct Sagas {
    undos: BTreeMap<&'static str, UndoFn>,
}

/// A saga's entry in the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// What the saga does (`add-module`...).
    pub kind: String,
    /// What it is about (a module id...): with `kind`, the entry's name.
    pub subject: String,
    /// The task that ran it.
    pub task: String,
    /// The steps begun, in order.
    pub steps: Vec<JournaledStep>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournaledStep {
    pub step: String,
    pub undo: Value,
}

impl Journal {
    fn field(&self) -> String {
        keys::saga_field(&self.kind, &self.subject)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error("cannot write the journal of {kind} {subject}: {source}")]
    Journal { kind: String, subject: String, source: bus::fred::error::Error },
    #[error("cannot read the journal {key}: {source}")]
    Read { key: String, source: bus::fred::error::Error },
    #[error("step {step} of {kind} {subject} cannot be journaled: {source}")]
    Encode { kind: String, subject: String, step: &'static str, source: serde_json::Error },
}

/// What an abort could not undo; empty when nothing was left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// One message per step whose undo failed, naming the step.
    pub problems: Vec<String>,
}

impl Cleanup {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            f.write_str("nothing of it was left behind")
        } else {
            write!(f, "the cleanup also failed: {}", self.problems.join("; "))
        }
    }
}

/// A failed saga: the cause, then what its cleanup did.
#[derive(Debug, thiserror::Error)]
#[error("{cause}; {cleanup}")]
pub struct Failed<E: std::error::Error> {
    pub cause: E,
    pub cleanup: Cleanup,
}

impl Sagas {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register step `S`, so that its undo can be found by name.
    ///
    /// # Panics
    /// When another step has the same name: a bug of the program, caught by the first
    /// test that builds the registry.
    pub fn step<S: Step>(mut self) -> Self {
        let undo: UndoFn = Arc::new(|ctx, data| {
            Box::pin(async move {
                let step: S = serde_json::from_value(data)
                    .map_err(|e| format!("its journaled data does not decode as step {}: {e}", S::NAME))?;
                step.undo(ctx).await
            })
        });
        assert!(self.undos.insert(S::NAME, undo).is_none(), "saga step {} is registered twice", S::NAME);
        self
    }

    /// Start saga `kind` about `subject` (nothing is journaled before its first step).
    /// An entry left for the same saga (a cleanup that failed) is taken over.
    pub fn begin(&self, ctx: &ActionContext, kind: &str, subject: &str) -> Saga {
        Saga {
            sagas: self.clone(),
            ctx: ctx.clone(),
            journal: Journal {
                kind: kind.to_owned(),
                subject: subject.to_owned(),
                task: ctx.task_id.clone(),
                steps: Vec::new(),
            },
        }
    }

    /// The sagas a crash (or a failed cleanup) left in this agent's journal. Entries
    /// that do not decode are logged and left alone.
    pub async fn pending(&self, ctx: &ActionContext) -> Result<Vec<Journal>, SagaError> {
        let key = keys::sagas(&ctx.agent);
        let entries: BTreeMap<String, String> =
            ctx.redis.hgetall(&key).await.map_err(|source| SagaError::Read { key: key.clone(), source })?;
        let mut pending = Vec::new();
        for (field, raw) in entries {
            match serde_json::from_str::<Journal>(&raw) {
                Ok(j) => pending.push(j),
                Err(e) => tracing::error!("{key}: entry {field:?} is not a saga journal ({e}): left alone"),
            }
        }
        Ok(pending)
    }

    /// Undo what `journal` records, last step first, as the saga's own failure would
    /// have; the steps whose undo failed stay journaled for a later try.
    pub async fn recover(&self, ctx: &ActionContext, journal: Journal) -> Cleanup {
        let mut saga = Saga { sagas: self.clone(), ctx: ctx.clone(), journal };
        saga.undo_all().await
    }
}

/// One running saga (see the module's contract).
pub struct Saga {
    sagas: Sagas,
    ctx: ActionContext,
    journal: Journal,
}

impl Saga {
    /// Journal `step`, then run `work`; publish `progress` when it succeeded. The step
    /// stays journaled when `work` fails: [`abort`](Self::abort) undoes it too.
    pub async fn run<S: Step, T, E: From<SagaError>>(
        &mut self,
        step: S,
        progress: u8,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        debug_assert!(self.sagas.undos.contains_key(S::NAME), "saga step {} is not registered", S::NAME);
        let undo = serde_json::to_value(&step).map_err(|source| SagaError::Encode {
            kind: self.journal.kind.clone(),
            subject: self.journal.subject.clone(),
            step: S::NAME,
            source,
        })?;
        self.journal.steps.push(JournaledStep { step: S::NAME.to_owned(), undo });
        self.write().await?;
        let out = work.await?;
        self.ctx.set_progress(progress);
        Ok(out)
    }

    /// The steps journaled so far, by name.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.journal.steps.iter().map(|s| s.step.as_str())
    }

    /// The saga succeeded: its entry goes, and a restart keeps what it did. When the
    /// entry cannot be removed, the saga can still be aborted.
    pub async fn commit(&mut self) -> Result<(), SagaError> {
        let key = keys::sagas(&self.ctx.agent);
        let _: i64 =
            self.ctx.redis.hdel(&key, self.journal.field()).await.map_err(|source| self.journal_error(source))?;
        self.journal.steps.clear();
        Ok(())
    }

    /// The last step's work failed and put back what it had changed by itself: it
    /// leaves the journal, and no undo runs for it.
    pub async fn forget_last(&mut self) -> Result<(), SagaError> {
        self.journal.steps.pop();
        if self.journal.steps.is_empty() {
            let key = keys::sagas(&self.ctx.agent);
            let _: i64 =
                self.ctx.redis.hdel(&key, self.journal.field()).await.map_err(|source| self.journal_error(source))?;
            return Ok(());
        }
        self.write().await
    }

    /// Undo every journaled step, last first.
    pub async fn abort(mut self) -> Cleanup {
        self.undo_all().await
    }

    /// [`abort`](Self::abort), and `cause` with what the cleanup did, for the task's
    /// error.
    pub async fn fail<E: std::error::Error>(self, cause: E) -> Failed<E> {
        let cleanup = self.abort().await;
        Failed { cause, cleanup }
    }

    async fn undo_all(&mut self) -> Cleanup {
        let (kind, subject) = (self.journal.kind.clone(), self.journal.subject.clone());
        let mut left = Vec::new();
        let mut problems = Vec::new();
        while let Some(step) = self.journal.steps.pop() {
            let result = match self.sagas.undos.get(step.step.as_str()) {
                Some(undo) => undo(&self.ctx, step.undo.clone()).await,
                None => Err("no undo is registered under that name in this agent".into()),
            };
            if let Err(e) = result {
                tracing::warn!("{kind} {subject}: undo of step {} failed: {e}", step.step);
                problems.push(format!("{} ({e})", step.step));
                left.push(step);
            }
        }
        left.reverse();
        self.journal.steps = left;
        let written = if self.journal.steps.is_empty() {
            let key = keys::sagas(&self.ctx.agent);
            self.ctx.redis.hdel::<i64, _, _>(&key, self.journal.field()).await.map(|_| ())
        } else {
            self.write_raw().await
        };
        if let Err(e) = written {
            problems.push(format!("the journal could not be updated ({e})"));
        }
        Cleanup { problems }
    }

    fn journal_error(&self, source: bus::fred::error::Error) -> SagaError {
        SagaError::Journal { kind: self.journal.kind.clone(), subject: self.journal.subject.clone(), source }
    }

    async fn write_raw(&self) -> Result<(), bus::fred::error::Error> {
        let raw = serde_json::to_string(&self.journal).expect("a journal always serializes");
        self.ctx.redis.hset::<i64, _, _>(keys::sagas(&self.ctx.agent), (self.journal.field(), raw)).await.map(|_| ())
    }

    async fn write(&self) -> Result<(), SagaError> {
        self.write_raw().await.map_err(|source| self.journal_error(source))
    }
}
