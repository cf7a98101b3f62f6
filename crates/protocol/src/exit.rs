//! Exit codes with a meaning fixed by the protocol (reference section 4.5).
//! 2-7 and 32-255 belong to actions; 12-31 are reserved for the agent.

pub const SUCCESS: i32 = 0;
/// Generic failure, also used for output schema violations.
pub const GENERIC: i32 = 1;
/// `cancel-task` for a task id the agent is not running.
pub const TASK_NOT_FOUND: i32 = 2;
/// The action has no steps.
pub const UNDEFINED_ACTION: i32 = 8;
/// Input validation failed, or a step set `validation-failed`.
pub const VALIDATION_FAILED: i32 = 10;
/// NS8 rejects tasks with 11 when busy. We never do (tasks wait in the queue); the
/// constant exists so clients can still name it.
pub const BUSY: i32 = 11;
/// Beyond NS8: the agent stopped (crash, `kill -9`, power loss) while the task ran, and
/// the restarted agent closed it instead of running it again.
pub const INTERRUPTED: i32 = 12;
/// A step killed by a signal, as NS8 reports it (Go's `ExitCode()` of a signalled child).
pub const SIGNALED: i32 = -1;
