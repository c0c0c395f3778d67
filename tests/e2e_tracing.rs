//! Distributed tracing with OpenTelemetry (docs/tracing.md): the real
//! binaries export spans over OTLP/gRPC to a small receiver started here
//! (the collector's `TraceService` from the `opentelemetry-proto`
//! definitions), which keeps what it is sent.
//!
//! A booking sent with a W3C `traceparent` must come back as one trace: the
//! command server's call span as the child of the caller's span, its
//! "commit batch" span with the committed position, the event stored and
//! streamed with the command's trace context, and the query server's
//! "apply batch" span in that trace, linked to the event's position. With
//! tracing off, nothing is exported and events carry no trace context.

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hotel_common::pb::{
    self, command_service_client::CommandServiceClient, query_service_client::QueryServiceClient,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use support::*;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, transport::Channel};

/// How long spans may take to arrive.
const PATIENCE: Duration = Duration::from_secs(20);

/// The servers' span export interval: short, so the test waits little.
const EXPORT_EVERY_MS: &str = "100";

/// A span as received, with the resource that sent it.
#[derive(Debug, Clone)]
struct Received {
    /// `service.name` of the sender.
    service: String,
    /// `service.instance.id` of the sender.
    instance: String,
    span: Span,
}

/// The OTLP receiver: keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("receiver lock");
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let service = string_attribute(&resource.attributes, "service.name");
            let instance = string_attribute(&resource.attributes, "service.instance.id");
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(Received {
                        service: service.clone(),
                        instance: instance.clone(),
                        span,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves on a free port; returns the receiver and its address.
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("bound address");
        let receiver = Self::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("receiver lock").clone()
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> String {
    match attribute(attributes, key) {
        Some(Value::StringValue(value)) => value.clone(),
        _ => String::new(),
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key) {
        Some(Value::IntValue(value)) => Some(*value),
        _ => None,
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A caller's span context: random trace and span ids.
fn caller_context() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace_id, span_id)
}

/// A BookRoom call carrying `traceparent`.
fn traced<T>(message: T, traceparent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        traceparent.parse().expect("an ASCII traceparent"),
    );
    request
}

/// Stops `process` with SIGTERM, from a blocking thread: this test's
/// runtime drives our client connections, which the server waits for.
async fn stop(mut process: Process) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || process.terminate())
        .await
        .expect("the wait for the process")
}

/// A command server exporting to `endpoint` every 100 ms, starting traces
/// at `ratio`: its flag alone decides (the environment's variables unset).
fn traced_command_server(
    db: &TestDb,
    endpoint: &str,
    ratio: &str,
    logs: &std::path::Path,
) -> Process {
    command_server_with_env(
        db,
        "127.0.0.1:0",
        &["--otlp-endpoint", endpoint, "--trace-sample-ratio", ratio],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", Some(EXPORT_EVERY_MS)),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
            ("HOTEL_TRACE_SAMPLE_RATIO", None),
        ],
        logs,
    )
}

/// A hotel with one room type, registered without trace context.
async fn hotel(commands: &mut CommandServiceClient<Channel>) -> String {
    let hotel_id = format!("trace-{}", new_id());
    register_hotel(commands, &hotel_id, "Lyon").await;
    add_room_type(commands, &hotel_id, "DBL", 5).await;
    hotel_id
}

/// Waits until the query server reflects `position` and shows the booking.
async fn read_at(queries: &mut QueryServiceClient<Channel>, reservation_id: &str, position: i64) {
    let reply = queries
        .get_reservation(pb::GetReservationRequest {
            reservation_id: reservation_id.to_owned(),
            min_position: position,
        })
        .await
        .expect("the query server applies the booking")
        .into_inner();
    assert!(reply.as_of_position >= position);
    assert!(reply.reservation.is_some());
}

async fn stored_traceparent(db: &TestDb, position: i64) -> Option<String> {
    sqlx::query_scalar("SELECT traceparent FROM events WHERE position = ?")
        .bind(position)
        .fetch_one(&db.pool)
        .await
        .expect("the event is in MySQL")
}

