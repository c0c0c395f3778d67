//! Command-line flags and environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use hotel_common::auth::{self, Tokens};

use crate::{
    commands::submitted::QueueSettings,
    store::{command_log::ClaimOrder, writer::Limits},
};

/// The command server: hotel booking commands on MySQL/MariaDB, and the
/// stream of their events.
#[derive(Debug, Clone, Parser)]
#[command(name = "command-server", version)]
pub struct Config {
    /// Address for gRPC (commands, event stream, health, reflection). Port 0
    /// picks a free port; the real address is printed on start.
    #[arg(
        long,
        env = "HOTEL_COMMAND_LISTEN_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub listen_addr: SocketAddr,

    /// MySQL/MariaDB URL. The database is created if missing and migrated
    /// at start.
    #[arg(
        long,
        env = "HOTEL_DATABASE_URL",
        default_value = "mysql://hotel:hotel@127.0.0.1:3306/hotel",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Address of the Prometheus metrics endpoint (`/metrics`); "off"
    /// disables it.
    #[arg(
        long,
        env = "HOTEL_COMMAND_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: String,

    /// Connections for readers (event stream, command status). The writer
    /// has one more of its own.
    #[arg(long, env = "HOTEL_COMMAND_DB_POOL", default_value_t = 16)]
    pub db_pool_size: u32,

    /// Milliseconds of quiet after which a subscriber gets a heartbeat.
    #[arg(long, env = "HOTEL_HEARTBEAT_MS", default_value_t = 5000)]
    pub heartbeat_ms: u64,

    /// Milliseconds between polls of MySQL's head while anyone subscribes;
    /// bounds how late commits of other instances reach this one's
    /// subscribers (this instance's own commits are pushed at once).
    #[arg(long, env = "HOTEL_HEAD_POLL_MS", default_value_t = 20)]
    pub head_poll_ms: u64,

