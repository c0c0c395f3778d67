//! The metrics endpoint speaks Prometheus as teams expect: `# HELP` on
//! every family, latencies as histograms with buckets (they aggregate
//! across instances), counts that move with the load.

mod support;

use std::net::TcpListener;

use hotel_common::pb;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read");
    String::from_utf8(reply).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_help_lines_and_latency_histograms() {
    let logs = tempfile::tempdir().expect("log dir");
    let db = TestDb::create().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--metrics-addr",
        &metrics,
        "--auth-tokens",
        "w-token=writer+subscriber",
    ]
    .map(str::to_owned)
    .into();
    let server = Process::start("command-server", &args, logs.path());
    let with_token = |mut request: tonic::Request<()>| {
        request.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer w-token"),
        );
        Ok(request)
    };
    let mut client = pb::command_service_client::CommandServiceClient::with_interceptor(
        server.channel().await,
        with_token,
    );
    client
        .register_hotel(pb::RegisterHotelRequest {
            command_id: new_id(),
            hotel_id: "h1".to_owned(),
            name: "Hotel h1".to_owned(),
            city: "Tavira".to_owned(),
            correlation_id: String::new(),
        })
        .await
        .expect("registered");
    client
        .add_room_type(pb::AddRoomTypeRequest {
            precondition: None,
            command_id: new_id(),
            hotel_id: "h1".to_owned(),
            code: "DBL".to_owned(),
            name: "Double".to_owned(),
            max_guests: 2,
            inventory: 5,
            nightly_rate: Some(pb::Money {
                amount_minor: 9_000,
                currency: "EUR".to_owned(),
            }),
            correlation_id: String::new(),
        })
        .await
        .expect("room type");
    for i in 0..7 {
        client
            .book_room(booking("h1", "DBL", 3, 4, &format!("m{i}")))
            .await
            .expect("booked");
    }
    // The event stream is counted too, and so are refusals before any
    // handler runs.
    let mut events = pb::event_stream_client::EventStreamClient::with_interceptor(
        server.channel().await,
        with_token,
    );
    events.get_head(pb::GetHeadRequest {}).await.expect("head");
    let refused = server
        .events()
        .await
        .get_head(pb::GetHeadRequest {})
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let text = scrape(&metrics).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("grpc_requests_total{method=\"GetHead\",code=\"OK\"} 1"),
        "GetHead counted:\n{text}"
    );
    assert!(
        text.contains("grpc_auth_refused_total{role=\"subscriber\",code=\"UNAUTHENTICATED\"} 1"),
        "the refusal counted:\n{text}"
    );
    for family in [
        "grpc_auth_refused_total",
        "grpc_requests_total",
        "grpc_request_duration_seconds",
        "command_batches_total",
        "command_batch_size",
        "writer_lock_wait_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE grpc_request_duration_seconds histogram"),
        "latency is a histogram:\n{text}"
    );
    let bucket = text
        .lines()
        .find(|line| {
            line.starts_with("grpc_request_duration_seconds_bucket{")
                && line.contains("method=\"BookRoom\"")
                && line.contains("le=\"+Inf\"")
        })
        .unwrap_or_else(|| panic!("no BookRoom +Inf bucket:\n{text}"));
    let count: f64 = bucket
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert_eq!(count, 7.0, "{bucket}");
    assert!(
        text.contains("grpc_request_duration_seconds_bucket{method=\"BookRoom\",le=\"0.001\"}"),
        "sub-millisecond buckets:\n{text}"
    );
    db.cleanup().await;
}
