//! Live queries: the current answer, then a new one after every change.
//!
//! Watchers of the same key share the work. One feed per watched key (a
//! reservation, or an availability request) re-reads it once per commit and
//! publishes what it found on a `watch` channel; each watcher has a task
//! that sends its client what is new to it, at the client's pace. So a
//! commit costs one read per distinct key, however many watch it.
//!
//! A watcher joins its key's feed *before* reading its own first answer, and
//! a feed follows the checkpoint from before its creation, so a commit that
//! lands between the two still reaches the watcher: nothing is lost between
//! the first answer and the live part. Open watches are capped
//! ([`Watches::new`]); at shutdown every watch ends with `UNAVAILABLE`.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::Hash,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hotel_common::{pb, timestamp_from_millis};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{
    Queries, QueryError,
    request::{GetAvailability, NightRange},
};
use crate::read_model::reads;

/// Replies buffered per watch before its task waits for the client. Small:
/// availability coalesces while the client is slow, and a reservation's
/// changes stay in its feed until sent.
const CHANNEL_CAPACITY: usize = 4;
/// How long the closing `UNAVAILABLE` may wait for room in a slow client's
/// buffer at shutdown.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// The open watches and their shared feeds.
pub struct Watches {
    /// One permit per open watch; none left means `RESOURCE_EXHAUSTED`.
    permits: Arc<Semaphore>,
    /// The most watches open at once.
    max_watchers: usize,
    /// Feeds of watched reservations, by reservation id.
    reservations: Feeds<String, ReservationNews>,
    /// Feeds of watched availability, by request.
    availability: Feeds<AvailabilityKey, AvailabilityNews>,
    /// Reads done by feeds, one per key per commit (tests and metrics).
    rereads: AtomicU64,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("open", &self.open())
            .field("max_watchers", &self.max_watchers)
            .finish_non_exhaustive()
    }
}

/// The feeds of one kind of watch, by key: what a new watcher joins.
type Feeds<K, T> = Mutex<HashMap<K, Arc<watch::Sender<T>>>>;

/// What an availability watch is keyed by: the answer depends on nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AvailabilityKey {
    hotel_id: String,
    room_type_code: Option<String>,
    /// First night.
    from: time::Date,
    /// The day after the last night.
    to: time::Date,
}

/// What a reservation's feed has read since it started.
#[derive(Debug, Clone, Default)]
struct ReservationNews {
    /// Every change after the feed's start, oldest first (a reservation
    /// changes a handful of times in its life).
    changes: Vec<reads::ReservationChange>,
    /// The checkpoint of the snapshot the feed read last.
    as_of_position: i64,
    /// The read failed; the feed has ended.
    failed: Option<Status>,
}

/// What an availability feed has read last.
#[derive(Debug, Clone, Default)]
struct AvailabilityNews {
    /// The latest answer (none before the first commit after the start).
    latest: Option<Arc<pb::GetAvailabilityResponse>>,
    /// The read failed; the feed has ended.
    failed: Option<Status>,
}

impl Watches {
    /// Room for `max_watchers` open watches.
    pub fn new(max_watchers: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_watchers)),
            max_watchers,
            reservations: Mutex::default(),
            availability: Mutex::default(),
            rereads: AtomicU64::new(0),
        }
    }

    /// Watches open now.
    pub fn open(&self) -> usize {
        self.max_watchers - self.permits.available_permits()
    }

    /// Reads the feeds have done: one per watched key per commit.
    pub fn rereads(&self) -> u64 {
        self.rereads.load(Ordering::Relaxed)
    }

    /// Distinct keys watched now.
    pub fn feeds(&self) -> usize {
        lock(&self.reservations).len() + lock(&self.availability).len()
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, QueryError> {
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            metrics::counter!("query_watches_refused_total").increment(1);
            QueryError::Exhausted(format!(
                "this query server has its {} watches open (--max-watchers); \
                 retry later or watch on another replica",
                self.max_watchers
            ))
        })
    }

    fn counted_reread(&self) {
        self.rereads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("query_watch_rereads_total").increment(1);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A watcher's place in the count of open watches; gives it back when dropped.
struct Admission {
    /// Returned to the semaphore on drop.
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("query_watches_open").increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        metrics::gauge!("query_watches_open").decrement(1.0);
    }
}

/// Joins the feed of `key`, starting it when nobody watches the key yet.
/// `start` spawns the feed's task; it runs under the feeds' lock, which is
/// why a feed that finds itself without watchers can leave safely.
fn join<K: Eq + Hash + Clone, T: Default>(
    feeds: &Feeds<K, T>,
    key: &K,
    start: impl FnOnce(Arc<watch::Sender<T>>),
) -> watch::Receiver<T> {
    let mut feeds = lock(feeds);
    let sender = match feeds.entry(key.clone()) {
        Entry::Occupied(entry) => Arc::clone(entry.get()),
        Entry::Vacant(entry) => {
            let sender = Arc::new(watch::Sender::new(T::default()));
            entry.insert(Arc::clone(&sender));
            start(Arc::clone(&sender));
            sender
        }
    };
    let mut receiver = sender.subscribe();
    // What the feed already holds may be news to this watcher.
    receiver.mark_changed();
    receiver
}

