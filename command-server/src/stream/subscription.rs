//! One subscriber: reads the log from its position in batches, then follows
//! the head. Everything is read on demand (from this process's recent
//! commits, else from MySQL through the line of [`LogReads`]) and handed
//! over through a small [`Outbox`], so a slow subscriber costs the server a
//! few messages of at most `--stream-batch-bytes` each and reads at its own
//! pace. One that reads nothing for `--stream-stall-ms` is dropped.

use std::{collections::HashSet, convert::Infallible, time::Duration};

use hotel_common::{pb, timestamp_now, wire};
use sqlx::MySqlPool;
use tokio::{
    sync::{OwnedSemaphorePermit, watch},
    time::Instant,
};
use tonic::{Code, Status};

use super::{
    Limits,
    connections::ConnectionCut,
    log_reads::LogReads,
    outbox::{Outbox, Sent},
    recent::Recent,
};
use crate::store::events;

/// What the subscriber asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The next position to read.
    pub next: i64,
    pub max_batch: i64,
    /// Event type names to deliver; all when empty.
    pub event_types: HashSet<String>,
    /// Hotel ids to deliver; all when empty.
    pub hotel_ids: HashSet<String>,
}

impl Subscription {
    fn wants(&self, event: &pb::EventEnvelope) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && (self.hotel_ids.is_empty() || self.hotel_ids.contains(&event.hotel_id))
    }

    /// The wanted events of `batch` that fit in `budget` bytes (at least
    /// one), the position through which `batch` was considered, and the
    /// mean encoded size of the events considered (each is measured once).
    fn take(&self, batch: Vec<wire::Envelope>, budget: usize) -> Taken {
        let mut taken = Taken {
            events: Vec::new(),
            through: self.next - 1,
            mean_bytes: 0,
        };
        let (mut bytes, mut considered, mut considered_bytes) = (0, 0, 0);
        for event in batch {
            let size = event.encoded_len();
            if self.wants(&event.head) {
                if !taken.events.is_empty() && bytes + size > budget {
                    break;
                }
                bytes += size;
                taken.through = event.head.position;
                taken.events.push(event);
            } else {
                taken.through = event.head.position;
            }
            considered += 1;
            considered_bytes += size;
        }
        taken.mean_bytes = considered_bytes / considered.max(1);
        taken
    }
}

/// What [`Subscription::take`] took of a batch.
struct Taken {
    events: Vec<wire::Envelope>,
    through: i64,
    mean_bytes: usize,
}

/// The server side of one stream.
pub struct Feed {
    pub pool: MySqlPool,
    /// This process's last commits, read before the log.
    pub recent: Recent,
    pub head: watch::Receiver<i64>,
    pub shutdown: watch::Receiver<bool>,
    pub limits: Limits,
    /// The line to wait in before reading the log.
    pub log_reads: LogReads,
    pub out: Outbox,
    /// Cuts this stream's connection; `None` off a TCP listener (tests).
    pub connection: Option<ConnectionCut>,
    /// This stream's place under the subscriber cap, freed when it ends.
    pub _slot: OwnedSemaphorePermit,
}

/// How long to wait at a hole before looking again: a position at or below
/// the head that is not visible yet belongs to a commit that is finishing.
const HOLE_WAIT: Duration = Duration::from_millis(1);
/// Encoded bytes of an event assumed before the first read.
const FIRST_GUESS_EVENT_BYTES: usize = 512;

/// Why a stream ended.
enum Ended {
    /// The client went away: nobody to tell.
    Gone,
    ShuttingDown,
    /// The client left a ready message unread for the stall limit.
    Stalled,
    /// Too many subscribers wait to read the log.
    LineFull,
    /// Reading the log failed.
    ReadFailed(String),
}

