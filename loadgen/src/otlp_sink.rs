//! `loadgen otlp-sink`: an OpenTelemetry collector that only counts. It
//! accepts OTLP/gRPC trace exports (the servers' `--otlp-endpoint`), keeps
//! nothing, and says at exit how many spans it was sent: the benchmark runs
//! the servers with tracing on against it, so the figure includes the
//! export's cost but not a real collector's.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use clap::Args;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

#[derive(Debug, Clone, Args)]
pub struct OtlpSinkArgs {
    /// Address to serve on; port 0 picks a free one. The real address is
    /// printed on stdout ("... listening on ADDR").
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Spans and export calls received.
#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    exports: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct Sink {
    counts: Arc<Counts>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len() as u64)
            .sum();
        self.counts.spans.fetch_add(spans, Ordering::Relaxed);
        self.counts.exports.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves until SIGINT or SIGTERM, then prints what it received
/// ("received N spans in M exports").
pub async fn serve(args: OtlpSinkArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Handled before the port is announced (see `shutdown_signal`).
    let stop = hotel_common::server::shutdown_signal();
    // Scripts read this line to learn the port.
    println!("loadgen otlp-sink listening on {}", listener.local_addr()?);
    let sink = Sink::default();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    println!(
        "received {} spans in {} exports",
        sink.counts.spans.load(Ordering::Relaxed),
        sink.counts.exports.load(Ordering::Relaxed)
    );
    Ok(())
}
