//! Retention of `reservation_changes` (issue 11): every change of a
//! reservation after its booking is a row, kept so that `WatchReservation`
//! can deliver each one even when several land in one projector commit.
//! A watcher reads the changes after its own position at every commit, so
//! it needs rows only for moments; older rows are pruned after a window
//! (default 7 days), at most [`PRUNE_ROWS`] per transaction, by the
//! projector's writer between batches.
//!
//! A watcher further behind than the window (one that has not read for a
//! week) gets the reservation's current state and the changes still kept,
//! not the pruned steps between.

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

/// Rows deleted per prune transaction: a few milliseconds of the writer.
pub const PRUNE_ROWS: i64 = 1000;

/// How long changes are kept, and how often the writer looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRetention {
    /// Changes committed longer ago than this are pruned.
    pub keep: Duration,
    /// The writer prunes at most this often.
    pub every: Duration,
}

impl Default for ChangeRetention {
    fn default() -> Self {
        Self {
            keep: Duration::from_secs(7 * 24 * 3600),
            every: Duration::from_secs(60),
        }
    }
}

/// When the writer pruned last.
#[derive(Debug)]
pub struct Pruning {
    pub retention: ChangeRetention,
    last: Option<Instant>,
}

impl Pruning {
    pub fn new(retention: ChangeRetention) -> Self {
        Self {
            retention,
            last: None,
        }
    }

    /// Prunes one page of changes older than the window, if it is time;
    /// returns the rows deleted.
    pub fn prune_if_due(&mut self, conn: &mut Connection, now_ms: i64) -> rusqlite::Result<usize> {
        if self
            .last
            .is_some_and(|last| last.elapsed() < self.retention.every)
        {
            return Ok(0);
        }
        self.last = Some(Instant::now());
        let before_ms = now_ms.saturating_sub(self.retention.keep.as_millis() as i64);
        let deleted = prune(conn, before_ms, PRUNE_ROWS)?;
        if deleted > 0 {
            metrics::counter!("read_model_changes_pruned_total").increment(deleted as u64);
            // More left: look again at the next batch, not a period later.
            if deleted as i64 == PRUNE_ROWS {
                self.last = None;
            }
        }
        Ok(deleted)
    }
}

/// Deletes up to `limit` changes committed before `before_ms`, oldest first.
pub fn prune(conn: &mut Connection, before_ms: i64, limit: i64) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let deleted = tx
        .prepare_cached(
            "DELETE FROM reservation_changes WHERE (reservation_id, position) IN (
                 SELECT reservation_id, position FROM reservation_changes
                 WHERE updated_at_ms < ?1 ORDER BY updated_at_ms LIMIT ?2)",
        )?
        .execute(params![before_ms, limit])?;
    tx.commit()?;
    Ok(deleted)
}
