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

    /// Message sizes, timeouts, streams and connections.
    #[command(flatten)]
    pub limits: hotel_common::limits::ServerLimits,
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
