//! Native actions: Rust functions registered under an action name, with the same
//! contract as script actions (input/output schema, progress, stored results).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bus::fred::prelude::*;
use bus::{BusError, RedisConfig, TaskClient};
use protocol::AgentId;
use protocol::exit;
use protocol::task::{TaskStatus, ValidationError};
use serde_json::Value;
use tokio::sync::OnceCell;

/// Why a native action failed. The exit code follows the protocol's ranges.
#[derive(Debug)]
pub enum ActionError {
    /// Bad input found by the action itself: exit 10, output = the error array.
    Validation(Vec<ValidationError>),
    /// Any other failure: its exit code and a message for the task's `error`.
    Failed { exit_code: i32, message: String },
}

impl ActionError {
    pub fn failed(message: impl Into<String>) -> Self {
        ActionError::Failed { exit_code: exit::GENERIC, message: message.into() }
    }

    /// A refusal of a typed action's contract, about `value` of its field.
    pub fn refuse<R: protocol::actions::Refusal>(refusal: R, value: Value) -> Self {
        ActionError::Validation(vec![refusal.to_validation(value)])
    }

    pub fn invalid(parameter: &str, value: Value, error: &str) -> Self {
        ActionError::Validation(vec![ValidationError {
            field: parameter.to_owned(),
            parameter: parameter.to_owned(),
            value,
            error: format!("{parameter}_{error}"),
        }])
    }
}

impl From<bus::fred::error::Error> for ActionError {
    fn from(e: bus::fred::error::Error) -> Self {
        ActionError::failed(format!("redis error: {e}"))
    }
}

/// The agent's connection for sub-tasks, made at the first call and shared by all.
pub(crate) struct Calls {
    redis: RedisConfig,
    client: OnceCell<TaskClient>,
}

impl Calls {
    pub(crate) fn new(redis: RedisConfig) -> Self {
        Calls { redis, client: OnceCell::new() }
    }

    pub(crate) async fn client(&self, name: &str) -> Result<&TaskClient, BusError> {
        self.client.get_or_try_init(|| TaskClient::connect(&self.redis, name)).await
    }
}

/// What a native action can see and do.
#[derive(Clone)]
pub struct ActionContext {
    pub agent: AgentId,
    pub task_id: String,
    pub user: String,
    pub state_dir: PathBuf,
    /// The agent's read-write Redis connection.
    pub redis: Client,
    /// The connection for sub-tasks ([`ActionContext::call`]).
    pub(crate) calls: Arc<Calls>,
}

impl ActionContext {
    /// Publish the action's progress (0-100), like a step's `set-progress`.
    pub fn set_progress(&self, percent: u8) {
        crate::redis_ops::progress(&self.redis, &self.agent, &self.task_id, TaskStatus::Running, percent.min(100));
    }

    /// Refuse a module as the caller of `action` (the task's `user` is `module/<id>`
    /// when a module sent it through the API), whatever its grants: for the actions
    /// that hand out or use what only the core may hold (destinations' secrets, the
    /// cluster backup).
    pub fn core_only(&self, action: &str) -> Result<(), ActionError> {
        match self.user.strip_prefix("module/") {
            Some(module) => Err(ActionError::failed(format!(
                "module {module} may not run {action} on {}: only the cluster and administrators do",
                self.agent
            ))),
            None => Ok(()),
        }
    }
}

/// The request of a typed action. The schema has passed it already, so a failure here
/// is a schema weaker than the type: reported as a validation error of the input.
fn decode<T: serde::de::DeserializeOwned>(action: &str, data: Value) -> Result<T, ActionError> {
    serde_json::from_value(data.clone()).map_err(|e| {
        ActionError::Validation(vec![ValidationError {
            field: String::new(),
            parameter: String::new(),
            value: data,
            error: format!("{action}: the input does not match the action's type: {e}"),
        }])
    })
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, ActionError>> + Send>>;
type Handler = Arc<dyn Fn(ActionContext, Value) -> BoxFuture + Send + Sync>;
type StartHook = Arc<dyn Fn(ActionContext) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Clone)]
pub struct NativeAction {
    pub(crate) handler: Handler,
    pub(crate) input: Option<Arc<jsonschema::Validator>>,
    /// The input schema's JSON, for masking the fields it declares secret.
    pub(crate) input_source: Option<Arc<crate::validate::SchemaSource>>,
    pub(crate) output: Option<Arc<jsonschema::Validator>>,
}

