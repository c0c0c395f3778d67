//! The projector: follows `hotel.v1.EventStream` from the checkpoint and
//! applies what arrives to the read model, exactly once.
//!
//! One task per read model file. It subscribes at `checkpoint + 1`, accepts
//! an event only if its position is the next expected one, and commits each
//! run of events together with the checkpoint in one SQLite transaction (on
//! a blocking thread, while the next events keep arriving). Anything else (a
//! gap, a duplicate, a broken or silent stream) ends the subscription: what
//! was accepted is committed, then it subscribes again from the checkpoint
//! after a backoff with jitter. It never steps past an event: one of an
//! unknown kind, one the read model keeps refusing, or a log that is not
//! the history it holds (LOG_REWRITTEN) stops it there, visibly, until an
//! operator resumes it, a newer binary starts, or a rebuild (ADR 0009).

mod status;

use std::{sync::Arc, time::Duration};

use hotel_common::{
    auth::CallCredentials,
    pb::{
        self, EventEnvelope, SubscribeRequest, event_stream_client::EventStreamClient,
        subscribe_response::Message,
    },
    trace::{self, KeyValue, TraceParent},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use tonic_types::StatusExt;

pub use status::Projection;

use crate::read_model::{ApplyError, ListingIndexes, Writer, apply::millis};

/// Events asked for per stream message (the most the command server sends).
const MAX_BATCH: i32 = 5000;

/// `ProjectionStop.reason` of an event of a kind this binary does not know.
pub const UNKNOWN_EVENT_KIND: &str = "UNKNOWN_EVENT_KIND";
/// `ProjectionStop.reason` of an event the read model refused, after retries.
pub const EVENT_REFUSED: &str = "EVENT_REFUSED";
/// `ProjectionStop.reason` (and the command server's ErrorInfo reason) of a
/// log whose history is not the read model's.
pub const LOG_REWRITTEN: &str = "LOG_REWRITTEN";
/// Most events committed in one SQLite transaction.
const MAX_EVENTS_PER_COMMIT: usize = 10_000;
/// While more events are known to exist than have arrived (catching up),
/// the writer waits for this many before it commits, or for
/// [`CATCH_UP_HOLD`]. A commit writes every page it touched to the WAL, and
/// the night counts and the reservations' pages are touched all over: a few
/// large commits write far fewer pages per event than many small ones.
/// 10,000 rather than 5,000: 12 % less CPU per replayed event, +6-11 MiB of
/// peak RSS (ADR 0014); the checkpoint (what status and `min_position` see)
/// still moves in steps of a fraction of a second.
const CATCH_UP_COMMIT_EVENTS: usize = 10_000;
/// The longest events wait for a fuller commit during catch-up.
const CATCH_UP_HOLD: Duration = Duration::from_millis(100);
/// Most events held in memory waiting for the writer; past it the projector
/// stops reading the stream (HTTP/2 flow control slows the server). One
/// catch-up commit's worth: during a replay the writer is the slower side,
/// so more only held memory (20,000 were a large part of the replaying
/// server's peak RSS, ADR 0014).
const MAX_BUFFERED: usize = CATCH_UP_COMMIT_EVENTS;
/// A stream that sends nothing (not even a heartbeat) this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest message accepted from the command server.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Backoff bounds between subscriptions.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The connection to the command server: every call carries the
/// configured bearer token (`--command-server-token`), if any.
pub type CommandServerChannel = InterceptedService<Channel, CallCredentials>;

/// A running projector.
pub struct ProjectorHandle {
    /// Set to `true` to stop the projector.
    stop: watch::Sender<bool>,
    /// Returns the writer when the projector stops.
    task: JoinHandle<Writer>,
}

impl ProjectorHandle {
    /// Starts a projector writing through `writer`, publishing to `projection`.
    pub fn spawn(
        channel: CommandServerChannel,
        writer: Writer,
        projection: Arc<Projection>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(channel, writer, projection, stop_rx));
        Self { stop, task }
    }

    /// Stops the projector once its current commit is done; returns the writer.
    pub async fn stop(self) -> anyhow::Result<Writer> {
        self.stop.send_replace(true);
        Ok(self.task.await?)
    }
}