impl Feed {
    /// Runs until the client goes away, stalls, or the server shuts down.
    pub async fn run(mut self, mut sub: Subscription) {
        metrics::gauge!("stream_subscribers").increment(1.0);
        let Err(ended) = self.follow(&mut sub).await;
        metrics::gauge!("stream_subscribers").decrement(1.0);
        let (code, reason) = match ended {
            Ended::Gone => {
                // Nobody to tell; counted as the client's cancellation.
                metrics::counter!("stream_subscribers_ended_total", "code" => "CANCELLED")
                    .increment(1);
                return;
            }
            Ended::ShuttingDown => (
                Code::Unavailable,
                "the command server is shutting down".to_owned(),
            ),
            Ended::Stalled => (
                Code::ResourceExhausted,
                format!(
                    "the subscriber read nothing for {} ms (--stream-stall-ms)",
                    self.limits.stall.as_millis()
                ),
            ),
            Ended::LineFull => (
                Code::ResourceExhausted,
                format!(
                    "more than {} subscribers wait to read the event log (--stream-read-queue)",
                    self.limits.read_queue
                ),
            ),
            Ended::ReadFailed(error) => (
                Code::Unavailable,
                format!("reading the event log failed: {error}"),
            ),
        };
        metrics::counter!(
            "stream_subscribers_ended_total",
            "code" => hotel_common::server::code_name(code)
        )
        .increment(1);
        tracing::info!(%reason, "subscriber dropped");
        self.out.end(|resume| {
            Status::new(
                code,
                format!("{reason}; resubscribe with from_position {resume}"),
            )
        });
        // At shutdown a client that does not take its final status at once
        // would hold the server for the whole grace.
        if code == Code::Unavailable
            && *self.shutdown.borrow()
            && tokio::time::timeout(self.limits.shutdown_flush, self.out.closed())
                .await
                .is_err()
            && let Some(connection) = &self.connection
        {
            tracing::info!("cutting the connection of a subscriber that does not read");
            connection.cut();
        }
    }

    async fn follow(&mut self, sub: &mut Subscription) -> Result<Infallible, Ended> {
        let mut caught_up = false;
        // Heartbeats count from the last message of any kind.
        let mut last_sent = Instant::now();
        let mut event_bytes = FIRST_GUESS_EVENT_BYTES;
        loop {
            let head = *self.head.borrow_and_update();
            if sub.next <= head {
                // Read about one message's worth, so a batch never holds much
                // more than the budget.
                let limit =
                    (self.limits.batch_bytes / event_bytes).clamp(1, sub.max_batch as usize) as i64;
                let batch = match self.recent.read(sub.next, head, limit) {
                    Some(batch) => batch,
                    None => self.read_log(sub, head, limit, &mut last_sent).await?,
                };
                if batch.is_empty() {
                    tokio::time::sleep(HOLE_WAIT).await;
                    continue;
                }
                let Taken {
                    events,
                    through,
                    mean_bytes,
                } = sub.take(batch, self.limits.batch_bytes);
                event_bytes = mean_bytes.max(1);
                sub.next = through + 1;
                if !events.is_empty() {
                    let message = wire::Message::Events(wire::EventBatch {
                        events,
                        through_position: through,
                        head,
                    });
                    self.send(message, through, &mut last_sent).await?;
                } else if last_sent.elapsed() >= self.limits.heartbeat {
                    // A filter dropped all of it: still show progress.
                    self.heartbeat(head, through, &mut last_sent).await?;
                }
                continue;
            }
            if !caught_up {
                caught_up = true;
                let message = wire::Message::CaughtUp(pb::CaughtUp {
                    head,
                    through_position: sub.next - 1,
                });
                self.send(message, sub.next - 1, &mut last_sent).await?;
            }
            let quiet = tokio::select! {
                changed = self.head.changed() => match changed {
                    Ok(()) => false,
                    Err(_) => return Err(Ended::ShuttingDown),
                },
                _ = tokio::time::sleep_until(last_sent + self.limits.heartbeat) => true,
                _ = self.shutdown.wait_for(|stop| *stop) => return Err(Ended::ShuttingDown),
                _ = self.out.closed() => return Err(Ended::Gone),
            };
            if quiet {
                self.heartbeat(head, sub.next - 1, &mut last_sent).await?;
            }
        }
    }

