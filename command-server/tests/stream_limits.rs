//! The event stream under abuse: huge filters, subscribers that never read,
//! bursts of catch-ups, filters that drop everything, and shutdown with a
//! client that does not read. Limits are set low so each test takes seconds.
//!
//! The tests of this file run one at a time (see [`serial`]): one of them
//! measures the memory of this process.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use command_server::Config;
use hotel_common::pb::{self, event_stream_client::EventStreamClient, subscribe_response::Message};
use support::*;
use tokio::sync::{Mutex, MutexGuard};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming, transport::Channel};

/// Held by every test of this file, so that none disturbs another's
/// measurements.
async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

fn config(db: &TestDb) -> Config {
    let mut config = Config::for_tests(&db.url);
    config.heartbeat_ms = 300;
    config
}

/// A channel whose streams hold about `window` bytes the client has not read.
async fn small_window_channel(server: &TestServer, window: u32) -> Channel {
    Channel::from_shared(server.url())
        .expect("valid url")
        .initial_stream_window_size(Some(window))
        .initial_connection_window_size(Some(window.max(65_535)))
        .connect()
        .await
        .expect("connect")
}

fn from(position: i64) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        from_position: position,
        filter: None,
        max_batch: 5000,
        expected_event_id: String::new(),
    }
}

async fn next(stream: &mut Streaming<pb::SubscribeResponse>) -> Result<Message, tonic::Status> {
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")?;
    Ok(item.message.expect("a message body"))
}

/// Reads until CaughtUp; returns the positions delivered.
async fn catch_up(
    stream: &mut Streaming<pb::SubscribeResponse>,
) -> Result<Vec<i64>, tonic::Status> {
    let mut positions = Vec::new();
    loop {
        match next(stream).await? {
            Message::Events(batch) => positions.extend(batch.events.iter().map(|e| e.position)),
            Message::CaughtUp(_) => return Ok(positions),
            Message::Heartbeat(_) => {}
        }
    }
}

/// The number after "from_position " in a status message.
fn resume_hint(status: &tonic::Status) -> i64 {
    let (_, after) = status
        .message()
        .split_once("from_position ")
        .unwrap_or_else(|| panic!("a resume hint in {status:?}"));
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a position in {status:?}"))
}

