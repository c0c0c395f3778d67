//! Subscribers that never read, in the numbers of issue 12, against the real
//! command-server binary: 500 `Subscribe` streams that grant no flow-control
//! window on a 20,000-event log. The server's memory stays under 200 MB
//! (README, "Limits"), a subscriber that reads and 32 booking clients are
//! served meanwhile, and the stalled streams are dropped after
//! --stream-stall-ms, which frees their places under --stream-max-subscribers.

mod support;

use std::time::{Duration, Instant};

use hotel_common::pb::{self, event_stream_client::EventStreamClient, subscribe_response::Message};
use support::*;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming, transport::Channel};

/// Streams that never read, and the log they subscribe to from position 0.
const STUCK: usize = 500;
const LOG_EVENTS: i64 = 20_000;
/// The bound the README documents for the command server: 200 MB.
const PEAK_RSS_BOUND_KIB: u64 = 200_000_000 / 1024;
/// Long enough for the whole exercise below on a loaded CI machine: the
/// stuck streams must all still be there while the others are served.
const STALL_MS: u64 = 8_000;
const BOOKING_CLIENTS: usize = 32;
const BOOKINGS_EACH: usize = 10;

fn from(position: i64) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        from_position: position,
        filter: None,
        max_batch: 5000,
        expected_event_id: String::new(),
    }
}

/// Reads `stream` until a batch reaches `position`.
async fn follow_to(stream: &mut Streaming<pb::SubscribeResponse>, position: i64) {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a message within 10 s")
            .expect("the stream is open")
            .expect("no error on the reading subscriber");
        if let Some(Message::Events(batch)) = item.message
            && batch.through_position >= position
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_subscribers_that_never_read_cost_under_200_mb_and_are_dropped() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cap = (STUCK + 1).to_string();
    let stall = STALL_MS.to_string();
    let server = command_server_with(
        &db,
        "127.0.0.1:0",
        &[
            "--stream-max-subscribers",
            &cap,
            "--stream-stall-ms",
            &stall,
        ],
        dir.path(),
    );
    let mut commands = server.commands().await;
    fill_log(&db, &mut commands, LOG_EVENTS).await;
    // A commit of the server's own, so that it knows the filled head.
    let head = add_room_type(&mut commands, "h", "DBL", 10_000).await;
    assert!(head > LOG_EVENTS);

    let mut reader = server
        .events()
        .await
        .subscribe(from(0))
        .await
        .expect("the reading subscriber")
        .into_inner();
    let opening = Instant::now();
    // 50 streams per connection, as a few misbehaving clients would open
    // them: all at once.
    let mut subscribing = Vec::new();
    for _ in 0..STUCK / 50 {
        let channel = non_reading_channel(server.url()).await;
        for _ in 0..50 {
            let mut events = EventStreamClient::new(channel.clone());
            subscribing.push(async move { events.subscribe(from(0)).await });
        }
    }
    let stuck: Vec<Streaming<pb::SubscribeResponse>> = futures::future::join_all(subscribing)
        .await
        .into_iter()
        .map(|opened| opened.expect("subscribe").into_inner())
        .collect();
    assert!(
        opening.elapsed() < Duration::from_millis(STALL_MS / 2),
        "opening {STUCK} streams took {:?}: too slow to test the stall of {STALL_MS} ms",
        opening.elapsed()
    );
    let refused = server
        .events()
        .await
        .subscribe(from(0))
        .await
        .expect_err("past --stream-max-subscribers");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // The reader catches up, and 32 clients book while it follows them.
    let opened = opening.elapsed();
    follow_to(&mut reader, head).await;
    let caught_up = opening.elapsed();
    let booking_started = Instant::now();
    let clients: Vec<_> = (0..BOOKING_CLIENTS)
        .map(|client| {
            let url = server.url();
            tokio::spawn(async move {
                let mut commands = pb::command_service_client::CommandServiceClient::new(
                    Channel::from_shared(url)
                        .expect("url")
                        .connect()
                        .await
                        .expect("connect"),
                );
                let mut slowest = Duration::ZERO;
                let mut last = 0;
                for i in 0..BOOKINGS_EACH {
                    let started = Instant::now();
                    last = commands
                        .book_room(booking("h", "DBL", 1, 2, &format!("g{client}-{i}")))
                        .await
                        .expect("a booking is served")
                        .into_inner()
                        .position;
                    slowest = slowest.max(started.elapsed());
                }
                (slowest, last)
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut last = 0;
    for client in clients {
        let (client_slowest, client_last) = client.await.expect("booking client");
        slowest = slowest.max(client_slowest);
        last = last.max(client_last);
    }
    follow_to(&mut reader, last).await;
    assert!(
        slowest < Duration::from_secs(2),
        "the slowest of {} bookings took {slowest:?}",
        BOOKING_CLIENTS * BOOKINGS_EACH
    );
    // Still inside the stall limit: the stuck streams were all there while
    // the others were served.
    let busy_for = opening.elapsed();
    let peak = server.peak_rss_kib();
    assert!(
        peak <= PEAK_RSS_BOUND_KIB,
        "{STUCK} non-reading streams on a {head}-event log: peak RSS {} MiB, over 200 MB",
        peak / 1024
    );
    eprintln!(
        "{STUCK} stuck streams: opened in {opened:?}, reader caught up at {caught_up:?}; \
         peak RSS {} MiB; {} bookings in {:?} (slowest {slowest:?}); \
         {busy_for:?} since the first stuck stream",
        peak / 1024,
        BOOKING_CLIENTS * BOOKINGS_EACH,
        booking_started.elapsed()
    );

    assert!(
        busy_for < Duration::from_millis(STALL_MS),
        "the bookings ended {busy_for:?} after the first stuck stream, past the stall"
    );

    // Past the stall limit they are all dropped: STUCK places are free
    // again, for subscribers that read.
    let patience = Instant::now() + Duration::from_millis(STALL_MS) + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match hold_subscriptions(&server, STUCK, head).await {
            Ok(held) => {
                assert_eq!(held.len(), STUCK);
                break;
            }
            Err(status) if Instant::now() < patience => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => {
                panic!("the stalled streams were not all dropped ({attempts} tries): {status:?}")
            }
        }
    }
    drop(stuck);
    db.cleanup().await;
}

/// Opens `n` subscriptions at `position` at once (50 per connection); the
/// first refusal ends the attempt and closes the rest.
async fn hold_subscriptions(
    server: &Process,
    n: usize,
    position: i64,
) -> Result<Vec<Streaming<pb::SubscribeResponse>>, tonic::Status> {
    let mut held = Vec::with_capacity(n);
    let mut events = server.events().await;
    for i in 0..n {
        if i > 0 && i % 50 == 0 {
            events = server.events().await;
        }
        held.push(events.subscribe(from(position)).await?.into_inner());
    }
    Ok(held)
}
