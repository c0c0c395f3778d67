//! Plumbing every gRPC server of the project shares: reflection, metrics,
//! and the shutdown signal.

use std::{
    cell::RefCell,
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusHandle};
use tonic::{
    Code,
    codegen::{Bytes, http::HeaderMap},
};

use crate::{pb::FILE_DESCRIPTOR_SET, process_metrics};

/// Reflection services (v1 and v1alpha), so `grpcurl` needs no proto files,
/// advertising `services` (fully-qualified names) and the health service.
pub fn reflection_services(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let v1 = reflection_builder(services).build_v1()?;
    let v1alpha = reflection_builder(services).build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// A reflection builder with our descriptor sets, advertising `services` and
/// the health service. Each call builds its own from scratch.
///
/// Do not turn this back into a closure taking the builder by value, called
/// as `advertise(Builder::configure())` once per version: rustc 1.95's MIR
/// GVN pass merges the two identical `Builder::configure()` temporaries
/// (rust-lang/rust#155241), so the second builder started as a bitwise copy
/// of the first one's name list after it had been moved into the v1 service.
/// Both services then owned the same strings and the v1 service a dangling
/// buffer: a double free when the servers dropped them at shutdown (SIGABRT
/// or SIGSEGV instead of exit 0). `#[inline(never)]` keeps one
/// `Builder::configure()` per MIR body, so there is nothing to merge.
#[inline(never)]
fn reflection_builder(services: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.BadRequest, so grpcurl can show error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
    for service in services.iter().chain(&["grpc.health.v1.Health"]) {
        builder = builder.with_service_name(*service);
    }
    builder
}

/// Buckets of every `*_seconds` histogram: from 100 µs (a point read) to
/// 10 s (a stalled commit), so latency aggregates across instances.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of the writer's batch sizes (commands per transaction).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// `# HELP` text of every metric either server exports (docs/metrics.md
/// lists them with their labels).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_requests_total",
        "gRPC calls answered, by method and status code"
    );
    describe_counter!(
        "grpc_auth_refused_total",
        "Calls refused by bearer-token authentication, by role needed and code"
    );
    describe_histogram!(
        "grpc_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a call's arrival to its answer, by method"
    );
    describe_counter!(
        "command_batches_total",
        "Command transactions committed by the writer"
    );
    describe_histogram!("command_batch_size", "Commands per committed transaction");
    describe_histogram!(
        "writer_lock_wait_seconds",
        metrics::Unit::Seconds,
        "Time a batch waited for the write lock (the event_head row), with the reads sent in the same round trip"
    );
    describe_counter!(
        "writer_fenced_sessions_total",
        "MySQL sessions ended for holding the write lock past --fence-after-ms"
    );
    describe_counter!(
        "writer_carried_rows_total",
        "Batches that found another command server's commits since the writer's last one, by what became of the rows it carried: caught_up (from those commits' events) or forgotten (read again)"
    );
    describe_counter!(
        "writer_read_only_refusals_total",
        "Batches that found the database read-only at the write lock and wrote nothing"
    );
    describe_counter!(
        "writer_jobs_not_started_total",
        "Commands not run: caller cancelled, deadline passed or queue timeout, by reason"
    );
    describe_histogram!(
        "writer_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Time a committed batch held the write lock, from taking it to the commit"
    );
    describe_gauge!(
        "writer_queue_depth",
        "Commands waiting for the writer, not yet in a batch (sampled at scrape)"
    );
    describe_gauge!(
        "db_pool_connections",
        "MySQL reader pool connections, by state (in_use, idle; sampled at scrape)"
    );
    describe_gauge!(
        "db_pool_max_connections",
        "Most connections the MySQL reader pool opens (--db-pool-size)"
    );
    describe_counter!(
        "command_log_pruned_total",
        "Command records deleted after the retention window"
    );
    describe_gauge!(
        "submitted_queue_depth",
        "Submitted commands queued (PENDING or RUNNING) on the database"
    );
    describe_gauge!(
        "submitted_queue_pending",
        "Submitted commands waiting to be claimed (PENDING) on the database, by priority"
    );
    describe_gauge!(
        "submitted_queue_running",
        "Submitted commands claimed and running (RUNNING) on the database, all instances"
    );
    describe_counter!(
        "submitted_refused_total",
        "SubmitCommand calls refused, by reason (queue_full)"
    );
    describe_gauge!(
        "event_log_head",
        "Latest committed position this server knows"
    );
    describe_gauge!("stream_subscribers", "Open Subscribe streams");
    describe_counter!(
        "stream_subscribers_refused_total",
        "Subscribe calls refused at --stream-max-subscribers"
    );
    describe_counter!(
        "stream_subscribers_ended_total",
        "Subscribe streams ended, by status code name"
    );
    describe_counter!(
        "stream_messages_sent_total",
        "Subscribe messages handed to the transport, by kind (events, caught_up, heartbeat)"
    );
    describe_counter!(
        "stream_events_sent_total",
        "Events handed to the transport in Subscribe messages"
    );
    describe_counter!(
        "stream_sent_bytes_total",
        metrics::Unit::Bytes,
        "Encoded bytes of the Subscribe messages handed to the transport"
    );
    describe_gauge!(
        "stream_log_reads_waiting",
        "Subscribers waiting in line for a log read (--stream-log-reads)"
    );
    describe_counter!(
        "stream_log_rewritten_total",
        "Subscriptions refused because the subscriber holds another history (LOG_REWRITTEN)"
    );
    describe_gauge!(
        "projection_checkpoint",
        "Last position applied to the read model"
    );
    describe_gauge!("projection_head", "Latest head the command server reported");
    describe_gauge!(
        "projection_lag_events",
        "Events committed but not yet applied"
    );
    describe_gauge!(
        "projection_lag_seconds",
        "Seconds since the commit of the oldest event not yet applied; 0 when caught up (sampled at scrape)"
    );
    describe_gauge!(
        "projection_last_event_timestamp_seconds",
        "Commit time of the last applied event, seconds since the Unix epoch"
    );
    describe_histogram!(
        "projection_commit_to_applied_seconds",
        metrics::Unit::Seconds,
        "Per applied batch: from the commit of its last event on the command server to its commit in the read model"
    );
    describe_gauge!(
        "projection_state",
        "1 for the read model's current state (live, catching_up, disconnected, stopped), 0 for the others"
    );
    describe_gauge!(
        "projection_stopped",
        "1 while the read model is stopped before an event, by reason"
    );
    describe_counter!(
        "read_model_changes_pruned_total",
        "Reservation changes pruned after --change-retention-secs"
    );
    describe_gauge!("query_watches_open", "Open Watch* streams");
    describe_counter!(
        "query_watch_rereads_total",
        "Reads made for watches (one per watched key per commit)"
    );
    describe_counter!(
        "query_watches_refused_total",
        "Watch calls refused at the --max-watchers cap"
    );
}