/// This process's resident memory, peak or now, in bytes.
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .expect("the field");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_filter_is_refused_at_once_with_a_small_error() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let server = TestServer::start_with(config(&db)).await;
    let mut events = server.events().await;
    let started = Instant::now();
    let status = events
        .subscribe(pb::SubscribeRequest {
            from_position: 0,
            filter: Some(pb::EventFilter {
                event_types: vec!["x".to_owned(); 300_000],
                hotel_ids: vec!["bad id!".to_owned(); 10],
            }),
            max_batch: 0,
            expected_event_id: String::new(),
        })
        .await
        .expect_err("refused");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let size = status.message().len()
        + status.details().len()
        + status
            .metadata()
            .iter()
            .map(|entry| format!("{entry:?}").len())
            .sum::<usize>();
    assert!(size < 8 * 1024, "the error is {size} bytes");
    let violations = hotel_common::validate::field_violations(&status);
    let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
    assert!(fields.contains(&"filter.event_types"), "{violations:?}");
    assert!(fields.contains(&"filter.hotel_ids[0]"), "{violations:?}");
    assert!(
        violations.len() <= 7,
        "a few named, the rest counted: {violations:?}"
    );
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_past_the_cap_are_refused_until_one_leaves() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let mut config = config(&db);
    config.stream_max_subscribers = 2;
    let server = TestServer::start_with(config).await;
    let mut events = server.events().await;
    let mut first = events.subscribe(from(0)).await.expect("first").into_inner();
    let mut second = events
        .subscribe(from(0))
        .await
        .expect("second")
        .into_inner();
    catch_up(&mut first).await.expect("first catches up");
    catch_up(&mut second).await.expect("second catches up");
    let refused = events.subscribe(from(0)).await.expect_err("third");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("2 subscribers"), "{refused:?}");

    drop(first);
    let patience = Instant::now() + Duration::from_secs(3);
    loop {
        match events.subscribe(from(0)).await {
            Ok(_) => break,
            Err(status) if Instant::now() < patience => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the slot was not freed: {status:?}"),
        }
    }
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_with_the_exact_position_to_resume_from() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let mut config = config(&db);
    config.stream_stall_ms = 400;
    config.stream_batch_bytes = 4 * 1024;
    let server = TestServer::start_with(config).await;
    let head = fill_log(&db, &mut server.commands().await, 300).await;

    let mut slow = EventStreamClient::new(small_window_channel(&server, 8 * 1024).await);
    let mut stream = slow
        .subscribe(from(0))
        .await
        .expect("subscribe")
        .into_inner();
    // Read nothing for longer than the stall limit, then everything.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut received = Vec::new();
    let status = loop {
        match next(&mut stream).await {
            Ok(Message::Events(batch)) => {
                assert!(
                    batch
                        .events
                        .iter()
                        .map(prost::Message::encoded_len)
                        .sum::<usize>()
                        <= 4 * 1024,
                    "a batch stays within --stream-batch-bytes"
                );
                received.extend(batch.events.iter().map(|e| e.position));
            }
            Ok(other) => panic!("still catching up: {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(!received.is_empty());
    let last = *received.last().expect("some events");
    assert!(last < head, "the stream stalled before the head");
    assert_eq!(received, (1..=last).collect::<Vec<_>>());
    assert_eq!(resume_hint(&status), last + 1, "{status:?}");

    let mut resumed = server
        .events()
        .await
        .subscribe(from(last + 1))
        .await
        .expect("resume")
        .into_inner();
    let rest = catch_up(&mut resumed).await.expect("the rest");
    assert_eq!(rest, (last + 1..=head).collect::<Vec<_>>());
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_subscriber_gets_heartbeats_while_other_hotels_events_flow() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let server = TestServer::start_with(config(&db)).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "busy", "Faro").await;
    add_room_type(&mut client, "busy", "DBL", 1000).await;
    register_hotel(&mut client, "quiet", "Beja").await;

    let mut stream = server
        .events()
        .await
        .subscribe(pb::SubscribeRequest {
            from_position: 0,
            filter: Some(pb::EventFilter {
                event_types: vec![],
                hotel_ids: vec!["quiet".to_owned()],
            }),
            max_batch: 0,
            expected_event_id: String::new(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    catch_up(&mut stream).await.expect("caught up");

    let booking = tokio::spawn(async move {
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_millis(1500) {
            i += 1;
            client
                .book_room(booking("busy", "DBL", 1, 2, &format!("g{i}")))
                .await
                .expect("book");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut last_message = Instant::now();
    let mut through = 0;
    let mut longest = Duration::ZERO;
    while !booking.is_finished() {
        let message = next(&mut stream).await.expect("open");
        longest = longest.max(last_message.elapsed());
        last_message = Instant::now();
        match message {
            Message::Heartbeat(beat) => {
                assert!(beat.through_position >= through);
                through = beat.through_position;
            }
            other => panic!("no event of hotel quiet was written: {other:?}"),
        }
    }
    booking.await.expect("bookings");
    assert!(
        longest < Duration::from_millis(450),
        "a heartbeat within 1.5 x 300 ms, longest silence {longest:?}"
    );
    assert!(through > 10, "through_position moved past busy's events");
    server.stop().await;
    db.cleanup().await;
}

/// Runs `call` every 20 ms until `done`; returns the slowest call.
async fn keep_calling<F, Fut>(done: Arc<AtomicU64>, mut call: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    while done.load(Ordering::Acquire) == 0 {
        i += 1;
        let started = Instant::now();
        call(i).await;
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_catch_ups_waits_its_turn_and_leaves_connections_for_the_rest() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let mut config = config(&db);
    config.db_pool_size = 4;
    config.stream_log_reads = 2;
    let server = TestServer::start_with(config).await;
    let head = fill_log(&db, &mut server.commands().await, 100).await;
    let mut commands = server.commands().await;
    add_room_type(&mut commands, "h", "DBL", 1000).await;
    let head = head + 1;

    // While the log is locked every read of it holds its connection: the
    // burst would take the whole pool if it could.
    let mut lock = db.pool.acquire().await.expect("a connection");
    sqlx::query("LOCK TABLES events WRITE")
        .execute(&mut *lock)
        .await
        .expect("lock the log");
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(server.channel().await);
    }
    let subscribers: Vec<_> = (0..200)
        .map(|i| {
            let mut events = EventStreamClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move {
                let mut stream = events.subscribe(from(0)).await?.into_inner();
                catch_up(&mut stream).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile the other users of the pool are served at once.
    let done = Arc::new(AtomicU64::new(0));
    let pool_users = tokio::spawn({
        let done = done.clone();
        let events = server.events().await;
        async move {
            keep_calling(done, |i| {
                let mut events = events.clone();
                let mut commands = commands.clone();
                async move {
                    events
                        .get_head(pb::GetHeadRequest {})
                        .await
                        .expect("GetHead answers");
                    let status = commands
                        .get_command_status(pb::GetCommandStatusRequest {
                            command_id: new_id(),
                        })
                        .await
                        .expect_err("unknown command");
                    assert_eq!(status.code(), Code::NotFound, "{status:?} at call {i}");
                    let book = booking("h", "DBL", 1, 2, &format!("g{i}"));
                    commands
                        .submit_command(pb::SubmitCommandRequest {
                            priority: 0,
                            command: Some(pb::submit_command_request::Command::BookRoom(book)),
                        })
                        .await
                        .expect("a booking is queued");
                }
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    done.store(1, Ordering::Release);
    let slowest = pool_users.await.expect("pool users");
    sqlx::query("UNLOCK TABLES")
        .execute(&mut *lock)
        .await
        .expect("unlock the log");
    drop(lock);
    assert!(
        slowest < Duration::from_millis(500),
        "GetHead, GetCommandStatus and SubmitCommand took up to {slowest:?}"
    );

    for subscriber in subscribers {
        let positions = subscriber
            .await
            .expect("joins")
            .unwrap_or_else(|status| panic!("a catch-up failed: {status:?}"));
        assert!(positions.len() as i64 >= head);
        assert_eq!(positions[..head as usize], (1..=head).collect::<Vec<_>>());
    }
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_ups_past_the_read_queue_are_turned_away_with_a_resume_hint() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let mut config = config(&db);
    config.stream_log_reads = 1;
    config.stream_read_queue = 2;
    config.stream_batch_bytes = 1024 * 1024;
    let server = TestServer::start_with(config).await;
    let head = fill_log(&db, &mut server.commands().await, 1000).await;
    let channel = server.channel().await;
    let subscribers: Vec<_> = (0..30)
        .map(|_| {
            let mut events = EventStreamClient::new(channel.clone());
            tokio::spawn(async move {
                // What it received before an error, too: a subscriber may
                // get the first events (from the recent ones in memory)
                // before a read of the log finds the line full.
                let mut positions = Vec::new();
                let mut stream = match events.subscribe(from(0)).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => return Err((positions, status)),
                };
                loop {
                    match next(&mut stream).await {
                        Ok(Message::Events(batch)) => {
                            positions.extend(batch.events.iter().map(|e| e.position));
                        }
                        Ok(Message::CaughtUp(_)) => return Ok(positions),
                        Ok(Message::Heartbeat(_)) => {}
                        Err(status) => return Err((positions, status)),
                    }
                }
            })
        })
        .collect();
    let mut turned_away = 0;
    for subscriber in subscribers {
        match subscriber.await.expect("joins") {
            Ok(positions) => assert_eq!(positions, (1..=head).collect::<Vec<_>>()),
            Err((received, status)) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("--stream-read-queue"),
                    "{status:?}"
                );
                // The hint is exactly the next position it lacks.
                let resume = resume_hint(&status);
                assert_eq!(received, (1..resume).collect::<Vec<_>>(), "{status:?}");
                turned_away += 1;
            }
        }
    }
    assert!(turned_away > 0, "30 catch-ups at once overflow a line of 2");
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_subscribers_cost_little_and_are_dropped_after_the_stall() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let mut config = config(&db);
    const STUCK: usize = 150;
    config.stream_max_subscribers = STUCK + 1;
    // The default --stream-batch-bytes: this test shows the bound it gives.
    config.stream_stall_ms = 3000;
    let server = TestServer::start_with(config).await;
    let head = fill_log(&db, &mut server.commands().await, 3000).await;
    let mut commands = server.commands().await;
    add_room_type(&mut commands, "h", "DBL", 1000).await;

    let peak_before = memory("VmHWM:");
    let mut good = server
        .events()
        .await
        .subscribe(from(0))
        .await
        .expect("good")
        .into_inner();
    let mut stuck = Vec::new();
    for i in 0..STUCK {
        if i % 50 == 0 {
            stuck.push((non_reading_channel(server.url()).await, Vec::new()));
        }
        let (channel, streams) = stuck.last_mut().expect("a channel");
        let mut events = EventStreamClient::new(channel.clone());
        streams.push(
            events
                .subscribe(from(0))
                .await
                .expect("subscribe")
                .into_inner(),
        );
    }
    let refused = server
        .events()
        .await
        .subscribe(from(0))
        .await
        .expect_err("past the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // A well-behaved subscriber catches up and follows bookings promptly.
    assert_eq!(
        catch_up(&mut good).await.expect("caught up").len() as i64,
        head + 1
    );
    for i in 0..10 {
        let started = Instant::now();
        let position = commands
            .book_room(booking("h", "DBL", 1, 2, &format!("g{i}")))
            .await
            .expect("book")
            .into_inner()
            .position;
        loop {
            if let Message::Events(batch) = next(&mut good).await.expect("good stream")
                && batch.through_position >= position
            {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "booking to subscriber took {:?}",
            started.elapsed()
        );
    }
    let grown = memory("VmHWM:").saturating_sub(peak_before);
    assert!(
        grown < 60 * 1024 * 1024,
        "{STUCK} non-reading streams over a {head}-event log took {} MiB",
        grown / 1024 / 1024
    );

    // Past the stall limit they are dropped: their places are free again.
    let patience = Instant::now() + Duration::from_secs(5);
    loop {
        match server.events().await.subscribe(from(0)).await {
            Ok(_) => break,
            Err(status) if Instant::now() < patience => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the stalled streams were not dropped: {status:?}"),
        }
    }
    drop(stuck);
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_non_reading_client_at_the_grace_and_ends_the_others_at_once() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let mut config = config(&db);
    config.shutdown_grace_secs = 1;
    // Longer than the grace: the grace's cut is what ends the stuck client.
    config.stream_shutdown_flush_ms = 30_000;
    config.stream_batch_bytes = 4 * 1024;
    let server = TestServer::start_with(config).await;
    fill_log(&db, &mut server.commands().await, 300).await;
    let mut commands = server.commands().await;
    add_room_type(&mut commands, "h", "DBL", 100).await;

    let mut stuck = EventStreamClient::new(non_reading_channel(server.url()).await)
        .subscribe(from(0))
        .await
        .expect("stuck subscribes")
        .into_inner();
    let mut reader = EventStreamClient::new(small_window_channel(&server, 8 * 1024).await)
        .subscribe(from(0))
        .await
        .expect("reader subscribes")
        .into_inner();
    let mut acknowledged = 0;
    for i in 0..5 {
        acknowledged = commands
            .book_room(booking("h", "DBL", 1, 2, &format!("g{i}")))
            .await
            .expect("book")
            .into_inner()
            .position;
    }
    // The reader has read one message and holds more unread.
    let first = next(&mut reader).await.expect("a first batch");
    let Message::Events(first) = first else {
        panic!("a batch first: {first:?}")
    };

    let stopping = Instant::now();
    let stop = tokio::spawn(server.stop());
    let mut last = first.through_position;
    let ended = loop {
        match next(&mut reader).await {
            Ok(Message::Events(batch)) => {
                assert_eq!(batch.events[0].position, last + 1);
                last = batch.through_position;
            }
            Ok(_) => {}
            Err(status) => break status,
        }
    };
    assert!(
        stopping.elapsed() < Duration::from_millis(500),
        "the reading client's stream ended in {:?}",
        stopping.elapsed()
    );
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(resume_hint(&ended), last + 1, "{ended:?}");

    let cut = tokio::time::timeout(Duration::from_secs(3), stuck.next())
        .await
        .expect("the non-reading client's connection is cut at the grace");
    assert!(
        !matches!(cut, Some(Ok(_))),
        "no message could reach it: {cut:?}"
    );
    assert!(
        stopping.elapsed() < Duration::from_millis(1500),
        "cut when the 1 s grace ended, not {:?} after the signal",
        stopping.elapsed()
    );
    stop.await.expect("stops");
    assert!(
        stopping.elapsed() < Duration::from_millis(2500),
        "the server stopped {:?} after the signal, with a 1 s grace",
        stopping.elapsed()
    );
    let durable: i64 = db.count("SELECT MAX(position) FROM events").await;
    assert_eq!(durable, acknowledged, "acknowledged commands are durable");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_the_grace_for_a_client_that_does_not_read() {
    let _serial = serial().await;
    let db = TestDb::create().await;
    let mut config = config(&db);
    config.shutdown_grace_secs = 10;
    config.stream_shutdown_flush_ms = 500;
    let server = TestServer::start_with(config).await;
    fill_log(&db, &mut server.commands().await, 300).await;
    let mut stuck = EventStreamClient::new(non_reading_channel(server.url()).await)
        .subscribe(from(0))
        .await
        .expect("stuck subscribes")
        .into_inner();
    let mut live = server
        .events()
        .await
        .subscribe(from(0))
        .await
        .expect("live subscribes")
        .into_inner();
    catch_up(&mut live).await.expect("caught up");

    let stopping = Instant::now();
    server.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_millis(2000),
        "stopped {:?} after the signal: the stuck client's connection is cut once it \
         leaves its final status unread for --stream-shutdown-flush-ms, not at the 10 s grace",
        stopping.elapsed()
    );
    let ended = next(&mut live).await.expect_err("the live stream ends");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(
        !matches!(stuck.next().await, Some(Ok(_))),
        "nothing reached the stuck client"
    );
    db.cleanup().await;
}
