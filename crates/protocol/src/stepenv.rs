//! Names of the variables an agent gives its steps and event handlers
//! (reference section 4.4). Module scripts read them; the agent also finds a crashed
//! run's leftover processes by them.

pub const AGENT_ID: &str = "AGENT_ID";
/// Beyond NS8: the api-server's URL, in every module agent's environment; a step
/// calls another agent's action through it, logged in as its own agent.
pub const API_ENDPOINT: &str = "API_ENDPOINT";
pub const AGENT_INSTALL_DIR: &str = "AGENT_INSTALL_DIR";
pub const AGENT_STATE_DIR: &str = "AGENT_STATE_DIR";
/// The fd of the command channel: 3 for action steps, 2 for event handlers (ignored).
pub const AGENT_COMFD: &str = "AGENT_COMFD";
pub const AGENT_TASK_ID: &str = "AGENT_TASK_ID";
pub const AGENT_TASK_ACTION: &str = "AGENT_TASK_ACTION";
pub const AGENT_TASK_USER: &str = "AGENT_TASK_USER";
pub const AGENT_EVENT_NAME: &str = "AGENT_EVENT_NAME";
pub const AGENT_EVENT_SOURCE: &str = "AGENT_EVENT_SOURCE";
