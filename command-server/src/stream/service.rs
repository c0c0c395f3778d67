//! The tonic `hotel.v1.EventStream`.

use std::{collections::HashSet, pin::Pin, sync::Arc, time::Instant};

use hotel_common::{pb, server::record_rpc, validate::Violations, wire};
use sqlx::MySqlPool;
use tokio::sync::{Semaphore, watch};
use tokio_stream::Stream;
use tonic::{
    Code, Request, Response, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};

use super::{
    Limits,
    connections::ConnectionInfo,
    head::{HeadSender, raise},
    log_reads::LogReads,
    outbox::outbox,
    recent::Recent,
    subscription::{Feed, Subscription},
};
use crate::store::events::{self, EVENT_TYPES};

/// Most events per batch a subscriber may ask for.
pub const MAX_BATCH_LIMIT: i32 = 5000;
/// Events per batch when the subscriber does not say.
pub const DEFAULT_BATCH: i32 = 500;
/// Most entries in each list of a filter; a longer list is refused before
/// any entry is looked at.
pub const MAX_FILTER_ENTRIES: usize = 1000;
/// Bad filter entries named one by one; the rest are counted.
const NAMED_VIOLATIONS: usize = 5;
/// Characters of a bad value echoed back in an error.
const ECHOED_CHARS: usize = 40;
/// Messages a stream holds ready for its client, besides the one its loop
/// is preparing: enough to keep a reading client busy.
const QUEUED_MESSAGES: usize = 1;

#[derive(Clone)]
pub struct EventStreamApi {
    /// Readers of the event log.
    pool: MySqlPool,
    /// This process's last commits, for live subscribers.
    recent: Recent,
    head: HeadSender,
    /// Becomes true when the server shuts down: streams end with UNAVAILABLE.
    shutdown: watch::Receiver<bool>,
    limits: Limits,
    /// One permit per open stream.
    subscribers: Arc<Semaphore>,
    /// Admission of log reads, shared by every stream.
    log_reads: LogReads,
}

impl EventStreamApi {
    /// Opens a subscription: validation, caps, the log identity check.
    async fn open_subscription(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStreamResult>, Status> {
        // Plain text or TLS (which wraps the connection's info).
        let extensions = request.extensions();
        let connection = extensions
            .get::<ConnectionInfo<TcpConnectInfo>>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<ConnectionInfo<TcpConnectInfo>>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .map(|info| info.cut.clone());
        let request = request.into_inner();
        let mut subscription = validate(&request)?;
        let slot = self.subscribers.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("stream_subscribers_refused_total").increment(1);
            Status::resource_exhausted(format!(
                "this command server already has its maximum of {} subscribers; \
                 try again later or on another command server",
                self.limits.max_subscribers
            ))
        })?;
        let head = self.current_head().await?;
        if subscription.next > head + 1 {
            return Err(Status::out_of_range(format!(
                "from_position {} is beyond the head {head}: the next event will be {}",
                request.from_position,
                head + 1
            )));
        }
        subscription.next = subscription.next.max(1);
        super::identity::check(
            &self.pool,
            subscription.next - 1,
            &request.expected_event_id,
        )
        .await?;
        let (out, delivery) = outbox(QUEUED_MESSAGES, subscription.next - 1);
        let feed = Feed {
            pool: self.pool.clone(),
            recent: self.recent.clone(),
            head: self.head.subscribe(),
            shutdown: self.shutdown.clone(),
            limits: self.limits.clone(),
            log_reads: self.log_reads.clone(),
            out,
            connection,
            _slot: slot,
        };
        tracing::info!(from = subscription.next, head, "subscriber joined");
        tokio::spawn(feed.run(subscription));
        Ok(Response::new(Box::pin(delivery)))
    }

    pub fn new(
        pool: MySqlPool,
        recent: Recent,
        head: HeadSender,
        shutdown: watch::Receiver<bool>,
        limits: Limits,
    ) -> Self {
        Self {
            pool,
            recent,
            head,
            shutdown,
            subscribers: Arc::new(Semaphore::new(limits.max_subscribers)),
            log_reads: LogReads::new(limits.log_reads, limits.read_queue),
            limits,
        }
    }

    /// The head as MySQL has it now, also raising the shared head.
    async fn current_head(&self) -> Result<i64, Status> {
        let position = events::head(&self.pool)
            .await
            .map_err(|e| Status::unavailable(format!("the database is unavailable: {e}")))?;
        raise(&self.head, position);
        Ok(position.max(*self.head.borrow()))
    }
}

type EventStreamResult =
    Pin<Box<dyn Stream<Item = Result<wire::SubscribeResponse, Status>> + Send>>;

/// The service as generated with [`wire::SubscribeResponse`] for the stream,
/// so that stored payloads go out as they are (ADR 0014).
#[tonic::async_trait]
impl wire::server::event_stream_server::EventStream for EventStreamApi {
    type SubscribeStream = EventStreamResult;

