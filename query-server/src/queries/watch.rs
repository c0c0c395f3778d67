//! Live queries: the current answer, then a new one after every change.
//!
//! Each watch subscribes to the checkpoint *before* reading its snapshot, so
//! a commit that lands between the two still wakes it: nothing is lost
//! between the snapshot and the live part. A task per watch feeds a small
//! channel; it ends when the client goes away or the server stops.

use hotel_common::{pb, timestamp_from_millis};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Queries, QueryError, request::GetAvailability};
use crate::read_model::reads;

/// Replies buffered per watch before the task waits for the client.
const CHANNEL_CAPACITY: usize = 16;

/// Watches one reservation. Every state change is sent, in order, even when
/// several land in one commit (they are read from `reservation_changes`).
pub fn reservation(
    queries: Queries,
    reservation_id: String,
) -> Result<ReceiverStream<Result<pb::WatchReservationResponse, Status>>, QueryError> {
    let mut checkpoints = queries.projection.watch_checkpoint();
    let first = queries.get_reservation_now(&reservation_id)?;
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let mut stopping = queries.stopping.clone();
    tokio::spawn(async move {
        let mut seen_through = first.as_of_position;
        let Some(mut current) = first.reservation else {
            return;
        };
        let reply = pb::WatchReservationResponse {
            reservation: Some(current.clone()),
            as_of_position: seen_through,
        };
        if sender.send(Ok(reply)).await.is_err() {
            return;
        }
        while next_commit(&mut checkpoints, &mut stopping, &sender).await {
            let read = queries.read(|tx| {
                reads::reservation_changes_after(tx, &current.reservation_id, seen_through)
            });
            let (changes, as_of_position) = match read {
                Ok(read) => read,
                Err(error) => {
                    let _ = sender.send(Err(error.into())).await;
                    return;
                }
            };
            let count = changes.len();
            for (index, change) in changes.into_iter().enumerate() {
                current.status = change.status as i32;
                current.updated_at = Some(timestamp_from_millis(change.updated_at_ms));
                current.last_position = change.position;
                // Each state is as of its own event; the newest is as of the snapshot.
                let as_of = if index + 1 == count {
                    as_of_position
                } else {
                    change.position
                };
                let reply = pb::WatchReservationResponse {
                    reservation: Some(current.clone()),
                    as_of_position: as_of,
                };
                if sender.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
            seen_through = as_of_position;
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// Watches availability: a new reply whenever a commit changed the answer.
/// Changes that land in one commit, or while the client is slow, arrive as
/// one newer answer.
pub fn availability(
    queries: Queries,
    query: GetAvailability,
) -> Result<ReceiverStream<Result<pb::GetAvailabilityResponse, Status>>, QueryError> {
    let mut checkpoints = queries.projection.watch_checkpoint();
    let first = queries.get_availability_now(&query)?;
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let mut stopping = queries.stopping.clone();
    tokio::spawn(async move {
        let mut last_sent = first.room_types.clone();
        if sender.send(Ok(first)).await.is_err() {
            return;
        }
        while next_commit(&mut checkpoints, &mut stopping, &sender).await {
            match queries.get_availability_now(&query) {
                Ok(reply) if reply.room_types == last_sent => {}
                Ok(reply) => {
                    last_sent = reply.room_types.clone();
                    if sender.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(error.into())).await;
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// Waits for the next commit; false when the watch should end instead (the
/// client left, the server stops, or the projection is gone).
async fn next_commit<T>(
    checkpoints: &mut watch::Receiver<i64>,
    stopping: &mut watch::Receiver<bool>,
    sender: &mpsc::Sender<T>,
) -> bool {
    tokio::select! {
        changed = checkpoints.changed() => changed.is_ok(),
        _ = stopping.wait_for(|stop| *stop) => false,
        _ = sender.closed() => false,
    }
}
