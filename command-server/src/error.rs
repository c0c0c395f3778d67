//! The one place where a command's failure becomes a gRPC status.

use std::collections::{BTreeMap, HashMap};

use hotel_common::pb;
use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo` domain of the command API's refusals.
pub const ERROR_DOMAIN: &str = "hotel.v1";
/// ErrorInfo reason of a command whose precondition no longer holds.
pub const STALE_READ: &str = "STALE_READ";
/// ErrorInfo reason of a command id already used for another command.
pub const COMMAND_ID_REUSED: &str = "COMMAND_ID_REUSED";

/// The `google.rpc.ErrorInfo` a refusal carries: why, in a word a client
/// can match, and the figures it needs to recover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub reason: String,
    pub metadata: BTreeMap<String, String>,
}

impl ErrorInfo {
    /// As stored in the command log: a `hotel.v1.CommandError` holding only
    /// the reason and metadata.
    pub fn encode(&self) -> Vec<u8> {
        pb::CommandError {
            reason: self.reason.clone(),
            metadata: self.metadata.clone().into_iter().collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// The stored form back; `None` when it does not decode or is empty.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let stored = pb::CommandError::decode(bytes).ok()?;
        (!stored.reason.is_empty()).then(|| Self {
            reason: stored.reason,
            metadata: stored.metadata.into_iter().collect(),
        })
    }
}

/// A command whose precondition does not hold: the read it was decided on
/// is out of date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleRead {
    /// What was checked: `reservation:<id>`, `hotel:<id>`,
    /// `room_type:<hotel_id>/<code>`.
    pub subject: String,
    /// The aggregate's version now.
    pub current_version: i64,
    /// Position of the subject's latest change: where to read again.
    pub changed_position: i64,
    /// What did not hold, in words.
    pub why: String,
}

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
    /// The command's precondition does not hold (a stale read).
    #[error(
        "stale read: {}; nothing was changed: read {} again with min_position {} and decide again",
        .0.why, .0.subject, .0.changed_position
    )]
    StaleRead(Box<StaleRead>),
    /// A stored outcome of an earlier run of this command: replayed as is.
    #[error("{message}")]
    Replayed {
        code: Code,
        message: String,
        info: Option<ErrorInfo>,
    },
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
            Self::CommandIdReused(_) | Self::StaleRead(_) => Code::Aborted,
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

    /// The `google.rpc.ErrorInfo` the refusal carries, if any.
    pub fn error_info(&self) -> Option<ErrorInfo> {
        match self {
            Self::StaleRead(stale) => Some(ErrorInfo {
                reason: STALE_READ.to_owned(),
                metadata: BTreeMap::from([
                    ("subject".to_owned(), stale.subject.clone()),
                    (
                        "current_version".to_owned(),
                        stale.current_version.to_string(),
                    ),
                    (
                        "changed_position".to_owned(),
                        stale.changed_position.to_string(),
                    ),
                ]),
            }),
            Self::CommandIdReused(_) => Some(ErrorInfo {
                reason: COMMAND_ID_REUSED.to_owned(),
                metadata: BTreeMap::new(),
            }),
            Self::Replayed { info, .. } => info.clone(),
            _ => None,
        }
    }

    pub fn to_status(&self) -> Status {
        if let Some(info) = self.error_info() {
            return Status::with_error_details(
                self.code(),
                self.to_string(),
                ErrorDetails::with_error_info(
                    info.reason,
                    ERROR_DOMAIN,
                    info.metadata.into_iter().collect::<HashMap<_, _>>(),
                ),
            );
        }
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
