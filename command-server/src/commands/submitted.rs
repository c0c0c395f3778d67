//! The asynchronous path: `SubmitCommand` stores the command as PENDING
//! (durable before the reply); a dispatcher in every instance claims queued
//! commands from MySQL when it has a free execution slot and hands them to
//! the writer.
//!
//! The queue is the `commands` table, shared by every instance: a claim
//! (`FOR UPDATE SKIP LOCKED`, then RUNNING with a lease) gives a command to
//! one instance at a time; a claim whose instance stopped lapses and another
//! takes it over. Claims are made only for free slots, so the priority order
//! (with ageing) holds across the whole backlog, and memory holds only what
//! runs. The writer's idempotency check, under the write lock, makes a
//! second run of a command a replay: each runs once.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use hotel_common::{pb, validate::Violations};
use sqlx::MySqlPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tonic::Status;

use super::{
    CommandKind,
    parse::{check_size, decode_stored, validate},
};
use crate::{
    domain::rules::MAX_PRIORITY,
    store::{
        command_log::{self, ClaimOrder, CommandRecord},
        now_ms,
        writer::Writer,
    },
};

/// Most commands claimed in one claim transaction.
const MAX_CLAIM: usize = 64;

/// How the queue runs (flags in `Config`).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Submitted commands this instance runs at a time.
    pub in_flight: usize,
    /// Queued commands (PENDING or RUNNING, all instances) past which
    /// `SubmitCommand` answers `RESOURCE_EXHAUSTED`.
    pub max_depth: i64,
    /// Priority ageing and claim lease.
    pub order: ClaimOrder,
    /// How often the queue is looked at without a local cause (commands
    /// submitted to other instances, lapsed claims).
    pub poll: Duration,
    /// Largest command request accepted, encoded.
    pub max_command_bytes: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            in_flight: 64,
            max_depth: 100_000,
            order: ClaimOrder {
                ageing_ms: 1_000,
                lease_ms: 30_000,
            },
            poll: Duration::from_millis(500),
            max_command_bytes: 16 * 1024,
        }
    }
}

/// The submitted-command queue of this instance.
#[derive(Clone)]
pub struct SubmittedQueue {
    inner: Arc<Inner>,
}

struct Inner {
    settings: QueueSettings,
    /// This instance's name in claims.
    claimant: String,
    /// Queued commands on the database as of the last look, plus those
    /// accepted here since.
    depth: AtomicI64,
    /// Wakes the dispatcher: a submission here, or a slot freed.
    ready: Notify,
}

impl SubmittedQueue {
    pub fn new(settings: QueueSettings) -> Self {
        let claimant = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        Self {
            inner: Arc::new(Inner {
                settings,
                claimant,
                depth: AtomicI64::new(0),
                ready: Notify::new(),
            }),
        }
    }

    /// Largest command request accepted, encoded.
    pub fn max_command_bytes(&self) -> usize {
        self.inner.settings.max_command_bytes
    }

    /// Starts the dispatcher; it stops with `shutdown`.
    pub fn start(&self, writer: Writer, pool: MySqlPool, shutdown: watch::Receiver<bool>) {
        tokio::spawn(dispatch(self.clone(), writer, pool, shutdown));
    }

    /// Validates and stores a submitted command as PENDING.
    pub async fn submit(
        &self,
        pool: &MySqlPool,
        request: pb::SubmitCommandRequest,
    ) -> Result<pb::SubmitCommandResponse, Status> {
        use pb::submit_command_request::Command as C;
        if let Some(command) = &request.command {
            check_size(command.encoded_len(), self.max_command_bytes())?;
        }
        let mut violations = Violations::new();
        let priority = violations.in_range("priority", request.priority, 0, MAX_PRIORITY);
        let command = match &request.command {
            None => {
                violations.add("command", "is required: one of register_hotel, add_room_type, set_room_inventory, book_room, cancel_reservation, check_in, check_out");
                None
            }
            Some(C::RegisterHotel(r)) => Some(validate(r)),
            Some(C::AddRoomType(r)) => Some(validate(r)),
            Some(C::SetRoomInventory(r)) => Some(validate(r)),
            Some(C::BookRoom(r)) => Some(validate(r)),
            Some(C::CancelReservation(r)) => Some(validate(r)),
            Some(C::CheckIn(r)) => Some(validate(r)),
            Some(C::CheckOut(r)) => Some(validate(r)),
        };
        violations.finish()?;
        let command = command.ok_or_else(|| Status::internal("no command after validation"))??;
        let priority = priority.unwrap_or(0);

        let depth = self.inner.depth.load(Ordering::Relaxed);
        let max_depth = self.inner.settings.max_depth;
        if depth >= max_depth {
            metrics::counter!("submitted_refused_total", "reason" => "queue_full").increment(1);
            return Err(Status::resource_exhausted(format!(
                "the command queue is full ({depth} queued, at most {max_depth}: --queue-max-depth); nothing was stored, submit again later"
            )));
        }

        let record = CommandRecord {
            command_id: command.command_id.to_string(),
            kind: command.kind().as_str().to_owned(),
            request: command.request.clone(),
            state: command_log::PENDING.to_owned(),
            priority,
            response: None,
            error_code: None,
            error_message: None,
            error_info: None,
            position: 0,
            accepted_at_ms: now_ms(),
            finished_at_ms: None,
        };
        let unavailable =
            |e: sqlx::Error| Status::unavailable(format!("the database is unavailable: {e}"));
        let command_id = record.command_id.clone();
        if command_log::insert_pending(pool, &record)
            .await
            .map_err(unavailable)?
        {
            self.inner.depth.fetch_add(1, Ordering::Relaxed);
            self.inner.ready.notify_one();
            return Ok(pb::SubmitCommandResponse {
                command_id,
                state: pb::CommandState::Pending as i32,
            });
        }
        let existing = command_log::load(pool, &command_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::unavailable("the command vanished; retry"))?;
        if existing.kind != record.kind || existing.request != record.request {
            return Err(Status::aborted(format!(
                "command_id {command_id} was already used for a different {} command",
                existing.kind
            )));
        }
        Ok(pb::SubmitCommandResponse {
            command_id,
            state: state_of(&existing.state) as i32,
        })
    }
}

