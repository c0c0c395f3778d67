//! The metrics endpoint speaks Prometheus as teams expect: `# HELP` on
//! every family, latencies as histograms with buckets (they aggregate
//! across instances), counts that move with the load: every RPC (health and
//! reflection included), the event stream's messages and bytes, the write
//! path, the pool, the queue by priority, the projection's lag and state,
//! and the process itself.

mod support;

use std::{net::TcpListener, time::Duration};

use hotel_common::pb;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_stream::StreamExt;

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

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Scrapes `addr` until `series` has a value that `wanted` accepts.
async fn scrape_until(addr: &str, series: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let mut last = String::new();
    for _ in 0..200 {
        last = scrape(addr).await;
        if let Some(value) = sample(&last, series).filter(|v| wanted(*v)) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} never had the value wanted; last scrape:\n{last}");
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
        // Submitted commands run one at a time and the queue is counted
        // often, so the poll sees them waiting.
        "--queue-in-flight",
        "1",
        "--queue-poll-ms",
        "20",
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

    // The write path: every committed batch timed, the queue and the pool
    // sampled at scrape time.
    let batches = sample(&text, "command_batches_total").expect("batches counted");
    assert!(batches >= 1.0, "{text}");
    assert_eq!(
        sample(&text, "writer_batch_duration_seconds_count"),
        Some(batches),
        "one duration per committed batch:\n{text}"
    );
    assert_eq!(sample(&text, "writer_queue_depth"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "db_pool_max_connections"),
        Some(16.0),
        "{text}"
    );
    let open = sample(&text, "db_pool_connections{state=\"idle\"}").expect("idle")
        + sample(&text, "db_pool_connections{state=\"in_use\"}").expect("in use");
    assert!((1.0..=16.0).contains(&open), "connections open:\n{text}");
    assert_eq!(
        sample(&text, "writer_jobs_not_started_total{reason=\"deadline\"}"),
        Some(0.0),
        "known series start at 0:\n{text}"
    );

    // The process itself.
    let rss = sample(&text, "process_resident_memory_bytes").expect("rss");
    assert!(rss > 1_000_000.0, "{text}");
    assert!(
        sample(&text, "process_open_fds").expect("fds") >= 3.0,
        "{text}"
    );
    let started = sample(&text, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        (now - 300.0..=now + 1.0).contains(&started),
        "started {started}, now {now}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    assert!(
        sample(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );

    // Health and reflection are counted like our own methods.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "hotel.v1.CommandService".to_owned(),
        })
        .await
        .expect("health");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            server.channel().await,
        );
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .expect("reflection")
        .into_inner();
    assert!(answers.next().await.expect("an answer").is_ok());
    assert!(answers.next().await.is_none(), "the call ends");
    let text = scrape(&metrics).await;
    assert_eq!(
        sample(
            &text,
            "grpc_requests_total{method=\"grpc.health.v1.Health/Check\",code=\"OK\"}"
        ),
        Some(1.0),
        "{text}"
    );
    scrape_until(
        &metrics,
        "grpc_requests_total{method=\"grpc.reflection.v1.ServerReflection/ServerReflectionInfo\",code=\"OK\"}",
        |n| n == 1.0,
    )
    .await;

    // The event stream: messages by kind, events, bytes; a subscriber that
    // leaves is counted as CANCELLED.
    let mut stream = events
        .subscribe(pb::SubscribeRequest {
            from_position: 1,
            max_batch: 2,
            ..Default::default()
        })
        .await
        .expect("subscribed")
        .into_inner();
    let mut received = 0;
    loop {
        let message = stream.next().await.expect("a message").expect("ok");
        match message.message.expect("a message") {
            pb::subscribe_response::Message::Events(batch) => received += batch.events.len(),
            pb::subscribe_response::Message::CaughtUp(_) => break,
            pb::subscribe_response::Message::Heartbeat(_) => {}
        }
    }
    assert!(received >= 9, "{received} events");
    drop(stream);
    scrape_until(
        &metrics,
        "stream_subscribers_ended_total{code=\"CANCELLED\"}",
        |n| n == 1.0,
    )
    .await;
    let text = scrape(&metrics).await;
    assert_eq!(sample(&text, "stream_subscribers"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "stream_events_sent_total"),
        Some(received as f64),
        "{text}"
    );
    let batches = sample(&text, "stream_messages_sent_total{kind=\"events\"}").expect("batches");
    assert!(batches >= (received / 2) as f64, "max_batch 2:\n{text}");
    assert_eq!(
        sample(&text, "stream_messages_sent_total{kind=\"caught_up\"}"),
        Some(1.0),
        "{text}"
    );
    let bytes = sample(&text, "stream_sent_bytes_total").expect("bytes");
    assert!(bytes > 50.0 * received as f64, "{bytes} bytes:\n{text}");

    // The asynchronous queue by priority: seen waiting, then drained.
    let mut submits = Vec::new();
    for i in 0..60 {
        let mut client = client.clone();
        submits.push(tokio::spawn(async move {
            client
                .submit_command(pb::SubmitCommandRequest {
                    priority: 7,
                    command: Some(pb::submit_command_request::Command::RegisterHotel(
                        pb::RegisterHotelRequest {
                            command_id: new_id(),
                            hotel_id: format!("q{i}"),
                            name: format!("Hotel q{i}"),
                            city: "Faro".to_owned(),
                            correlation_id: String::new(),
                        },
                    )),
                })
                .await
                .expect("submitted");
        }));
    }
    for submit in submits {
        submit.await.expect("submit task");
    }
    scrape_until(&metrics, "submitted_queue_pending{priority=\"7\"}", |n| {
        n > 0.0
    })
    .await;
    scrape_until(&metrics, "submitted_queue_pending{priority=\"7\"}", |n| {
        n == 0.0
    })
    .await;
    scrape_until(&metrics, "submitted_queue_running", |n| n == 0.0).await;
    scrape_until(&metrics, "submitted_queue_depth", |n| n == 0.0).await;

    // A query server following it: lag in seconds, commit to applied per
    // batch, the state.
    let query_metrics = format!("127.0.0.1:{}", free_port());
    let data = tempfile::tempdir().expect("data dir");
    let query_args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1:0",
        "--command-server-url",
        &server.url(),
        "--command-server-token",
        "w-token",
        "--database-path",
        &data.path().join("read.db").display().to_string(),
        "--metrics-addr",
        &query_metrics,
    ]
    .map(str::to_owned)
    .into();
    let _query = Process::start("query-server", &query_args, logs.path());
    scrape_until(&query_metrics, "projection_state{state=\"live\"}", |n| {
        n == 1.0
    })
    .await;
    let text = scrape(&query_metrics).await;
    assert_eq!(
        sample(&text, "projection_state{state=\"stopped\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "projection_lag_seconds"),
        Some(0.0),
        "caught up:\n{text}"
    );
    assert_eq!(
        sample(&text, "projection_stopped{reason=\"LOG_REWRITTEN\"}"),
        Some(0.0),
        "{text}"
    );
    let applied = sample(&text, "projection_commit_to_applied_seconds_count").expect("batches");
    assert!(applied >= 1.0, "{text}");
    let last_event = sample(&text, "projection_last_event_timestamp_seconds").expect("time");
    assert!(
        (now - 300.0..=now + 300.0).contains(&last_event),
        "last event at {last_event}, now {now}"
    );
    assert!(text.contains("# HELP projection_lag_seconds "), "{text}");
    assert!(
        text.contains("# HELP process_resident_memory_bytes "),
        "{text}"
    );
    // A new commit moves it.
    client
        .book_room(booking("h1", "DBL", 10, 11, "late"))
        .await
        .expect("booked");
    scrape_until(
        &query_metrics,
        "projection_commit_to_applied_seconds_count",
        |n| n > applied,
    )
    .await;
    db.cleanup().await;
}
