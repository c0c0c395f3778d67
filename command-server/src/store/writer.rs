//! The writer: one task per process that owns one MySQL connection and runs
//! commands in batched transactions.
//!
//! Each batch transaction locks `event_head` first, so command transactions
//! of every process on the database run one at a time: positions are handed
//! out in commit order without gaps, and no two transactions can book the
//! same last room. Commands that queue up while a batch runs share the next
//! commit (group commit in the application), which is what makes this fast.

use std::collections::HashMap;

use sqlx::{Connection, Executor, MySqlConnection, Row, mysql::MySqlConnectOptions};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use super::{
    command_log::{self, CommandRecord},
    events,
    execute::{Batch, execute},
    now_ms,
    working_set::{KnownRoomTypes, WorkingSet},
};
use crate::{
    commands::{CommandKind, Reply, ValidCommand},
    error::CommandError,
    stream::{
        head::{HeadSender, raise},
        recent::Recent,
    },
};

/// Most commands in one transaction.
pub const MAX_BATCH: usize = 64;

/// One command waiting for the writer.
struct Job {
    command: ValidCommand,
    /// Queue priority when it came through SubmitCommand (its outcome is
    /// recorded even when it fails); `None` for a direct call.
    submitted_priority: Option<i32>,
    reply: oneshot::Sender<Result<Reply, CommandError>>,
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task. `head` is told the last position after every
    /// commit. The task ends when every `Writer` handle is dropped.
    /// `recent` gets each commit's events before the head moves.
    pub fn spawn(options: MySqlConnectOptions, head: HeadSender, recent: Recent) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(options, queue, head, recent));
        Self { jobs }
    }

    /// Runs a command and returns its reply (or the stored first reply).
    pub async fn execute(&self, command: ValidCommand) -> Result<Reply, CommandError> {
        self.submit(command, None).await
    }

    /// Runs a submitted (asynchronous) command; its outcome is recorded
    /// whatever it is.
    pub async fn execute_submitted(
        &self,
        command: ValidCommand,
        priority: i32,
    ) -> Result<Reply, CommandError> {
        self.submit(command, Some(priority)).await
    }

    async fn submit(
        &self,
        command: ValidCommand,
        submitted_priority: Option<i32>,
    ) -> Result<Reply, CommandError> {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            command,
            submitted_priority,
            reply,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        outcome.await.map_err(|_| CommandError::ShuttingDown)?
    }
}

async fn run(
    options: MySqlConnectOptions,
    mut queue: mpsc::Receiver<Job>,
    head: HeadSender,
    recent: Recent,
) {
    let mut conn: Option<Session> = None;
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let commands: Vec<&ValidCommand> = jobs.iter().map(|job| &job.command).collect();
        let priorities: Vec<Option<i32>> = jobs.iter().map(|job| job.submitted_priority).collect();
        let outcomes = match run_batch(&options, &mut conn, &recent, &commands, &priorities).await {
            Ok((outcomes, last)) => {
                raise(&head, last);
                outcomes
            }
            Err(error) if jobs.len() == 1 => {
                tracing::warn!(%error, "command transaction failed");
                vec![Err(CommandError::Database(error))]
            }
            Err(error) => {
                // One command may be at fault: run each alone so the others
                // still succeed and the culprit gets its own error.
                tracing::warn!(%error, batch = jobs.len(), "batch failed; running its commands one by one");
                let mut outcomes = Vec::with_capacity(jobs.len());
                for (command, priority) in commands.iter().zip(&priorities) {
                    match run_batch(&options, &mut conn, &recent, &[command], &[*priority]).await {
                        Ok((mut single, last)) => {
                            raise(&head, last);
                            outcomes.push(single.pop().unwrap_or(Err(CommandError::Internal(
                                "a batch of one gave no outcome".to_owned(),
                            ))));
                        }
                        Err(error) => {
                            outcomes.push(Err(CommandError::Database(error)));
                        }
                    }
                }
                outcomes
            }
        };
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            // The caller may have gone (deadline); the outcome is stored anyway.
            let _ = job.reply.send(outcome);
        }
    }
}

