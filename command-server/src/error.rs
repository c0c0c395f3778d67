//! The one place where a command's failure becomes a gRPC status.

use tonic::{Code, Status};

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A field is unacceptable given the current state (e.g. more guests
    /// than the room type holds).
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A business rule forbids the command now.
    #[error("{0}")]
    Rejected(String),
    /// The command id was already used for a different command.
    #[error("{0}")]
    CommandIdReused(String),
    /// A stored outcome of an earlier run of this command: replayed as is.
    #[error("{message}")]
    Replayed { code: Code, message: String },
    #[error("the database is unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// The batch this command was in committed nothing (the write lock
    /// was not free in time, the connection was lost before commit):
    /// retrying is safe.
    #[error("not run: {0}; retry with the same command_id")]
    NotRun(String),
    /// The connection was lost while the commit was under way: the command
    /// may or may not have committed.
    #[error(
        "outcome unknown: {0}; retry with the same command_id: it returns the outcome if the command committed, or runs it once"
    )]
    OutcomeUnknown(String),
    /// The caller's deadline passed before the command started: it was not run.
    #[error("not run: the deadline passed before the command could start")]
    DeadlineExceeded,
    /// The command waited longer than the writer's queue bound: not run.
    #[error(
        "not run: the command waited {0:?} for the writer without starting (the write path is overloaded or MySQL stalled); retry with the same command_id"
    )]
    Shed(std::time::Duration),
    /// The caller cancelled or went away before the command started.
    #[error("not run: the caller cancelled")]
    Cancelled,
    #[error("the command server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl CommandError {
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidField { .. } => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Rejected(_) => Code::FailedPrecondition,
            Self::CommandIdReused(_) => Code::Aborted,
            Self::Replayed { code, .. } => *code,
            Self::Database(_)
            | Self::ShuttingDown
            | Self::NotRun(_)
            | Self::OutcomeUnknown(_)
            | Self::Shed(_) => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Cancelled => Code::Cancelled,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// Whether the failure is an outcome of the command itself (worth
    /// recording for an asynchronous command), rather than of the machinery.
    pub fn is_outcome(&self) -> bool {
        !matches!(
            self,
            Self::Database(_)
                | Self::ShuttingDown
                | Self::Internal(_)
                | Self::NotRun(_)
                | Self::OutcomeUnknown(_)
                | Self::DeadlineExceeded
                | Self::Shed(_)
                | Self::Cancelled
        )
    }

    pub fn to_status(&self) -> Status {
        match self {
            Self::InvalidField { field, reason } => {
                let mut violations = hotel_common::validate::Violations::new();
                violations.add(field.clone(), reason.clone());
                violations
                    .finish()
                    .err()
                    .unwrap_or_else(|| Status::invalid_argument(self.to_string()))
            }
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<CommandError> for Status {
    fn from(error: CommandError) -> Self {
        error.to_status()
    }
}
