//! Configuration: command-line flags, each with an environment variable and
//! a default that runs locally.

use std::{net::SocketAddr, path::PathBuf};

use hotel_common::auth::{self, CallCredentials, Tokens};

/// A query server of the hotel booking system: follows the command server's
/// event stream into a SQLite read model and serves `hotel.v1.QueryService`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-server", version, about, long_about = None)]
pub struct Config {
    /// Address to serve gRPC on (queries, admin, health, reflection). Port 0
    /// picks a free port; the real address is printed on stdout at start.
    #[arg(
        long,
        env = "HOTEL_QUERY_LISTEN_ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub listen_addr: SocketAddr,

    /// The command server whose event stream feeds the read model.
    #[arg(
        long,
        env = "HOTEL_COMMAND_SERVER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub command_server_url: String,

    /// SQLite file of the read model (created with its directories when
    /// missing). Each query server needs its own file.
    #[arg(
        long,
        env = "HOTEL_QUERY_DATABASE_PATH",
        default_value = "data/query-server.db"
    )]
    pub database_path: PathBuf,

    /// Address to serve Prometheus metrics on, at /metrics; "off" disables.
    #[arg(
        long,
        env = "HOTEL_QUERY_METRICS_ADDR",
        default_value = "127.0.0.1:9465",
        value_parser = parse_metrics_addr
    )]
    pub metrics_addr: MetricsAddr,

    /// Bearer tokens and their roles; empty (the default) turns
    /// authentication off.
    ///
    /// Format: TOKEN=ROLE[+ROLE...] entries separated by commas, e.g.
    /// "s3cret-b=reader,ops=admin". Roles: reader (QueryService), admin
    /// (QueryAdminService, and every other role), writer and subscriber
    /// (command-server roles). Clients send the metadata "authorization:
    /// Bearer TOKEN"; a missing or unknown token gets UNAUTHENTICATED, a
    /// token without the role PERMISSION_DENIED. Health and reflection stay
    /// open.
    #[arg(
        long,
        env = "HOTEL_AUTH_TOKENS",
        default_value = "",
        value_parser = auth::secret::<Tokens>(),
        hide_default_value = true,
        hide_env_values = true
    )]
    pub auth_tokens: Tokens,

    /// Bearer token sent to the command server (on the event stream and any
    /// other call); it needs the subscriber role there. Empty (the default)
    /// sends none.
    #[arg(
        long,
        env = "HOTEL_COMMAND_SERVER_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        value_parser = auth::secret::<CallCredentials>()
    )]
    pub command_server_token: CallCredentials,

    /// TLS of this server: --tls-cert, --tls-key, --tls-client-ca (mutual
    /// TLS), and the handshake timeout.
    #[command(flatten)]
    pub tls: hotel_common::tls::ServerArgs,

    /// PEM certificate(s) of the CA that signed the command server's
    /// certificate; needed for an https:// --command-server-url (for a public
    /// CA, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, env = "HOTEL_COMMAND_SERVER_CA")]
    pub command_server_ca: Option<PathBuf>,

    /// PEM certificate presented to a command server that requires client
    /// certificates (its --tls-client-ca); needs --command-server-client-key.
    #[arg(
        long,
        env = "HOTEL_COMMAND_SERVER_CLIENT_CERT",
        requires = "command_server_client_key"
    )]
    pub command_server_client_cert: Option<PathBuf>,

    /// PEM private key of --command-server-client-cert.
    #[arg(
        long,
        env = "HOTEL_COMMAND_SERVER_CLIENT_KEY",
        requires = "command_server_client_cert"
    )]
    pub command_server_client_key: Option<PathBuf>,

    // Caps on live queries and long reads.
    /// Most watch streams (WatchReservation, WatchAvailability) open at once;
    /// one more gets RESOURCE_EXHAUSTED. Watchers of the same reservation or
    /// availability request share one read per commit.
    #[arg(
        long,
        env = "HOTEL_QUERY_MAX_WATCHERS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_watchers: u32,

    /// Most rows one page of ListReservations or SearchAvailability
    /// examines (reservations, or room types with their nights). A filter
    /// that matches few of many rows then gets a short (even empty) page
    /// with a next_page_token instead of holding a worker for all of them.
    #[arg(
        long,
        env = "HOTEL_QUERY_SCAN_LIMIT",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub scan_limit: u32,

    /// Most per-night counts (rows of the read model's nights) held in
    /// memory for GetAvailability and SearchAvailability, about 20 bytes
    /// each. Past it (or at 0) those queries read the SQLite file instead,
    /// slower but the same answers, until the next start or rebuild.
    #[arg(
        long,
        env = "HOTEL_QUERY_MAX_NIGHTS_IN_MEMORY",
        default_value_t = crate::read_model::memory::DEFAULT_MAX_NIGHTS
    )]
    pub max_nights_in_memory: u64,

    /// Seconds the read model keeps each reservation change (the rows
    /// WatchReservation replays when several changes land in one commit);
    /// older ones are pruned, 1,000 per transaction, between batches. A
    /// watcher further behind than this gets the current state and the
    /// changes still kept.
    #[arg(
        long,
        env = "HOTEL_CHANGE_RETENTION_SECS",
        default_value_t = 7 * 24 * 3600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub change_retention_secs: u64,

    /// Milliseconds between two prunes of old reservation changes (sooner
    /// while more than one page is due).
    #[arg(
        long,
        env = "HOTEL_CHANGE_PRUNE_INTERVAL_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub change_prune_interval_ms: u64,

    /// MiB of write-ahead log at which the read model's checkpoint thread
    /// holds the projector off for a moment (usually 5-20 ms) to start the
    /// WAL over; the WAL file is cut back to this size then. Smaller: a
    /// smaller WAL file, more frequent holds.
    #[arg(
        long,
        env = "HOTEL_WAL_RESTART_MIB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub wal_restart_mib: u32,

    /// Longest wait, in milliseconds, of a projector commit that leaves the
    /// WAL past twice --wal-restart-mib, for the checkpoint thread to start
    /// it over (once per time the WAL starts over; it falls behind only on
    /// a machine too busy to run it). 0: never wait, and let the WAL grow.
    #[arg(long, env = "HOTEL_WAL_CATCH_UP_WAIT_MS", default_value_t = 2_000)]
    pub wal_catch_up_wait_ms: u64,

    /// Rebuild the read model from position 0 by itself when the command
    /// server says the log was rewritten (LOG_REWRITTEN: a restore, a
    /// failover to a replica that missed commits). Off: the read model stops
    /// and waits for an operator's RebuildReadModel. Either way it answers
    /// from the history it has (as_of_position) until the new one is in.
    #[arg(long, env = "HOTEL_REBUILD_ON_REWRITE")]
    pub rebuild_on_rewrite: bool,

    /// Tracing with OpenTelemetry: --otlp-endpoint, --trace-sample-ratio.
    #[command(flatten)]
    pub tracing: hotel_common::telemetry::TracingArgs,

    /// Write logs as JSON lines (on stderr) instead of human-readable text.
    #[arg(long, env = "HOTEL_LOG_JSON")]
    pub log_json: bool,

    /// Message sizes, timeouts, streams and connections.
    #[command(flatten)]
    pub limits: hotel_common::limits::ServerLimits,
}