async fn connect(options: &MySqlConnectOptions) -> sqlx::Result<MySqlConnection> {
    let options = options
        .clone()
        .statement_cache_capacity(super::WRITER_STATEMENT_CACHE);
    let mut conn = MySqlConnection::connect_with(&options).await?;
    // The head lock already serialises command transactions; READ COMMITTED
    // makes every read see the latest commit rather than a snapshot. With
    // autocommit off, a batch's first statement opens its transaction: no
    // BEGIN round trip.
    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await?;
    conn.execute("SET SESSION autocommit = 0").await?;
    Ok(conn)
}

/// Runs commands in one transaction; per-command outcomes and the head after
/// commit. An `Err` means the transaction did not commit and nothing
/// happened: the connection is dropped, which rolls back what the batch had
/// written (with autocommit off, the next batch would otherwise carry it on
/// and commit it), and the next batch connects afresh.
async fn run_batch(
    options: &MySqlConnectOptions,
    slot: &mut Option<Session>,
    recent: &Recent,
    commands: &[&ValidCommand],
    submitted: &[Option<i32>],
) -> sqlx::Result<(Vec<Result<Reply, CommandError>>, i64)> {
    let session = match slot {
        Some(session) => session,
        None => slot.insert(Session {
            conn: connect(options).await?,
            known: None,
        }),
    };
    let done = run_transaction(session, recent, commands, submitted).await;
    if done.is_err() {
        *slot = None;
    }
    done
}

/// The writer's connection, and what it knows of the write model as of
/// its last commit.
struct Session {
    conn: MySqlConnection,
    known: Option<Known>,
}

/// Room types as they stood when this writer committed at `head`. Room
/// types change only through commands, so while the head is still `head`
/// at the next batch (no other instance committed) they still hold, and the
/// batch need not read them again.
struct Known {
    head: i64,
    room_types: KnownRoomTypes,
}