/// Why a subscription ended.
#[derive(Debug)]
enum Ended {
    /// Asked to stop.
    Stopped,
    /// The stream broke, ended or went silent.
    Disconnected(String),
    /// The stream or the read model refused the order of events.
    OutOfOrder(String),
    /// The read model cannot apply the event at `stop.position`.
    Refused(pb::ProjectionStop),
}

/// Times the read model may refuse the same event (a read model error, a
/// full disk) before it stops there; an unknown kind stops at once.
const MAX_REFUSALS: u32 = 3;

/// Follows the stream until `stop` turns true; returns the writer.
pub async fn run(
    channel: CommandServerChannel,
    mut writer: Writer,
    projection: Arc<Projection>,
    mut stop: watch::Receiver<bool>,
) -> Writer {
    let mut client = EventStreamClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut backoff = Backoff::default();
    // The position last refused and how many times in a row.
    let mut refusals: (i64, u32) = (0, 0);
    loop {
        if *stop.borrow() {
            return writer;
        }
        // The file, not the published value, is the truth of where we are.
        let (from_position, expected_event_id) = match writer.checkpoint() {
            Ok(checkpoint) => (
                checkpoint.position + 1,
                checkpoint.event_id.unwrap_or_default(),
            ),
            Err(error) => {
                tracing::error!(%error, "cannot read the checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    _ = stop.wait_for(|stop| *stop) => return writer,
                }
            }
        };
        let request = SubscribeRequest {
            from_position,
            filter: None,
            max_batch: MAX_BATCH,
            expected_event_id: expected_event_id.clone(),
        };
        let subscribed = tokio::select! {
            subscribed = client.subscribe(request) => subscribed,
            _ = stop.wait_for(|stop| *stop) => return writer,
        };
        let ended = match subscribed {
            Ok(response) => {
                projection.set_state(pb::ProjectionState::CatchingUp).await;
                tracing::info!(from_position, "subscribed to the event stream");
                let before = projection.checkpoint();
                let (returned, ended) = follow(
                    response.into_inner(),
                    writer,
                    from_position,
                    &projection,
                    &mut stop,
                )
                .await;
                writer = returned;
                if projection.checkpoint() > before {
                    backoff.reset();
                }
                ended
            }
            // The log is not the history this read model holds: it was
            // restored or failed over and written again (our event is gone
            // from its position), or it ends before our checkpoint. Never
            // resume on it.
            Err(status)
                if status.code() == tonic::Code::OutOfRange
                    || (status.code() == tonic::Code::FailedPrecondition
                        && status
                            .get_details_error_info()
                            .is_some_and(|info| info.reason == LOG_REWRITTEN)) =>
            {
                Ended::Refused(pb::ProjectionStop {
                    position: from_position - 1,
                    event_id: expected_event_id,
                    reason: LOG_REWRITTEN.to_owned(),
                    message: format!(
                        "the command server's log is not the history this read model holds \
                         ({}); rebuild it (QueryAdminService.RebuildReadModel) or restore a \
                         matching database",
                        status.message()
                    ),
                })
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(
                    code = ?status.code(),
                    message = status.message(),
                    "the command server refused the subscription: set --command-server-token \
                     to a token with the subscriber role"
                );
                Ended::Disconnected(format!("not authorized: {}", status.message()))
            }
            Err(status) => Ended::Disconnected(format!(
                "subscribing failed: {} {}",
                status.code(),
                status.message()
            )),
        };
        match ended {
            Ended::Stopped => return writer,
            Ended::Disconnected(reason) => {
                projection
                    .set_state(pb::ProjectionState::Disconnected)
                    .await;
                tracing::warn!(
                    checkpoint = projection.checkpoint(),
                    reason,
                    "event stream lost; reconnecting"
                );
            }
            Ended::OutOfOrder(reason) => {
                tracing::warn!(
                    checkpoint = projection.checkpoint(),
                    reason,
                    "resubscribing from the checkpoint"
                );
            }
            Ended::Refused(stop_at) => {
                refusals = match refusals {
                    (position, count) if position == stop_at.position => (position, count + 1),
                    _ => (stop_at.position, 1),
                };
                let hopeless =
                    [UNKNOWN_EVENT_KIND, LOG_REWRITTEN].contains(&stop_at.reason.as_str());
                if hopeless || refusals.1 >= MAX_REFUSALS {
                    // Never past it: stopped until an operator resumes it.
                    projection.stop_before(stop_at).await;
                    tokio::select! {
                        () = projection.resumed() => {}
                        _ = stop.wait_for(|stop| *stop) => return writer,
                    }
                    refusals = (0, 0);
                    backoff.reset();
                    continue;
                }
                tracing::warn!(
                    position = stop_at.position,
                    attempt = refusals.1,
                    message = stop_at.message,
                    "the read model refused an event; trying again"
                );
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => return writer,
        }
    }
}

/// A commit running on a blocking thread.
type Commit = JoinHandle<Committed>;

/// What a commit hands back: the writer, the outcome, the commit time of
/// its last event (none for an empty batch), and the batch's vector,
/// emptied, for the next batch to fill (a catch-up batch's vector is
/// megabytes: a new one each time costs fresh pages the kernel zeroes).
struct Committed {
    writer: Writer,
    outcome: Result<i64, ApplyError>,
    last_event_at: Option<i64>,
    emptied: Vec<EventEnvelope>,
}

/// Reads one subscription and commits what it delivers; returns the writer
/// and why the subscription ended. Events accepted before the end are
/// committed first.
async fn follow(
    mut stream: tonic::Streaming<pb::SubscribeResponse>,
    writer: Writer,
    from_position: i64,
    projection: &Projection,
    stop: &mut watch::Receiver<bool>,
) -> (Writer, Ended) {
    // Invariant: `idle` holds the writer exactly when `in_flight` is None.
    let mut idle = Some(writer);
    let mut in_flight: Option<Commit> = None;
    let mut expected = from_position;
    let mut buffer: Vec<EventEnvelope> = Vec::new();
    // The last committed batch's vector, emptied.
    let mut spare: Vec<EventEnvelope> = Vec::new();
    // When the oldest buffered event arrived; bounds the catch-up hold.
    let mut buffered_since: Option<Instant> = None;
    // The highest head the stream reported: events up to it exist.
    let mut known_head: i64 = 0;
    // Whether this subscription has sent CaughtUp: from then on every
    // batch commits at once, for the lag of live queries.
    let mut caught_up = false;
    // Set by CaughtUp: the position whose commit makes the projection live.
    let mut live_at: Option<i64> = None;
    let mut ended: Option<Ended> = None;
    let mut idle_deadline = Instant::now() + IDLE_TIMEOUT;

    loop {
        // Catching up: more events exist than have arrived, and they arrive.
        let more_coming = !caught_up && expected <= known_head && ended.is_none();
        let hold_until = buffered_since
            .filter(|_| more_coming && buffer.len() < CATCH_UP_COMMIT_EVENTS)
            .map(|since| since + CATCH_UP_HOLD)
            .filter(|until| *until > Instant::now());
        if hold_until.is_none()
            && let Some(writer) = idle.take_if(|_| !buffer.is_empty())
        {
            let take = buffer.len().min(MAX_EVENTS_PER_COMMIT);
            let mut batch = std::mem::take(&mut spare);
            if batch.capacity() / 4 > take {
                // Live again after a catch-up: do not hold its megabytes.
                batch = Vec::with_capacity(take);
            }
            batch.extend(buffer.drain(..take));
            buffered_since = (!buffer.is_empty()).then(Instant::now);
            let indexes = listing_indexes(&batch, known_head);
            in_flight = Some(spawn_commit(writer, batch, indexes));
        }
        if in_flight.is_none()
            && live_at.is_some_and(|through| projection.checkpoint() >= through)
            && let Some(writer) = idle.take_if(|writer| writer.listing_indexes_deferred())
        {
            // Live, and no commit reached the head the stream announced
            // (it moved on meanwhile): the listing indexes come now.
            in_flight = Some(spawn_commit(writer, Vec::new(), ListingIndexes::Build));
        }
        if in_flight.is_none() {
            if live_at.is_some_and(|through| projection.checkpoint() >= through) {
                projection.set_state(pb::ProjectionState::Live).await;
                live_at = None;
            }
            if let Some(ended) = ended.take() {
                return (idle.take().expect("the writer is idle"), ended);
            }
        }
        let reading = ended.is_none();
        tokio::select! {
            biased;
            joined = async { in_flight.as_mut().expect("checked by the condition").await },
                if in_flight.is_some() =>
            {
                in_flight = None;
                let Committed { writer, outcome, last_event_at, emptied } = match joined {
                    Ok(done) => done,
                    Err(error) => std::panic::resume_unwind(error.into_panic()),
                };
                spare = emptied;
                idle = Some(writer);
                match outcome {
                    Ok(_) if last_event_at.is_none() => {}
                    Ok(checkpoint) => {
                        projection.committed(checkpoint, last_event_at.unwrap_or(0));
                        projection.set_pending_since(buffer.first().map(occurred_at));
                    }
                    Err(error) => {
                        // Nothing of the refused batch was applied; neither
                        // is anything after it.
                        buffer.clear();
                        let reason = format!("the read model refused a batch: {error}");
                        ended = Some(match error {
                            ApplyError::OutOfOrder { .. } => Ended::OutOfOrder(reason),
                            ApplyError::Unapplicable {
                                position,
                                event_id,
                                unknown_kind,
                                message,
                                checkpoint,
                            } => {
                                // The events before it were kept.
                                projection.committed(checkpoint, last_event_at.unwrap_or(0));
                                Ended::Refused(pb::ProjectionStop {
                                    position,
                                    event_id,
                                    reason: if unknown_kind { UNKNOWN_EVENT_KIND } else { EVENT_REFUSED }
                                        .to_owned(),
                                    message,
                                })
                            }
                            _ => {
                                tracing::error!(%error, "applying events failed");
                                Ended::Disconnected(reason)
                            }
                        });
                    }
                }
            }
            _ = stop.wait_for(|stop| *stop), if reading => {
                buffer.clear();
                ended = Some(Ended::Stopped);
            }
            message = stream.message(), if reading && buffer.len() < MAX_BUFFERED => {
                idle_deadline = Instant::now() + IDLE_TIMEOUT;
                let was_empty = buffer.is_empty();
                ended = receive(
                    message,
                    projection,
                    &mut expected,
                    &mut buffer,
                    &mut live_at,
                    &mut known_head,
                );
                caught_up |= live_at.is_some();
                if was_empty && !buffer.is_empty() {
                    buffered_since = Some(Instant::now());
                }
            }
            _ = tokio::time::sleep_until(hold_until.unwrap_or(idle_deadline)),
                if hold_until.is_some() && in_flight.is_none() => {}
            _ = tokio::time::sleep_until(idle_deadline), if reading => {
                ended = Some(Ended::Disconnected("no message from the stream for 15 s".into()));
            }
        }
    }
}

/// What a commit of `batch` does with the listing indexes: a batch that
/// starts a replay with more of the log known than it holds defers them (if
/// the file is empty), one that reaches the head the stream announced
/// builds them (if missing), in the same transaction.
fn listing_indexes(batch: &[EventEnvelope], known_head: i64) -> ListingIndexes {
    match (batch.first(), batch.last()) {
        (_, Some(last)) if last.position >= known_head => ListingIndexes::Build,
        (Some(first), _) if first.position == 1 => ListingIndexes::DeferIfEmpty,
        _ => ListingIndexes::Keep,
    }
}

/// Commits `batch` on a blocking thread. An empty batch only does what
/// `indexes` says (its commit reports no event time).
fn spawn_commit(
    mut writer: Writer,
    mut batch: Vec<EventEnvelope>,
    indexes: ListingIndexes,
) -> Commit {
    let span = apply_span(&batch);
    tokio::task::spawn_blocking(move || {
        let _applying = span.as_ref().map(tracing::Span::enter);
        let last_event_at = batch.last().map(occurred_at);
        let outcome = writer.apply_batch_and(&batch, indexes);
        if let (Some(span), Err(error)) = (&span, &outcome) {
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(error));
        }
        batch.clear();
        Committed {
            writer,
            outcome,
            last_event_at,
            emptied: batch,
        }
    })
}

