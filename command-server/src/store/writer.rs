//! The writer: one task per process that owns one MySQL connection and runs
//! commands in batched transactions.
//!
//! Each batch transaction locks `event_head` first, so command transactions
//! of every process on the database run one at a time: positions are handed
//! out in commit order without gaps, and no two transactions can book the
//! same last room. Commands that queue up while a batch runs share the next
//! commit (group commit in the application), which is what makes this fast.
//! Commands that arrive while a batch waits for the lock (another process
//! holds it) join that batch once the lock is held: with several command
//! servers on one database, each one's batches are then as large as one
//! server's would be, instead of half as large and twice as many.
//!
//! Every wait is bounded ([`Limits`], ADR 0008): connecting, the wait for the
//! lock (with fencing of a holder past its lease, [`super::fence`]), the
//! batch itself, and the time a command may wait in the queue. A command
//! never starts after its caller's deadline or after its caller went away:
//! jobs are checked once the lock is held, just before they run.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use hotel_common::trace::{self, KeyValue, TraceParent};
use sqlx::{
    Connection, Executor, MySqlConnection, MySqlPool, Row,
    mysql::{MySqlConnectOptions, MySqlRow},
};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tracing::Instrument;

use super::{
    CommitListener,
    command_log::{self, CommandRecord},
    events,
    execute::{Batch, execute},
    fence, now_ms, others,
    primary::{Primary, is_read_only},
    script::{Script, ScriptError},
    working_set::{Asked, Carried, WorkingSet},
};
use crate::{
    domain::command::{CommandKind, Reply, ValidCommand},
    error::{CommandError, ErrorInfo},
};

/// Most commands in one transaction.
pub const MAX_BATCH: usize = 64;

/// Batches that committed nothing a command may go through before its
/// caller is told `UNAVAILABLE` (each also bounded by the command's time).
const MAX_ATTEMPTS: u32 = 3;

/// Pause before a batch that committed nothing runs again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The bounds of every wait on the write path (flags in `Config`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connecting to MySQL, session set-up included.
    pub connect_timeout: Duration,
    /// The longest a batch waits for the write lock.
    pub lock_wait: Duration,
    /// The longest a batch runs once it holds the lock, commit included;
    /// past it the writer drops its connection (MySQL rolls back).
    pub batch_timeout: Duration,
    /// A session holding the write lock this long is ended (fencing);
    /// longer than `batch_timeout`, so a live writer gives up first.
    pub fence_after: Duration,
    /// The longest a command waits for the writer before it is shed.
    pub queue_timeout: Duration,
    /// MySQL's `wait_timeout` for the writer's idle session.
    pub idle_timeout: Duration,
    /// Most log events a room type's stale-read check reads.
    pub precondition_scan_limit: i64,
    /// Most night counts carried from one batch to the next.
    pub carried_nights: usize,
    /// Most events of other processes a batch reads to bring its carried
    /// rows up to date (more, or 0: it forgets them and reads what it needs).
    pub catch_up_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(5),
            batch_timeout: Duration::from_secs(2),
            fence_after: Duration::from_secs(3),
            queue_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            precondition_scan_limit: 10_000,
            carried_nights: 100_000,
            catch_up_events: 1_000,
        }
    }
}

/// One command waiting for the writer.
struct Job {
    command: ValidCommand,
    /// Queue priority when it came through SubmitCommand (its outcome is
    /// recorded even when it fails); `None` for a direct call.
    submitted_priority: Option<i32>,
    /// Not started after this instant: the caller's deadline or the queue
    /// bound, whichever comes first.
    start_by: Instant,
    /// Whether `start_by` is the caller's own deadline.
    caller_deadline: bool,
    /// When it was handed to the writer.
    queued_at: Instant,
    /// Batches this job was in that committed nothing.
    attempts: u32,
    /// The caller's span, when tracing is on and it is sampled: its
    /// events carry it, the batch's span follows it.
    trace: Option<TraceParent>,
    reply: oneshot::Sender<Result<Reply, CommandError>>,
}

