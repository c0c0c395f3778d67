//! One subscriber: reads the log from its position in batches, then follows
//! the head. Everything is read from MySQL on demand and handed over through
//! a small bounded channel, so a slow subscriber costs the server a couple
//! of batches of memory and simply reads from the log at its own pace.

use std::time::Duration;

use hotel_common::{pb, timestamp_now};
use sqlx::MySqlPool;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::recent::Recent;
use crate::store::events;

/// What the subscriber asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The next position to read.
    pub next: i64,
    pub max_batch: i64,
    /// Event type names to deliver; all when empty.
    pub event_types: Vec<String>,
    /// Hotel ids to deliver; all when empty.
    pub hotel_ids: Vec<String>,
}

impl Subscription {
    fn wants(&self, event: &pb::EventEnvelope) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && (self.hotel_ids.is_empty() || self.hotel_ids.contains(&event.hotel_id))
    }
}

/// The server side of one stream.
pub struct Feed {
    pub pool: MySqlPool,
    /// This process's last commits, read before the log.
    pub recent: Recent,
    pub head: watch::Receiver<i64>,
    pub shutdown: watch::Receiver<bool>,
    pub heartbeat: Duration,
    pub out: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
}

/// How long to wait at a hole before looking again: a position at or below
/// the head that is not visible yet belongs to a commit that is finishing.
const HOLE_WAIT: Duration = Duration::from_millis(1);

impl Feed {
    /// Runs until the client goes away or the server shuts down.
    pub async fn run(mut self, mut sub: Subscription) {
        metrics::gauge!("stream_subscribers").increment(1.0);
        let outcome = self.follow(&mut sub).await;
        metrics::gauge!("stream_subscribers").decrement(1.0);
        if let Err(status) = outcome {
            let _ = self.out.send(Err(status)).await;
        }
    }

    async fn follow(&mut self, sub: &mut Subscription) -> Result<(), Status> {
        let mut caught_up = false;
        loop {
            let head = *self.head.borrow_and_update();
            if sub.next <= head {
                let batch = match self.recent.read(sub.next, head, sub.max_batch) {
                    Some(batch) => batch,
                    None => events::read_range(&self.pool, sub.next, head, sub.max_batch)
                        .await
                        .map_err(|e| {
                            Status::unavailable(format!("reading the event log failed: {e}"))
                        })?,
                };
                let Some(last) = batch.last().map(|e| e.position) else {
                    tokio::time::sleep(HOLE_WAIT).await;
                    continue;
                };
                sub.next = last + 1;
                let events: Vec<_> = batch.into_iter().filter(|e| sub.wants(e)).collect();
                if !events.is_empty() {
                    let message = pb::subscribe_response::Message::Events(pb::EventBatch {
                        events,
                        through_position: last,
                        head,
                    });
                    if !self.send(message).await? {
                        return Ok(());
                    }
                }
                continue;
            }
            if !caught_up {
                caught_up = true;
                let message = pb::subscribe_response::Message::CaughtUp(pb::CaughtUp {
                    head,
                    through_position: sub.next - 1,
                });
                if !self.send(message).await? {
                    return Ok(());
                }
            }
            let woke = tokio::select! {
                changed = self.head.changed() => match changed {
                    Ok(()) => Wake::Head,
                    Err(_) => Wake::Shutdown,
                },
                _ = tokio::time::sleep(self.heartbeat) => Wake::Quiet,
                _ = self.shutdown.wait_for(|stop| *stop) => Wake::Shutdown,
                _ = self.out.closed() => Wake::Gone,
            };
            match woke {
                Wake::Head => {}
                Wake::Quiet => {
                    let message = pb::subscribe_response::Message::Heartbeat(pb::Heartbeat {
                        head,
                        time: Some(timestamp_now()),
                        through_position: sub.next - 1,
                    });
                    if !self.send(message).await? {
                        return Ok(());
                    }
                }
                Wake::Shutdown => return Err(shutting_down(sub.next)),
                Wake::Gone => return Ok(()),
            }
        }
    }

    /// Sends one message, waiting while the subscriber is slow; `false` when
    /// the subscriber has gone.
    async fn send(&mut self, message: pb::subscribe_response::Message) -> Result<bool, Status> {
        let response = pb::SubscribeResponse {
            message: Some(message),
        };
        tokio::select! {
            sent = self.out.send(Ok(response)) => Ok(sent.is_ok()),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Status::unavailable("the command server is shutting down")),
        }
    }
}

/// Why a subscriber's wait ended.
enum Wake {
    Head,
    Quiet,
    Shutdown,
    Gone,
}

fn shutting_down(next: i64) -> Status {
    Status::unavailable(format!(
        "the command server is shutting down; resubscribe with from_position {next}"
    ))
}
