//! The SQLite read model: one file, one writer (the projector), many
//! read-only readers.
//!
//! - [`Writer`] owns the only read-write connection. It opens the file in WAL
//!   mode, runs the migrations, and applies batches of events together with
//!   the checkpoint in one transaction ([`apply`]).
//! - [`ReadModel`] hands out read-only connections to the query handlers and
//!   runs each read in one SQLite read transaction, so the data and the
//!   checkpoint it reports come from the same snapshot ([`reads`]).
//! - [`ReadModel::swap_in`] replaces the file with a rebuilt one.

pub mod apply;
mod checkpointer;
pub mod memory;
mod migrations;
pub mod reads;
pub mod retention;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use hotel_common::pb;
use rusqlite::{Connection, OpenFlags, config::DbConfig};

pub use apply::ApplyError;
use checkpointer::Checkpointer;
pub use checkpointer::WalSettings;
use memory::Memory;

/// How long a connection waits for a lock before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept open; more are opened under load and closed after.
const MAX_IDLE_READERS: usize = 16;
/// Read connections opened before a swap hands reads to a new file.
const PREPARED_READERS: usize = 4;
/// Longest wait for the reads still running on a file a swap leaves behind.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the projection stands, as stored in the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Last applied position (0: nothing yet).
    pub position: i64,
    /// Wall-clock time of the last applied batch, ms since the epoch.
    pub applied_at_ms: Option<i64>,
    /// Id of the event at `position` (`None` before any, or in a file
    /// written before it was kept).
    pub event_id: Option<String>,
}

/// The indexes only `ListReservations` reads, by name, with the statement
/// that builds each. A fresh read model replaying a long log leaves them out
/// and builds them, sorted in one pass, in the transaction that reaches the
/// head: kept up row by row they were about a quarter of the replay's
/// writer time (ADR 0014). Their absence is the state (a crash leaves the
/// file without them and the next writer sees it), and listings name them
/// with `INDEXED BY`, so no listing ever runs without its index.
pub const LISTING_INDEXES: [(&str, &str); 2] = [
    (
        "reservations_by_guest",
        "CREATE INDEX IF NOT EXISTS reservations_by_guest \
         ON reservations (guest_id, booked_position DESC)",
    ),
    (
        "reservations_by_hotel",
        "CREATE INDEX IF NOT EXISTS reservations_by_hotel \
         ON reservations (hotel_id, booked_position DESC)",
    ),
];

/// What a commit does with the [`LISTING_INDEXES`] besides its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingIndexes {
    /// Leaves them as they are (built or not).
    Keep,
    /// Drops them, if nothing was applied before this batch: the start of a
    /// replay of a long log.
    DeferIfEmpty,
    /// Builds them if they are missing: the batch reaches the head.
    Build,
}

/// The read model's only read-write connection.
pub struct Writer {
    /// Copies the WAL into the file beside the writer (declared first: it
    /// stops before the connection closes).
    checkpointer: Checkpointer,
    /// The connection.
    conn: Connection,
    /// The file it writes.
    path: PathBuf,
    /// Pruning of `reservation_changes` between batches.
    pruning: retention::Pruning,
    /// Whether any of the [`LISTING_INDEXES`] is missing from the file.
    listing_indexes_deferred: bool,
    /// The in-memory availability this writer keeps current, if any
    /// ([`ReadModel::attach`]).
    memory: Option<Arc<Memory>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish()
    }
}