impl Job {
    /// Why this job must not start now, if it must not.
    fn must_not_start(&self, now: Instant) -> Option<CommandError> {
        if self.reply.is_closed() {
            Some(CommandError::Cancelled)
        } else if now < self.start_by {
            None
        } else if self.caller_deadline {
            Some(CommandError::DeadlineExceeded)
        } else {
            Some(CommandError::Shed(now - self.queued_at))
        }
    }

    fn answer(self, outcome: Result<Reply, CommandError>) {
        // The caller may have gone; a committed outcome is stored anyway.
        let _ = self.reply.send(outcome);
    }
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    queue_timeout: Duration,
}

impl Writer {
    /// Starts the writer task. `listener` is told of every commit. `pool`
    /// is used to watch (and fence) whoever blocks the write lock. Every
    /// connection the writer opens must be on `primary`'s server. The task
    /// ends when every `Writer` handle is dropped.
    pub fn spawn(
        options: MySqlConnectOptions,
        pool: MySqlPool,
        primary: Primary,
        limits: Limits,
        listener: Arc<dyn CommitListener>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        let queue_timeout = limits.queue_timeout;
        let task = Task {
            queue,
            options,
            pool,
            primary,
            limits,
            listener,
            session: None,
            retry: VecDeque::new(),
        };
        tokio::spawn(task.run());
        // Read at scrape time: nothing to keep up on the write path.
        let waiting = jobs.downgrade();
        hotel_common::server::sample_at_scrape(move || {
            let Some(jobs) = waiting.upgrade() else {
                return false;
            };
            let depth = jobs.max_capacity() - jobs.capacity();
            metrics::gauge!("writer_queue_depth").set(depth as f64);
            true
        });
        Self {
            jobs,
            queue_timeout,
        }
    }

    /// Runs a command and returns its reply (or the stored first reply).
    /// `deadline` is the caller's: the command does not start after it.
    pub async fn execute(
        &self,
        command: ValidCommand,
        deadline: Option<Instant>,
    ) -> Result<Reply, CommandError> {
        self.submit(command, None, deadline).await
    }

    /// Runs a submitted (asynchronous) command; its outcome is recorded
    /// whatever it is.
    pub async fn execute_submitted(
        &self,
        command: ValidCommand,
        priority: i32,
    ) -> Result<Reply, CommandError> {
        self.submit(command, Some(priority), None).await
    }

    async fn submit(
        &self,
        command: ValidCommand,
        submitted_priority: Option<i32>,
        deadline: Option<Instant>,
    ) -> Result<Reply, CommandError> {
        let queued_at = Instant::now();
        let queue_bound = queued_at + self.queue_timeout;
        let (start_by, caller_deadline) = match deadline {
            Some(deadline) if deadline < queue_bound => (deadline, true),
            _ => (queue_bound, false),
        };
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            command,
            submitted_priority,
            start_by,
            caller_deadline,
            queued_at,
            attempts: 0,
            trace: TraceParent::current(),
            reply,
        };
        match tokio::time::timeout_at(start_by.into(), self.jobs.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(CommandError::ShuttingDown),
            Err(_) if caller_deadline => return Err(CommandError::DeadlineExceeded),
            Err(_) => return Err(CommandError::Shed(queued_at.elapsed())),
        }
        outcome.await.map_err(|_| CommandError::ShuttingDown)?
    }
}

/// Why a batch did not commit.
#[derive(Debug)]
enum BatchError {
    /// Nothing committed (the lock was not free in time, the connection
    /// was lost or the batch ran out of time before its commit): the same
    /// commands may run again.
    NotRun(String),
    /// A statement failed for a reason that may belong to one command
    /// (the server refused what it was asked to write): the commands run
    /// again one by one, so that only the culprit fails.
    Statement(String),
    /// The connection was lost while the commit was under way.
    Unknown(String),
}

/// MySQL errors that say nothing about the statement's content: the batch
/// may run again as it is. Lock wait timeout, deadlock, query interrupted,
/// connection killed, statement time exceeded, server shutting down.
const TRANSIENT_MYSQL_ERRORS: [&str; 7] = ["1205", "1213", "1317", "1927", "1969", "3024", "1053"];

