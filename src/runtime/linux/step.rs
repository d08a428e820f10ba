//! Errors inside the forked children: each names the step that failed
//! ("mount /proc: EPERM: Operation not permitted") and travels to the monitor as text.

use std::fmt::Display;

#[derive(Debug)]
pub struct StepError(pub String);

impl Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type StepResult<T = ()> = Result<T, StepError>;

pub trait Step<T> {
    /// Prefixes the error with a fixed step name.
    fn ctx(self, step: &str) -> StepResult<T>;
    /// Prefixes the error with a step name built only on failure.
    fn with(self, step: impl FnOnce() -> String) -> StepResult<T>;
}

impl<T, E: Display> Step<T> for Result<T, E> {
    fn ctx(self, step: &str) -> StepResult<T> {
        self.map_err(|e| StepError(format!("{step}: {e}")))
    }

    fn with(self, step: impl FnOnce() -> String) -> StepResult<T> {
        self.map_err(|e| StepError(format!("{}: {e}", step())))
    }
}

pub fn fail<T>(msg: impl Into<String>) -> StepResult<T> {
    Err(StepError(msg.into()))
}