    /// Seconds to wait for open calls to end at shutdown.
    #[arg(long, env = "HOTEL_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Bearer tokens and their roles; empty (the default) turns
    /// authentication off.
    ///
    /// Format: TOKEN=ROLE[+ROLE...] entries separated by commas, e.g.
    /// "s3cret-a=writer+subscriber,ops=admin". Roles: writer (CommandService),
    /// subscriber (EventStream, what query servers need), reader (queries,
    /// on query servers), admin (every role). Clients send the metadata
    /// "authorization: Bearer TOKEN"; a missing or unknown token gets
    /// UNAUTHENTICATED, a token without the role PERMISSION_DENIED. Health
    /// and reflection stay open.
    #[arg(
        long,
        env = "HOTEL_AUTH_TOKENS",
        default_value = "",
        value_parser = auth::secret::<Tokens>(),
        hide_default_value = true,
        hide_env_values = true
    )]
    pub auth_tokens: Tokens,

    /// Milliseconds a connection to MySQL may take to open (the writer's,
    /// session set-up included).
    #[arg(long, env = "HOTEL_DB_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub db_connect_timeout_ms: u64,

    /// Milliseconds a batch of commands waits for the write lock (the
    /// `event_head` row) before its commands are retried or answered
    /// UNAVAILABLE (nothing ran).
    #[arg(long, env = "HOTEL_LOCK_WAIT_MS", default_value_t = 5000)]
    pub lock_wait_ms: u64,

    /// Milliseconds a batch may run once it holds the write lock, commit
    /// included; past it the writer drops its connection (MySQL rolls the
    /// batch back) and callers get UNAVAILABLE.
    #[arg(long, env = "HOTEL_BATCH_TIMEOUT_MS", default_value_t = 2000)]
    pub batch_timeout_ms: u64,

    /// Fencing lease, in milliseconds: a MySQL session that holds the write
    /// lock this long (a paused or stuck command server, a forgotten
    /// console) is ended, so writes stall at most about this long. Must be
    /// longer than --batch-timeout-ms.
    #[arg(long, env = "HOTEL_FENCE_AFTER_MS", default_value_t = 3000)]
    pub fence_after_ms: u64,

    /// Milliseconds a command may wait for the writer before it is shed
    /// with UNAVAILABLE (not run); a caller's shorter deadline wins.
    #[arg(long, env = "HOTEL_WRITER_QUEUE_TIMEOUT_MS", default_value_t = 5000)]
    pub writer_queue_timeout_ms: u64,

    /// Seconds the writer's MySQL session may sit idle before MySQL closes
    /// it (`wait_timeout`); the writer reconnects when needed.
    #[arg(long, env = "HOTEL_DB_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    pub db_idle_timeout_secs: u64,

    /// Most log events read to check a SetRoomInventory precondition
    /// "unchanged since position P" (the room type has no index in the log;
    /// the check runs under the write lock): a read more events behind the
    /// head is refused as stale (ABORTED, STALE_READ), to be read again.
    #[arg(long, env = "HOTEL_PRECONDITION_SCAN_LIMIT", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub precondition_scan_limit: i64,

    /// Most night counts (room type and night) the writer keeps from one
    /// batch to the next, so that the next batch need not read them again
    /// (only while no other command server has committed in between); past
    /// it, it keeps none and reads what each batch needs. 0 keeps none.
    #[arg(long, env = "HOTEL_WRITER_CARRIED_NIGHTS", default_value_t = 100_000)]
    pub writer_carried_nights: usize,

    /// Most events of other command servers on the same database a batch
    /// reads, with its lock, to bring the room types and night counts it
    /// carries up to date with their commits (instead of reading those
    /// again). When more came in between, or with 0, it forgets what it
    /// carries and reads what it needs.
    #[arg(long, env = "HOTEL_WRITER_CATCH_UP_EVENTS", default_value_t = 1_000)]
    pub writer_catch_up_events: usize,

    /// Largest command request accepted, in bytes (protobuf-encoded),
    /// checked before anything else; at most 65535 (the command log stores
    /// every request whole). Larger requests get INVALID_ARGUMENT.
    #[arg(long, env = "HOTEL_MAX_COMMAND_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(256..=65535))]
    pub max_command_bytes: u32,

    /// Submitted commands queued (all instances) past which SubmitCommand
    /// answers RESOURCE_EXHAUSTED and stores nothing.
    #[arg(long, env = "HOTEL_QUEUE_MAX_DEPTH", default_value_t = 100_000)]
    pub queue_max_depth: i64,

    /// Submitted commands this instance runs at a time.
    #[arg(long, env = "HOTEL_QUEUE_IN_FLIGHT", default_value_t = 64)]
    pub queue_in_flight: usize,

    /// Milliseconds a claim on a submitted command lasts; when its instance
    /// stops, another takes the command over after this.
    #[arg(long, env = "HOTEL_QUEUE_CLAIM_MS", default_value_t = 30_000)]
    pub queue_claim_ms: i64,

    /// Priority ageing: a queued command gains one priority point per this
    /// many milliseconds of waiting (up to 100), so the lowest priority
    /// still runs under a steady high-priority load.
    #[arg(long, env = "HOTEL_QUEUE_AGEING_MS", default_value_t = 1000)]
    pub queue_ageing_ms: i64,

    /// Milliseconds between looks at the shared queue for commands
    /// submitted elsewhere and lapsed claims.
    #[arg(long, env = "HOTEL_QUEUE_POLL_MS", default_value_t = 500)]
    pub queue_poll_ms: u64,

    /// Seconds a finished command's record (what makes a retry with the
    /// same command_id replay its outcome) is kept; then it is pruned and
    /// a retry runs as a new command. Default 7 days.
    #[arg(long, env = "HOTEL_COMMAND_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub command_retention_secs: u64,

    /// Milliseconds between prunes of the command log.
    #[arg(long, env = "HOTEL_PRUNE_INTERVAL_MS", default_value_t = 60_000)]
    pub prune_interval_ms: u64,

    /// TLS: --tls-cert, --tls-key, --tls-client-ca (mutual TLS), and the
    /// handshake timeout.
    #[command(flatten)]
    pub tls: hotel_common::tls::ServerArgs,

    /// Tracing with OpenTelemetry: --otlp-endpoint, --trace-sample-ratio.
    #[command(flatten)]
    pub tracing: hotel_common::telemetry::TracingArgs,

    /// Log one JSON object per line instead of text.
    #[arg(long, env = "HOTEL_LOG_JSON")]
    pub log_json: bool,

    /// Message sizes, timeouts, streams and connections.
    #[command(flatten)]
    pub limits: hotel_common::limits::ServerLimits,

    // Event stream limits: what one subscriber, or a crowd of them, may cost.
    /// Most open `Subscribe` streams; past it `Subscribe` answers
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "HOTEL_STREAM_MAX_SUBSCRIBERS", default_value_t = 1000)]
    pub stream_max_subscribers: usize,

    /// Most bytes of events in one stream message (one event larger than
    /// this still goes alone). A stream buffers at most a few such messages,
    /// so this bounds what a slow subscriber costs the server.
    #[arg(long, env = "HOTEL_STREAM_BATCH_BYTES", default_value_t = 32 * 1024)]
    pub stream_batch_bytes: usize,

    /// Milliseconds a subscriber may leave a ready message unread before its
    /// stream ends with RESOURCE_EXHAUSTED, naming the position to resume from.
    #[arg(long, env = "HOTEL_STREAM_STALL_MS", default_value_t = 30_000)]
    pub stream_stall_ms: u64,

    /// Event log reads of subscribers (catch-up, other instances' commits)
    /// running at once; must be below --db-pool-size so that commands'
    /// status reads and GetHead always find a connection.
    #[arg(long, env = "HOTEL_STREAM_LOG_READS", default_value_t = 4)]
    pub stream_log_reads: u32,

    /// Subscribers that may wait in line for a log read; one arriving past
    /// the line ends with RESOURCE_EXHAUSTED, naming the position to resume
    /// from.
    #[arg(long, env = "HOTEL_STREAM_READ_QUEUE", default_value_t = 1000)]
    pub stream_read_queue: usize,

    /// Milliseconds a subscriber has at shutdown to take its stream's last
    /// messages; then its connection is cut, so that a client that does not
    /// read does not hold the shutdown for the whole grace.
    #[arg(long, env = "HOTEL_STREAM_SHUTDOWN_FLUSH_MS", default_value_t = 1000)]
    pub stream_shutdown_flush_ms: u64,
}