/// The API's state of a stored command.
pub fn state_of(state: &str) -> pb::CommandState {
    match state {
        command_log::PENDING => pb::CommandState::Pending,
        command_log::RUNNING => pb::CommandState::Running,
        command_log::SUCCEEDED => pb::CommandState::Succeeded,
        _ => pb::CommandState::Failed,
    }
}

/// Claims queued commands whenever a slot is free and runs them.
async fn dispatch(
    queue: SubmittedQueue,
    writer: Writer,
    pool: MySqlPool,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = &queue.inner.settings;
    let slots = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    let mut poll = tokio::time::interval(settings.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Priorities with a `submitted_queue_pending` series, set to 0 once
    // empty; the default priority's series always exists.
    let mut exported_priorities = BTreeSet::from([0]);
    loop {
        let free = slots.available_permits().min(MAX_CLAIM);
        if free > 0 {
            let claimed = command_log::claim(
                &pool,
                &queue.inner.claimant,
                now_ms(),
                settings.order,
                free as i64,
            )
            .await;
            match claimed {
                Ok(claimed) => {
                    let full = claimed.len() == free;
                    for record in claimed {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        tokio::spawn(run_claimed(
                            queue.clone(),
                            writer.clone(),
                            pool.clone(),
                            record,
                            slot,
                        ));
                    }
                    // A full claim: more may wait, claim again while slots last.
                    if full && slots.available_permits() > 0 {
                        continue;
                    }
                }
                Err(error) => tracing::warn!(%error, "could not claim queued commands"),
            }
        }
        tokio::select! {
            _ = queue.inner.ready.notified() => {}
            _ = poll.tick() => match command_log::queued(&pool).await {
                Ok(queued) => {
                    let depth = queued.total();
                    queue.inner.depth.store(depth, Ordering::Relaxed);
                    metrics::gauge!("submitted_queue_depth").set(depth as f64);
                    export_queue(&queued, &mut exported_priorities);
                }
                Err(error) => tracing::debug!(%error, "could not count queued commands"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Exports the queue as the dispatcher's poll counted it (every
/// `--queue-poll-ms`, not per scrape: counting costs a query): PENDING
/// commands by priority, RUNNING ones. A priority that emptied reads 0.
fn export_queue(queued: &command_log::Queued, exported: &mut BTreeSet<i32>) {
    let now: BTreeSet<i32> = queued
        .pending
        .iter()
        .map(|(priority, _)| *priority)
        .collect();
    for emptied in exported.difference(&now) {
        metrics::gauge!("submitted_queue_pending", "priority" => emptied.to_string()).set(0.0);
    }
    for (priority, count) in &queued.pending {
        metrics::gauge!("submitted_queue_pending", "priority" => priority.to_string())
            .set(*count as f64);
    }
    metrics::gauge!("submitted_queue_running").set(queued.running as f64);
    exported.extend(now);
}

/// Runs one claimed command; the writer records its outcome.
async fn run_claimed(
    queue: SubmittedQueue,
    writer: Writer,
    pool: MySqlPool,
    record: CommandRecord,
    slot: OwnedSemaphorePermit,
) {
    let claimant = &queue.inner.claimant;
    let decoded = CommandKind::parse(&record.kind)
        .ok_or_else(|| Status::internal(format!("unknown command kind {}", record.kind)))
        .and_then(|kind| decode_stored(kind, &record.request));
    match decoded {
        Ok(command) => {
            let id = command.command_id;
            match writer.execute_submitted(command, record.priority).await {
                Ok(_) => {}
                Err(error) if error.is_outcome() => {}
                Err(error) => {
                    // Not run, or its outcome unknown: the next claim runs it
                    // (a replay if it did commit).
                    tracing::warn!(command_id = %id, %error, "submitted command not run; released");
                    if let Err(error) =
                        command_log::release(&pool, &record.command_id, claimant).await
                    {
                        tracing::warn!(command_id = %id, %error, "could not release a claim; it lapses");
                    }
                }
            }
        }
        // It can never run: it fails with the reason, once.
        Err(status) => {
            let failed = command_log::fail_undecodable(
                &pool,
                &record.command_id,
                status.code() as i32,
                status.message(),
            )
            .await;
            tracing::warn!(command_id = %record.command_id, %status, ?failed, "a queued command cannot be decoded: recorded as failed");
        }
    }
    // Never below zero: this instance also runs what others accepted.
    let _ = queue
        .inner
        .depth
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |depth| {
            Some((depth - 1).max(0))
        });
    drop(slot);
    queue.inner.ready.notify_one();
}
