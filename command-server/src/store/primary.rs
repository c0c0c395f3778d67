//! The MySQL server this process works on, and the guard that keeps it on
//! that one server.
//!
//! What a command server keeps in memory (the head, its last commits for
//! live subscribers, the room types its writer carries from batch to batch)
//! describes the log of the server it started on. After a failover the
//! database URL (a virtual IP, a DNS name, a proxy) may lead to another
//! server whose log differs: a replica that missed the last commits holds
//! other events at the same positions once written again. A process that
//! went on with its memory would hand a live subscriber events of the old
//! history followed by events of the new one, and nothing downstream could
//! tell. So every new connection, pooled or the writer's, reads
//! `@@server_id` (distinct on every server of a replication topology:
//! replication refuses equal ids); a connection to another server is
//! refused before any statement runs on it, and the process stops
//! ([`Primary::moved`]): restarted, it starts from the new server's log.
//! See ADR 0013.

use std::{future::Future, pin::Pin, sync::Arc};

use sqlx::MySqlConnection;
use tokio::sync::watch;

/// The server this process started on, shared by every connection.
#[derive(Clone, Debug)]
pub struct Primary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `@@server_id` of the server met first.
    server_id: u64,
    /// Why the process must stop, once a connection met another server.
    moved: watch::Sender<Option<String>>,
}

/// Reads `@@server_id` on `conn`.
async fn server_id(conn: &mut MySqlConnection) -> sqlx::Result<u64> {
    sqlx::query_scalar("SELECT @@server_id")
        .fetch_one(conn)
        .await
}

/// Whether `@@global.read_only`, read as text, forbids writes: a boolean
/// (`0`/`1`, `OFF`/`ON` as text) on MySQL and MariaDB up to 11.7, an
/// enumeration (`OFF`, `ON`, `NO_LOCK`, ...) on later MariaDB.
pub fn is_read_only(read_only: &str) -> bool {
    !matches!(read_only, "0" | "OFF")
}

/// Why a command server does not start on a read-only server.
const READ_ONLY_AT_START: &str = "the database is read-only: a replica, or a primary being \
     demoted. A command server starts only on the primary: promote the replica first \
     (SET GLOBAL read_only = OFF, docs/failover.md). Nothing was written";

impl Primary {
    /// The server `conn` is connected to is the one this process works on,
    /// unless it is read-only: a command server never starts on a replica,
    /// where even its start-up's no-op DDL (`CREATE DATABASE IF NOT
    /// EXISTS`, the migrations table) would be transactions of the
    /// replica's own in its binary log.
    pub async fn learn(conn: &mut MySqlConnection) -> anyhow::Result<Self> {
        let (server_id, read_only): (u64, String) =
            sqlx::query_as("SELECT @@server_id, CAST(@@global.read_only AS CHAR)")
                .fetch_one(conn)
                .await?;
        if is_read_only(&read_only) {
            anyhow::bail!("{READ_ONLY_AT_START} (server_id {server_id})");
        }
        Ok(Self::with_server_id(server_id))
    }

    /// A guard for the server with id `server_id`.
    pub fn with_server_id(server_id: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                server_id,
                moved: watch::channel(None).0,
            }),
        }
    }

    /// `@@server_id` of the server this process works on.
    pub fn server_id(&self) -> u64 {
        self.inner.server_id
    }

    /// Checks the server id a new connection reported. On another server,
    /// records that the process must stop and returns why.
    pub fn check(&self, found: u64) -> Result<(), String> {
        let expected = self.inner.server_id;
        if found == expected {
            return Ok(());
        }
        let why = format!(
            "the database URL now leads to another MySQL server (server_id {found}; this process \
             started on server_id {expected}): a failover? This process's memory of the event log \
             belongs to the server it started on, so it uses no connection to the other one and \
             stops; start it again to serve the new server's log (docs/failover.md)"
        );
        self.inner.moved.send_if_modified(|moved| {
            if moved.is_none() {
                tracing::error!(found, expected, "{why}");
                *moved = Some(why.clone());
                true
            } else {
                false
            }
        });
        Err(why)
    }

    /// The check for a new pooled connection (sqlx's `after_connect`):
    /// reads its server id; another server fails the connection.
    pub fn check_connection<'c>(
        &self,
        conn: &'c mut MySqlConnection,
    ) -> Pin<Box<dyn Future<Output = sqlx::Result<()>> + Send + 'c>> {
        let primary = self.clone();
        Box::pin(async move {
            let found = server_id(conn).await?;
            primary.check(found).map_err(sqlx::Error::Protocol)
        })
    }

    /// Resolves, with the reason, once a connection met another server.
    pub async fn moved(&self) -> String {
        let mut moved = self.inner.moved.subscribe();
        let why = moved
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|why| why.clone());
        match why {
            Some(why) => why,
            // The sender lives in `self`: it cannot be gone while we wait.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_in_every_spelling() {
        for writable in ["0", "OFF"] {
            assert!(!is_read_only(writable), "{writable}");
        }
        for read_only in ["1", "ON", "NO_LOCK", "NO_LOCK_NO_ADMIN"] {
            assert!(is_read_only(read_only), "{read_only}");
        }
    }

    #[tokio::test]
    async fn the_same_server_passes_and_another_stops_the_process_once() {
        let primary = Primary::with_server_id(1);
        assert!(primary.check(1).is_ok());
        let waiting = tokio::spawn({
            let primary = primary.clone();
            async move { primary.moved().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing moved yet");
        let why = primary.check(2).expect_err("another server");
        assert!(why.contains("server_id 2"), "{why}");
        assert!(why.contains("server_id 1"), "{why}");
        assert_eq!(waiting.await.expect("joined"), why);
        // Still refused afterwards, and the first reason stays.
        assert!(primary.check(3).is_err());
        assert_eq!(primary.moved().await, why);
        assert!(primary.check(1).is_ok(), "the first server is still fine");
    }
}