    #[tracing::instrument(skip_all, fields(from = request.get_ref().from_position))]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let answer = self.open_subscription(request).await;
        record_rpc(
            "Subscribe",
            started,
            answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        answer
    }

    async fn get_head(
        &self,
        _request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::GetHeadResponse>, Status> {
        let started = Instant::now();
        let answer = self.current_head().await;
        record_rpc(
            "GetHead",
            started,
            answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        Ok(Response::new(pb::GetHeadResponse { head: answer? }))
    }
}

fn validate(request: &pb::SubscribeRequest) -> Result<Subscription, Status> {
    let mut v = Violations::new();
    let from = v.position("from_position", request.from_position);
    let max_batch = match request.max_batch {
        0 => Some(DEFAULT_BATCH),
        n => v.in_range("max_batch", n, 1, MAX_BATCH_LIMIT),
    };
    let filter = request.filter.clone().unwrap_or_default();
    check_entries(
        &mut v,
        "filter.event_types",
        &filter.event_types,
        |v, field, name| {
            if EVENT_TYPES.contains(&name) {
                return true;
            }
            v.add(
                field,
                format!(
                    "unknown event type {:?}; known: {}",
                    echo(name),
                    EVENT_TYPES.join(", ")
                ),
            );
            false
        },
    );
    check_entries(
        &mut v,
        "filter.hotel_ids",
        &filter.hotel_ids,
        |v, field, hotel| v.identifier(field, hotel).is_some(),
    );
    v.finish()?;
    Ok(Subscription {
        next: from.unwrap_or(0),
        max_batch: i64::from(max_batch.unwrap_or(DEFAULT_BATCH)),
        event_types: filter.event_types.into_iter().collect::<HashSet<_>>(),
        hotel_ids: filter.hotel_ids.into_iter().collect::<HashSet<_>>(),
    })
}

/// Checks each entry of the list `field` with `check` (which records a
/// violation and says false for a bad one), refusing an over-long list
/// whole; names the first few bad entries and counts the rest, so the error
/// stays small however long the list.
fn check_entries(
    v: &mut Violations,
    field: &str,
    entries: &[String],
    check: impl Fn(&mut Violations, &str, &str) -> bool,
) {
    if entries.len() > MAX_FILTER_ENTRIES {
        v.add(
            field,
            format!(
                "must have at most {MAX_FILTER_ENTRIES} entries, got {}",
                entries.len()
            ),
        );
        return;
    }
    let mut bad = 0;
    for (i, entry) in entries.iter().enumerate() {
        if bad < NAMED_VIOLATIONS {
            if !check(v, &format!("{field}[{i}]"), entry) {
                bad += 1;
            }
        } else if !check(&mut Violations::new(), field, entry) {
            bad += 1;
        }
    }
    if bad > NAMED_VIOLATIONS {
        v.add(
            field,
            format!("and {} more bad entries", bad - NAMED_VIOLATIONS),
        );
    }
}

/// The start of a client's value, for an error message.
fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHOED_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(event_types: Vec<String>, hotel_ids: Vec<String>) -> pb::SubscribeRequest {
        pb::SubscribeRequest {
            from_position: 0,
            filter: Some(pb::EventFilter {
                event_types,
                hotel_ids,
            }),
            max_batch: 0,
            expected_event_id: String::new(),
        }
    }

    #[test]
    fn bad_filter_entries_are_named_a_few_at_a_time_and_echoed_short() {
        let long = "Y".repeat(10_000);
        let mut types = vec!["ReservationConfirmed".to_owned()];
        types.extend((0..20).map(|_| long.clone()));
        let status = validate(&filtered(types, vec!["ok".to_owned()])).expect_err("bad types");
        let violations = hotel_common::validate::field_violations(&status);
        assert_eq!(violations.len(), NAMED_VIOLATIONS + 1, "{violations:?}");
        assert_eq!(violations[0].0, "filter.event_types[1]");
        assert_eq!(violations[NAMED_VIOLATIONS].0, "filter.event_types");
        assert!(violations[NAMED_VIOLATIONS].1.contains("15 more"));
        assert!(status.message().len() < 2_000, "{}", status.message());
    }

    #[test]
    fn an_over_long_list_is_refused_whole() {
        let hotels = vec!["h".to_owned(); MAX_FILTER_ENTRIES + 1];
        let status = validate(&filtered(vec![], hotels)).expect_err("too many");
        let violations = hotel_common::validate::field_violations(&status);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].0, "filter.hotel_ids");
        let hotels = vec!["h".to_owned(); MAX_FILTER_ENTRIES];
        assert!(
            validate(&filtered(vec![], hotels)).is_ok(),
            "the maximum is fine"
        );
    }
}