/// Also transient: the server is read-only (a replica, or a primary being
/// demoted, ADR 0013): the next batch finds out at its lock (see
/// [`lock_head`]) and waits for a writable primary, never writing to a replica.
const READ_ONLY_MYSQL_ERRORS: [&str; 2] = ["1290", "1836"];

/// How a failed statement (before the commit) is treated.
fn classify(error: &sqlx::Error) -> BatchError {
    match error {
        sqlx::Error::Database(db)
            if !db.code().is_some_and(|code| {
                TRANSIENT_MYSQL_ERRORS.contains(&code.as_ref())
                    || READ_ONLY_MYSQL_ERRORS.contains(&code.as_ref())
            }) =>
        {
            BatchError::Statement(error.to_string())
        }
        other => BatchError::NotRun(other.to_string()),
    }
}

/// How a failed write script is treated: a statement MySQL refused before
/// the COMMIT is judged like any statement (nothing committed, MySQL stops
/// at the first failure); anything else may have come after the commit.
fn script_error(failed: ScriptError, before_commit: usize) -> BatchError {
    match &failed.error {
        sqlx::Error::Database(_) if failed.completed < before_commit => classify(&failed.error),
        error => BatchError::Unknown(format!("the commit failed: {error}")),
    }
}

/// A command's failure that is not a verdict on it, as a batch failure.
fn batch_error(error: CommandError) -> BatchError {
    match error {
        CommandError::Database(error) => classify(&error),
        other => BatchError::Statement(other.to_string()),
    }
}

/// The writer's task: its connection and the jobs it owes another try.
struct Task {
    /// Commands waiting for a batch.
    queue: mpsc::Receiver<Job>,
    options: MySqlConnectOptions,
    pool: MySqlPool,
    /// The server every connection must be on.
    primary: Primary,
    limits: Limits,
    listener: Arc<dyn CommitListener>,
    session: Option<Session>,
    /// Jobs of a batch that committed nothing, run first in the next one.
    retry: VecDeque<Job>,
}

type Outcome = Result<Reply, CommandError>;

/// Adds queued commands to `jobs`, up to [`MAX_BATCH`], without waiting.
fn top_up(queue: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// Whether a batch takes in the commands that queued while it waited for
/// the lock. A command run alone (to find which one of a batch failed)
/// stays alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopUp {
    AtLock,
    Never,
}