    /// Reads `from..=head` from the log once it is this stream's turn,
    /// sending heartbeats while it waits.
    async fn read_log(
        &mut self,
        sub: &Subscription,
        head: i64,
        limit: i64,
        last_sent: &mut Instant,
    ) -> Result<Vec<wire::Envelope>, Ended> {
        let log_reads = self.log_reads.clone();
        let turn = log_reads.acquire();
        tokio::pin!(turn);
        let mut beat_at = *last_sent + self.limits.heartbeat;
        let _permit = loop {
            tokio::select! {
                permit = &mut turn => break permit.map_err(|_| Ended::LineFull)?,
                _ = tokio::time::sleep_until(beat_at) => {}
                _ = self.shutdown.wait_for(|stop| *stop) => return Err(Ended::ShuttingDown),
                _ = self.out.closed() => return Err(Ended::Gone),
            }
            // Never wait for the subscriber while in line: the semaphore
            // hands the permit to the head of the line even while its
            // future is not polled, so a subscriber that does not read
            // would keep a log read slot, and everyone behind it, for the
            // whole stall limit. A subscriber with unread messages needs
            // no heartbeat anyway.
            let through = sub.next - 1;
            match self.out.try_send(heartbeat(head, through), through) {
                Some(Sent::Sent) => *last_sent = Instant::now(),
                Some(_) => return Err(Ended::Gone),
                None => {}
            }
            beat_at = Instant::now() + self.limits.heartbeat;
        };
        events::read_range(&self.pool, sub.next, head, limit)
            .await
            .map_err(|e| Ended::ReadFailed(e.to_string()))
    }

    async fn heartbeat(
        &mut self,
        head: i64,
        through: i64,
        last_sent: &mut Instant,
    ) -> Result<(), Ended> {
        self.send(heartbeat(head, through), through, last_sent)
            .await
    }

    /// Sends one message, waiting while the subscriber is slow, at most the
    /// stall limit.
    async fn send(
        &mut self,
        message: wire::Message,
        through: i64,
        last_sent: &mut Instant,
    ) -> Result<(), Ended> {
        if *self.shutdown.borrow() {
            return Err(Ended::ShuttingDown);
        }
        let sent = tokio::select! {
            sent = self.out.send(message, through, self.limits.stall) => sent,
            _ = self.shutdown.wait_for(|stop| *stop) => return Err(Ended::ShuttingDown),
        };
        match sent {
            Sent::Sent => {
                *last_sent = Instant::now();
                Ok(())
            }
            Sent::Gone => Err(Ended::Gone),
            Sent::Stalled => Err(Ended::Stalled),
        }
    }
}

/// A heartbeat: the head now, and how far the subscriber's stream covers.
fn heartbeat(head: i64, through: i64) -> wire::Message {
    wire::Message::Heartbeat(pb::Heartbeat {
        head,
        time: Some(timestamp_now()),
        through_position: through,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, hotel: &str) -> wire::Envelope {
        wire::Envelope::from_decoded(pb::EventEnvelope {
            position,
            hotel_id: hotel.to_owned(),
            event_type: "ReservationConfirmed".to_owned(),
            ..Default::default()
        })
    }

    #[test]
    fn a_batch_is_cut_at_the_byte_budget_and_unwanted_events_still_count() {
        let sub = Subscription {
            next: 5,
            max_batch: 100,
            event_types: HashSet::new(),
            hotel_ids: HashSet::from(["a".to_owned()]),
        };
        let one = event(5, "a").encoded_len();
        let batch = vec![event(5, "a"), event(6, "b"), event(7, "a"), event(8, "a")];
        let taken = sub.take(batch.clone(), 2 * one + 1);
        let positions: Vec<i64> = taken.events.iter().map(|e| e.head.position).collect();
        assert_eq!(positions, [5, 7]);
        assert_eq!(taken.through, 7, "8 did not fit: it comes next time");
        assert_eq!(taken.mean_bytes, one, "5, 6 and 7 were measured");
        let taken = sub.take(batch, 1);
        assert_eq!(taken.events.len(), 1, "one event always goes");
        assert_eq!(
            taken.through, 6,
            "and the unwanted event after it is passed"
        );
        let taken = sub.take(vec![event(5, "b"), event(6, "b")], 1);
        assert!(taken.events.is_empty());
        assert_eq!(taken.through, 6);
        assert_eq!(taken.mean_bytes, one);
    }
}
