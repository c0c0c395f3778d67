//! The log's identity as a subscriber sees it: the event it holds at the
//! position before the one it asks for. A log restored from a backup or
//! failed over to a replica that missed commits hands out those positions
//! again, to other events; a subscriber that resumed on it would mix two
//! histories. Comparing event ids (UUIDs, never reused) tells at once.

use sqlx::MySqlPool;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::store::events;

/// `google.rpc.ErrorInfo` reason of a subscription whose expected event is
/// not the log's.
pub const LOG_REWRITTEN: &str = "LOG_REWRITTEN";

/// Checks that the log holds `expected_event_id` at `position`; nothing to
/// check when it is empty (a new subscriber) or `position` is 0.
pub async fn check(pool: &MySqlPool, position: i64, expected_event_id: &str) -> Result<(), Status> {
    if expected_event_id.is_empty() || position < 1 {
        return Ok(());
    }
    let held = events::event_id_at(pool, position)
        .await
        .map_err(|e| Status::unavailable(format!("the database is unavailable: {e}")))?;
    if held.as_deref() == Some(expected_event_id) {
        return Ok(());
    }
    let found = held.map_or_else(|| "no event".to_owned(), |id| format!("event {id}"));
    metrics::counter!("stream_log_rewritten_total").increment(1);
    Err(Status::with_error_details(
        Code::FailedPrecondition,
        format!(
            "the log was rewritten: position {position} holds {found}, not event \
             {expected_event_id} that the subscriber applied (a restore or a failover to a \
             replica that missed commits); the subscriber's state follows another history: \
             rebuild it from position 0"
        ),
        ErrorDetails::with_error_info(
            LOG_REWRITTEN,
            "hotel.v1",
            [("position".to_owned(), position.to_string())],
        ),
    ))
}