impl Task {
    async fn run(mut self) {
        loop {
            let mut jobs: Vec<Job> = self.retry.drain(..).collect();
            if jobs.is_empty() {
                match self.queue.recv().await {
                    Some(job) => jobs.push(job),
                    None => return,
                }
            }
            top_up(&mut self.queue, &mut jobs);
            let jobs = drop_expired(jobs);
            if jobs.is_empty() {
                continue;
            }
            let (jobs, result) = self.run_batch(jobs, TopUp::AtLock).await;
            match result {
                Ok(outcomes) => answer_all(jobs, outcomes),
                Err(BatchError::Statement(error)) if jobs.len() > 1 => {
                    // One command may be at fault: run each alone so the
                    // others still succeed and the culprit gets its own
                    // error. Each caller hears as soon as its own is done.
                    tracing::warn!(%error, batch = jobs.len(), "batch failed on a statement; running its commands one by one");
                    for job in jobs {
                        let (alone, result) = self.run_batch(vec![job], TopUp::Never).await;
                        self.settle(alone, result);
                    }
                }
                Err(error) => self.settle(jobs, Err(error)),
            }
            if !self.retry.is_empty() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Answers the jobs of a batch of one or more after its end; jobs of a
    /// batch that committed nothing get another try while they may.
    fn settle(&mut self, jobs: Vec<Job>, result: Result<Vec<Outcome>, BatchError>) {
        match result {
            Ok(outcomes) => answer_all(jobs, outcomes),
            Err(BatchError::NotRun(reason)) => {
                tracing::warn!(%reason, batch = jobs.len(), "batch committed nothing");
                for mut job in jobs {
                    job.attempts += 1;
                    if job.attempts < MAX_ATTEMPTS {
                        self.retry.push_back(job);
                    } else {
                        job.answer(Err(CommandError::NotRun(reason.clone())));
                    }
                }
            }
            Err(BatchError::Statement(error)) => {
                tracing::warn!(%error, "command transaction failed on a statement");
                for job in jobs {
                    job.answer(Err(CommandError::Internal(format!(
                        "MySQL refused a statement of this command: {error}"
                    ))));
                }
            }
            Err(BatchError::Unknown(reason)) => {
                tracing::warn!(%reason, batch = jobs.len(), "commit outcome unknown");
                for job in jobs {
                    job.answer(Err(CommandError::OutcomeUnknown(reason.clone())));
                }
            }
        }
    }

    /// Runs `jobs` in one transaction. Jobs that may no longer start once
    /// the lock is held are answered and left out; the rest come back with
    /// their outcomes (in order) or the batch's failure. On any failure
    /// the connection is dropped, which rolls back what the batch had
    /// written, and the next batch connects afresh.
    async fn run_batch(
        &mut self,
        jobs: Vec<Job>,
        top_up: TopUp,
    ) -> (Vec<Job>, Result<Vec<Outcome>, BatchError>) {
        match batch_span(&jobs) {
            None => self.run_batch_untraced(jobs, top_up).await,
            Some(span) => self.run_batch_untraced(jobs, top_up).instrument(span).await,
        }
    }

    async fn run_batch_untraced(
        &mut self,
        mut jobs: Vec<Job>,
        top_up: TopUp,
    ) -> (Vec<Job>, Result<Vec<Outcome>, BatchError>) {
        let limits = &self.limits;
        if self.session.is_none() {
            let connecting = connect(&self.options, &self.primary, limits);
            match tokio::time::timeout(limits.connect_timeout, connecting).await {
                Ok(Ok(session)) => self.session = Some(session),
                Ok(Err(error)) => {
                    return (
                        jobs,
                        Err(BatchError::NotRun(format!(
                            "cannot connect to MySQL: {error}"
                        ))),
                    );
                }
                Err(_) => {
                    return (
                        jobs,
                        Err(BatchError::NotRun(format!(
                            "connecting to MySQL took longer than {:?}",
                            limits.connect_timeout
                        ))),
                    );
                }
            }
        }
        let session = self.session.as_mut().expect("connected above");
        // What the commands need goes with the lock, in one round trip.
        let mut reads = BatchReads::ask(&jobs, session.known.take(), limits.catch_up_events);
        let results = match lock_head(
            session,
            &self.pool,
            limits,
            std::mem::take(&mut reads.script),
        )
        .await
        {
            Ok(results) => results,
            Err(error) => {
                self.session = None;
                return (jobs, Err(error));
            }
        };
        reads.results = results;

        // The lock may have taken a while: what queued meanwhile joins
        // (another process held it), and nothing starts past its time.
        if top_up == TopUp::AtLock {
            self::top_up(&mut self.queue, &mut jobs);
        }
        let jobs = drop_expired(jobs);
        if jobs.is_empty() {
            let rollback =
                tokio::time::timeout(limits.batch_timeout, session.conn.execute("ROLLBACK")).await;
            if !matches!(rollback, Ok(Ok(_))) {
                self.session = None;
            }
            return (jobs, Ok(Vec::new()));
        }

        session.committing = false;
        let ran = tokio::time::timeout(
            limits.batch_timeout,
            run_transaction(session, reads, &jobs, limits, self.listener.as_ref()),
        )
        .await;
        let result = match ran {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                // Cut in the middle of a statement: the server-side session
                // may still hold the write lock; end it before anyone waits.
                fence::end_abandoned_session(&self.pool, session.thread_id, limits.connect_timeout)
                    .await;
                Err(if session.committing {
                    BatchError::Unknown(format!(
                        "the batch's writes and commit took longer than its deadline ({:?})",
                        limits.batch_timeout
                    ))
                } else {
                    BatchError::NotRun(format!(
                        "the batch took longer than its deadline ({:?}) and was rolled back",
                        limits.batch_timeout
                    ))
                })
            }
        };
        if result.is_err() {
            self.session = None;
        }
        (jobs, result)
    }
}

/// The span of a batch, when tracing is on and some of its commands are
/// traced: "commit batch", the child of the first traced command's span
/// and linked to each, with the positions it committed.
fn batch_span(jobs: &[Job]) -> Option<tracing::Span> {
    if !trace::exporting() || jobs.iter().all(|job| job.trace.is_none()) {
        return None;
    }
    let span = tracing::info_span!(
        parent: None,
        "commit batch",
        commands = jobs.len(),
        first_position = tracing::field::Empty,
        last_position = tracing::field::Empty,
    );
    trace::follow(
        &span,
        jobs.iter().filter_map(|job| {
            let command_id = KeyValue::new("command_id", job.command.command_id.to_string());
            job.trace.as_ref().map(|cause| (cause, vec![command_id]))
        }),
    );
    Some(span)
}

/// Answers and removes the jobs that may no longer start.
fn drop_expired(jobs: Vec<Job>) -> Vec<Job> {
    let now = Instant::now();
    let mut keep = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job.must_not_start(now) {
            None => keep.push(job),
            Some(error) => {
                metrics::counter!("writer_jobs_not_started_total", "reason" => not_started_reason(&error))
                    .increment(1);
                job.answer(Err(error));
            }
        }
    }
    keep
}

