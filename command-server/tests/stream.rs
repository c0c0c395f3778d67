//! The event stream: catch-up, CaughtUp, live tail, heartbeats, filters,
//! resume, GetHead, errors and shutdown.

mod support;

use std::time::{Duration, Instant};

use hotel_common::pb::{self, subscribe_response::Message};
use support::*;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

async fn next_message(stream: &mut Streaming<pb::SubscribeResponse>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")
        .expect("not an error")
        .message
        .expect("a message body")
}

/// Reads until `through` has been delivered; returns the events.
async fn read_through(
    stream: &mut Streaming<pb::SubscribeResponse>,
    through: i64,
) -> Vec<pb::EventEnvelope> {
    let mut events = Vec::new();
    while events.last().map_or(0, |e: &pb::EventEnvelope| e.position) < through {
        if let Message::Events(batch) = next_message(stream).await {
            events.extend(batch.events);
        }
    }
    events
}

async fn book_some(server: &TestServer, hotel: &str, n: usize) -> i64 {
    let mut client = server.commands().await;
    let mut last = 0;
    for i in 0..n {
        let from = 1 + (i % 10) as i64;
        last = client
            .book_room(booking(hotel, "DBL", from, from + 1, "g"))
            .await
            .expect("book")
            .into_inner()
            .position;
    }
    last
}

