//! The one place a query failure becomes a gRPC status.

use tonic::Status;

use crate::read_model::ReadError;

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request is malformed (already an `INVALID_ARGUMENT` with details).
    #[error("{}", .0.message())]
    Invalid(Status),
    /// The read model does not have the hotel, room type or reservation.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The read model has not reached the requested position in time.
    #[error("{}", .0.message())]
    Stale(Status),
    /// A rebuild is already running.
    #[error("{0}")]
    Busy(String),
    /// A cap is reached (open watches); the message names it.
    #[error("{0}")]
    Exhausted(String),
    /// The read model could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Anything else that went wrong inside.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl QueryError {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Invalid(status) | QueryError::Stale(status) => status,
            QueryError::NotFound { .. } => Status::not_found(error.to_string()),
            QueryError::Busy(message) => Status::failed_precondition(message),
            QueryError::Exhausted(message) => Status::resource_exhausted(message),
            QueryError::Read(read) if read.listing_index_missing() => Status::unavailable(
                "listings are served once this read model has replayed the log to its head \
                 (it builds their index then); retry, or ask a replica that is live",
            ),
            QueryError::Read(_) | QueryError::Internal(_) => {
                tracing::error!(error = format!("{error:#}"), "query failed");
                Status::internal("the read model could not be read; see the server log")
            }
        }
    }
}
