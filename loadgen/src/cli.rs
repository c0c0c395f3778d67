//! Flag types the subcommands share: durations, server addresses, and the
//! gRPC channels built from them.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use hotel_common::{
    auth::{self, CallCredentials},
    tls::ClientFiles,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::driver::{Load, Stop};

/// How long connecting may take: TCP, and the TLS handshake again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How hard and how long to load: the flags `run` and `echo` share.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Workers calling in a closed loop; with --rate, the most calls in
    /// flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Open loop: start this many operations per second (e.g. 500 or
    /// 500/s), whatever the latency, instead of a closed loop.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// How long to load (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop after this many operations instead of after --duration.
    #[arg(long)]
    pub count: Option<u64>,

    /// Workers per HTTP/2 connection: N workers share ceil(N / this)
    /// connections.
    #[arg(long, default_value_t = 16)]
    pub workers_per_channel: usize,

    /// Deadline of each call.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    pub fn load(&self, label: &str) -> Load {
        Load {
            rate: self.rate,
            stop: match self.count {
                Some(n) => Stop::Count(n),
                None => Stop::After(self.duration),
            },
            label: label.to_owned(),
            progress: true,
        }
    }

    pub fn workers(&self) -> usize {
        self.concurrency.max(1)
    }

    pub fn channels(&self) -> usize {
        channel_count(self.workers(), self.workers_per_channel)
    }
}

/// Parses a duration such as `10s`, `500ms`, `2m` or `1.5s` (a bare number
/// is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 10s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}': use ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("'{text}' is not a usable duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a positive rate in operations per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches("/s").parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("'{text}' is not a positive rate per second")),
    }
}

/// The token and TLS flags of the subcommands that call the servers.
#[derive(Debug, Clone, Default, Args)]
pub struct AuthArgs {
    /// Bearer token sent with every call, for servers started with
    /// --auth-tokens: the command server must give it the writer role
    /// (commands, `setup`) and, for `catchup`, subscriber; the query server
    /// reader. Empty: no token.
    #[arg(
        long,
        env = "LOADGEN_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        value_parser = auth::secret::<CallCredentials>()
    )]
    pub token: CallCredentials,

    /// PEM certificate(s) of the CA that signed the servers' certificates,
    /// for https:// URLs (servers started with --tls-cert).
    #[arg(long, env = "LOADGEN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for servers that require one
    /// (--tls-client-ca); needs --tls-key.
    #[arg(long, env = "LOADGEN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "LOADGEN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl AuthArgs {
    /// The TLS files, named by their flags in errors.
    pub fn tls(&self) -> ClientFiles {
        ClientFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            flags: ["the URL", "--tls-ca", "--tls-cert", "--tls-key"],
        }
    }
}

/// A connection whose calls carry the token, if any.
pub type Conn = InterceptedService<Channel, CallCredentials>;

/// `n` separate HTTP/2 connections to `url` (TLS for https://), each call
/// with the token of `auth`. Workers share them round robin: HTTP/2
/// multiplexes calls, so a few connections carry many workers.
pub async fn connect(
    url: &str,
    n: usize,
    timeout: Duration,
    auth: &AuthArgs,
) -> anyhow::Result<Vec<Conn>> {
    Ok(connect_channels(url, n, timeout, &auth.tls())
        .await?
        .into_iter()
        .map(|channel| InterceptedService::new(channel, auth.token.clone()))
        .collect())
}

/// Like [`connect`], without a token.
pub async fn connect_channels(
    url: &str,
    n: usize,
    timeout: Duration,
    tls: &ClientFiles,
) -> anyhow::Result<Vec<Channel>> {
    let endpoint = tls
        .endpoint(url, CONNECT_TIMEOUT)?
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        // Each connect() opens its own connection; clones would share one.
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to {url}"))?,
        );
    }
    Ok(channels)
}

/// How many connections `workers` workers get with `per_channel` each.
pub fn channel_count(workers: usize, per_channel: usize) -> usize {
    workers.div_ceil(per_channel.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn rates_and_channels() {
        assert_eq!(parse_rate("250/s"), Ok(250.0));
        assert!(parse_rate("0").is_err());
        assert_eq!(channel_count(64, 16), 4);
        assert_eq!(channel_count(1, 16), 1);
        assert_eq!(channel_count(17, 16), 2);
    }
}
