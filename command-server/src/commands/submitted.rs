//! The asynchronous path: `SubmitCommand` stores the command as PENDING
//! (durable before the reply), queues it by priority, and a dispatcher feeds
//! the queue to the writer. A sweeper re-queues PENDING commands that no
//! process is running (after a crash, or queued by a stopped instance); the
//! writer's idempotency check makes a second run of one a no-op.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use hotel_common::{pb, validate::Violations};
use sqlx::MySqlPool;
use tokio::sync::{Notify, Semaphore};
use tonic::Status;

use super::{
    CommandKind, ValidCommand,
    parse::{decode_stored, validate},
};
use crate::{
    domain::rules::MAX_PRIORITY,
    store::{
        command_log::{self, CommandRecord},
        now_ms,
        writer::Writer,
    },
};

/// Submitted commands run at most this many at a time.
const IN_FLIGHT: usize = 64;
/// A PENDING command older than this, not queued here, is picked up.
const ORPHAN_AFTER: Duration = Duration::from_secs(10);

/// The in-process queue of submitted commands.
#[derive(Clone, Default)]
pub struct SubmittedQueue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Queued>,
    /// Ids queued or running here, so the sweeper does not add them twice.
    known: HashSet<uuid::Uuid>,
    /// Arrival counter: equal priorities run oldest first.
    arrivals: u64,
}

struct Queued {
    priority: i32,
    arrival: u64,
    command: ValidCommand,
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.arrival.cmp(&self.arrival))
    }
}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}

impl SubmittedQueue {
    /// Starts the dispatcher and the sweeper; they stop with `shutdown`.
    pub fn start(
        &self,
        writer: Writer,
        pool: MySqlPool,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        tokio::spawn(dispatch(self.clone(), writer, shutdown.clone()));
        tokio::spawn(sweep(self.clone(), pool, shutdown));
    }

    fn push(&self, priority: i32, command: ValidCommand) {
        let mut queue = self.inner.queue.lock().expect("queue lock poisoned");
        if !queue.known.insert(command.command_id) {
            return;
        }
        queue.arrivals += 1;
        let arrival = queue.arrivals;
        queue.heap.push(Queued {
            priority,
            arrival,
            command,
        });
        drop(queue);
        self.inner.ready.notify_one();
    }

    fn pop(&self) -> Option<Queued> {
        self.inner
            .queue
            .lock()
            .expect("queue lock poisoned")
            .heap
            .pop()
    }

    fn finished(&self, command_id: uuid::Uuid) {
        self.inner
            .queue
            .lock()
            .expect("queue lock poisoned")
            .known
            .remove(&command_id);
    }

    /// Validates, stores as PENDING and queues a submitted command.
    pub async fn submit(
        &self,
        pool: &MySqlPool,
        request: pb::SubmitCommandRequest,
    ) -> Result<pb::SubmitCommandResponse, Status> {
        use pb::submit_command_request::Command as C;
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

        let record = CommandRecord {
            command_id: command.command_id.to_string(),
            kind: command.kind().as_str().to_owned(),
            request: command.request.clone(),
            state: command_log::PENDING.to_owned(),
            priority,
            response: None,
            error_code: None,
            error_message: None,
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
            self.push(priority, command);
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
        let state = match existing.state.as_str() {
            command_log::PENDING => pb::CommandState::Pending,
            command_log::SUCCEEDED => pb::CommandState::Succeeded,
            _ => pb::CommandState::Failed,
        };
        Ok(pb::SubmitCommandResponse {
            command_id,
            state: state as i32,
        })
    }
}

async fn dispatch(
    queue: SubmittedQueue,
    writer: Writer,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Some(next) = queue.pop() else {
            tokio::select! {
                _ = queue.inner.ready.notified() => continue,
                _ = shutdown.changed() => return,
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let writer = writer.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let id = next.command.command_id;
            if let Err(error) = writer.execute_submitted(next.command, next.priority).await
                && !error.is_outcome()
            {
                // Still PENDING in MySQL: the sweeper will try again.
                tracing::warn!(command_id = %id, %error, "submitted command not run");
            }
            queue.finished(id);
            drop(slot);
        });
    }
}

async fn sweep(
    queue: SubmittedQueue,
    pool: MySqlPool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(ORPHAN_AFTER / 2);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let before = now_ms() - ORPHAN_AFTER.as_millis() as i64;
        let pending = match command_log::pending(&pool, before, 500).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "could not look for pending commands");
                continue;
            }
        };
        for record in pending {
            let Some(kind) = CommandKind::parse(&record.kind) else {
                continue;
            };
            match decode_stored(kind, &record.request) {
                Ok(command) => queue.push(record.priority, command),
                // It can no longer run (e.g. its stay has started since it
                // was accepted): it fails with the reason, once, instead of
                // waiting forever.
                Err(status) => {
                    let failed = command_log::fail_pending(
                        &pool,
                        &record.command_id,
                        status.code() as i32,
                        status.message(),
                    )
                    .await;
                    match failed {
                        Ok(_) => tracing::warn!(
                            command_id = %record.command_id,
                            %status,
                            "a pending command can no longer run: recorded as failed"
                        ),
                        Err(error) => tracing::warn!(
                            command_id = %record.command_id,
                            %error,
                            "could not record a pending command as failed"
                        ),
                    }
                }
            }
        }
    }
}