impl Config {
    /// A configuration with every default and the given database, for tests.
    pub fn for_tests(database_url: &str) -> Self {
        let mut config = Self::parse_from(["command-server"]);
        config.listen_addr = "127.0.0.1:0".parse().expect("a valid literal address");
        config.database_url = database_url.to_owned();
        config.metrics_addr = "off".to_owned();
        config.heartbeat_ms = 200;
        config
    }

    /// The bounds of the write path; an error when they contradict.
    pub fn writer_limits(&self) -> anyhow::Result<Limits> {
        if self.fence_after_ms <= self.batch_timeout_ms {
            anyhow::bail!(
                "--fence-after-ms ({}) must be longer than --batch-timeout-ms ({}): a live writer must give up before its peers end its session",
                self.fence_after_ms,
                self.batch_timeout_ms
            );
        }
        let ms = Duration::from_millis;
        Ok(Limits {
            connect_timeout: ms(self.db_connect_timeout_ms.max(1)),
            lock_wait: ms(self.lock_wait_ms.max(1)),
            batch_timeout: ms(self.batch_timeout_ms.max(1)),
            fence_after: ms(self.fence_after_ms),
            queue_timeout: ms(self.writer_queue_timeout_ms.max(1)),
            idle_timeout: Duration::from_secs(self.db_idle_timeout_secs.max(1)),
            precondition_scan_limit: self.precondition_scan_limit,
            carried_nights: self.writer_carried_nights,
            catch_up_events: self.writer_catch_up_events,
        })
    }

    /// How the submitted-command queue runs.
    pub fn queue_settings(&self) -> QueueSettings {
        QueueSettings {
            in_flight: self.queue_in_flight.max(1),
            max_depth: self.queue_max_depth,
            order: ClaimOrder {
                ageing_ms: self.queue_ageing_ms.max(1),
                lease_ms: self.queue_claim_ms.max(1),
            },
            poll: Duration::from_millis(self.queue_poll_ms.max(1)),
            max_command_bytes: self.max_command_bytes as usize,
        }
    }

    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.metrics_addr.as_str() {
            "" | "off" => Ok(None),
            addr => Ok(Some(addr.parse()?)),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(10))
    }

    pub fn head_poll(&self) -> Duration {
        Duration::from_millis(self.head_poll_ms.max(1))
    }
}