/// The envelope at `position`, as the event stream sends it.
async fn streamed(command_server: &Process, position: i64) -> pb::EventEnvelope {
    let mut stream = command_server
        .events()
        .await
        .subscribe(pb::SubscribeRequest {
            from_position: position,
            filter: None,
            max_batch: 1,
            expected_event_id: String::new(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a stream message in time")
            .expect("the stream stays open")
            .expect("a stream message");
        if let Some(pb::subscribe_response::Message::Events(batch)) = message.message {
            let envelope = batch.events.into_iter().next().expect("an event");
            assert_eq!(envelope.position, position);
            return envelope;
        }
    }
}

/// Both servers trace only what their callers sample (ratio 0: nothing
/// starts a trace of its own), the command server told by its flag and the
/// query server by the standard environment variable. One booking whose
/// caller sampled it becomes one trace over both servers; one whose caller
/// did not is neither exported nor stored. The query server exports only
/// when it stops: its spans arrive by the flush at shutdown.
#[tokio::test]
async fn a_sampled_booking_is_one_trace_from_call_to_replica() {
    let db = TestDb::create().await;
    let logs = tempfile::tempdir().expect("temp dir");
    let (receiver, receiver_addr) = Receiver::start().await;
    let endpoint = format!("http://{receiver_addr}");
    let command_server = traced_command_server(&db, &endpoint, "0", logs.path());
    let query_server = query_server_with_env(
        &command_server.url(),
        &logs.path().join("read.db"),
        &[],
        &[
            // Not before it stops: what it exports comes from the flush at
            // shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", Some("600000")),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(&endpoint)),
            ("HOTEL_TRACE_SAMPLE_RATIO", Some("0")),
        ],
        logs.path(),
    );
    let mut commands = command_server.commands().await;
    let mut queries = query_server.queries().await;
    let hotel_id = hotel(&mut commands).await;

    // The caller's span: sampled (flags 01).
    let (trace_id, caller_span_id) = caller_context();
    let booked = commands
        .book_room(traced(
            booking(&hotel_id, "DBL", 10, 12, "ada"),
            &format!("00-{trace_id}-{caller_span_id}-01"),
        ))
        .await
        .expect("book")
        .into_inner();
    let position = booked.position;
    read_at(&mut queries, &booked.reservation_id, position).await;

    // Another caller that did not sample its trace (flags 00).
    let (unsampled_trace_id, unsampled_span_id) = caller_context();
    let unsampled = commands
        .book_room(traced(
            booking(&hotel_id, "DBL", 20, 22, "bob"),
            &format!("00-{unsampled_trace_id}-{unsampled_span_id}-00"),
        ))
        .await
        .expect("book")
        .into_inner();
    read_at(&mut queries, &unsampled.reservation_id, unsampled.position).await;

    // The event holds the context of the booking's span on the command
    // server, in the caller's trace: in MySQL and on the stream.
    let stored = stored_traceparent(&db, position)
        .await
        .expect("the sampled booking's event has a traceparent");
    let prefix = format!("00-{trace_id}-");
    assert!(
        stored.starts_with(&prefix) && stored.ends_with("-01") && stored.len() == 55,
        "{stored}"
    );
    let event_span_id = stored[prefix.len()..prefix.len() + 16].to_owned();
    assert_ne!(
        event_span_id, caller_span_id,
        "the event names the command server's span, not the caller's"
    );
    assert_eq!(
        streamed(&command_server, position).await.traceparent,
        stored
    );
    assert_eq!(
        stored_traceparent(&db, unsampled.position).await,
        None,
        "an unsampled command's events carry no trace context"
    );
    assert_eq!(
        streamed(&command_server, unsampled.position)
            .await
            .traceparent,
        ""
    );

    // The query server exports its spans as it stops.
    assert!(stop(query_server).await.success());
    let ours = |received: &Received| hex(&received.span.trace_id) == trace_id;
    let spans = eventually(PATIENCE, || {
        let spans = receiver.spans();
        let applied = spans
            .iter()
            .any(|r| r.service == "query-server" && r.span.name == "apply batch" && ours(r));
        let committed = spans
            .iter()
            .any(|r| r.service == "command-server" && r.span.name == "commit batch" && ours(r));
        // The call's span ends last, after the reply is sent: it may come
        // in a later export than the commit's.
        let called = spans
            .iter()
            .any(|r| r.span.name == "hotel.v1.CommandService/BookRoom" && ours(r));
        async move { (applied && committed && called).then_some(spans) }
    })
    .await;

    // The call's span: the child of the caller's span.
    let call = spans
        .iter()
        .find(|r| {
            r.service == "command-server" && r.span.name == "hotel.v1.CommandService/BookRoom"
        })
        .expect("the BookRoom call's span");
    assert!(ours(call));
    assert_eq!(hex(&call.span.parent_span_id), caller_span_id);
    // The span the event names was exported, in the call's span tree.
    let event_span = spans
        .iter()
        .find(|r| ours(r) && hex(&r.span.span_id) == event_span_id)
        .expect("the span named by the event's traceparent was exported");
    assert_eq!(event_span.service, "command-server");

    // The commit: in the trace, under the command's span, with the position.
    let commit = spans
        .iter()
        .find(|r| r.span.name == "commit batch" && ours(r))
        .expect("the commit's span");
    assert_eq!(hex(&commit.span.parent_span_id), event_span_id);
    let first = int_attribute(&commit.span.attributes, "first_position").expect("first_position");
    let last = int_attribute(&commit.span.attributes, "last_position").expect("last_position");
    assert!(first <= position && position <= last, "{first}..={last}");
    assert!(
        commit
            .span
            .links
            .iter()
            .any(|link| hex(&link.span_id) == event_span_id),
        "the commit links to the command"
    );

    // The projection on the replica: in the trace, under the command's
    // span, linked to it with the event's position, naming the replica.
    let apply = spans
        .iter()
        .find(|r| r.service == "query-server" && r.span.name == "apply batch" && ours(r))
        .expect("the projection's span");
    assert_eq!(hex(&apply.span.parent_span_id), event_span_id);
    let link = apply
        .span
        .links
        .iter()
        .find(|link| hex(&link.trace_id) == trace_id && hex(&link.span_id) == event_span_id)
        .expect("the projection links to the command");
    assert_eq!(int_attribute(&link.attributes, "position"), Some(position));
    assert!(!apply.instance.is_empty());
    assert_eq!(
        string_attribute(&apply.span.attributes, "replica"),
        apply.instance
    );
    let first = int_attribute(&apply.span.attributes, "first_position").expect("first_position");
    let last = int_attribute(&apply.span.attributes, "last_position").expect("last_position");
    assert!(first <= position && position <= last, "{first}..={last}");

    // Ratio 0: nothing but the sampled caller's trace was exported (not the
    // untraced registration, not the unsampled booking, not the reads).
    for received in &spans {
        assert!(
            ours(received),
            "a span outside the caller's trace: {} from {}",
            received.span.name,
            received.service
        );
    }

    // The command server stops cleanly too, flushing what it still holds.
    drop((commands, queries));
    assert!(stop(command_server).await.success());
    db.cleanup().await;
}

/// Tracing off (no endpoint), even with a sampled caller and a sample
/// ratio of 1: no span leaves either server, even though the standard
/// variable for a traces endpoint points at a receiver, and events carry no
/// trace context.
#[tokio::test]
async fn with_tracing_off_nothing_is_exported_or_stored() {
    let db = TestDb::create().await;
    let logs = tempfile::tempdir().expect("temp dir");
    let (receiver, receiver_addr) = Receiver::start().await;
    let endpoint = format!("http://{receiver_addr}");
    let env = [
        ("OTEL_BSP_SCHEDULE_DELAY", Some(EXPORT_EVERY_MS)),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Some(endpoint.as_str()),
        ),
    ];
    let command_server = command_server_with_env(
        &db,
        "127.0.0.1:0",
        &["--trace-sample-ratio", "1"],
        &env,
        logs.path(),
    );
    let query_server = query_server_with_env(
        &command_server.url(),
        &logs.path().join("read.db"),
        &["--trace-sample-ratio", "1"],
        &env,
        logs.path(),
    );
    let mut commands = command_server.commands().await;
    let mut queries = query_server.queries().await;
    let hotel_id = hotel(&mut commands).await;
    let (trace_id, span_id) = caller_context();
    let booked = commands
        .book_room(traced(
            booking(&hotel_id, "DBL", 10, 12, "ada"),
            &format!("00-{trace_id}-{span_id}-01"),
        ))
        .await
        .expect("book")
        .into_inner();
    read_at(&mut queries, &booked.reservation_id, booked.position).await;

    for position in 1..=booked.position {
        assert_eq!(stored_traceparent(&db, position).await, None);
    }
    assert_eq!(
        streamed(&command_server, booked.position).await.traceparent,
        ""
    );
    // Many export intervals: anything exported would have arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let exported = receiver.spans();
    assert!(
        exported.is_empty(),
        "{} spans exported with tracing off",
        exported.len()
    );

    drop(query_server);
    drop(command_server);
    db.cleanup().await;
}

/// Ratio 1 and no caller context: every call starts a trace of its own
/// here. The sampling decision is taken before the call's span is made
/// (docs/decisions/0012), so this is the path where the server, not the
/// sampler of the SDK, decides: each call is exported as one trace with the
/// handler's span inside the call's, and a booking's commit joins it.
#[tokio::test]
async fn at_ratio_one_every_call_starts_its_own_whole_trace() {
    let db = TestDb::create().await;
    let logs = tempfile::tempdir().expect("temp dir");
    let (receiver, receiver_addr) = Receiver::start().await;
    let endpoint = format!("http://{receiver_addr}");
    let command_server = traced_command_server(&db, &endpoint, "1", logs.path());
    let mut commands = command_server.commands().await;
    let hotel_id = hotel(&mut commands).await;
    let booked = commands
        .book_room(booking(&hotel_id, "DBL", 10, 12, "ada"))
        .await
        .expect("book")
        .into_inner();
    let stored = stored_traceparent(&db, booked.position)
        .await
        .expect("a booking traced here stores its context");
    let trace_id = stored[3..35].to_owned();

    let spans = eventually(PATIENCE, || {
        let spans = receiver.spans();
        let ended = |name: &str| {
            spans
                .iter()
                .any(|r| r.span.name == name && hex(&r.span.trace_id) == trace_id)
        };
        // The call's span ends last, after the reply is sent.
        let done = ended("commit batch") && ended("hotel.v1.CommandService/BookRoom");
        async move { done.then_some(spans) }
    })
    .await;
    let in_trace: Vec<&Received> = spans
        .iter()
        .filter(|r| hex(&r.span.trace_id) == trace_id)
        .collect();
    let call = in_trace
        .iter()
        .find(|r| r.span.name == "hotel.v1.CommandService/BookRoom")
        .expect("the call's span, in the booking's trace");
    assert!(call.span.parent_span_id.is_empty(), "the call is the root");
    let handler = in_trace
        .iter()
        .find(|r| r.span.name == "book_room")
        .expect("the handler's span, in the booking's trace");
    assert_eq!(handler.span.parent_span_id, call.span.span_id);
    // The registration's calls (two of them) were each a trace of their own.
    let registrations: std::collections::HashSet<String> = spans
        .iter()
        .filter(|r| {
            r.span.name == "hotel.v1.CommandService/RegisterHotel"
                || r.span.name == "hotel.v1.CommandService/AddRoomType"
        })
        .map(|r| hex(&r.span.trace_id))
        .collect();
    assert_eq!(registrations.len(), 2, "one trace per call");
    assert!(!registrations.contains(&trace_id));

    drop(commands);
    assert!(stop(command_server).await.success());
    db.cleanup().await;
}