async fn run_transaction(
    session: &mut Session,
    recent: &Recent,
    commands: &[&ValidCommand],
    submitted: &[Option<i32>],
) -> sqlx::Result<(Vec<Result<Reply, CommandError>>, i64)> {
    let carried = session.known.take();
    // The session has autocommit off: this statement opens the transaction.
    let tx = &mut session.conn;
    let head: i64 = sqlx::query("SELECT position FROM event_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?
        .try_get("position")?;

    let ids: Vec<String> = commands.iter().map(|c| c.command_id.to_string()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut known: HashMap<String, CommandRecord> = command_log::load_many(tx, &id_refs).await?;

    let now = now_ms();
    let mut batch = Batch::new(head, now);
    let mut rows = WorkingSet::with_room_types(
        carried
            .filter(|carried| carried.head == head)
            .map(|carried| carried.room_types)
            .unwrap_or_default(),
    );
    rows.prefetch(tx, commands).await.map_err(into_sqlx)?;
    let mut records: Vec<CommandRecord> = Vec::new();
    let mut outcomes = Vec::with_capacity(commands.len());
    for ((command, id), priority) in commands.iter().zip(&ids).zip(submitted) {
        if let Some(replay) = known.get(id).and_then(|previous| replay(previous, command)) {
            outcomes.push(replay);
            continue;
        }
        let events_before = batch.events.len();
        let outcome = execute(tx, &mut rows, &mut batch, command).await;
        let pending = known.get(id).map(|r| r.priority);
        let record = match &outcome {
            Ok(reply) => Some(CommandRecord {
                command_id: id.clone(),
                kind: command.kind().as_str().to_owned(),
                request: command.request.clone(),
                state: command_log::SUCCEEDED.to_owned(),
                priority: priority.or(pending).unwrap_or(0),
                response: Some(reply.encode()),
                error_code: None,
                error_message: None,
                position: reply.position(),
                accepted_at_ms: known.get(id).map_or(now, |r| r.accepted_at_ms),
                finished_at_ms: Some(now),
            }),
            Err(error) if !error.is_outcome() => {
                // Not a verdict on the command: roll the whole batch back.
                return Err(match outcome {
                    Err(error) => into_sqlx(error),
                    Ok(_) => sqlx::Error::Protocol(format!("command {id}: {error}")),
                });
            }
            Err(error) => {
                if batch.events.len() != events_before {
                    return Err(sqlx::Error::Protocol(format!(
                        "command {id} failed after emitting events: {error}"
                    )));
                }
                // A refused direct call changed nothing and is not recorded
                // (a retry is judged afresh); a submitted one is.
                (priority.is_some() || pending.is_some()).then(|| CommandRecord {
                    command_id: id.clone(),
                    kind: command.kind().as_str().to_owned(),
                    request: command.request.clone(),
                    state: command_log::FAILED.to_owned(),
                    priority: priority.or(pending).unwrap_or(0),
                    response: None,
                    error_code: Some(error.code() as i32),
                    error_message: Some(error.to_string()),
                    position: 0,
                    accepted_at_ms: known.get(id).map_or(now, |r| r.accepted_at_ms),
                    finished_at_ms: Some(now),
                })
            }
        };
        if let Some(record) = record {
            known.insert(id.clone(), record.clone());
            records.push(record);
        }
        outcomes.push(outcome);
    }

    rows.flush(tx).await.map_err(into_sqlx)?;
    if !batch.events.is_empty() {
        events::append(tx, &batch.events).await?;
        sqlx::query("UPDATE event_head SET position = ? WHERE id = 1")
            .bind(batch.head())
            .execute(&mut *tx)
            .await?;
    }
    command_log::upsert(tx, &records).await?;
    tx.execute("COMMIT").await?;
    let last = batch.head();
    recent.append(batch.events.into_iter().map(events::envelope).collect());
    session.known = Some(Known {
        head: last,
        room_types: rows.into_room_types(),
    });
    for (command, outcome) in commands.iter().zip(&outcomes) {
        match outcome {
            Ok(reply) => tracing::info!(
                command_id = %command.command_id,
                correlation_id = %command.correlation_id,
                kind = command.kind().as_str(),
                position = reply.position(),
                "command committed"
            ),
            Err(error) => tracing::info!(
                command_id = %command.command_id,
                kind = command.kind().as_str(),
                %error,
                "command refused"
            ),
        }
    }
    metrics::counter!("command_batches_total").increment(1);
    metrics::histogram!("command_batch_size").record(commands.len() as f64);
    Ok((outcomes, last))
}

/// A failure that is not a verdict on a command, as the error that rolls
/// the batch back.
fn into_sqlx(error: CommandError) -> sqlx::Error {
    match error {
        CommandError::Database(error) => error,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// The stored outcome of an earlier run of this command id, if it has one.
fn replay(previous: &CommandRecord, command: &ValidCommand) -> Option<Result<Reply, CommandError>> {
    if previous.kind != command.kind().as_str() || previous.request != command.request {
        return Some(Err(CommandError::CommandIdReused(format!(
            "command_id {} was already used for a different {} command",
            command.command_id, previous.kind
        ))));
    }
    match previous.state.as_str() {
        command_log::SUCCEEDED => {
            let kind = CommandKind::parse(&previous.kind)?;
            let bytes = previous.response.as_deref().unwrap_or_default();
            Some(match Reply::decode(kind, bytes) {
                Ok(mut reply) => {
                    reply.mark_replayed();
                    Ok(reply)
                }
                Err(error) => Err(CommandError::Internal(format!("stored reply: {error}"))),
            })
        }
        command_log::FAILED => Some(Err(CommandError::Replayed {
            code: Code::from_i32(previous.error_code.unwrap_or(Code::Unknown as i32)),
            message: previous.error_message.clone().unwrap_or_default(),
        })),
        // Pending: this run executes it.
        _ => None,
    }
}
