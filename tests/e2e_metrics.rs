//! The metrics endpoint speaks Prometheus as teams expect: `# HELP` on
//! every family, latencies as histograms with buckets (they aggregate
//! across instances), counts that move with the load.

mod support;

use std::net::TcpListener;

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
    ]
    .map(str::to_owned)
    .into();
    let server = Process::start("command-server", &args, logs.path());
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Tavira").await;
    add_room_type(&mut client, "h1", "DBL", 5).await;
    for i in 0..7 {
        client
            .book_room(booking("h1", "DBL", 3, 4, &format!("m{i}")))
            .await
            .expect("booked");
    }
    let text = scrape(&metrics).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for family in [
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
