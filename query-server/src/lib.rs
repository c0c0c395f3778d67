//! The query server of the hotel booking system: it follows the command
//! server's event stream into its own SQLite read model and answers
//! `hotel.v1.QueryService` from it.
//!
//! # Layout
//! - [`config`]: flags and environment variables.
//! - [`projector`]: the stream subscriber. Subscribes from the checkpoint,
//!   accepts only the next position, commits events with the checkpoint in
//!   one transaction, resubscribes with backoff; publishes the checkpoint,
//!   state, health and lag ([`projector::Projection`]).
//! - [`read_model`]: the SQLite file: migrations, `apply_event`, the
//!   queries' SQL, the writer and the read-only readers.
//! - [`queries`]: the tonic handlers of `QueryService` and
//!   `QueryAdminService`: validation, paging tokens, live queries.
//! - [`freshness`]: waiting for `min_position` on the checkpoint watch.
//! - [`rebuild`]: rebuilding the read model into a new file and swapping it in.
//! - [`QueryServer`]: wires it together; tests run it in process.

pub mod config;
pub mod freshness;
pub mod projector;
pub mod queries;
pub mod read_model;
pub mod rebuild;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use hotel_common::{
    auth::{Role, Tokens},
    limits::{MessageLimits, ServerLimits},
    pb::query_admin_service_server::QueryAdminServiceServer,
    server::{install_metrics, reflection_services},
    tls,
    wire::server::query_service_server::QueryServiceServer,
};
use tokio::{net::TcpListener, sync::watch};
use tonic::{service::interceptor::InterceptedService, transport::ServerTlsConfig};
use tonic_health::{ServingStatus, server::HealthReporter};

pub use config::Config;

use crate::{
    projector::{CommandServerChannel, Projection, ProjectorHandle},
    queries::{Admin, Queries, Watches},
    read_model::{ReadModel, Writer},
    rebuild::{LiveProjector, Rebuilder},
};

/// Series exported at 0 from the start, so that dashboards and alerts see a
/// 0 rather than no series before the first event.
fn zero_metrics() {
    for reason in [
        projector::UNKNOWN_EVENT_KIND,
        projector::EVENT_REFUSED,
        projector::LOG_REWRITTEN,
    ] {
        metrics::gauge!("projection_stopped", "reason" => reason).set(0.0);
    }
    metrics::counter!("query_watch_rereads_total").increment(0);
    metrics::counter!("query_watches_refused_total").increment(0);
    metrics::gauge!("query_watches_open").increment(0.0);
}

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long connecting to the command server may take: TCP, and the TLS
/// handshake again.
const COMMAND_SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A query server, bound and ready to serve.
pub struct QueryServer {
    /// The bound gRPC listener.
    listener: TcpListener,
    /// The address actually bound (the port is real even when 0 was asked).
    local_addr: SocketAddr,
    /// The command server, for the event stream (connects lazily, reconnects;
    /// sends `--command-server-token`).
    channel: CommandServerChannel,
    /// The tokens this server accepts (empty: authentication off).
    tokens: Tokens,
    /// TLS settings of this server, read at build (`None`: plain text).
    tls: Option<ServerTlsConfig>,
    /// The writer of the read model, handed to the projector at start.
    writer: Writer,
    /// Readers of the read model.
    read_model: Arc<ReadModel>,
    /// The live projection's checkpoint and status.
    projection: Arc<Projection>,
    /// Open live queries (capped by `--max-watchers`) and their shared feeds.
    watches: Arc<Watches>,
    /// Most rows one listing or search page examines.
    scan_limit: u32,
    /// Rebuild by itself when the log was rewritten.
    rebuild_on_rewrite: bool,
    /// Health of the gRPC services.
    health: HealthReporter,
    /// The health service to serve.
    health_service:
        tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    /// Message sizes, timeouts, streams and connections.
    limits: ServerLimits,
}