fn subscribe_from(from: i64, max_batch: i32) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        from_position: from,
        filter: None,
        max_batch,
        expected_event_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_in_batches_then_follows_live_with_heartbeats() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Sintra").await;
    add_room_type(&mut client, "h1", "DBL", 3).await;
    let head = book_some(&server, "h1", 28).await;
    assert_eq!(head, 30);

    let mut events = server.events().await;
    assert_eq!(
        events
            .get_head(pb::GetHeadRequest {})
            .await
            .expect("head")
            .into_inner()
            .head,
        30
    );
    let mut stream = events
        .subscribe(subscribe_from(0, 7))
        .await
        .expect("subscribe")
        .into_inner();
    let mut received = Vec::new();
    loop {
        match next_message(&mut stream).await {
            Message::Events(batch) => {
                assert!(batch.events.len() <= 7, "max_batch is respected");
                assert_eq!(
                    batch.through_position,
                    batch.events.last().expect("non-empty").position
                );
                received.extend(batch.events);
            }
            Message::CaughtUp(caught_up) => {
                assert_eq!(caught_up.head, 30);
                assert_eq!(caught_up.through_position, 30);
                break;
            }
            Message::Heartbeat(_) => panic!("no heartbeat before catching up"),
        }
    }
    let positions: Vec<i64> = received.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=30).collect::<Vec<_>>());
    // The payloads are what MySQL holds.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT payload FROM events WHERE position = 3")
        .fetch_one(&db.pool)
        .await
        .expect("payload");
    assert_eq!(
        prost::Message::encode_to_vec(received[2].event.as_ref().expect("event")),
        stored
    );

    // Live: a new commit arrives promptly.
    let new_head = book_some(&server, "h1", 2).await;
    let live = read_through(&mut stream, new_head).await;
    assert_eq!(
        live.iter().map(|e| e.position).collect::<Vec<_>>(),
        [31, 32]
    );

    // Idle: heartbeats carry the head.
    let started = Instant::now();
    loop {
        if let Message::Heartbeat(beat) = next_message(&mut stream).await {
            assert_eq!(beat.head, 32);
            assert_eq!(beat.through_position, 32);
            assert!(beat.time.is_some());
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "heartbeats come every 200 ms in tests"
    );

    // Resume after the 20th event: exactly the rest.
    let mut resumed = events
        .subscribe(subscribe_from(21, 0))
        .await
        .expect("resume")
        .into_inner();
    let rest = read_through(&mut resumed, 32).await;
    assert_eq!(
        rest.iter().map(|e| e.position).collect::<Vec<_>>(),
        (21..=32).collect::<Vec<_>>()
    );
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_reaches_a_live_subscriber_promptly() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Tomar").await;
    add_room_type(&mut client, "h1", "DBL", 100).await;
    let mut stream = server
        .events()
        .await
        .subscribe(subscribe_from(3, 0))
        .await
        .expect("subscribe")
        .into_inner();
    assert!(matches!(
        next_message(&mut stream).await,
        Message::CaughtUp(_)
    ));

    let mut delays = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let position = client
            .book_room(booking("h1", "DBL", 1, 2, &format!("g{i}")))
            .await
            .expect("book")
            .into_inner()
            .position;
        let events = read_through(&mut stream, position).await;
        assert_eq!(events.last().map(|e| e.position), Some(position));
        delays.push(started.elapsed());
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "command to subscriber median {median:?} (all: {delays:?})"
    );
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_deliver_only_matching_events_and_still_advance() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    for hotel in ["a", "b"] {
        register_hotel(&mut client, hotel, "Viseu").await;
        add_room_type(&mut client, hotel, "DBL", 1).await;
    }
    book_some(&server, "a", 3).await;
    let head = book_some(&server, "b", 3).await;

    let filter = pb::EventFilter {
        event_types: vec!["ReservationConfirmed".to_owned()],
        hotel_ids: vec!["b".to_owned()],
    };
    let mut stream = server
        .events()
        .await
        .subscribe(pb::SubscribeRequest {
            from_position: 1,
            filter: Some(filter),
            max_batch: 0,
            expected_event_id: String::new(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut delivered = Vec::new();
    loop {
        match next_message(&mut stream).await {
            Message::Events(batch) => delivered.extend(batch.events),
            Message::CaughtUp(caught_up) => {
                assert_eq!(
                    caught_up.through_position, head,
                    "the filtered stream still reaches the head"
                );
                break;
            }
            Message::Heartbeat(_) => {}
        }
    }
    assert!(!delivered.is_empty());
    assert!(
        delivered
            .iter()
            .all(|e| e.event_type == "ReservationConfirmed" && e.hotel_id == "b")
    );
    let expected: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE event_type = 'ReservationConfirmed' AND hotel_id = 'b'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(delivered.len() as i64, expected);

    // Unwanted live events move the checkpoint through heartbeats.
    let new_head = book_some(&server, "a", 2).await;
    loop {
        match next_message(&mut stream).await {
            Message::Heartbeat(beat) if beat.through_position == new_head => break,
            Message::Events(batch) => panic!("hotel a events must be filtered out: {batch:?}"),
            _ => {}
        }
    }
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_get_clear_errors_and_shutdown_ends_streams() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Leiria").await;
    let mut events = server.events().await;

    let negative = events
        .subscribe(subscribe_from(-1, 0))
        .await
        .expect_err("negative");
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(negative.message().contains("from_position"));
    let beyond = events
        .subscribe(subscribe_from(3, 0))
        .await
        .expect_err("beyond head");
    assert_eq!(beyond.code(), Code::OutOfRange);
    assert!(beyond.message().contains("head 1"), "{}", beyond.message());
    let huge = events
        .subscribe(subscribe_from(0, 1_000_000))
        .await
        .expect_err("max_batch");
    assert_eq!(huge.code(), Code::InvalidArgument);
    let unknown_type = events
        .subscribe(pb::SubscribeRequest {
            from_position: 0,
            filter: Some(pb::EventFilter {
                event_types: vec!["RoomBooked".to_owned()],
                hotel_ids: vec![],
            }),
            max_batch: 0,
            expected_event_id: String::new(),
        })
        .await
        .expect_err("unknown type");
    assert_eq!(unknown_type.code(), Code::InvalidArgument);
    assert!(unknown_type.message().contains("filter.event_types[0]"));

    // head + 1 is "only new events".
    let mut live = events
        .subscribe(subscribe_from(2, 0))
        .await
        .expect("live only")
        .into_inner();
    assert!(matches!(
        next_message(&mut live).await,
        Message::CaughtUp(_)
    ));

    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown does not hang on open streams"
    );
    let mut ended_with = None;
    while let Some(item) = live.next().await {
        if let Err(status) = item {
            ended_with = Some(status);
            break;
        }
    }
    let status = ended_with.expect("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_served_from_memory_equal_the_log() {
    // A live subscriber gets this server's commits from memory; a second
    // server's commits in between come from the log. Every envelope must
    // equal what a reader of the log gets, field by field.
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let other = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h9", "Lagos").await;
    add_room_type(&mut client, "h9", "DBL", 2).await;

    let mut stream = server
        .events()
        .await
        .subscribe(subscribe_from(1, 100))
        .await
        .expect("subscribe")
        .into_inner();
    let caught_up = read_through(&mut stream, 2).await;
    assert_eq!(caught_up.len(), 2);
    book_some(&server, "h9", 5).await;
    book_some(&other, "h9", 3).await;
    let head = book_some(&server, "h9", 6).await;
    let mut live = read_through(&mut stream, head).await;
    let mut received = caught_up;
    received.append(&mut live);

    let stored: Vec<pb::EventEnvelope> =
        command_server::store::events::read_range(&db.pool, 1, head, 1000)
            .await
            .expect("read the log")
            .iter()
            .map(|event| event.decoded().expect("a stored payload decodes"))
            .collect();
    assert_eq!(stored.len() as i64, head);
    assert_eq!(received, stored, "the stream delivers exactly the log");
    server.stop().await;
    other.stop().await;
    db.cleanup().await;
}
