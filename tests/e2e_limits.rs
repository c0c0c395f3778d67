//! Bounded under abuse (issue 12), against the real query-server binary:
//! huge repeated fields, over-size messages, slow calls, silent
//! connections, many streams, unanswered pings and the metrics endpoint.
//! Each limit is set low here so that it bites in well under a second.
//! The query server follows a command server that is not there: none of
//! this needs one.

mod support;

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::Path,
    time::{Duration, Instant},
};

use hotel_common::{pb, validate::field_violations};
use support::{Process, eventually};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{Code, Request, Status, codegen::http::HeaderMap};

/// A query server with `extra` flags (metrics off unless they say), following
/// nobody.
fn query_server(dir: &Path, extra: &[&str]) -> Process {
    let mut args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1:0",
        "--command-server-url",
        "http://127.0.0.1:9",
        "--database-path",
        &dir.join("read-model.db").display().to_string(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    if !extra.contains(&"--metrics-addr") {
        args.extend(["--metrics-addr".to_owned(), "off".to_owned()]);
    }
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    Process::start("query-server", &args, dir)
}

/// Bytes of metadata the status took on the wire (names and values).
fn metadata_bytes(status: &Status) -> usize {
    let mut headers = HeaderMap::new();
    status.add_header(&mut headers).expect("valid headers");
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_statuses_are_refused_at_once_in_little_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(dir.path(), &[]);
    let mut client = server.queries().await;
    let request = |statuses: Vec<i32>| pb::ListReservationsRequest {
        hotel_id: "h1".into(),
        statuses,
        ..Default::default()
    };
    // A first call, so that what the server allocates once is counted before.
    let _ = client.list_reservations(request(vec![99; 10])).await;
    let before = server.rss_kib();

    let started = Instant::now();
    let status = client
        .list_reservations(request(vec![99; 1_000_000]))
        .await
        .expect_err("a million statuses are refused");
    let took = started.elapsed();

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = field_violations(&status);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].0, "statuses");
    assert!(
        violations[0].1.contains("at most 100 items"),
        "{violations:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let grown_kib = server.rss_kib().saturating_sub(before);
    assert!(grown_kib < 50 * 1024, "RSS grew by {grown_kib} KiB");
    assert!(metadata_bytes(&status) < 8 * 1024);

    // Under the cap, each bad item is named, up to a few, then counted.
    let status = client
        .list_reservations(request(vec![99; 100]))
        .await
        .expect_err("bad statuses");
    let violations = field_violations(&status);
    assert_eq!(violations.len(), 9, "{violations:?}");
    assert_eq!(violations[0].0, "statuses[0]");
    assert!(violations[8].1.contains("and 92 more"), "{violations:?}");
    assert!(metadata_bytes(&status) < 8 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_size_requests_and_replies_are_resource_exhausted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(
        dir.path(),
        &["--max-request-bytes", "1000", "--max-reply-bytes", "1"],
    );
    let mut client = server.queries().await;
    let status = client
        .list_reservations(pb::ListReservationsRequest {
            hotel_id: "h".repeat(2_000),
            ..Default::default()
        })
        .await
        .expect_err("an over-size request");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // A request under the limit is served; its reply (NOT_SERVING: 2 bytes)
    // is over the 1-byte reply limit.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("an over-size reply");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_server_timeout_is_deadline_exceeded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(dir.path(), &["--request-timeout-ms", "300"]);
    let mut client = server.queries().await;
    let started = Instant::now();
    // Waits for a position that never comes (5 s without the timeout).
    let status = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: uuid::Uuid::new_v4().to_string(),
            min_position: 1_000_000,
        })
        .await
        .expect_err("it cannot be answered");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_connections_concurrency_are_shed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(dir.path(), &["--max-concurrent-requests", "2"]);
    let client = server.queries().await;
    let waiting = (0..6).map(|_| {
        let mut client = client.clone();
        async move {
            let mut request = Request::new(pb::GetReservationRequest {
                reservation_id: uuid::Uuid::new_v4().to_string(),
                min_position: 1_000_000,
            });
            request.set_timeout(Duration::from_millis(800));
            client.get_reservation(request).await.map(drop)
        }
    });
    let codes: Vec<Code> = futures::future::join_all(waiting)
        .await
        .into_iter()
        .map(|outcome| outcome.expect_err("none can be answered").code())
        .collect();
    let shed = codes
        .iter()
        .filter(|code| **code == Code::ResourceExhausted)
        .count();
    assert_eq!(shed, 4, "two wait, the rest are shed: {codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(dir.path(), &["--handshake-timeout-ms", "300"]);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let started = Instant::now();
    for mut connection in silent {
        // The server's SETTINGS come first; then the end.
        let mut sent = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), connection.read_to_end(&mut sent))
            .await
            .expect("the server closes a silent connection");
        assert!(sent.len() < 100, "{read:?}: {sent:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // A client that speaks is served as ever.
    let mut client = server.queries().await;
    let status = client
        .get_reservation(pb::GetReservationRequest::default())
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// An HTTP/2 connection to `addr` whose SETTINGS have arrived; the
/// connection is handed back undriven.
async fn h2_connection(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<tonic::codegen::Bytes>,
    h2::client::Connection<TcpStream>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, mut connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut ping_pong = connection.ping_pong().expect("a ping handle");
    // The server sends its SETTINGS first: once a ping is answered, they are in.
    tokio::select! {
        ended = &mut connection => panic!("the connection ended: {ended:?}"),
        pong = ping_pong.ping(h2::Ping::opaque()) => {
            pong.expect("pong");
        }
    }
    (send, connection)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_capped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(dir.path(), &["--max-concurrent-streams", "3"]);
    let (send, connection) = h2_connection(server.addr).await;
    assert_eq!(connection.max_concurrent_send_streams(), 3);
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // Three calls whose requests never end hold the three streams...
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut send = send.clone().ready().await.expect("a stream");
        let request = tonic::codegen::http::Request::post(format!(
            "http://{}/hotel.v1.QueryService/GetReservation",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a request");
        open.push(send.send_request(request, false).expect("sent"));
    }
    // ...so a fourth, complete call waits for one of them to end.
    let mut send = send.ready().await.expect("a handle");
    let request = tonic::codegen::http::Request::post(format!(
        "http://{}/hotel.v1.QueryService/GetReservation",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("a request");
    let (mut fourth, mut body) = send.send_request(request, false).expect("queued");
    // An empty GetReservationRequest: INVALID_ARGUMENT once it is served.
    body.send_data(tonic::codegen::Bytes::from_static(&[0; 5]), true)
        .expect("the message");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut fourth)
            .await
            .is_err(),
        "a fourth stream must not be served while three are open"
    );
    open[0].1.send_reset(h2::Reason::CANCEL);
    let answered = tokio::time::timeout(Duration::from_secs(2), fourth)
        .await
        .expect("served once a stream is free")
        .expect("a response");
    assert_eq!(answered.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_answer_pings_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(
        dir.path(),
        &[
            "--http2-keepalive-interval-ms",
            "200",
            "--http2-keepalive-timeout-ms",
            "200",
        ],
    );
    let (_send, connection) = h2_connection(server.addr).await;
    // Not driven: the server's pings go unanswered.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let ended = tokio::time::timeout(Duration::from_secs(2), connection).await;
    assert!(ended.is_ok(), "the server must have closed the connection");
}

/// A free local port, for a listener the server binds itself.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Sends `request` as is and reads until the server closes (bounded).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply))
        .await
        .expect("the server answers and closes")
        .ok();
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_get_metrics_only_and_drop_slow_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut server = query_server(
        dir.path(),
        &[
            "--metrics-addr",
            &metrics,
            "--metrics-request-timeout-ms",
            "300",
        ],
    );
    let addr: SocketAddr = metrics.parse().expect("an address");
    let reply = raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    for other in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /metrics/../admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ] {
        let reply = raw_exchange(addr, other).await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    }
    let started = Instant::now();
    let reply = raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHo").await;
    assert!(!reply.contains("200 OK"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(server.terminate().success());
}

/// The kernel's timer on the server's end of `client`'s connection to
/// `server`, from /proc/net/tcp: 2 means a keepalive timer is armed.
fn server_side_timer(server: SocketAddr, client: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches =
            port(fields.get(1)?)? == server.port() && port(fields.get(2)?)? == client.port();
        matches
            .then(|| fields.get(5)?.split(':').next()?.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_have_tcp_keepalive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = query_server(dir.path(), &["--tcp-keepalive-secs", "1"]);
    let connection = TcpStream::connect(server.addr).await.expect("connect");
    let client = connection.local_addr().expect("our address");
    // Once the server's first bytes are acknowledged, only keepalive times it.
    let timer = eventually(Duration::from_secs(3), || async {
        server_side_timer(server.addr, client).filter(|timer| *timer == 2)
    })
    .await;
    assert_eq!(timer, 2);
}
