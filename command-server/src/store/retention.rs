//! Retention of the command log: a finished command's record (its request
//! and reply, what makes a retry replay) is kept for the retention window,
//! then deleted in small batches that never take the write lock. A retry
//! arriving after the window runs as a new command.

use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::watch;

use super::{command_log, now_ms};

/// Rows deleted per statement: short row-lock holds, small undo.
pub const PRUNE_BATCH: i64 = 1_000;

/// Deletes command records finished more than `keep` ago, every `every`,
/// until `shutdown`.
pub async fn prune_commands(
    pool: MySqlPool,
    keep: Duration,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let before = now_ms() - keep.as_millis() as i64;
        let mut pruned = 0;
        loop {
            match command_log::prune(&pool, before, PRUNE_BATCH).await {
                Ok(deleted) => {
                    pruned += deleted;
                    if deleted < PRUNE_BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "pruning the command log failed");
                    break;
                }
            }
            // Let commands and other readers in between two batches.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if pruned > 0 {
            metrics::counter!("command_log_pruned_total").increment(pruned);
            tracing::info!(pruned, "pruned command records past the retention window");
        }
    }
}