fn not_started_reason(error: &CommandError) -> &'static str {
    match error {
        CommandError::Cancelled => "cancelled",
        CommandError::DeadlineExceeded => "deadline",
        _ => "queue_timeout",
    }
}

fn answer_all(jobs: Vec<Job>, outcomes: Vec<Outcome>) {
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        job.answer(outcome);
    }
}

/// The statement that takes the write lock and opens the transaction (the
/// session has autocommit off); it reads the head and the server's
/// read-only flag.
const LOCK: &str = "SELECT position, CAST(@@global.read_only AS CHAR) AS read_only \
                    FROM event_head WHERE id = 1 FOR UPDATE";

/// Takes the write lock with `reads`, a script whose first statement is
/// [`LOCK`] and whose others read what the batch needs, all in one round
/// trip: waits at most `lock_wait`, fencing a holder past its lease
/// meanwhile. Returns each statement's rows. A read-only server (a replica
/// not yet promoted, a primary being demoted) is refused here, before
/// anything is written: a user with `SUPER` or `READ_ONLY ADMIN` would
/// otherwise write through `read_only` and fork the replica's history from
/// its primary's. Reading the flag in the lock's own statement costs no
/// round trip.
async fn lock_head(
    session: &mut Session,
    pool: &MySqlPool,
    limits: &Limits,
    reads: Script,
) -> Result<Vec<Vec<MySqlRow>>, BatchError> {
    let waiter = session.thread_id;
    let lock = reads.fetch(&mut session.conn);
    let started = Instant::now();
    let not_run = |reason: String| BatchError::NotRun(reason);
    tokio::select! {
        locked = tokio::time::timeout(limits.lock_wait, lock) => {
            metrics::histogram!("writer_lock_wait_seconds").record(started.elapsed().as_secs_f64());
            match locked {
                Ok(Ok(results)) => {
                    let row = results
                        .first()
                        .and_then(|rows| rows.first())
                        .ok_or_else(|| not_run("the write lock's statement returned no row".to_owned()))?;
                    let read_only: String = row.try_get("read_only").map_err(|e| not_run(e.to_string()))?;
                    if is_read_only(&read_only) {
                        metrics::counter!("writer_read_only_refusals_total").increment(1);
                        return Err(not_run(READ_ONLY.to_owned()));
                    }
                    Ok(results)
                }
                Ok(Err(failed)) if failed.completed == 0 => {
                    Err(not_run(format!("waiting for the write lock failed: {}", failed.error)))
                }
                // A read after the lock failed: judged like any statement.
                Ok(Err(failed)) => Err(classify(&failed.error)),
                Err(_) => Err(not_run(format!("the write lock was not free within {:?}", limits.lock_wait))),
            }
        }
        never = fence::fence_blockers(pool, waiter, limits.fence_after) => match never {},
    }
}