/// A gauge read just before each scrape; `false` once what it reads is gone
/// (it is then dropped).
type Sampler = Box<dyn Fn() -> bool + Send + Sync>;

/// The samplers run before each scrape; set once metrics are installed.
static SAMPLERS: OnceLock<Mutex<Vec<Sampler>>> = OnceLock::new();

/// Runs `sample` before every scrape, as long as it returns `true`: for
/// gauges that cost nothing to read but would cost the hot path to keep up
/// to date (a pool's connections, a channel's length, a time since). Does
/// nothing while metrics are off.
pub fn sample_at_scrape(sample: impl Fn() -> bool + Send + Sync + 'static) {
    if let Some(samplers) = SAMPLERS.get() {
        samplers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(sample));
    }
}

fn run_samplers() {
    if let Some(samplers) = SAMPLERS.get() {
        samplers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|sample| sample());
    }
}

/// Installs the Prometheus recorder and serves its metrics at
/// `http://{addr}/metrics` (404 for any other request); a connection that
/// has not sent its request and read the reply within `request_timeout` is
/// dropped. Returns the bound address. Our own small server rather than the
/// exporter's listener, which answers any path and waits on slow requests.
pub fn install_metrics(addr: SocketAddr, request_timeout: Duration) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("command_batch_size".to_owned()),
            BATCH_BUCKETS,
        )?
        .install_recorder()?;
    SAMPLERS.get_or_init(Mutex::default);
    METRICS_ON.store(true, Ordering::Release);
    describe_metrics();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Drains histograms, as the exporter's own listener would.
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(serve_metrics(listener, handle, request_timeout));
    Ok(bound)
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    request_timeout: Duration,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let reply = metrics_reply(&request, &handle);
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(request_timeout)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Bounds the whole exchange, a slow reader of the reply included.
            let _ = tokio::time::timeout(request_timeout, connection).await;
        });
    }
}

/// The rendered metrics for `GET /metrics` (samplers run first, the
/// process's own figures last), 404 for anything else.
fn metrics_reply<B>(
    request: &hyper::Request<B>,
    handle: &PrometheusHandle,
) -> hyper::Response<Full<Bytes>> {
    let mut reply = hyper::Response::new(Full::default());
    if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
        run_samplers();
        let mut text = handle.render();
        text.push_str(&process_metrics::render());
        *reply.body_mut() = Full::new(Bytes::from(text));
        reply.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
    } else {
        *reply.status_mut() = hyper::StatusCode::NOT_FOUND;
        *reply.body_mut() = Full::new(Bytes::from_static(b"not found: try GET /metrics\n"));
    }
    reply
}