impl Writer {
    /// Opens (creating when missing, with its parent directories) the file at
    /// `path` in WAL mode and brings its schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the directory {}", parent.display()))?;
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening the read model {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        keep_plans(&conn)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "the read model {} refused WAL mode (got {mode})",
            path.display()
        );
        // See docs/decisions/0004-projector-transaction.md: a power loss may
        // drop the last commits, never half of one; the projector re-fetches.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Large catch-up transactions touch many pages; keeping them in memory
        // avoids spilling to the WAL before the commit. 64 MiB was no faster
        // than 32 (replaying 304,594 events: 61k events/s and 145 MiB peak
        // RSS with 64; 66-71k events/s and 108-115 MiB with 32). Since the
        // listing indexes are built after a replay (ADR 0014) the pages a
        // commit touches are fewer: 16 MiB cost ~5 % of writer CPU and took
        // 10-20 MiB off the replaying server's peak RSS.
        conn.pragma_update(None, "cache_size", -16_384)?;
        // The WAL is copied into the file by a thread of its own
        // ([`checkpointer`]), not by the commit that fills it. The WAL file
        // is cut back to the restart size when it starts over.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", checkpointer::RESTART_AT)?;
        conn.wal_hook(Some(record_wal_frames));
        conn.set_prepared_statement_cache_capacity(64);
        migrations::run(&mut conn)?;
        let listing_indexes_deferred = listing_indexes_missing(&conn)?;
        let checkpointer = Checkpointer::start(path)
            .with_context(|| format!("starting the checkpointer of {}", path.display()))?;
        Ok(Self {
            checkpointer,
            conn,
            path: path.to_owned(),
            pruning: retention::Pruning::new(retention::ChangeRetention::default()),
            listing_indexes_deferred,
            memory: None,
        })
    }

    /// Whether the file lacks the [`LISTING_INDEXES`] (a replay from
    /// scratch that has not reached the head yet): listings answer
    /// UNAVAILABLE until a commit builds them.
    pub fn listing_indexes_deferred(&self) -> bool {
        self.listing_indexes_deferred
    }

    /// Builds the [`LISTING_INDEXES`] that are missing, in one transaction.
    pub fn build_listing_indexes(&mut self) -> rusqlite::Result<()> {
        if !self.listing_indexes_deferred {
            return Ok(());
        }
        let gate = self.checkpointer.gate();
        let _held = gate.hold();
        let tx = self.conn.transaction()?;
        build_listing_indexes(&tx)?;
        tx.commit()?;
        self.listing_indexes_deferred = false;
        drop(_held);
        self.checkpointer.nudge();
        Ok(())
    }

    /// How long this writer keeps `reservation_changes` (default 7 days).
    pub fn set_change_retention(&mut self, retention: retention::ChangeRetention) {
        self.pruning = retention::Pruning::new(retention);
    }

    /// The file this writer writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the WAL size at which the background checkpoint holds this
    /// writer off for a moment to start the WAL over (the WAL file is cut
    /// back to it then), and the longest this writer waits for the
    /// checkpoint thread when the WAL has grown past twice that size.
    pub fn set_wal(&mut self, settings: WalSettings) -> rusqlite::Result<()> {
        self.conn
            .pragma_update(None, "journal_size_limit", settings.restart_at)?;
        self.checkpointer.configure(settings);
        Ok(())
    }

    /// A lock the background checkpoint thread takes for each checkpoint:
    /// holding it holds the thread off, as a machine too busy to run it
    /// would (for tests).
    pub fn checkpoint_stall(&self) -> Arc<Mutex<()>> {
        self.checkpointer.stall()
    }

    /// The checkpoint stored in the file.
    pub fn checkpoint(&self) -> rusqlite::Result<Checkpoint> {
        read_checkpoint(&self.conn)
    }

    /// Applies `events` and the checkpoint they reach in one transaction:
    /// either all of it commits or none of it. Refuses a batch that does not
    /// start at `checkpoint + 1` or is not contiguous.
    pub fn apply_batch(&mut self, events: &[pb::EventEnvelope]) -> Result<i64, ApplyError> {
        self.apply_batch_and(events, ListingIndexes::Keep)
    }

    /// [`Self::apply_batch`], and in the same transaction what `indexes`
    /// says: the listing indexes go and come with the events that make
    /// them worth it, so a crash never leaves one without the other.
    pub fn apply_batch_and(
        &mut self,
        events: &[pb::EventEnvelope],
        indexes: ListingIndexes,
    ) -> Result<i64, ApplyError> {
        let indexes = match indexes {
            ListingIndexes::DeferIfEmpty if self.listing_indexes_deferred => ListingIndexes::Keep,
            ListingIndexes::Build if !self.listing_indexes_deferred => ListingIndexes::Keep,
            other => other,
        };
        let gate = self.checkpointer.gate();
        let held = gate.hold();
        let applied_at_ms = now_millis();
        let outcome = apply_in_transaction(&mut self.conn, events, applied_at_ms, indexes);
        if let Ok((_, Some(deferred))) = outcome {
            self.listing_indexes_deferred = deferred;
        }
        let outcome = outcome.map(|(checkpoint, _)| checkpoint);
        if outcome.is_ok()
            && let Err(error) = self.pruning.prune_if_due(&mut self.conn, applied_at_ms)
        {
            // Pruning is housekeeping: the batch is committed either way.
            tracing::warn!(%error, "pruning reservation_changes failed");
        }
        drop(held);
        self.checkpointer.nudge();
        self.checkpointer.wait_if_behind(last_wal_frames());
        if let Some(memory) = &self.memory {
            memory.committed(&self.conn, events);
        }
        outcome
    }

    /// Moves every committed page from the WAL into the file and empties the
    /// WAL, to close the file: the background checkpoints stop for good.
    pub fn flush_wal(&mut self) -> rusqlite::Result<()> {
        self.checkpointer.stop();
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }

    /// Closes the connection after flushing the WAL, reporting any failure.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.flush_wal()?;
        self.conn
            .close()
            .map_err(|(_, error)| error)
            .with_context(|| format!("closing {}", self.path.display()))
    }
}

