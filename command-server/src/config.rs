//! Command-line flags and environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use hotel_common::auth::{self, Tokens};

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

    /// Log one JSON object per line instead of text.
    #[arg(long, env = "HOTEL_LOG_JSON")]
    pub log_json: bool,

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
