//! Configuration: command-line flags, each with an environment variable and
//! a default that runs locally.

use std::{net::SocketAddr, path::PathBuf};

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

    /// Write logs as JSON lines (on stderr) instead of human-readable text.
    #[arg(long, env = "HOTEL_LOG_JSON")]
    pub log_json: bool,
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
            log_json: false,
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
    }
}
