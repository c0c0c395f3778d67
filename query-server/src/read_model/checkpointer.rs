//! Copies the WAL back into the database file on a thread of its own, so
//! that the projector's commits do not wait for it.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold: that commit then writes every page of the WAL into the file
//! and syncs both, and under a steady load this made one projector commit
//! in ~20 take 10-16 ms instead of under 1 ms, the whole tail of the
//! projection lag. Here the writer turns the automatic checkpoint off and
//! nudges this thread after each commit; the thread checkpoints at most once
//! per [`PAUSE`], in one pass or two:
//!
//! 1. a passive checkpoint while the projector keeps committing: it copies
//!    almost everything, with the syncs;
//! 2. once the WAL holds [`RESTART_AT`] bytes, the same again while holding
//!    the [`Gate`], which the writer holds for each transaction: it copies
//!    the few frames committed during the first pass, so the WAL ends fully
//!    copied and the writer's next transaction starts it over from the
//!    beginning instead of letting it grow. (A checkpoint racing a writer
//!    that commits every few milliseconds would almost never finish with
//!    nothing left, and SQLite only rewinds a WAL that is.) Below that size
//!    the writer is never held off: the gated pass ends with two syncs and
//!    took 5-20 ms under load.
//!
//! The writer waits for this thread only when it has fallen behind: when a
//! commit leaves the WAL holding more than twice the restart size (the
//! thread starved of CPU, on a machine busy with other work), the writer
//! waits for its next second pass (at most [`WalSettings::catch_up_wait`], once per
//! pass), so that the WAL stays bounded however little CPU the thread gets.
//!
//! See docs/decisions/0004-projector-transaction.md.

use std::{
    path::Path,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicI64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags};

/// The least time between two checkpoints.
pub const PAUSE: Duration = Duration::from_millis(100);
/// The WAL size at which a checkpoint holds writes off to finish (pass 2),
/// unless [`WalSettings::restart_at`] says another. At 1,300 bookings/s the
/// WAL grows by ~15 MB/s: with 8 MiB the writer waited 5-20 ms about twice
/// a second; with 64 MiB, every few seconds.
pub const RESTART_AT: i64 = 64 * 1024 * 1024;

/// The longest a commit waits for the checkpoint thread to start the WAL
/// over once it holds twice the restart size, unless
/// [`WalSettings::catch_up_wait`] says another.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// How the WAL is kept bounded (`--wal-restart-mib`, `--wal-catch-up-wait-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalSettings {
    /// The WAL size, in bytes, at which a checkpoint holds the writer off to
    /// start the WAL over; the WAL file is cut back to it when it does.
    pub restart_at: i64,
    /// The longest a commit that leaves the WAL past twice `restart_at` waits
    /// for the checkpoint thread (once per time the WAL starts over; zero:
    /// never waits).
    pub catch_up_wait: Duration,
}

impl Default for WalSettings {
    fn default() -> Self {
        Self {
            restart_at: RESTART_AT,
            catch_up_wait: CATCH_UP_WAIT,
        }
    }
}

/// The second passes done (each leaves the WAL to start over at the next
/// write), for a writer waiting on one.
#[derive(Debug, Default)]
struct Passes {
    state: Mutex<PassState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct PassState {
    /// Second passes done.
    count: u64,
    /// The frames in the WAL after the writer's previous commit: fewer now
    /// means the WAL started over.
    last_frames: i64,
    /// The writer has waited once since the WAL last started over: it does
    /// not wait again until it does (a reader holding old frames can keep
    /// it from starting over; waiting on every commit would not help).
    waited: bool,
}

impl Passes {
    fn lock(&self) -> MutexGuard<'_, PassState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn one_more(&self) {
        self.lock().count += 1;
        self.done.notify_all();
    }
}

/// Held by the writer for each of its transactions and by the checkpointer
/// for its second pass: while the checkpointer holds it, no frame is added.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<Mutex<()>>);