/// Set once the Prometheus recorder is installed.
static METRICS_ON: AtomicBool = AtomicBool::new(false);

/// Counts one finished RPC by method and status code, and its latency.
/// Nothing at all while metrics are off. The handles of each (method,
/// code) are looked up in the recorder once per thread, then kept: every
/// call would otherwise build the labelled key and find it in the
/// registry again, a few per cent of a point read's CPU.
pub fn record_rpc(method: &'static str, started: Instant, code: Code) {
    if !METRICS_ON.load(Ordering::Acquire) {
        return;
    }
    type Handles = (metrics::Counter, metrics::Histogram);
    thread_local! {
        static HANDLES: RefCell<HashMap<(&'static str, i32), Handles>> =
            RefCell::new(HashMap::new());
    }
    let seconds = started.elapsed().as_secs_f64();
    HANDLES.with_borrow_mut(|handles| {
        let (count, latency) = handles.entry((method, code as i32)).or_insert_with(|| {
            let code = code_name(code);
            (
                metrics::counter!("grpc_requests_total", "method" => method, "code" => code),
                metrics::histogram!("grpc_request_duration_seconds", "method" => method),
            )
        });
        count.increment(1);
        latency.record(seconds);
    });
}

/// The methods of the services that have no handler of ours to count
/// them (health, reflection), as `grpc_requests_total` labels them.
const PLUMBING_METHODS: [&str; 4] = [
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// One call of a health or reflection method, counted like our own RPCs
/// once its status is seen (in the response's headers or trailers), or as
/// `CANCELLED` when it ends without one (the client left).
#[derive(Debug)]
pub struct PlumbingCall {
    /// The label, `service/Method`.
    method: &'static str,
    started: Instant,
    /// Whether it has been counted.
    counted: bool,
}

impl PlumbingCall {
    /// A call to count, if `path` is one of the plumbing methods.
    pub fn start(path: &str) -> Option<Self> {
        let path = path.strip_prefix('/')?;
        let method = PLUMBING_METHODS
            .into_iter()
            .find(|method| *method == path)?;
        Some(Self {
            method,
            started: Instant::now(),
            counted: false,
        })
    }

    /// Counts the call if `headers` (headers or trailers) carry its status.
    pub fn saw(&mut self, headers: &HeaderMap) {
        if self.counted {
            return;
        }
        if let Some(code) = headers.get("grpc-status") {
            let code = std::str::from_utf8(code.as_bytes())
                .ok()
                .and_then(|code| code.parse::<i32>().ok())
                .map_or(Code::Unknown, Code::from_i32);
            self.ended(code);
        }
    }

    /// Counts the call as ended with `code`.
    pub fn ended(&mut self, code: Code) {
        if !self.counted {
            self.counted = true;
            record_rpc(self.method, self.started, code);
        }
    }
}

impl Drop for PlumbingCall {
    fn drop(&mut self) {
        self.ended(Code::Cancelled);
    }
}

/// The status code's name, as gRPC spells it, without allocating.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a server calls it before
/// it announces its address, so a signal sent as soon as the address is
/// known is a shutdown, never the default action (killed by the signal).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let installed = "installing a signal handler only fails outside a runtime";
        let mut interrupt = signal(SignalKind::interrupt()).expect(installed);
        let mut terminate = signal(SignalKind::terminate()).expect(installed);
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutdown signal received");
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown signal received");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric given a `# HELP` line here is documented.
    #[test]
    fn every_described_metric_is_in_docs_metrics_md() {
        let docs = include_str!("../../docs/metrics.md");
        let source = include_str!("server.rs");
        let mut described = 0;
        for call in source.split("describe_").skip(1) {
            if !["counter!(", "gauge!(", "histogram!("]
                .iter()
                .any(|kind| call.starts_with(kind))
            {
                continue;
            }
            let name = call
                .split('"')
                .nth(1)
                .expect("a metric name in quotes after describe_*!(");
            described += 1;
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "{name} is not in docs/metrics.md"
            );
        }
        assert!(described > 30, "{described} metrics described");
        for line in process_metrics::render().lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let name = help.split(' ').next().expect("a name");
                assert!(docs.contains(&format!("| `{name}` |")), "{name}");
            }
        }
    }

    /// Building and dropping the reflection services must not touch freed
    /// memory. Under rustc 1.95 with optimizations the closure this replaced
    /// made the two services share one list of names, and this test aborted
    /// with a double free; run it with `cargo test --release` to cover that
    /// (debug builds do not run the MIR pass at fault).
    #[test]
    fn reflection_services_are_built_and_dropped_independently() {
        for _ in 0..3 {
            let (v1, v1alpha) =
                reflection_services(&["hotel.v1.CommandService", "hotel.v1.EventStream"])
                    .expect("reflection services");
            drop(v1);
            drop(v1alpha);
        }
    }
}
