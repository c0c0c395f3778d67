//! MySQL: the write model, the event log and the command log.
//!
//! - [`writer`]: the task that runs commands in batched transactions, the
//!   only code that writes the write model and the log.
//! - [`execute`]: what each command reads and writes inside that transaction.
//! - [`working_set`]: the rows a batch reads and writes, held in memory and
//!   read and written in multi-row statements.
//! - [`events`]: the event log: appending, reading, the head.
//! - [`command_log`]: stored command outcomes (idempotency, the async queue).
//! - [`script`]: statements sent as one round trip (a batch's writes and
//!   its COMMIT), values as literals.
//! - [`fence`]: ends a session that holds the write lock past its lease.
//! - [`primary`]: the server this process works on; a connection that
//!   meets another one (a failover) stops the process.
//! - [`retention`]: prunes command outcomes older than the retention window.

pub mod command_log;
pub mod events;
pub mod execute;
pub mod fence;
pub mod others;
pub mod precondition;
pub mod primary;
pub mod retention;
pub mod script;
pub mod working_set;
pub mod writer;

use std::str::FromStr;

use anyhow::Context;
use sqlx::{
    ConnectOptions, Connection, Executor, MySqlConnection, MySqlPool,
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
};

/// Told of every commit of this process's writer, once it is durable: the
/// narrow interface through which the store publishes (the event stream
/// implements it), so that the store never reaches up into the stream.
pub trait CommitListener: Send + Sync + 'static {
    /// The events of one commit, in position order (never empty).
    fn committed(&self, events: Vec<hotel_common::wire::Envelope>);
}

/// Migrations of the MySQL schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options for `database_url`, quiet about every statement.
pub fn connect_options(database_url: &str) -> anyhow::Result<MySqlConnectOptions> {
    let options = MySqlConnectOptions::from_str(database_url)
        .with_context(|| format!("parsing the database URL {}", redact(database_url)))?;
    Ok(options.disable_statement_logging())
}

/// Creates the database named in `database_url` if it does not exist, then
/// applies the migrations; returns a pool for readers and the server they
/// are on. Every connection the pool opens later must be on that server
/// ([`primary`]).
pub async fn prepare(
    database_url: &str,
    pool_size: u32,
) -> anyhow::Result<(MySqlPool, primary::Primary)> {
    let options = connect_options(database_url)?;
    let database = options
        .get_database()
        .context(
            "the database URL must name a database, e.g. mysql://hotel:hotel@127.0.0.1:3306/hotel",
        )?
        .to_owned();
    let primary = create_database_if_missing(&options, &database).await?;
    let guard = primary.clone();
    let pool = MySqlPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .after_connect(move |conn, _| guard.check_connection(conn))
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to {}", redact(database_url)))?;
    MIGRATOR
        .run(&pool)
        .await
        .context("applying the MySQL migrations")?;
    Ok((pool, primary))
}

/// Exports the reader pool's connections (in use, idle) and its size, read
/// at scrape time: sqlx counts them anyway, nothing is added to acquiring.
/// sqlx does not tell how many tasks wait for a connection.
pub fn export_pool_metrics(pool: &MySqlPool) {
    metrics::gauge!("db_pool_max_connections").set(f64::from(pool.options().get_max_connections()));
    let pool = pool.clone();
    hotel_common::server::sample_at_scrape(move || {
        if pool.is_closed() {
            return false;
        }
        let idle = pool.num_idle() as f64;
        let open = f64::from(pool.size());
        metrics::gauge!("db_pool_connections", "state" => "idle").set(idle);
        metrics::gauge!("db_pool_connections", "state" => "in_use").set((open - idle).max(0.0));
        true
    });
}

/// Creates `database` if it does not exist; returns the server it is on
/// (refusing a read-only one).
async fn create_database_if_missing(
    options: &MySqlConnectOptions,
    database: &str,
) -> anyhow::Result<primary::Primary> {
    if !database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        anyhow::bail!("database name {database:?} must be letters, digits and '_'");
    }
    let server = options.clone().database("");
    let mut conn = MySqlConnection::connect_with(&server)
        .await
        .context("connecting to the MySQL server")?;
    let primary = primary::Primary::learn(&mut conn)
        .await
        .context("checking the MySQL server")?;
    let create = format!("CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4");
    conn.execute(sqlx::AssertSqlSafe(create))
        .await
        .with_context(|| format!("creating database {database}"))?;
    conn.close().await.ok();
    Ok(primary)
}

/// The URL with its password hidden, for messages.
pub fn redact(database_url: &str) -> String {
    match (database_url.find("://"), database_url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &database_url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    &database_url[..scheme + 3],
                    &database_url[at..]
                ),
                None => database_url.to_owned(),
            }
        }
        _ => database_url.to_owned(),
    }
}

/// Most rows in one multi-row statement.
pub const ROWS_PER_STATEMENT: usize = 64;

/// Prepared statements the writer's connection keeps: every shape its
/// statements take (see [`padded_chunks`]), with room to spare.
pub const WRITER_STATEMENT_CACHE: usize = 512;

/// Rows of a multi-row statement (or terms of an `IN`/`OR` list) cut into
/// statements of at most [`ROWS_PER_STATEMENT`], each padded to a power of
/// two by repeating its last row; so every statement that may repeat a row
/// harmlessly (a lookup, an update of absolute values) takes one of seven
/// shapes; the writer's statement cache ([`WRITER_STATEMENT_CACHE`]) holds
/// them all. (A batch's inserts are not prepared: they go in its write
/// script with the COMMIT, [`script`].)
///
/// Why: sqlx prepares each distinct statement text and caches a bounded
/// number per connection. A text with a new row count is prepared again and
/// pushes an old one out with `COM_STMT_CLOSE`, a packet the server never
/// answers; sqlx does not set `TCP_NODELAY`, so the next statement then
/// waits for the server's delayed ACK (about 40 ms, Nagle). Measured: a
/// batch took 44, 88 or 131 ms instead of 5 ms. With few shapes they all
/// stay prepared.
pub fn padded_chunks<T>(rows: &[T]) -> impl Iterator<Item = Vec<&T>> {
    rows.chunks(ROWS_PER_STATEMENT).map(|chunk| {
        let size = chunk.len().next_power_of_two();
        let last = &chunk[chunk.len() - 1];
        chunk
            .iter()
            .chain(std::iter::repeat_n(last, size - chunk.len()))
            .collect()
    })
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_chunks_to_powers_of_two_with_the_last_row() {
        let sizes = |n: usize| -> Vec<usize> {
            let rows: Vec<usize> = (0..n).collect();
            super::padded_chunks(&rows).map(|c| c.len()).collect()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(3), [4]);
        assert_eq!(sizes(64), [64]);
        assert_eq!(sizes(65), [64, 1]);
        assert_eq!(sizes(100), [64, 64]);
        let rows = [1, 2, 3];
        let padded: Vec<i32> = super::padded_chunks(&rows).flatten().copied().collect();
        assert_eq!(padded, [1, 2, 3, 3]);
    }

    #[test]
    fn redacts_the_password() {
        assert_eq!(
            super::redact("mysql://hotel:secret@127.0.0.1:3306/hotel"),
            "mysql://hotel:***@127.0.0.1:3306/hotel"
        );
        assert_eq!(
            super::redact("mysql://127.0.0.1/hotel"),
            "mysql://127.0.0.1/hotel"
        );
    }
}