/// The native actions of one agent, by name.
#[derive(Clone, Default)]
pub struct NativeActions {
    actions: BTreeMap<String, NativeAction>,
    on_start: Option<StartHook>,
}

impl NativeActions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `name`. `input_schema`/`output_schema` are JSON Schemas checked like a
    /// script action's `validate-input.json`/`validate-output.json`.
    ///
    /// # Panics
    /// When a schema does not compile: schemas are part of the program, so this is a
    /// bug caught by the first test that builds the registry.
    pub fn add<F, Fut>(mut self, name: &str, input_schema: Option<Value>, output_schema: Option<Value>, f: F) -> Self
    where
        F: Fn(ActionContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ActionError>> + Send + 'static,
    {
        let compile = |s: Option<Value>, which: &str| {
            s.map(|s| {
                Arc::new(
                    crate::validate::compile(&s, None)
                        .unwrap_or_else(|e| panic!("{which} schema of native action {name}: {e}")),
                )
            })
        };
        let input_source =
            input_schema.clone().map(|schema| Arc::new(crate::validate::SchemaSource { schema, definitions: None }));
        let action = NativeAction {
            handler: Arc::new(move |ctx, data| Box::pin(f(ctx, data))),
            input: compile(input_schema, "input"),
            input_source,
            output: compile(output_schema, "output"),
        };
        self.actions.insert(name.to_owned(), action);
        self
    }

    /// Like [`add`](Self::add), for an action that needs a piece of the agent's
    /// configuration: `state` is cloned into each call.
    pub fn add_with<S, F, Fut>(
        self,
        name: &str,
        input_schema: Option<Value>,
        output_schema: Option<Value>,
        state: S,
        f: F,
    ) -> Self
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(ActionContext, Value, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ActionError>> + Send + 'static,
    {
        self.add(name, input_schema, output_schema, move |ctx, data| f(ctx, data, state.clone()))
    }

    /// Register the handler of contract `A` (`protocol::actions`): its input and output
    /// schemas are derived from the request and reply types, and the handler gets the
    /// request decoded, so the code and what `list-actions` shows cannot disagree.
    pub fn typed<A, F, Fut>(self, f: F) -> Self
    where
        A: protocol::actions::Action,
        F: Fn(ActionContext, A::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A::Reply, ActionError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            A::NAME,
            Some(protocol::actions::schema_of::<A::Request>()),
            Some(protocol::actions::schema_of::<A::Reply>()),
            move |ctx, data| {
                let f = f.clone();
                async move {
                    let request = decode::<A::Request>(A::NAME, data)?;
                    let reply = f(ctx, request).await?;
                    serde_json::to_value(reply)
                        .map_err(|e| ActionError::failed(format!("{}: cannot encode the reply: {e}", A::NAME)))
                }
            },
        )
    }

    /// [`typed`](Self::typed) with a piece of the agent's configuration, cloned into
    /// each call.
    pub fn typed_with<A, S, F, Fut>(self, state: S, f: F) -> Self
    where
        A: protocol::actions::Action,
        S: Clone + Send + Sync + 'static,
        F: Fn(ActionContext, A::Request, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A::Reply, ActionError>> + Send + 'static,
    {
        self.typed::<A, _, _>(move |ctx, req| f(ctx, req, state.clone()))
    }

    /// Run `f` once at start, after the tasks a crash interrupted are closed and before
    /// any new task is taken: the place to finish or undo what those tasks left half
    /// done. Its context's task id is `startup`.
    pub fn on_start<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ActionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_start = Some(Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    pub(crate) fn start_hook(&self) -> Option<StartHook> {
        self.on_start.clone()
    }

    pub fn get(&self, name: &str) -> Option<&NativeAction> {
        self.actions.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }
}
