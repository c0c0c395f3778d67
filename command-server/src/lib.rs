//! The command server: hotel booking commands on MySQL/MariaDB, the event
//! log, and the event stream that query servers follow.
//!
//! # Layout
//! - [`config`]: flags and environment variables.
//! - [`domain`]: the booking rules as plain functions over plain data.
//! - [`commands`]: validation of requests, the `CommandService`, and the
//!   asynchronous `SubmitCommand` queue.
//! - [`store`]: MySQL: the batching writer, what each command writes, the
//!   event log, the command log.
//! - [`stream`]: the `EventStream` service and the head.
//! - [`error`]: the one mapping from a command's failure to a gRPC status.
//! - [`testing`]: helpers for the tests of this workspace.

pub mod commands;
pub mod config;
pub mod domain;
pub mod error;
pub mod store;
pub mod stream;
pub mod testing;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hotel_common::{auth::Role, limits::MessageLimits, pb, server, tls, wire};
use sqlx::MySqlPool;
use tokio::{net::TcpListener, sync::watch};
use tonic::{service::interceptor::InterceptedService, transport::ServerTlsConfig};

pub use config::Config;

use commands::{service::CommandApi, submitted::SubmittedQueue};
use store::{primary::Primary, writer::Writer};
use stream::{Publisher, head::HeadSender, recent::Recent, service::EventStreamApi};

/// Counters and gauges exported at 0 from the start, so that dashboards
/// and alerts see a 0 rather than no series before the first event.
fn zero_metrics() {
    for reason in ["cancelled", "deadline", "queue_timeout"] {
        metrics::counter!("writer_jobs_not_started_total", "reason" => reason).increment(0);
    }
    metrics::counter!("submitted_refused_total", "reason" => "queue_full").increment(0);
    for outcome in ["caught_up", "forgotten"] {
        metrics::counter!("writer_carried_rows_total", "outcome" => outcome).increment(0);
    }
    for counter in [
        "command_batches_total",
        "writer_fenced_sessions_total",
        "writer_read_only_refusals_total",
        "command_log_pruned_total",
        "stream_subscribers_refused_total",
        "stream_log_rewritten_total",
        "stream_events_sent_total",
        "stream_sent_bytes_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    for gauge in ["stream_subscribers", "stream_log_reads_waiting"] {
        metrics::gauge!(gauge).increment(0.0);
    }
}

/// How long cut connections may take to close after the shutdown grace.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// A command server, bound and connected, not yet serving.
pub struct CommandServer {
    listener: TcpListener,
    config: Config,
    /// TLS settings read at build (`None`: plain text).
    tls: Option<ServerTlsConfig>,
    pool: MySqlPool,
    /// The MySQL server this process works on; another one stops it.
    primary: Primary,
    head: HeadSender,
    recent: Recent,
    writer: Writer,
    /// What subscribers may cost, checked before anything starts.
    stream_limits: stream::Limits,
}

impl CommandServer {
    /// Prepares the database (creates, migrates), starts the writer and
    /// binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let limits = config.writer_limits()?;
        let tls = config.tls.load()?;
        let stream_limits = stream::Limits::from_config(&config)?;
        // First, so that what starts below can register its gauges.
        if let Some(addr) = config.metrics_addr()? {
            server::install_metrics(addr, config.limits.metrics_request_timeout())?;
        }
        zero_metrics();
        let (pool, primary) = store::prepare(&config.database_url, config.db_pool_size).await?;
        tracing::info!(server_id = primary.server_id(), "connected to MySQL");
        store::export_pool_metrics(&pool);
        let head_now = store::events::head(&pool).await?;
        let head: HeadSender = Arc::new(watch::channel(head_now).0);
        let recent = Recent::default();
        let publisher = Publisher {
            recent: recent.clone(),
            head: head.clone(),
        };
        let writer = Writer::spawn(
            store::connect_options(&config.database_url)?,
            pool.clone(),
            primary.clone(),
            limits,
            Arc::new(publisher),
        );
        let listener = TcpListener::bind(config.listen_addr).await?;
        Ok(Self {
            listener,
            config,
            tls,
            pool,
            primary,
            head,
            recent,
            writer,
            stream_limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` resolves, then ends open streams and waits
    /// for calls to finish (at most the configured grace period). Stops the
    /// same way, and returns an error, when the database URL leads to
    /// another MySQL server than the one it started on (a failover: see
    /// [`store::primary`]).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop, stopping) = watch::channel(false);
        tokio::spawn(stream::head::poll(
            self.pool.clone(),
            self.head.clone(),
            self.config.head_poll(),
            stopping.clone(),
        ));
        let queue = SubmittedQueue::new(self.config.queue_settings());
        queue.start(self.writer.clone(), self.pool.clone(), stopping.clone());
        tokio::spawn(store::retention::prune_commands(
            self.pool.clone(),
            Duration::from_secs(self.config.command_retention_secs),
            Duration::from_millis(self.config.prune_interval_ms.max(1)),
            stopping.clone(),
        ));

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::command_service_server::CommandServiceServer<CommandApi>>()
            .await;
        health
            .set_serving::<wire::server::event_stream_server::EventStreamServer<EventStreamApi>>()
            .await;
        let (reflection_v1, reflection_v1alpha) =
            server::reflection_services(&["hotel.v1.CommandService", "hotel.v1.EventStream"])?;

        let commands = CommandApi {
            writer: self.writer.clone(),
            pool: self.pool.clone(),
            queue,
        };
        let events = EventStreamApi::new(
            self.pool.clone(),
            self.recent.clone(),
            self.head.clone(),
            stopping.clone(),
            self.stream_limits.clone(),
        );

        let tokens = &self.config.auth_tokens;
        if tokens.is_empty() {
            tracing::info!("authentication is off: no --auth-tokens");
        } else {
            tracing::info!(tokens = tokens.len(), "bearer-token authentication is on");
        }
        self.config.tls.log_mode();

        let mut signal = stopping.clone();
        let limits = &self.config.limits;
        let (cutter, incoming) = stream::connections::severable(limits.incoming(self.listener));
        let serve = tls::server(limits.server(), self.tls)?
            .add_service(health_service.with_message_limits(limits))
            .add_service(reflection_v1.with_message_limits(limits))
            .add_service(reflection_v1alpha.with_message_limits(limits))
            .add_service(InterceptedService::new(
                pb::command_service_server::CommandServiceServer::new(commands)
                    .with_message_limits(limits),
                tokens.interceptor(Role::Writer),
            ))
            .add_service(InterceptedService::new(
                wire::server::event_stream_server::EventStreamServer::new(events)
                    .with_message_limits(limits),
                tokens.interceptor(Role::Subscriber),
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = signal.wait_for(|stop| *stop).await;
            });
        tokio::pin!(serve);
        let primary = self.primary.clone();
        let moved = tokio::select! {
            served = &mut serve => return Ok(served?),
            () = shutdown => None,
            why = primary.moved() => Some(why),
        };
        tracing::info!("shutting down: ending streams and waiting for open calls");
        health
            .set_not_serving::<pb::command_service_server::CommandServiceServer<CommandApi>>()
            .await;
        let _ = stop.send(true);
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        match tokio::time::timeout(grace, &mut serve).await {
            Ok(served) => served?,
            Err(_) => {
                // Clients that do not read would hold their connections forever.
                tracing::warn!(
                    ?grace,
                    "open calls did not finish in time; cutting connections"
                );
                cutter.cut();
                let _ = tokio::time::timeout(CUT_WAIT, serve).await;
            }
        }
        self.pool.close().await;
        match moved {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }
}
