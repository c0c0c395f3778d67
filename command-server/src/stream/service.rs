//! The tonic `hotel.v1.EventStream`.

use std::{pin::Pin, time::Duration};

use hotel_common::{pb, validate::Violations};
use sqlx::MySqlPool;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    head::{HeadSender, raise},
    subscription::{Feed, Subscription},
};
use crate::store::events::{self, EVENT_TYPES};

/// Most events per batch a subscriber may ask for.
pub const MAX_BATCH_LIMIT: i32 = 5000;
/// Events per batch when the subscriber does not say.
pub const DEFAULT_BATCH: i32 = 500;

#[derive(Clone)]
pub struct EventStreamApi {
    /// Readers of the event log.
    pub pool: MySqlPool,
    /// This process's last commits, for live subscribers.
    pub recent: super::recent::Recent,
    pub head: HeadSender,
    /// Becomes true when the server shuts down: streams end with UNAVAILABLE.
    pub shutdown: watch::Receiver<bool>,
    /// Quiet time after which a subscriber gets a heartbeat.
    pub heartbeat: Duration,
}

impl EventStreamApi {
    /// The head as MySQL has it now, also raising the shared head.
    async fn current_head(&self) -> Result<i64, Status> {
        let position = events::head(&self.pool)
            .await
            .map_err(|e| Status::unavailable(format!("the database is unavailable: {e}")))?;
        raise(&self.head, position);
        Ok(position.max(*self.head.borrow()))
    }
}

type EventStreamResult = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_stream_server::EventStream for EventStreamApi {
    type SubscribeStream = EventStreamResult;

    #[tracing::instrument(skip_all, fields(from = request.get_ref().from_position))]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let mut subscription = validate(&request)?;
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
        let (out, stream) = mpsc::channel(2);
        let feed = Feed {
            pool: self.pool.clone(),
            recent: self.recent.clone(),
            head: self.head.subscribe(),
            shutdown: self.shutdown.clone(),
            heartbeat: self.heartbeat,
            out,
        };
        tracing::info!(from = subscription.next, head, "subscriber joined");
        tokio::spawn(feed.run(subscription));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn get_head(
        &self,
        _request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::GetHeadResponse>, Status> {
        let head = self.current_head().await?;
        Ok(Response::new(pb::GetHeadResponse { head }))
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
    for (i, name) in filter.event_types.iter().enumerate() {
        if !EVENT_TYPES.contains(&name.as_str()) {
            v.add(
                format!("filter.event_types[{i}]"),
                format!(
                    "unknown event type {name:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            );
        }
    }
    for (i, hotel) in filter.hotel_ids.iter().enumerate() {
        v.identifier(&format!("filter.hotel_ids[{i}]"), hotel);
    }
    v.finish()?;
    Ok(Subscription {
        next: from.unwrap_or(0),
        max_batch: i64::from(max_batch.unwrap_or(DEFAULT_BATCH)),
        event_types: filter.event_types,
        hotel_ids: filter.hotel_ids,
    })
}
