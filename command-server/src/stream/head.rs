//! The head: the latest committed position, as a watch channel.
//!
//! Commits of this process update it at once (the writer sends after each
//! commit); commits of other instances on the same database are seen by a
//! poll of `event_head` while anyone subscribes.

use std::{sync::Arc, time::Duration};

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::store::events;

/// Shared sender of the head position.
pub type HeadSender = Arc<watch::Sender<i64>>;

/// Raises the head to `position` if it is higher; waiters wake at once.
pub fn raise(head: &watch::Sender<i64>, position: i64) {
    let raised = head.send_if_modified(|known| {
        if position > *known {
            *known = position;
            true
        } else {
            false
        }
    });
    if raised {
        metrics::gauge!("event_log_head").set(position as f64);
    }
}

/// Polls MySQL's head every `interval` while there are subscribers, until
/// `shutdown`.
pub async fn poll(
    pool: MySqlPool,
    head: HeadSender,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // The writer's own handle is not a subscriber; idle servers stay quiet.
        if head.receiver_count() == 0 {
            continue;
        }
        match events::head(&pool).await {
            Ok(position) => raise(&head, position),
            Err(error) => tracing::debug!(%error, "polling the head failed"),
        }
    }
}