/// What a batch reads with its lock: the stored outcomes of its command
/// ids and the rows its commands name (the working set's part), asked in
/// one script after the lock statement.
struct BatchReads {
    /// The lock, then the reads; taken by [`lock_head`].
    script: Script,
    /// Each statement's rows, once run.
    results: Vec<Vec<MySqlRow>>,
    /// The statement that reads the command log, and the ids it asks for.
    commands: Option<usize>,
    command_ids: HashSet<String>,
    /// The rows asked for, and the working set they go into (starting with
    /// the room types carried from this writer's last batch).
    asked: Asked,
    rows: WorkingSet,
    /// The head this writer last committed, when room types are carried.
    carried_head: Option<i64>,
    /// The statement that reads other processes' events since then.
    others: Option<usize>,
}

impl BatchReads {
    fn ask(jobs: &[Job], carried: Option<Known>, catch_up_events: usize) -> Self {
        let mut script = Script::new();
        script.sql(LOCK).end();
        let (carried_head, carried, others) = match carried {
            Some(known) => {
                // Another process committed before the last batch: it
                // likely did again, and its events tell what changed.
                let others =
                    (known.others_committed && catch_up_events > 0 && !known.rows.is_empty())
                        .then(|| others::ask(&mut script, known.head, catch_up_events));
                (Some(known.head), known.rows, others)
            }
            None => (None, Carried::default(), None),
        };
        let rows = WorkingSet::with_carried(carried);
        let commands: Vec<&ValidCommand> = jobs.iter().map(|job| &job.command).collect();
        let (commands_index, asked) = ask_reads(&mut script, &commands, &rows);
        Self {
            script,
            results: Vec::new(),
            commands: commands_index,
            command_ids: commands
                .iter()
                .map(|command| command.command_id.to_string())
                .collect(),
            asked,
            rows,
            carried_head,
            others,
        }
    }
}

/// Adds to `script` what `commands` need read before they run: their
/// stored outcomes (the statement's index) and the rows they name that
/// `rows` does not hold yet.
fn ask_reads(
    script: &mut Script,
    commands: &[&ValidCommand],
    rows: &WorkingSet,
) -> (Option<usize>, Asked) {
    let ids: Vec<String> = commands
        .iter()
        .map(|command| command.command_id.to_string())
        .collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let outcomes = command_log::ask_many(script, &id_refs);
    (outcomes, rows.ask(script, commands))
}

/// Why a batch did not run on a read-only server.
pub const READ_ONLY: &str = "the database is read-only (a replica not yet promoted, or a primary \
     being demoted): nothing was written";

/// Opens the writer's session. A server other than `primary`'s is refused
/// before any statement runs there (and stops the process, see [`Primary`]).
async fn connect(
    options: &MySqlConnectOptions,
    primary: &Primary,
    limits: &Limits,
) -> Result<Session, String> {
    let sql = |error: sqlx::Error| error.to_string();
    let options = options
        .clone()
        .statement_cache_capacity(super::WRITER_STATEMENT_CACHE);
    let mut conn = MySqlConnection::connect_with(&options).await.map_err(sql)?;
    let (thread_id, server_id): (u64, u64) = sqlx::query_as("SELECT CONNECTION_ID(), @@server_id")
        .fetch_one(&mut conn)
        .await
        .map_err(sql)?;
    primary.check(server_id)?;
    // The head lock already serialises command transactions; READ COMMITTED
    // makes every read see the latest commit rather than a snapshot. With
    // autocommit off, a batch's first statement opens its transaction: no
    // BEGIN round trip.
    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .map_err(sql)?;
    let lock_secs = whole_seconds(limits.lock_wait);
    let settings = format!(
        "SET SESSION autocommit = 0, SESSION innodb_lock_wait_timeout = {lock_secs}, \
         SESSION lock_wait_timeout = {lock_secs}, SESSION wait_timeout = {}",
        whole_seconds(limits.idle_timeout)
    );
    conn.execute(sqlx::AssertSqlSafe(settings))
        .await
        .map_err(sql)?;
    // MariaDB only: the server ends a writer that goes quiet inside its
    // transaction (a paused process), and a statement that runs away.
    let mariadb = format!(
        "SET SESSION idle_transaction_timeout = {}, SESSION max_statement_time = {}",
        whole_seconds(limits.fence_after),
        (limits.lock_wait + limits.batch_timeout).as_secs_f64()
    );
    if let Err(error) = conn.execute(sqlx::AssertSqlSafe(mariadb)).await {
        tracing::warn!(%error, "no idle_transaction_timeout (not MariaDB?): a paused writer is fenced by its peers only");
    }
    Ok(Session {
        conn,
        thread_id,
        committing: false,
        known: None,
    })
}