/// An address to serve metrics on, or none (named so clap takes "off" as a
/// value rather than treating the flag as optional).
pub type MetricsAddr = Option<SocketAddr>;

fn parse_metrics_addr(value: &str) -> Result<MetricsAddr, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|error| format!("{error}: expected host:port or \"off\""))
}

impl Config {
    /// Settings for tests: any free port, no metrics listener.
    pub fn for_tests(database_path: PathBuf, command_server_url: String) -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            command_server_url,
            database_path,
            metrics_addr: None,
            auth_tokens: Tokens::default(),
            command_server_token: CallCredentials::default(),
            tls: hotel_common::tls::ServerArgs::default(),
            command_server_ca: None,
            command_server_client_cert: None,
            command_server_client_key: None,

            max_watchers: 4096,
            scan_limit: 1000,
            max_nights_in_memory: crate::read_model::memory::DEFAULT_MAX_NIGHTS,
            change_retention_secs: 7 * 24 * 3600,
            change_prune_interval_ms: 60_000,
            wal_restart_mib: 64,
            wal_catch_up_wait_ms: 2_000,
            rebuild_on_rewrite: false,
            log_json: false,
            tracing: hotel_common::telemetry::TracingArgs::default(),
            limits: hotel_common::limits::ServerLimits::default(),
        }
    }

    /// How long the read model keeps reservation changes.
    pub fn change_retention(&self) -> crate::read_model::retention::ChangeRetention {
        crate::read_model::retention::ChangeRetention {
            keep: std::time::Duration::from_secs(self.change_retention_secs),
            every: std::time::Duration::from_millis(self.change_prune_interval_ms),
        }
    }

    /// How the read model's writers bound their WAL.
    pub fn wal(&self) -> crate::read_model::WalSettings {
        crate::read_model::WalSettings {
            restart_at: i64::from(self.wal_restart_mib) * 1024 * 1024,
            catch_up_wait: std::time::Duration::from_millis(self.wal_catch_up_wait_ms),
        }
    }

    /// The TLS files of the connection to the command server.
    pub fn command_server_tls(&self) -> hotel_common::tls::ClientFiles {
        hotel_common::tls::ClientFiles {
            ca: self.command_server_ca.clone(),
            cert: self.command_server_client_cert.clone(),
            key: self.command_server_client_key.clone(),
            flags: [
                "--command-server-url",
                "--command-server-ca",
                "--command-server-client-cert",
                "--command-server-client-key",
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_run_locally() {
        let config = Config::try_parse_from(["query-server"]).expect("defaults parse");
        assert_eq!(config.listen_addr.to_string(), "127.0.0.1:50052");
        assert_eq!(config.command_server_url, "http://127.0.0.1:50051");
        assert_eq!(
            config.metrics_addr,
            Some("127.0.0.1:9465".parse().expect("addr"))
        );
        let config =
            Config::try_parse_from(["query-server", "--metrics-addr", "off"]).expect("off parses");
        assert_eq!(config.metrics_addr, None);
        assert!(config.auth_tokens.is_empty());
        assert!(!config.command_server_token.has_token());
        assert_eq!(config.max_watchers, 4096);
        assert_eq!(config.scan_limit, 1000);
    }

    #[test]
    fn caps_parse_and_refuse_zero() {
        let config =
            Config::try_parse_from(["query-server", "--max-watchers", "3", "--scan-limit", "7"])
                .expect("caps parse");
        assert_eq!((config.max_watchers, config.scan_limit), (3, 7));
        for flag in ["--max-watchers", "--scan-limit"] {
            Config::try_parse_from(["query-server", flag, "0"]).expect_err("0 is refused");
        }
    }

    #[test]
    fn the_nights_in_memory_cap_parses_and_zero_turns_it_off() {
        let config = Config::try_parse_from(["query-server"]).expect("defaults parse");
        assert_eq!(config.max_nights_in_memory, 500_000);
        let config = Config::try_parse_from(["query-server", "--max-nights-in-memory", "0"])
            .expect("0 parses: nothing held");
        assert_eq!(config.max_nights_in_memory, 0);
        Config::try_parse_from(["query-server", "--max-nights-in-memory", "-1"])
            .expect_err("a negative cap is refused");
    }

    #[test]
    fn auth_flags_parse_and_report_bad_specs() {
        let config = Config::try_parse_from([
            "query-server",
            "--auth-tokens",
            "r=reader,ops=admin",
            "--command-server-token",
            "sub",
        ])
        .expect("auth flags parse");
        assert_eq!(config.auth_tokens.len(), 2);
        assert!(config.command_server_token.has_token());
        let error = Config::try_parse_from(["query-server", "--auth-tokens", "r=reader,oops"])
            .expect_err("a bad spec is refused")
            .to_string();
        assert!(error.contains("entry 2"), "{error}");
        assert!(!error.contains("r=reader"), "the spec is secret: {error}");
    }
}
