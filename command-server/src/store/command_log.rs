//! The `commands` table: one row per command that changed something or was
//! submitted, written in the same transaction as the change it records.

use std::collections::HashMap;

use sqlx::{MySqlConnection, MySqlPool, Row};

pub const PENDING: &str = "PENDING";
pub const SUCCEEDED: &str = "SUCCEEDED";
pub const FAILED: &str = "FAILED";

/// One row of `commands`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    pub command_id: String,
    pub kind: String,
    /// The request, protobuf-encoded.
    pub request: Vec<u8>,
    /// PENDING, SUCCEEDED or FAILED.
    pub state: String,
    pub priority: i32,
    /// The reply, protobuf-encoded, when SUCCEEDED.
    pub response: Option<Vec<u8>>,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub position: i64,
    pub accepted_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

const COLUMNS: &str = "command_id, kind, request, state, priority, response, error_code, \
                       error_message, position, accepted_at_ms, finished_at_ms";

fn from_row(row: &sqlx::mysql::MySqlRow) -> sqlx::Result<CommandRecord> {
    Ok(CommandRecord {
        command_id: row.try_get("command_id")?,
        kind: row.try_get("kind")?,
        request: row.try_get("request")?,
        state: row.try_get("state")?,
        priority: row.try_get("priority")?,
        response: row.try_get("response")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        position: row.try_get("position")?,
        accepted_at_ms: row.try_get("accepted_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

/// The records of the given command ids that exist.
pub async fn load_many(
    conn: &mut MySqlConnection,
    command_ids: &[&str],
) -> sqlx::Result<HashMap<String, CommandRecord>> {
    if command_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut found = HashMap::new();
    for chunk in super::padded_chunks(command_ids) {
        let mut select = sqlx::QueryBuilder::<sqlx::MySql>::new(format!(
            "SELECT {COLUMNS} FROM commands WHERE command_id IN ("
        ));
        let mut ids = select.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        select.push(")");
        for row in select.build().fetch_all(&mut *conn).await? {
            let record = from_row(&row)?;
            found.insert(record.command_id.clone(), record);
        }
    }
    Ok(found)
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

/// Inserts new records or completes pending ones, in one statement.
pub async fn upsert(conn: &mut MySqlConnection, records: &[CommandRecord]) -> sqlx::Result<()> {
    // A repeated row sets the same values again: padding is harmless.
    for chunk in super::padded_chunks(records) {
        let mut insert =
            sqlx::QueryBuilder::<sqlx::MySql>::new(format!("INSERT INTO commands ({COLUMNS}) "));
        insert.push_values(chunk, |mut row, r| {
            row.push_bind(&r.command_id)
                .push_bind(&r.kind)
                .push_bind(&r.request)
                .push_bind(&r.state)
                .push_bind(r.priority)
                .push_bind(&r.response)
                .push_bind(r.error_code)
                .push_bind(&r.error_message)
                .push_bind(r.position)
                .push_bind(r.accepted_at_ms)
                .push_bind(r.finished_at_ms);
        });
        insert.push(
            " ON DUPLICATE KEY UPDATE state = VALUES(state), response = VALUES(response), \
             error_code = VALUES(error_code), error_message = VALUES(error_message), \
             position = VALUES(position), finished_at_ms = VALUES(finished_at_ms)",
        );
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Stores a submitted command as PENDING; `false` when the id is known.
pub async fn insert_pending(pool: &MySqlPool, record: &CommandRecord) -> sqlx::Result<bool> {
    let insert = format!(
        "INSERT IGNORE INTO commands ({COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, 0, ?, NULL)"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(&record.command_id)
        .bind(&record.kind)
        .bind(&record.request)
        .bind(PENDING)
        .bind(record.priority)
        .bind(record.accepted_at_ms)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Pending commands accepted before `accepted_before_ms`, highest priority
/// and oldest first.
/// Records a PENDING command as FAILED with `code` and `message`, unless
/// it has finished meanwhile; `false` when it had.
pub async fn fail_pending(
    pool: &MySqlPool,
    command_id: &str,
    code: i32,
    message: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE commands SET state = 'FAILED', error_code = ?, error_message = ?, finished_at_ms = ? \
         WHERE command_id = ? AND state = 'PENDING'",
    )
    .bind(code)
    .bind(message)
    .bind(super::now_ms())
    .bind(command_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn pending(
    pool: &MySqlPool,
    accepted_before_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<CommandRecord>> {
    let select = format!(
        "SELECT {COLUMNS} FROM commands WHERE state = 'PENDING' AND accepted_at_ms < ? \
         ORDER BY priority DESC, accepted_at_ms LIMIT ?"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(select))
        .bind(accepted_before_ms)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}