/// Removes the feed of `key` if nobody watches it any more; true when it
/// should end. Watchers join under the same lock, so none is left behind.
fn leave<K: Eq + Hash, T>(feeds: &Feeds<K, T>, key: &K, sender: &Arc<watch::Sender<T>>) -> bool {
    let mut feeds = lock(feeds);
    if sender.receiver_count() > 0 {
        return false;
    }
    if feeds
        .get(key)
        .is_some_and(|found| Arc::ptr_eq(found, sender))
    {
        feeds.remove(key);
    }
    true
}

/// Forgets the feed of `key` (it ended); watchers still on it see it end.
fn forget<K: Eq + Hash, T>(feeds: &Feeds<K, T>, key: &K, sender: &Arc<watch::Sender<T>>) {
    let mut feeds = lock(feeds);
    if feeds
        .get(key)
        .is_some_and(|found| Arc::ptr_eq(found, sender))
    {
        feeds.remove(key);
    }
}

/// Why a feed or a watcher woke.
enum Wake {
    /// Something new to look at.
    News,
    /// The server is stopping (or the projection is gone).
    Stopping,
    /// Nobody listens any more.
    Gone,
}

/// The status every watch ends with at shutdown.
fn shutting_down(queries: &Queries) -> Status {
    Status::unavailable(format!(
        "the query server is shutting down at position {}; watch again, on another replica \
         or once it is back",
        queries.projection.checkpoint()
    ))
}

