//! The `commands` table: one row per command that changed something or was
//! submitted, written in the same transaction as the change it records.

use std::collections::HashMap;

use sqlx::{Acquire, Executor, MySqlPool, Row, mysql::MySqlRow};

use super::script::Script;

pub const PENDING: &str = "PENDING";
pub const RUNNING: &str = "RUNNING";
pub const SUCCEEDED: &str = "SUCCEEDED";
pub const FAILED: &str = "FAILED";

/// One row of `commands`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    pub command_id: String,
    pub kind: String,
    /// The request, protobuf-encoded.
    pub request: Vec<u8>,
    /// PENDING, RUNNING, SUCCEEDED or FAILED.
    pub state: String,
    pub priority: i32,
    /// The reply, protobuf-encoded, when SUCCEEDED.
    pub response: Option<Vec<u8>>,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    /// The refusal's ErrorInfo, as `ErrorInfo::encode` writes it.
    pub error_info: Option<Vec<u8>>,
    pub position: i64,
    pub accepted_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

const COLUMNS: &str = "command_id, kind, request, state, priority, response, error_code, \
                       error_message, error_info, position, accepted_at_ms, finished_at_ms";

fn from_row(row: &MySqlRow) -> sqlx::Result<CommandRecord> {
    Ok(CommandRecord {
        command_id: row.try_get("command_id")?,
        kind: row.try_get("kind")?,
        request: row.try_get("request")?,
        state: row.try_get("state")?,
        priority: row.try_get("priority")?,
        response: row.try_get("response")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        error_info: row.try_get("error_info")?,
        position: row.try_get("position")?,
        accepted_at_ms: row.try_get("accepted_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

/// Adds to `script` the read of the records of `command_ids`; returns the
/// statement's index, `None` when there is nothing to read.
pub fn ask_many(script: &mut Script, command_ids: &[&str]) -> Option<usize> {
    if command_ids.is_empty() {
        return None;
    }
    let index = script.statements();
    script
        .sql("SELECT ")
        .sql(COLUMNS)
        .sql(" FROM commands WHERE command_id IN (")
        .each(command_ids, ", ", |script, id| {
            script.value(id);
        })
        .sql(")")
        .end();
    Some(index)
}

/// The records in `rows`, the answer to [`ask_many`], by command id.
pub fn take_many(rows: &[MySqlRow]) -> sqlx::Result<HashMap<String, CommandRecord>> {
    rows.iter()
        .map(|row| from_row(row).map(|record| (record.command_id.clone(), record)))
        .collect()
}

pub async fn load(pool: &MySqlPool, command_id: &str) -> sqlx::Result<Option<CommandRecord>> {
    let select = format!("SELECT {COLUMNS} FROM commands WHERE command_id = ?");
    sqlx::query(sqlx::AssertSqlSafe(select))
        .bind(command_id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Adds to `script` the statement that inserts new records or completes
/// pending ones.
pub fn upsert(script: &mut Script, records: &[CommandRecord]) {
    if records.is_empty() {
        return;
    }
    script
        .sql("INSERT INTO commands (")
        .sql(COLUMNS)
        .sql(")")
        .values(records, |row, r| {
            row.value(&r.command_id)
                .value(&r.kind)
                .value(&r.request)
                .value(&r.state)
                .value(r.priority)
                .value(&r.response)
                .value(r.error_code)
                .value(&r.error_message)
                .value(&r.error_info)
                .value(r.position)
                .value(r.accepted_at_ms)
                .value(r.finished_at_ms);
        })
        .sql(
            " ON DUPLICATE KEY UPDATE state = VALUES(state), response = VALUES(response), \
             error_code = VALUES(error_code), error_message = VALUES(error_message), \
             error_info = VALUES(error_info), \
             position = VALUES(position), finished_at_ms = VALUES(finished_at_ms)",
        )
        .end();
}

/// Stores a submitted command as PENDING; `false` when the id is known
/// (the row already there is left as it is). A plain insert: any other
/// refusal (a value too long) is an error, never a silently cut row.
pub async fn insert_pending(pool: &MySqlPool, record: &CommandRecord) -> sqlx::Result<bool> {
    let insert = format!(
        "INSERT INTO commands ({COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, 0, ?, NULL)"
    );
    // A claim running at the same moment can make InnoDB pick this insert
    // as a deadlock victim; inserting a new row again is safe.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let done = sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(&record.command_id)
            .bind(&record.kind)
            .bind(&record.request)
            .bind(PENDING)
            .bind(record.priority)
            .bind(record.accepted_at_ms)
            .execute(pool)
            .await;
        match done {
            Ok(_) => return Ok(true),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => return Ok(false),
            Err(sqlx::Error::Database(error))
                if attempt < 5 && error.code().as_deref() == Some("1213") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// How the queue picks what runs next.
#[derive(Debug, Clone, Copy)]
pub struct ClaimOrder {
    /// A waiting command gains one priority point per this many
    /// milliseconds (ageing), up to [`crate::domain::rules::MAX_PRIORITY`].
    pub ageing_ms: i64,
    /// How long a claim holds before another instance may take it over.
    pub lease_ms: i64,
}

/// Claims up to `limit` queued commands for `claimant`: PENDING ones and
/// RUNNING ones whose claim lapsed, highest effective priority first
/// (priority plus one point per `ageing_ms` waited, capped at the highest
/// priority), oldest first among equals. Claims of all instances take
/// turns (the `queue_claim` row); rows a writer is completing right now are
/// skipped, never waited for. The claimed rows are
/// RUNNING, held until `now + lease_ms`.
pub async fn claim(
    pool: &MySqlPool,
    claimant: &str,
    now: i64,
    order: ClaimOrder,
    limit: i64,
) -> sqlx::Result<Vec<CommandRecord>> {
    // READ COMMITTED: the scan locks the rows it claims, not the gaps
    // between them, so submissions inserting meanwhile are not blocked.
    let mut conn = pool.acquire().await?;
    conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT id FROM queue_claim WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let select = format!(
        "SELECT {COLUMNS} FROM commands \
         WHERE state IN ('PENDING', 'RUNNING') AND (state = 'PENDING' OR claim_until_ms < ?) \
         ORDER BY LEAST(?, priority + FLOOR((? - accepted_at_ms) / ?)) DESC, accepted_at_ms, arrival \
         LIMIT ? FOR UPDATE SKIP LOCKED"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(select))
        .bind(now)
        .bind(crate::domain::rules::MAX_PRIORITY)
        .bind(now)
        .bind(order.ageing_ms.max(1))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    let claimed: Vec<CommandRecord> = rows.iter().map(from_row).collect::<sqlx::Result<_>>()?;
    if claimed.is_empty() {
        tx.rollback().await?;
        return Ok(claimed);
    }
    let mut update = sqlx::QueryBuilder::<sqlx::MySql>::new(
        "UPDATE commands SET state = 'RUNNING', claimed_by = ",
    );
    update
        .push_bind(claimant)
        .push(", claim_until_ms = ")
        .push_bind(now + order.lease_ms)
        .push(" WHERE command_id IN (");
    let mut ids = update.separated(", ");
    for record in &claimed {
        ids.push_bind(&record.command_id);
    }
    update.push(")");
    update.build().execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Lets another instance (or this one) take a RUNNING command over at
/// once: its run here ended without an outcome. The state stays RUNNING
/// (states never go back).
pub async fn release(pool: &MySqlPool, command_id: &str, claimant: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE commands SET claim_until_ms = 0 \
         WHERE command_id = ? AND state = 'RUNNING' AND claimed_by = ?",
    )
    .bind(command_id)
    .bind(claimant)
    .execute(pool)
    .await?;
    Ok(())
}

/// The queue of the whole database: what waits, by priority, and what runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queued {
    /// PENDING commands by priority, `(priority, count)`.
    pub pending: Vec<(i32, i64)>,
    /// RUNNING commands (claimed by an instance).
    pub running: i64,
}

impl Queued {
    /// Commands queued, PENDING or RUNNING.
    pub fn total(&self) -> i64 {
        self.running + self.pending.iter().map(|(_, count)| count).sum::<i64>()
    }
}

/// Commands queued (PENDING or RUNNING) on the whole database. One scan of
/// the `pending (state, priority, ...)` index, grouped in its order.
pub async fn queued(pool: &MySqlPool) -> sqlx::Result<Queued> {
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT state, priority, COUNT(*) FROM commands \
         WHERE state IN ('PENDING', 'RUNNING') GROUP BY state, priority",
    )
    .fetch_all(pool)
    .await?;
    let mut queued = Queued::default();
    for (state, priority, count) in rows {
        if state == PENDING {
            queued.pending.push((priority, count));
        } else {
            queued.running += count;
        }
    }
    Ok(queued)
}

/// Records a queued command that can never run (its stored request no
/// longer decodes) as FAILED, unless it finished meanwhile.
pub async fn fail_undecodable(
    pool: &MySqlPool,
    command_id: &str,
    code: i32,
    message: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE commands SET state = 'FAILED', error_code = ?, error_message = ?, finished_at_ms = ? \
         WHERE command_id = ? AND state IN ('PENDING', 'RUNNING')",
    )
    .bind(code)
    .bind(message)
    .bind(super::now_ms())
    .bind(command_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes up to `limit` finished commands that finished before
/// `finished_before_ms`, oldest first; how many it deleted.
pub async fn prune(pool: &MySqlPool, finished_before_ms: i64, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM commands WHERE state IN ('SUCCEEDED', 'FAILED') AND finished_at_ms < ? \
         ORDER BY arrival LIMIT ?",
    )
    .bind(finished_before_ms)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
