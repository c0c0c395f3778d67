//! The event stream: `hotel.v1.EventStream`.
//!
//! - [`head`]: the latest committed position, pushed by this process's
//!   writer after each commit and polled from MySQL for other instances'.
//! - [`subscription`]: one subscriber's loop: catch up from the log, then
//!   follow the head; bounded, at the subscriber's pace.
//! - [`outbox`]: the small queue between a subscriber's loop and its gRPC
//!   response, which the loop can take back to end the stream at once.
//! - [`log_reads`]: the line subscribers wait in to read the log, so that
//!   they never take every pooled connection.
//! - [`recent`]: this process's last commits, in memory, for live
//!   subscribers.
//! - [`identity`]: whether a subscriber resumes on the history it holds.
//! - [`connections`]: accepted connections the server can cut when the
//!   shutdown grace ends.
//! - [`service`]: the tonic service.

pub mod connections;
pub mod head;
pub mod identity;
pub mod log_reads;
pub mod outbox;
pub mod recent;
pub mod service;
pub mod subscription;

use std::time::Duration;

use hotel_common::wire;

use crate::{Config, store::CommitListener};

/// What subscribers may cost this server; from the `--stream-*` flags.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open streams at most.
    pub max_subscribers: usize,
    /// Time without any message after which a subscriber gets a heartbeat.
    pub heartbeat: Duration,
    /// Bytes of events per message at most (one larger event goes alone).
    pub batch_bytes: usize,
    /// How long a ready message may wait for a subscriber that does not read.
    pub stall: Duration,
    /// Log reads running at once.
    pub log_reads: usize,
    /// Log reads waiting in line at most.
    pub read_queue: usize,
    /// How long a stream's last messages may wait for the client at shutdown.
    pub shutdown_flush: Duration,
}

impl Limits {
    /// The limits `config` sets; refuses log reads that could take every
    /// pooled connection.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        if config.stream_log_reads == 0 || config.stream_log_reads >= config.db_pool_size {
            anyhow::bail!(
                "--stream-log-reads ({}) must be at least 1 and below --db-pool-size ({}), \
                 so that other readers always find a connection",
                config.stream_log_reads,
                config.db_pool_size
            );
        }
        Ok(Self {
            max_subscribers: config.stream_max_subscribers,
            heartbeat: config.heartbeat(),
            batch_bytes: config.stream_batch_bytes.max(1),
            stall: Duration::from_millis(config.stream_stall_ms.max(1)),
            log_reads: config.stream_log_reads as usize,
            read_queue: config.stream_read_queue,
            shutdown_flush: Duration::from_millis(config.stream_shutdown_flush_ms),
        })
    }
}

/// What the writer tells after each commit: the events go into [`recent`]
/// first, then the head moves, so a subscriber woken by the head finds
/// them in memory.
#[derive(Clone)]
pub struct Publisher {
    /// This process's last commits.
    pub recent: recent::Recent,
    /// The head that wakes live subscribers.
    pub head: head::HeadSender,
}

impl CommitListener for Publisher {
    fn committed(&self, events: Vec<wire::Envelope>) {
        let Some(last) = events.last().map(|e| e.head.position) else {
            return;
        };
        self.recent.append(events);
        head::raise(&self.head, last);
    }
}