impl QueryServer {
    /// Opens (or creates) the read model, binds the listener and prepares
    /// everything; nothing is served until [`QueryServer::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let tls = config.tls.load()?;
        let command_server = config
            .command_server_tls()
            .endpoint(&config.command_server_url, COMMAND_SERVER_CONNECT_TIMEOUT)?;
        if let Some(addr) = config.metrics_addr {
            install_metrics(addr, config.limits.metrics_request_timeout())
                .with_context(|| format!("serving metrics on {addr}"))?;
        }
        let path = config.database_path.clone();
        let mut writer = tokio::task::spawn_blocking(move || {
            rebuild::remove_abandoned(&path);
            Writer::open(&path)
        })
        .await??;
        let read_model = Arc::new(
            ReadModel::new(writer.path())
                .with_change_retention(config.change_retention())
                .with_wal(config.wal())
                .with_max_nights_in_memory(config.max_nights_in_memory),
        );
        read_model.configure(&mut writer)?;
        let checkpoint = writer.checkpoint()?;
        let attaching = read_model.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            attaching.attach(&mut writer);
            writer
        })
        .await?;
        let health = HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        let projection = Arc::new(Projection::new(checkpoint.clone(), Some(health.clone())));
        projection.init_health().await;
        zero_metrics();
        let sampled = Arc::downgrade(&projection);
        hotel_common::server::sample_at_scrape(move || {
            sampled.upgrade().map(|p| p.sample_metrics()).is_some()
        });
        let channel = command_server
            .connect_timeout(COMMAND_SERVER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let channel = InterceptedService::new(channel, config.command_server_token.clone());
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        tracing::info!(
            %local_addr,
            database = %config.database_path.display(),
            checkpoint = checkpoint.position,
            command_server = config.command_server_url,
            auth = if config.auth_tokens.is_empty() { "off" } else { "bearer tokens" },
            sends_token = config.command_server_token.has_token(),
            "query server ready"
        );
        config.tls.log_mode();
        Ok(Self {
            listener,
            local_addr,
            channel,
            tokens: config.auth_tokens,
            tls,
            writer,
            read_model,
            projection,
            watches: Arc::new(Watches::new(config.max_watchers as usize)),
            scan_limit: config.scan_limit,
            rebuild_on_rewrite: config.rebuild_on_rewrite,
            health,
            health_service,
            limits: config.limits,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live projection (checkpoint and status), for tests and tools.
    pub fn projection(&self) -> Arc<Projection> {
        self.projection.clone()
    }

    /// The open live queries, for tests and tools.
    pub fn watches(&self) -> Arc<Watches> {
        self.watches.clone()
    }

    /// Runs the projector and serves until `shutdown` resolves; then ends
    /// live queries, gives in-flight requests [`SHUTDOWN_GRACE`], stops the
    /// projector after its current commit and closes the read model.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stopping_sender, stopping) = watch::channel(false);
        let live: LiveProjector = Arc::new(tokio::sync::Mutex::new(Some(ProjectorHandle::spawn(
            self.channel.clone(),
            self.writer,
            self.projection.clone(),
        ))));
        let queries = Queries::new(
            self.read_model.clone(),
            self.projection.clone(),
            stopping.clone(),
            self.watches.clone(),
            self.scan_limit,
        );
        let rebuilder = Arc::new(Rebuilder::new(
            self.channel.clone(),
            self.read_model.clone(),
            self.projection.clone(),
            live.clone(),
            stopping.clone(),
        ));
        if self.rebuild_on_rewrite {
            tokio::spawn(rebuild::rebuild_when_rewritten(
                rebuilder.clone(),
                self.projection.watch_stops(),
                stopping.clone(),
            ));
        }
        let admin = Admin::new(rebuilder, self.projection.clone());
        let (reflection_v1, reflection_v1alpha) =
            reflection_services(&["hotel.v1.QueryService", "hotel.v1.QueryAdminService"])?;
        let mut stopped = stopping.clone();
        let limits = &self.limits;
        let serve = tls::server(limits.server(), self.tls)?
            .add_service(self.health_service.with_message_limits(limits))
            .add_service(reflection_v1.with_message_limits(limits))
            .add_service(reflection_v1alpha.with_message_limits(limits))
            .add_service(InterceptedService::new(
                QueryServiceServer::new(queries).with_message_limits(limits),
                self.tokens.interceptor(Role::Reader),
            ))
            .add_service(InterceptedService::new(
                QueryAdminServiceServer::new(admin).with_message_limits(limits),
                self.tokens.interceptor(Role::Admin),
            ))
            .serve_with_incoming_shutdown(limits.incoming(self.listener), async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
        tokio::pin!(serve);
        let served = tokio::select! {
            served = &mut serve => served.context("serving gRPC"),
            () = shutdown => {
                tracing::info!("shutting down");
                for service in ["", "hotel.v1.QueryService"] {
                    self.health.set_service_status(service, ServingStatus::NotServing).await;
                }
                stopping_sender.send_replace(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
                    Ok(served) => served.context("serving gRPC"),
                    Err(_) => {
                        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; dropping them");
                        Ok(())
                    }
                }
            }
        };
        stopping_sender.send_replace(true);
        let projector = live.lock().await.take();
        if let Some(projector) = projector {
            let writer = projector.stop().await?;
            let read_model = self.read_model.clone();
            tokio::task::spawn_blocking(move || {
                read_model.close_readers();
                writer.close()
            })
            .await??;
        }
        tracing::info!("query server stopped");
        served
    }
}