/// The span of one commit to the read model, when tracing is on and some of
/// its events come from sampled commands: "apply batch", the child of the
/// first such command's span (so that its trace reads "booked, committed
/// at P, applied on replica R") and linked to each event's command, with
/// the event's position and ids.
fn apply_span(batch: &[EventEnvelope]) -> Option<tracing::Span> {
    if !trace::exporting() {
        return None;
    }
    let mut causes: Vec<(TraceParent, Vec<KeyValue>)> = Vec::new();
    for event in batch.iter().filter(|event| !event.traceparent.is_empty()) {
        if causes.len() == trace::MAX_LINKS {
            break;
        }
        // A command's events are adjacent and share its context.
        let cause = match causes.last() {
            Some((last, _)) if last.header() == event.traceparent => last.clone(),
            _ => match TraceParent::parse(&event.traceparent) {
                Some(cause) => cause,
                None => continue,
            },
        };
        let attributes = vec![
            KeyValue::new("position", event.position),
            KeyValue::new("event_id", event.event_id.clone()),
            KeyValue::new("command_id", event.command_id.clone()),
        ];
        causes.push((cause, attributes));
    }
    if causes.is_empty() {
        return None;
    }
    let span = tracing::info_span!(
        parent: None,
        "apply batch",
        replica = trace::instance(),
        events = batch.len(),
        first_position = batch.first().map_or(0, |event| event.position),
        last_position = batch.last().map_or(0, |event| event.position),
        otel.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    trace::follow(&span, causes);
    Some(span)
}

fn occurred_at(envelope: &EventEnvelope) -> i64 {
    millis(envelope.occurred_at.as_ref())
}

/// Takes one stream message: buffers the events that continue the sequence,
/// records heads and catch-up; returns why to end the subscription, if so.
fn receive(
    message: Result<Option<pb::SubscribeResponse>, tonic::Status>,
    projection: &Projection,
    expected: &mut i64,
    buffer: &mut Vec<EventEnvelope>,
    live_at: &mut Option<i64>,
    known_head: &mut i64,
) -> Option<Ended> {
    let message = match message {
        Ok(Some(response)) => response.message,
        Ok(None) => return Some(Ended::Disconnected("the stream ended".into())),
        Err(status) => {
            return Some(Ended::Disconnected(format!(
                "{} {}",
                status.code(),
                status.message()
            )));
        }
    };
    match message {
        Some(Message::Events(batch)) => {
            projection.saw_head(batch.head);
            *known_head = (*known_head).max(batch.head);
            let was_empty = buffer.is_empty();
            for envelope in batch.events {
                if envelope.position != *expected {
                    return Some(Ended::OutOfOrder(format!(
                        "the stream sent position {} where {} was expected",
                        envelope.position, *expected
                    )));
                }
                *expected += 1;
                tracing::trace!(
                    position = envelope.position,
                    event_type = envelope.event_type,
                    command_id = envelope.command_id,
                    "received event"
                );
                buffer.push(envelope);
            }
            if was_empty {
                projection.set_pending_since(buffer.first().map(occurred_at));
            }
        }
        Some(Message::CaughtUp(caught_up)) => {
            projection.saw_head(caught_up.head);
            *known_head = (*known_head).max(caught_up.head);
            // Live once everything received so far is committed.
            *live_at = Some(*expected - 1);
        }
        Some(Message::Heartbeat(heartbeat)) => {
            projection.saw_head(heartbeat.head);
            *known_head = (*known_head).max(heartbeat.head);
        }
        None => {}
    }
    None
}

/// Exponential backoff with jitter between subscriptions.
#[derive(Debug, Default)]
struct Backoff {
    /// Failed attempts since the last progress.
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_MIN
            .saturating_mul(1 << self.attempt.min(16))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        // "Equal jitter": half fixed, half random, so replicas spread out.
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            assert!(backoff.next_delay() <= BACKOFF_MAX);
        }
        assert!(backoff.next_delay() >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }
}