/// Read access to the read model for the query handlers.
///
/// Reads start on the current [`Readers`]. A swap replaces them under a lock
/// held only to exchange an `Arc`; reads that started on the old ones finish
/// on them, and nothing waits for the files to change.
pub struct ReadModel {
    /// The live file (the configured database path).
    path: PathBuf,
    /// What every writer of the live file keeps of `reservation_changes`.
    change_retention: retention::ChangeRetention,
    /// How every writer of the live file bounds its WAL.
    wal: WalSettings,
    /// The readers new reads start on; locked only to clone or replace the `Arc`.
    current: RwLock<Arc<Readers>>,
    /// Availability in memory, kept by the attached writer.
    memory: Arc<Memory>,
    /// The newest position a read of the file answered at. The writer
    /// publishes the in-memory state just after its commit: in between, a
    /// read of the file is at the new position and the state at the one
    /// before, and a client reading the one then the other would see its
    /// positions go back. A state behind this is not served ([`Self::fresh_memory`]).
    answered: AtomicI64,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("path", &self.path)
            .finish()
    }
}

/// A read that could not run.
#[derive(Debug, thiserror::Error)]
#[error("reading the read model: {0}")]
pub struct ReadError(#[from] pub rusqlite::Error);

impl ReadError {
    /// Whether the read named one of the [`LISTING_INDEXES`] (`INDEXED BY`)
    /// in a file that does not have it yet: a fresh read model still
    /// replaying the log.
    pub fn listing_index_missing(&self) -> bool {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(message)) => LISTING_INDEXES
                .iter()
                .any(|(name, _)| message.as_str() == format!("no such index: {name}")),
            _ => false,
        }
    }
}