/// Watches one reservation. Every state change is sent, in order, even when
/// several land in one commit (they are read from `reservation_changes`).
pub fn reservation(
    queries: Queries,
    reservation_id: String,
) -> Result<ReceiverStream<Result<pb::WatchReservationResponse, Status>>, QueryError> {
    let admission = Admission::new(queries.watches.admit()?);
    let mut news = join(&queries.watches.reservations, &reservation_id, |sender| {
        // Follows commits from now, before this watcher reads its answer.
        let mut checkpoints = queries.projection.watch_checkpoint();
        let from = *checkpoints.borrow_and_update();
        tokio::spawn(reservation_feed(
            queries.clone(),
            reservation_id.clone(),
            (checkpoints, from),
            sender,
        ));
    });
    let first = queries.get_reservation_now(&reservation_id)?;
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let mut stopping = queries.stopping.clone();
    tokio::spawn(async move {
        let _admission = admission;
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
        loop {
            let wake = tokio::select! {
                changed = news.changed() => match changed {
                    Ok(()) => Wake::News,
                    Err(_) => Wake::Stopping,
                },
                _ = stopping.wait_for(|stop| *stop) => Wake::Stopping,
                _ = sender.closed() => Wake::Gone,
            };
            match wake {
                Wake::News => {}
                Wake::Stopping => return farewell(&queries, &sender).await,
                Wake::Gone => return,
            }
            let (changes, as_of_position, failed) = {
                let news = news.borrow_and_update();
                let changes: Vec<_> = news
                    .changes
                    .iter()
                    .filter(|change| change.position > seen_through)
                    .cloned()
                    .collect();
                (changes, news.as_of_position, news.failed.clone())
            };
            if let Some(status) = failed {
                let _ = sender.send(Err(status)).await;
                return;
            }
            let count = changes.len();
            for (index, change) in changes.into_iter().enumerate() {
                current.status = change.status as i32;
                current.updated_at = Some(timestamp_from_millis(change.updated_at_ms));
                current.last_position = change.position;
                current.version = change.version;
                // Each state is as of its own event; the newest is as of the snapshot.
                let as_of = if index + 1 == count {
                    as_of_position.max(change.position)
                } else {
                    change.position
                };
                seen_through = seen_through.max(change.position);
                let reply = pb::WatchReservationResponse {
                    reservation: Some(current.clone()),
                    as_of_position: as_of,
                };
                if sender.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// Re-reads one reservation's changes once per commit for all its watchers.
async fn reservation_feed(
    queries: Queries,
    reservation_id: String,
    (mut checkpoints, from): (watch::Receiver<i64>, i64),
    sender: Arc<watch::Sender<ReservationNews>>,
) {
    let mut seen_through = from;
    sender.send_modify(|news| news.as_of_position = seen_through);
    let mut stopping = queries.stopping.clone();
    let feeds = &queries.watches.reservations;
    loop {
        match next_commit(&mut checkpoints, &mut stopping, &sender).await {
            Wake::News => {}
            Wake::Stopping => break,
            Wake::Gone if leave(feeds, &reservation_id, &sender) => return,
            Wake::Gone => continue,
        }
        queries.watches.counted_reread();
        let read =
            queries.read(|tx| reads::reservation_changes_after(tx, &reservation_id, seen_through));
        match read {
            Ok((changes, as_of_position)) => {
                seen_through = seen_through.max(as_of_position);
                sender.send_if_modified(|news| {
                    news.as_of_position = seen_through;
                    let changed = !changes.is_empty();
                    news.changes.extend(changes);
                    changed
                });
            }
            Err(error) => {
                let status = Status::from(error);
                sender.send_modify(|news| news.failed = Some(status));
                break;
            }
        }
    }
    forget(feeds, &reservation_id, &sender);
}

/// Watches availability: a new reply whenever a commit changed the answer.
/// Changes that land in one commit, or while the client is slow, arrive as
/// one newer answer.
pub fn availability(
    queries: Queries,
    query: GetAvailability,
) -> Result<ReceiverStream<Result<pb::GetAvailabilityResponse, Status>>, QueryError> {
    let admission = Admission::new(queries.watches.admit()?);
    let key = AvailabilityKey {
        hotel_id: query.hotel_id.clone(),
        room_type_code: query.room_type_code.clone(),
        from: query.range.from,
        to: query.range.to,
    };
    let mut news = join(&queries.watches.availability, &key, |sender| {
        // Follows commits from now, before this watcher reads its answer.
        let mut checkpoints = queries.projection.watch_checkpoint();
        checkpoints.borrow_and_update();
        tokio::spawn(availability_feed(
            queries.clone(),
            key.clone(),
            checkpoints,
            sender,
        ));
    });
    let first = queries.get_availability_now(&query)?;
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let mut stopping = queries.stopping.clone();
    tokio::spawn(async move {
        let _admission = admission;
        let mut last_sent = first.room_types.clone();
        let mut seen_through = first.as_of_position;
        if sender.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let wake = tokio::select! {
                changed = news.changed() => match changed {
                    Ok(()) => Wake::News,
                    Err(_) => Wake::Stopping,
                },
                _ = stopping.wait_for(|stop| *stop) => Wake::Stopping,
                _ = sender.closed() => Wake::Gone,
            };
            match wake {
                Wake::News => {}
                Wake::Stopping => return farewell(&queries, &sender).await,
                Wake::Gone => return,
            }
            let (latest, failed) = {
                let news = news.borrow_and_update();
                (news.latest.clone(), news.failed.clone())
            };
            if let Some(status) = failed {
                let _ = sender.send(Err(status)).await;
                return;
            }
            // A feed's answer read before this watcher's own is not news.
            let Some(latest) = latest.filter(|latest| latest.as_of_position > seen_through) else {
                continue;
            };
            seen_through = latest.as_of_position;
            if latest.room_types == last_sent {
                continue;
            }
            last_sent = latest.room_types.clone();
            if sender.send(Ok((*latest).clone())).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// Re-reads one availability request once per commit for all its watchers;
/// publishes only answers that differ from the last one.
async fn availability_feed(
    queries: Queries,
    key: AvailabilityKey,
    mut checkpoints: watch::Receiver<i64>,
    sender: Arc<watch::Sender<AvailabilityNews>>,
) {
    let mut stopping = queries.stopping.clone();
    let feeds = &queries.watches.availability;
    let query = GetAvailability {
        hotel_id: key.hotel_id.clone(),
        room_type_code: key.room_type_code.clone(),
        range: NightRange {
            from: key.from,
            to: key.to,
        },
        min_position: 0,
    };
    loop {
        match next_commit(&mut checkpoints, &mut stopping, &sender).await {
            Wake::News => {}
            Wake::Stopping => break,
            Wake::Gone if leave(feeds, &key, &sender) => return,
            Wake::Gone => continue,
        }
        queries.watches.counted_reread();
        match queries.get_availability_now(&query) {
            Ok(reply) => {
                sender.send_if_modified(|news| {
                    let changed = news
                        .latest
                        .as_ref()
                        .is_none_or(|last| last.room_types != reply.room_types);
                    news.latest = Some(Arc::new(reply));
                    changed
                });
            }
            Err(error) => {
                let status = Status::from(error);
                sender.send_modify(|news| news.failed = Some(status));
                break;
            }
        }
    }
    forget(feeds, &key, &sender);
}

/// Waits for the next commit; or says why the feed should stop instead (the
/// server stops, the projection is gone, or nobody watches any more).
async fn next_commit<T>(
    checkpoints: &mut watch::Receiver<i64>,
    stopping: &mut watch::Receiver<bool>,
    sender: &watch::Sender<T>,
) -> Wake {
    tokio::select! {
        changed = checkpoints.changed() => match changed {
            Ok(()) => Wake::News,
            Err(_) => Wake::Stopping,
        },
        _ = stopping.wait_for(|stop| *stop) => Wake::Stopping,
        () = sender.closed() => Wake::Gone,
    }
}

/// Ends a watch at shutdown with `UNAVAILABLE`, so the client watches
/// again elsewhere instead of taking the end for the end of the data.
async fn farewell<T>(queries: &Queries, sender: &mpsc::Sender<Result<T, Status>>) {
    let _ = sender
        .send_timeout(Err(shutting_down(queries)), FAREWELL_TIMEOUT)
        .await;
}