impl Gate {
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The checkpoint thread of one database file; stops when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    gate: Gate,
    /// The WAL size, in bytes, at which pass 2 runs.
    restart_at: Arc<AtomicI64>,
    /// The longest the writer waits for a pass 2 ([`Self::wait_if_behind`]).
    catch_up_wait: Duration,
    /// Held by the thread for each checkpoint ([`Self::stall`]).
    stall: Arc<Mutex<()>>,
    page_size: i64,
    passes: Arc<Passes>,
    /// Wakes the thread; dropping it stops the thread.
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the WAL-mode file at `path` (which must already be
    /// in WAL mode) with a connection of its own.
    pub fn start(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A passive checkpoint never waits; the connection never writes.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
        let gate = Gate::default();
        let restart_at = Arc::new(AtomicI64::new(RESTART_AT));
        let passes = Arc::new(Passes::default());
        let stall = Arc::new(Mutex::new(()));
        let (wake, woken) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("read-model-checkpoint".into())
            .spawn({
                let gate = gate.clone();
                let restart_at = Arc::clone(&restart_at);
                let passes = Arc::clone(&passes);
                let stall = Arc::clone(&stall);
                move || {
                    let thread = Thread {
                        conn: &conn,
                        gate: &gate,
                        restart_at: &restart_at,
                        page_size,
                        passes: &passes,
                        stall: &stall,
                    };
                    thread.run(&woken)
                }
            })?;
        Ok(Self {
            gate,
            restart_at,
            catch_up_wait: CATCH_UP_WAIT,
            stall,
            page_size,
            passes,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// The gate the writer holds for each transaction.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Sets the WAL size at which a checkpoint holds writes off to start the
    /// WAL over, and the writer's longest wait for it.
    pub fn configure(&mut self, settings: WalSettings) {
        self.restart_at
            .store(settings.restart_at, Ordering::Relaxed);
        self.catch_up_wait = settings.catch_up_wait;
    }

    /// A lock the thread takes for each checkpoint: holding it holds the
    /// thread off, as a machine that gives it no CPU would (for tests of the
    /// writer's wait).
    pub fn stall(&self) -> Arc<Mutex<()>> {
        Arc::clone(&self.stall)
    }

    /// Called by the writer after a commit that left `frames` frames in the
    /// WAL: past twice the restart size, waits (at most the catch-up wait)
    /// for the thread's next second pass, which lets the WAL start over, once
    /// per time the WAL starts over. Returns whether it waited.
    pub fn wait_if_behind(&self, frames: i64) -> bool {
        if self.catch_up_wait.is_zero() {
            return false;
        }
        let limit = 2 * self.restart_at.load(Ordering::Relaxed) / self.page_size.max(1);
        let mut state = self.passes.lock();
        if frames < state.last_frames {
            state.waited = false;
        }
        state.last_frames = frames;
        if frames <= limit || state.waited {
            return false;
        }
        state.waited = true;
        let seen = state.count;
        self.nudge();
        let started = Instant::now();
        let (_state, waited) = self
            .passes
            .done
            .wait_timeout_while(state, self.catch_up_wait, |state| state.count == seen)
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            tracing::warn!(
                frames,
                "the read model's checkpoint thread did not catch up within {:?}",
                self.catch_up_wait
            );
        } else {
            tracing::debug!(
                frames,
                waited_ms = started.elapsed().as_millis() as u64,
                "waited for the read model's checkpoint thread"
            );
        }
        true
    }

    /// Asks for a checkpoint soon; never blocks.
    pub fn nudge(&self) {
        if let Some(wake) = &self.wake {
            // Full means a nudge is already pending.
            let _ = wake.try_send(());
        }
    }

    /// Stops the thread and waits for it (a checkpoint in progress finishes).
    pub fn stop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the read model's checkpoint thread panicked");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the checkpoint thread works with.
struct Thread<'a> {
    conn: &'a Connection,
    gate: &'a Gate,
    restart_at: &'a AtomicI64,
    page_size: i64,
    passes: &'a Passes,
    stall: &'a Mutex<()>,
}

impl Thread<'_> {
    fn run(&self, woken: &Receiver<()>) {
        let mut pending = false;
        loop {
            if !pending && woken.recv().is_err() {
                return;
            }
            pending = false;
            let started = Instant::now();
            let restart_at_frames = self.restart_at.load(Ordering::Relaxed) / self.page_size.max(1);
            let stalled = self.stall.lock().unwrap_or_else(PoisonError::into_inner);
            match checkpoint(self.conn, self.gate, restart_at_frames) {
                Ok(true) => self.passes.one_more(),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "checkpointing the read model's WAL failed"),
            }
            drop(stalled);
            // Wait out the pause; a nudge meanwhile means another checkpoint after it.
            let deadline = started + PAUSE;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match woken.recv_timeout(left) {
                    Ok(()) => pending = true,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }
}

/// The two passes: the second holds writes off, so that it leaves nothing
/// behind (unless a reader still needs a frame: it is copied next time). It
/// runs only once the WAL holds [`RESTART_AT`] bytes of frames: the writer
/// waits for it (5-20 ms under load, more when the disk is busy), so doing it
/// on every checkpoint put that wait on one commit in every few.
/// Returns whether the second pass ran.
fn checkpoint(conn: &Connection, gate: &Gate, restart_at_frames: i64) -> rusqlite::Result<bool> {
    if passive(conn)? < restart_at_frames {
        return Ok(false);
    }
    let _no_writes = gate.hold();
    passive(conn).map(|_| true)
}

/// One passive checkpoint: copies every frame no reader still needs, and
/// never waits for a reader or the writer. Returns the frames in the WAL.
fn passive(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}