/// Read-only connections to one file.
struct Readers {
    /// The file new connections open.
    path: PathBuf,
    /// The file is frozen for the length of a swap (closed, no WAL, nothing
    /// writes it): connections open it `immutable`, without locks, WAL or
    /// shared memory, so it can be renamed while they read it.
    frozen: bool,
    /// Idle connections, reused by the next reads.
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn new(path: &Path, frozen: bool) -> Self {
        Self {
            path: path.to_owned(),
            frozen,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Readers with `count` connections already open, so that the reads
    /// right after a swap do not each open one.
    fn prepared(path: &Path, frozen: bool, count: usize) -> rusqlite::Result<Self> {
        let readers = Self::new(path, frozen);
        for _ in 0..count {
            let conn = readers.open()?;
            readers.give_back(conn);
        }
        Ok(readers)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        match self.frozen {
            true => open_frozen_reader(&self.path),
            false => open_reader(&self.path),
        }
    }

    fn take(&self) -> rusqlite::Result<Connection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.open(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

impl ReadModel {
    /// Readers of the file at `path`; a [`Writer`] must have opened it first
    /// (it sets WAL mode and creates the schema).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            change_retention: retention::ChangeRetention::default(),
            wal: WalSettings::default(),
            current: RwLock::new(Arc::new(Readers::new(path, false))),
            memory: Arc::new(Memory::new(memory::DEFAULT_MAX_NIGHTS)),
            answered: AtomicI64::new(0),
        }
    }

    /// Holds at most `max_nights` nights in memory (0: none; the
    /// availability queries then read SQLite).
    pub fn with_max_nights_in_memory(mut self, max_nights: u64) -> Self {
        self.memory = Arc::new(Memory::new(max_nights));
        self
    }

    /// The availability held in memory.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The in-memory state, if it holds `min_position` and every position a
    /// read of the file has answered at (else the caller reads the file).
    pub fn fresh_memory(&self, min_position: i64) -> Option<Arc<memory::State>> {
        let floor = min_position.max(self.answered.load(Ordering::SeqCst));
        self.memory
            .state()
            .filter(|state| state.position() >= floor)
    }

    /// Notes that a read of the file answered at `position` (see
    /// [`Self::fresh_memory`]).
    pub fn answered_at(&self, position: i64) {
        // Most reads answer at a position already noted: a load, no write
        // to the shared cache line.
        if position > self.answered.load(Ordering::SeqCst) {
            self.answered.fetch_max(position, Ordering::SeqCst);
        }
    }

    /// Makes `writer` (of the live file) keep the in-memory availability
    /// current: loads it from the file now, then after each commit.
    pub fn attach(&self, writer: &mut Writer) {
        self.memory.load(&writer.conn);
        writer.memory = Some(Arc::clone(&self.memory));
    }

    /// Sets how long writers of this file keep `reservation_changes`.
    pub fn with_change_retention(mut self, retention: retention::ChangeRetention) -> Self {
        self.change_retention = retention;
        self
    }

    /// Sets how writers of this file bound their WAL.
    pub fn with_wal(mut self, wal: WalSettings) -> Self {
        self.wal = wal;
        self
    }

    /// Gives `writer` (of this file or of its rebuild) the retention and
    /// WAL settings this read model was configured with.
    pub fn configure(&self, writer: &mut Writer) -> rusqlite::Result<()> {
        writer.set_change_retention(self.change_retention);
        writer.set_wal(self.wal)
    }

    /// The live file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` in one read transaction on a read-only connection. Reads
    /// are short (tens of microseconds; the requests' caps bound the long
    /// ones to milliseconds), so callers run them inline.
    pub fn read<T>(
        &self,
        read: impl FnOnce(&Snapshot<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, ReadError> {
        self.with_reader(|conn| Snapshot::run(conn, read))
    }

    /// Runs `read`, which runs exactly one statement, on a reader without
    /// a transaction around it: SQLite reads a statement in one snapshot
    /// of its own, so a statement that also reads the checkpoint (see
    /// [`reads::reservation_at_checkpoint`]) is as consistent as [`Self::read`]
    /// and costs two statements less.
    pub fn read_statement<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ReadError> {
        self.with_reader(read)
    }

    /// Runs `read` on a reader of the current file.
    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ReadError> {
        let readers = Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let conn = readers.take()?;
        let outcome = read(&conn);
        // A connection that failed is dropped (ending its transaction)
        // rather than reused.
        if outcome.is_ok() {
            readers.give_back(conn);
        }
        outcome.map_err(ReadError)
    }

    /// The checkpoint as readers see it now.
    pub fn checkpoint(&self) -> Result<Checkpoint, ReadError> {
        self.read(|tx| read_checkpoint(tx))
    }

    /// Closes every reader once its read is done (at shutdown, so the writer
    /// closes last and SQLite removes the WAL). Later reads open new
    /// connections.
    pub fn close_readers(&self) {
        let previous = self.install(Readers::new(&self.path, false));
        if let Err(error) = wait_until_unused(previous) {
            tracing::warn!(error = format!("{error:#}"), "closing the readers");
        }
    }

    /// Puts the file written by `rebuilt` at the live path and returns a
    /// writer of it; `live` (the writer of the current file) is closed.
    ///
    /// Reads never wait for the files. A rename is only safe with no
    /// connection open on either file (SQLite finds the WAL by the path), so
    /// reads move twice, each time by swapping the [`Readers`]:
    /// 1. to the rebuilt file, closed and frozen (read `immutable`); once
    ///    the reads in flight on the live file are done, the live file closes
    ///    and the rebuilt one is renamed over it, under the frozen readers'
    ///    open descriptors;
    /// 2. to ordinary readers of the live path, before anything writes it.
    pub fn swap_in(&self, live: Writer, mut rebuilt: Writer) -> anyhow::Result<Writer> {
        // Another file, maybe another history: reads use SQLite until the
        // new writer loads it, and positions start over from the new file's.
        self.memory.clear();
        self.answered.store(0, Ordering::SeqCst);
        let rebuilt_path = rebuilt.path.clone();
        // A rebuild hands over at the live checkpoint, maybe before its
        // stream reached the head: it serves listings from the swap on.
        rebuilt
            .build_listing_indexes()
            .context("building the rebuilt file's listing indexes")?;
        // The bulk of the work: the WAL is copied into the file and removed.
        rebuilt.close()?;
        let frozen = Readers::prepared(&rebuilt_path, true, PREPARED_READERS)
            .with_context(|| format!("opening {} to read", rebuilt_path.display()))?;
        let swapped = self.swap_files(live, &rebuilt_path, frozen);
        if swapped.is_err() {
            // Whichever file is at the live path is a whole read model; its
            // writer reopens only once no frozen reader reads it.
            let previous = self.install(Readers::new(&self.path, false));
            if let Err(error) = wait_until_unused(previous) {
                tracing::warn!(error = format!("{error:#}"), "after a failed swap");
            }
        }
        swapped
    }

    fn swap_files(
        &self,
        live: Writer,
        rebuilt_path: &Path,
        frozen: Readers,
    ) -> anyhow::Result<Writer> {
        wait_until_unused(self.install(frozen))?;
        live.close()?;
        for suffix in ["-wal", "-shm"] {
            let leftover = with_suffix(&self.path, suffix);
            anyhow::ensure!(
                !leftover.exists() || std::fs::metadata(&leftover)?.len() == 0,
                "{} is still in use by another process; not swapping",
                leftover.display()
            );
        }
        // The rebuilt file keeps its own name until its frozen readers are
        // gone: they open new connections by it.
        let link = with_suffix(rebuilt_path, "-link");
        std::fs::hard_link(rebuilt_path, &link)
            .with_context(|| format!("linking {} to {}", rebuilt_path.display(), link.display()))?;
        std::fs::rename(&link, &self.path)
            .with_context(|| format!("renaming {} to {}", link.display(), self.path.display()))?;
        sync_parent_dir(&self.path);
        let mut writer = Writer::open(&self.path)?;
        self.configure(&mut writer)?;
        self.attach(&mut writer);
        let readers = Readers::prepared(&self.path, false, PREPARED_READERS)
            .with_context(|| format!("opening {} to read", self.path.display()))?;
        // Frozen readers read the file without locks: the writer must not
        // change it until the last of them is done.
        wait_until_unused(self.install(readers))?;
        if let Err(error) = std::fs::remove_file(rebuilt_path) {
            tracing::warn!(file = %rebuilt_path.display(), %error, "could not remove a rebuild file");
        }
        Ok(writer)
    }

    /// Makes `readers` the ones new reads start on; returns the previous ones.
    fn install(&self, readers: Readers) -> Arc<Readers> {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *current, Arc::new(readers))
    }
}

/// Waits until no read uses `readers` any more (reads are bounded, so this
/// is milliseconds), then closes their connections.
fn wait_until_unused(readers: Arc<Readers>) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    while Arc::strong_count(&readers) > 1 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reads of {} still running after {DRAIN_TIMEOUT:?}",
            readers.path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(readers);
    Ok(())
}

thread_local! {
    /// The frames in the WAL after this thread's last commit on a writer's
    /// connection (SQLite's WAL hook runs inside the commit, on its thread).
    static WAL_FRAMES: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// The writer's WAL hook: notes how many frames the WAL holds.
fn record_wal_frames(
    _: &rusqlite::hooks::Wal,
    frames: std::os::raw::c_int,
) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|last| last.set(i64::from(frames)));
    Ok(())
}

/// The frames in the WAL after this thread's last commit.
fn last_wal_frames() -> i64 {
    WAL_FRAMES.with(std::cell::Cell::get)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    keep_plans(&conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A reader of a closed file that nothing writes: `immutable=1` makes SQLite
/// read the file through its descriptor with no lock, WAL or `-shm` file,
/// which are found by the path and would not survive a rename.
fn open_frozen_reader(path: &Path) -> rusqlite::Result<Connection> {
    let text = path
        .to_str()
        .ok_or_else(|| rusqlite::Error::InvalidPath(path.to_owned()))?;
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    keep_plans(&conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee. Without it, a cached
/// statement whose plan might depend on a bound value (a `LIMIT ?`, an
/// `?n IS NULL` test) is re-parsed and re-planned at each execution with new
/// values, which made a search cost ~3 times its actual reading.
fn keep_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// One read transaction on a read-only connection: everything read through
/// it comes from one snapshot of the file.
///
/// `BEGIN` and `COMMIT` run as cached statements: rusqlite's `Transaction`
/// parses them anew each time, a measurable share of a point read.
pub struct Snapshot<'c> {
    /// The connection, inside the transaction.
    conn: &'c Connection,
}

impl Snapshot<'_> {
    fn run<T>(
        conn: &Connection,
        read: impl FnOnce(&Snapshot<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        let value = read(&Snapshot { conn })?;
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(value)
    }
}

impl std::ops::Deref for Snapshot<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

fn read_checkpoint(conn: &Connection) -> rusqlite::Result<Checkpoint> {
    conn.prepare_cached("SELECT position, applied_at_ms, event_id FROM checkpoint WHERE id = 1")?
        .query_row([], |row| {
            Ok(Checkpoint {
                position: row.get(0)?,
                applied_at_ms: row.get(1)?,
                event_id: row.get(2)?,
            })
        })
}

/// `path` with `suffix` appended to the file name (`x.db` → `x.db-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes a rename durable. Best effort: not every platform can open a directory.
fn sync_parent_dir(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

/// Wall-clock now in ms since the epoch.
pub fn now_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Whether any of the [`LISTING_INDEXES`] is missing.
fn listing_indexes_missing(conn: &Connection) -> rusqlite::Result<bool> {
    let mut exists =
        conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")?;
    for (name, _) in LISTING_INDEXES {
        if !exists.exists([name])? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn build_listing_indexes(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    for (name, create) in LISTING_INDEXES {
        let started = std::time::Instant::now();
        tx.execute_batch(create)?;
        tracing::info!(
            index = name,
            ms = started.elapsed().as_millis() as u64,
            "built a listing index at the end of the replay"
        );
    }
    Ok(())
}

/// Applies a batch in one transaction, with what `indexes` says; when an
/// event cannot be applied, the events before it are kept (the read model
/// stops right before it) and the indexes stay as they were. Returns the
/// new checkpoint and, when the commit changed it, whether the listing
/// indexes are missing now.
fn apply_in_transaction(
    conn: &mut Connection,
    events: &[pb::EventEnvelope],
    applied_at_ms: i64,
    indexes: ListingIndexes,
) -> Result<(i64, Option<bool>), ApplyError> {
    let tx = conn.transaction()?;
    let mut deferred = None;
    if indexes == ListingIndexes::DeferIfEmpty {
        let empty: bool = tx
            .prepare_cached("SELECT position = 0 FROM checkpoint WHERE id = 1")?
            .query_row([], |row| row.get(0))?;
        if empty {
            for (name, _) in LISTING_INDEXES {
                tx.execute_batch(&format!("DROP INDEX IF EXISTS {name}"))?;
            }
            deferred = Some(true);
        }
    }
    let applied = apply::apply_batch(&tx, events, applied_at_ms);
    match applied {
        Ok(checkpoint) => {
            if indexes == ListingIndexes::Build {
                build_listing_indexes(&tx)?;
                deferred = Some(false);
            }
            tx.commit()?;
            Ok((checkpoint, deferred))
        }
        Err(ApplyError::Unapplicable { position, .. }) if events[0].position < position => {
            // Keep the events before the one that cannot be applied: the
            // read model stops right before it.
            // The batch was contiguous up to it (checked while applying).
            drop(tx);
            let before = (position - events[0].position) as usize;
            let tx = conn.transaction()?;
            apply::apply_batch(&tx, &events[..before], applied_at_ms)?;
            tx.commit()?;
            applied.map(|checkpoint| (checkpoint, None))
        }
        Err(error) => Err(error),
    }
}
