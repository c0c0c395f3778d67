//! Fencing: a session that holds the write lock (the `event_head` row) for
//! longer than a lease is ended, so that one paused, partitioned or stuck
//! holder cannot stall every command server on the database.
//!
//! Two mechanisms, both bounded by `--fence-after-ms` (ADR 0008):
//! - every writer session sets MariaDB's `idle_transaction_timeout`, so the
//!   server itself ends a writer that stops talking inside its transaction
//!   (a process under `SIGSTOP`, a lost network);
//! - while a writer waits for the lock, this module watches who blocks it
//!   and kills a blocker seen holding the lock that long (any session: a
//!   console left open, a MySQL without `idle_transaction_timeout`). A live
//!   writer never holds the lock that long: its batch deadline
//!   (`--batch-timeout-ms`) is shorter and drops its own connection first.

use std::{
    convert::Infallible,
    time::{Duration, Instant},
};

use sqlx::{MySqlPool, Row};

/// How often a waiting writer looks at who blocks it. The first look is
/// after one interval, so an uncontended lock costs nothing.
pub const POLL: Duration = Duration::from_millis(250);

/// The transaction holding the lock that `waiter` waits for.
#[derive(Debug, PartialEq, Eq)]
struct Blocker {
    trx_id: String,
    thread_id: u64,
}

/// Watches the lock wait of the session `waiter` (its `CONNECTION_ID()`)
/// and kills a blocker seen holding the lock for `lease`. Never returns:
/// the caller drops it when the wait ends.
pub async fn fence_blockers(pool: &MySqlPool, waiter: u64, lease: Duration) -> Infallible {
    let mut seen: Option<(Blocker, Instant)> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let blocker = match blocker_of(pool, waiter).await {
            Ok(blocker) => blocker,
            Err(error) => {
                tracing::debug!(%error, "cannot see who holds the write lock");
                continue;
            }
        };
        let Some(blocker) = blocker else {
            seen = None;
            continue;
        };
        // Counted from the first sighting: the blocker held the lock at
        // least that long, maybe longer.
        let since = match &seen {
            Some((known, since)) if *known == blocker => *since,
            _ => {
                seen = Some((blocker, Instant::now()));
                continue;
            }
        };
        if since.elapsed() < lease {
            continue;
        }
        let kill = format!("KILL CONNECTION {}", blocker.thread_id);
        match sqlx::query(sqlx::AssertSqlSafe(kill)).execute(pool).await {
            Ok(_) => {
                metrics::counter!("writer_fenced_sessions_total").increment(1);
                tracing::warn!(
                    session = blocker.thread_id,
                    held_ms = since.elapsed().as_millis() as u64,
                    "ended a MySQL session that held the write lock past its lease"
                );
            }
            Err(error) => tracing::warn!(
                session = blocker.thread_id,
                %error,
                "a MySQL session holds the write lock past its lease and cannot be ended"
            ),
        }
        seen = None;
    }
}

/// The running transaction that blocks `waiter`'s lock wait, if any. A
/// blocker that is itself waiting is only ahead in the queue: not counted.
async fn blocker_of(pool: &MySqlPool, waiter: u64) -> sqlx::Result<Option<Blocker>> {
    let row = sqlx::query(
        "SELECT CAST(b.trx_id AS CHAR) AS trx_id, \
                CAST(b.trx_mysql_thread_id AS UNSIGNED) AS thread_id \
         FROM information_schema.INNODB_LOCK_WAITS w \
         JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id \
         JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id \
         WHERE r.trx_mysql_thread_id = ? AND b.trx_state <> 'LOCK WAIT' \
         LIMIT 1",
    )
    .bind(waiter)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(Blocker {
            trx_id: row.try_get("trx_id")?,
            thread_id: row.try_get("thread_id")?,
        })
    })
    .transpose()
}

/// Ends a writer session this process gives up on in the middle of a
/// statement (its batch ran out of time). Dropping the connection is not
/// enough: MySQL notices a closed client only when the statement returns,
/// and a statement waiting for a row lock keeps the write lock until then.
pub async fn end_abandoned_session(pool: &MySqlPool, thread_id: u64, bound: Duration) {
    let kill = format!("KILL CONNECTION {thread_id}");
    let ended = tokio::time::timeout(bound, sqlx::query(sqlx::AssertSqlSafe(kill)).execute(pool));
    match ended.await {
        Ok(Ok(_)) => tracing::debug!(session = thread_id, "ended the abandoned writer session"),
        // Gone already: nothing to end.
        Ok(Err(sqlx::Error::Database(error))) if error.code().as_deref() == Some("HY000") => {}
        Ok(Err(error)) => {
            tracing::warn!(session = thread_id, %error, "could not end the abandoned writer session")
        }
        Err(_) => tracing::warn!(
            session = thread_id,
            "ending the abandoned writer session took longer than {bound:?}"
        ),
    }
}