/// A duration in whole seconds, at least one (MySQL's timeouts).
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil().max(1.0) as u64
}

/// The writer's connection, and what it knows of the write model as of
/// its last commit.
struct Session {
    conn: MySqlConnection,
    /// MySQL's id of this session (`CONNECTION_ID()`), for fencing.
    thread_id: u64,
    /// Set once the current batch's writes and COMMIT are sent (one
    /// script): a failure after it leaves the outcome unknown, unless MySQL
    /// said which statement before the COMMIT it refused.
    committing: bool,
    known: Option<Known>,
}

/// Room types and night counts as they stood when this writer committed at
/// `head`. They change only through commands, so while the head is still
/// `head` at the next batch (no other instance committed) they still hold,
/// and the batch need not read them again; when it moved, the events in
/// between tell what changed ([`others`]).
struct Known {
    head: i64,
    rows: Carried,
    /// The batch that committed at `head` found another process's commits
    /// since the one before: the next asks for the events in between.
    others_committed: bool,
}

/// Runs the jobs' commands in the open transaction (the lock is held and
/// `reads` came with it) and commits; per-command outcomes.
async fn run_transaction(
    session: &mut Session,
    reads: BatchReads,
    jobs: &[Job],
    limits: &Limits,
    listener: &dyn CommitListener,
) -> Result<Vec<Outcome>, BatchError> {
    let started = Instant::now();
    let tx = &mut session.conn;
    let sql = |error: sqlx::Error| classify(&error);
    let BatchReads {
        results,
        commands: commands_read,
        command_ids: asked_ids,
        asked,
        mut rows,
        carried_head,
        others: others_read,
        ..
    } = reads;
    let head: i64 = results
        .first()
        .and_then(|rows| rows.first())
        .map(|row| row.try_get("position"))
        .transpose()
        .map_err(sql)?
        .ok_or_else(|| {
            BatchError::NotRun("the write lock's statement returned no row".to_owned())
        })?;
    // Another process committed since this writer's last batch: what it
    // carried is brought up to date with those commits' events when they
    // were read, and forgotten otherwise.
    let others_commit = carried_head.is_some_and(|carried| carried != head);
    if others_commit {
        let caught_up = match (others_read, carried_head) {
            (Some(index), Some(after)) => results
                .get(index)
                .and_then(|events| others::changes(events, after, head))
                .is_some_and(|changes| rows.catch_up(&changes)),
            _ => false,
        };
        let outcome = if caught_up { "caught_up" } else { "forgotten" };
        metrics::counter!("writer_carried_rows_total", "outcome" => outcome).increment(1);
        if !caught_up {
            rows.forget_carried();
        }
    }
    rows.take(asked, &results).map_err(batch_error)?;

    let ids: Vec<String> = jobs
        .iter()
        .map(|j| j.command.command_id.to_string())
        .collect();
    let mut known: HashMap<String, CommandRecord> = match commands_read {
        Some(index) => command_log::take_many(results.get(index).map_or(&[][..], Vec::as_slice))
            .map_err(sql)?,
        None => HashMap::new(),
    };
    // Commands that joined at the lock: their stored outcomes and the rows
    // they name, in one round trip.
    let joined: Vec<&ValidCommand> = jobs
        .iter()
        .map(|job| &job.command)
        .filter(|command| !asked_ids.contains(&command.command_id.to_string()))
        .collect();
    let mut joined_reads = Script::new();
    let (commands_index, joined_asked) = ask_reads(&mut joined_reads, &joined, &rows);
    if joined_reads.statements() > 0 {
        let results = joined_reads
            .fetch(tx)
            .await
            .map_err(|failed| sql(failed.error))?;
        if let Some(index) = commands_index {
            let rows = results.get(index).map_or(&[][..], Vec::as_slice);
            known.extend(command_log::take_many(rows).map_err(sql)?);
        }
        rows.take(joined_asked, &results).map_err(batch_error)?;
    }

    let now = now_ms();
    let mut batch = Batch::new(head, now, limits.precondition_scan_limit);
    let commands: Vec<&ValidCommand> = jobs.iter().map(|job| &job.command).collect();
    rows.prefetch(tx, &commands).await.map_err(batch_error)?;
    let mut records: Vec<CommandRecord> = Vec::new();
    let mut outcomes = Vec::with_capacity(jobs.len());
    // Each event's trace context: its command's (empty when not traced).
    let mut event_traces: Vec<&str> = Vec::new();
    for (job, id) in jobs.iter().zip(&ids) {
        let command = &job.command;
        let priority = job.submitted_priority;
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
                error_info: None,
                position: reply.position(),
                accepted_at_ms: known.get(id).map_or(now, |r| r.accepted_at_ms),
                finished_at_ms: Some(now),
            }),
            Err(error) if !error.is_outcome() => {
                // Not a verdict on the command: roll the whole batch back.
                return Err(match outcome {
                    Err(error) => batch_error(error),
                    Ok(_) => BatchError::Statement(format!("command {id}: {error}")),
                });
            }
            Err(error) => {
                if batch.events.len() != events_before {
                    return Err(BatchError::Statement(format!(
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
                    error_info: error.error_info().map(|info| info.encode()),
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
        if let Some(trace) = &job.trace {
            event_traces.resize(events_before, "");
            event_traces.resize(batch.events.len(), trace.header());
        }
        outcomes.push(outcome);
    }

    // Every write and the COMMIT go in one round trip (ADR 0002).
    let mut writes = Script::new();
    rows.flush(&mut writes).map_err(batch_error)?;
    if !batch.events.is_empty() {
        events::append(&mut writes, &batch.events, &event_traces);
        writes
            .sql("UPDATE event_head SET position = ")
            .value(batch.head())
            .sql(" WHERE id = 1")
            .end();
    }
    command_log::upsert(&mut writes, &records);
    let before_commit = writes.statements();
    writes.sql("COMMIT").end();
    session.committing = true;
    if let Err(failed) = writes.run(&mut session.conn).await {
        return Err(script_error(failed, before_commit));
    }
    let last = batch.head();
    if !batch.events.is_empty() {
        if trace::exporting() {
            let span = tracing::Span::current();
            span.record("first_position", head + 1);
            span.record("last_position", last);
        }
        event_traces.resize(batch.events.len(), "");
        listener.committed(
            batch
                .events
                .into_iter()
                .zip(event_traces)
                .map(|(event, traceparent)| events::envelope(event, traceparent))
                .collect(),
        );
    }
    // Every row held now is true as of this commit: carried and caught
    // up, or read under the lock, then changed by this batch alone.
    session.known = Some(Known {
        head: last,
        rows: rows.into_carried(limits.carried_nights),
        others_committed: others_commit,
    });
    for (command, outcome) in commands.iter().zip(&outcomes) {
        match outcome {
            Ok(reply) => tracing::debug!(
                command_id = %command.command_id,
                correlation_id = %command.correlation_id,
                kind = command.kind().as_str(),
                position = reply.position(),
                "command committed"
            ),
            Err(error) => tracing::debug!(
                command_id = %command.command_id,
                kind = command.kind().as_str(),
                %error,
                "command refused"
            ),
        }
    }
    metrics::counter!("command_batches_total").increment(1);
    metrics::histogram!("command_batch_size").record(jobs.len() as f64);
    metrics::histogram!("writer_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(outcomes)
}

/// The stored outcome of an earlier run of this command id, if it has one.
fn replay(previous: &CommandRecord, command: &ValidCommand) -> Option<Outcome> {
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
            info: previous.error_info.as_deref().and_then(ErrorInfo::decode),
        })),
        // Pending or running: this run executes it.
        _ => None,
    }
}
