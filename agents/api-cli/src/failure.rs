//! api-cli's own failures and their exit codes.

/// Exit code of api-cli's own failures: bad arguments, Redis unreachable, agent not
/// running. Clap uses the same code for usage errors.
pub const EXIT_CLI: u8 = 2;
/// Exit code after Ctrl-C while waiting (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why api-cli stops without a task result to report.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// api-cli's own failure, with the message of `error` (text or a typed error).
    pub fn cli(error: impl std::fmt::Display) -> Self {
        Failure { code: EXIT_CLI, message: error.to_string() }
    }
}

impl From<bus::BusError> for Failure {
    fn from(e: bus::BusError) -> Self {
        Failure::cli(e.to_string())
    }
}
