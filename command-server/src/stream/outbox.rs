//! The hand-over from a subscriber's loop to its gRPC response: a queue of
//! a few messages that the loop can take back.
//!
//! A client that stops reading leaves messages in this queue that tonic and
//! hyper will not poll until it grants flow-control window again, perhaps
//! never. To end such a stream (stalled, or at shutdown) the loop empties
//! the queue itself and leaves only the final status, so what the stream
//! still holds is one status, not batches of events. The response side
//! records the last position it passed on, so the final status names the
//! exact position to resume from: everything before it was handed to the
//! transport ahead of the status, nothing after it was.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicI64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hotel_common::wire;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

/// A message for the response, with the position it covers through.
type Item = (Result<wire::SubscribeResponse, Status>, i64);

/// A queue of `capacity` messages; `through` is the position already
/// covered before the first message.
pub fn outbox(capacity: usize, through: i64) -> (Outbox, Delivery) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let delivered = Arc::new(AtomicI64::new(through));
    let outbox = Outbox {
        tx,
        rx: Arc::downgrade(&rx),
        delivered: delivered.clone(),
    };
    (outbox, Delivery { rx, delivered })
}

/// The subscriber loop's end.
pub struct Outbox {
    tx: mpsc::Sender<Item>,
    /// The response's end, to empty it; gone once the response is dropped.
    rx: Weak<Mutex<mpsc::Receiver<Item>>>,
    /// The last position the response passed on to the transport.
    delivered: Arc<AtomicI64>,
}

/// How handing a message over went.
pub enum Sent {
    Sent,
    /// The client went away.
    Gone,
    /// The queue stayed full for the whole stall limit.
    Stalled,
}

impl Outbox {
    /// Queues `message`, covering events through `through`, waiting at most
    /// `stall` for room.
    pub async fn send(&self, message: wire::Message, through: i64, stall: Duration) -> Sent {
        let response = wire::SubscribeResponse {
            message: Some(message),
        };
        match tokio::time::timeout(stall, self.tx.send((Ok(response), through))).await {
            Ok(Ok(())) => Sent::Sent,
            Ok(Err(_)) => Sent::Gone,
            Err(_) => Sent::Stalled,
        }
    }

    /// Queues `message` only if there is room now: `None` when the queue
    /// is full (the subscriber has not read what it was sent).
    pub fn try_send(&self, message: wire::Message, through: i64) -> Option<Sent> {
        let response = wire::SubscribeResponse {
            message: Some(message),
        };
        match self.tx.try_send((Ok(response), through)) {
            Ok(()) => Some(Sent::Sent),
            Err(mpsc::error::TrySendError::Closed(_)) => Some(Sent::Gone),
            Err(mpsc::error::TrySendError::Full(_)) => None,
        }
    }

    /// Resolves when the client has gone away, or the transport has sent
    /// the whole stream.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Ends the stream with the status `ending` builds from the position
    /// to resume from, dropping every message not yet passed on.
    pub fn end(&self, ending: impl FnOnce(i64) -> Status) {
        let Some(rx) = self.rx.upgrade() else {
            return;
        };
        {
            let mut rx = rx.lock().expect("outbox lock poisoned");
            while rx.try_recv().is_ok() {}
        }
        let resume = self.delivered.load(Ordering::Acquire) + 1;
        // Only this loop sends, and it just emptied the queue: there is room.
        let _ = self.tx.try_send((Err(ending(resume)), resume - 1));
    }
}

/// The response's end: the stream tonic sends.
pub struct Delivery {
    rx: Arc<Mutex<mpsc::Receiver<Item>>>,
    delivered: Arc<AtomicI64>,
}

impl Stream for Delivery {
    type Item = Result<wire::SubscribeResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut rx = self.rx.lock().expect("outbox lock poisoned");
        match rx.poll_recv(cx) {
            Poll::Ready(Some((item, through))) => {
                if let Ok(response) = &item {
                    self.delivered.store(through, Ordering::Release);
                    count_sent(response);
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Counts a message handed to the transport: by kind, its events, its
/// encoded bytes (before gRPC framing).
fn count_sent(response: &wire::SubscribeResponse) {
    use wire::Message;
    let kind = match &response.message {
        Some(Message::Events(batch)) => {
            metrics::counter!("stream_events_sent_total").increment(batch.events.len() as u64);
            "events"
        }
        Some(Message::CaughtUp(_)) => "caught_up",
        Some(Message::Heartbeat(_)) => "heartbeat",
        None => "empty",
    };
    metrics::counter!("stream_messages_sent_total", "kind" => kind).increment(1);
    metrics::counter!("stream_sent_bytes_total").increment(response.encoded_len() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn heartbeat() -> wire::Message {
        wire::Message::Heartbeat(hotel_common::pb::Heartbeat::default())
    }

    #[tokio::test]
    async fn ending_drops_what_was_not_passed_on_and_names_the_next_position() {
        let (outbox, mut delivery) = outbox(2, 9);
        let stall = Duration::from_millis(20);
        assert!(matches!(
            outbox.send(heartbeat(), 10, stall).await,
            Sent::Sent
        ));
        assert!(matches!(
            outbox.send(heartbeat(), 12, stall).await,
            Sent::Sent
        ));
        assert!(matches!(
            outbox.send(heartbeat(), 15, stall).await,
            Sent::Stalled
        ));
        let first = delivery.next().await.expect("an item");
        assert!(first.is_ok());
        outbox.end(|resume| Status::resource_exhausted(format!("resume at {resume}")));
        drop(outbox);
        let status = delivery
            .next()
            .await
            .expect("the final status")
            .expect_err("a status");
        assert_eq!(status.message(), "resume at 11", "12 was never passed on");
        assert!(delivery.next().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_response_means_the_client_is_gone() {
        let (outbox, delivery) = outbox(1, 0);
        drop(delivery);
        assert!(matches!(
            outbox.send(heartbeat(), 1, Duration::from_secs(1)).await,
            Sent::Gone
        ));
        outbox.end(|_| Status::unavailable("nobody reads this"));
    }
}
