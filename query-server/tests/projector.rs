//! The projector against a scripted event stream: gaps, duplicates,
//! disconnects and outages; health; restarts; rebuilds; catch-up speed.

mod support;

use std::time::{Duration, Instant};

use hotel_common::pb::{self, ReservationStatus as S};
use support::{App, Events, Fault, ScriptedStream, Stay, TempDir, eventually};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A hotel with one room type, then `count` confirmed one-night stays.
fn log(events: &mut Events, count: usize) -> Vec<pb::EventEnvelope> {
    let mut log = vec![
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 1_000_000, 10_000),
    ];
    log.extend(bookings(events, count));
    log
}

/// `count` confirmed one-night stays in March 2030, the i-th on night i % 28.
fn bookings(events: &mut Events, count: usize) -> Vec<pb::EventEnvelope> {
    (0..count)
        .map(|i| {
            let day = 1 + (i % 28);
            let stay = Stay::new(
                "h1",
                "DBL",
                &format!("g{}", i % 50),
                &format!("2030-03-{day:02}"),
                &format!("2030-03-{:02}", day + 1),
            );
            events.confirmed(&stay)
        })
        .collect()
}

/// Booked rooms per night of March 2030, as the query API reports them.
async fn march(app: &App) -> Vec<i32> {
    let mut client = app.client().await;
    let reply = client
        .get_availability(pb::GetAvailabilityRequest {
            hotel_id: "h1".into(),
            room_type_code: "DBL".into(),
            from_date: "2030-03-01".into(),
            to_date: "2030-03-30".into(),
            min_position: 0,
        })
        .await
        .expect("availability")
        .into_inner();
    reply.room_types[0]
        .nights
        .iter()
        .map(|n| n.booked)
        .collect()
}

fn expected_march(bookings: usize) -> Vec<i32> {
    (0..29)
        .map(|night| (0..bookings).filter(|i| i % 28 == night).count() as i32)
        .collect()
}

#[tokio::test]
async fn a_gap_or_a_duplicate_makes_it_resubscribe_from_the_checkpoint() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    stream.append(log(&mut events, 30));
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(32).await;

    // Positions 33.. arrive with 33 missing: nothing after 32 is applied,
    // and the projector asks again from 33.
    stream.inject(Fault::Gap);
    stream.append(bookings(&mut events, 10));
    app.wait_for(stream.head()).await;
    let subscriptions = stream.subscriptions();
    assert_eq!(subscriptions[0], 1);
    assert!(subscriptions.contains(&33), "{subscriptions:?}");

    // A duplicate of the last applied event: refused, resubscribed, no double count.
    let before = stream.subscriptions().len();
    stream.inject(Fault::Duplicate);
    let stay = Stay::new("h1", "DBL", "dup", "2030-03-29", "2030-03-30");
    stream.append([events.confirmed(&stay)]);
    app.wait_for(stream.head()).await;
    assert!(stream.subscriptions().len() > before);
    assert_eq!(*stream.subscriptions().last().expect("one"), stream.head());

    let mut expected = expected_march(30);
    for i in 0..10 {
        expected[i % 28] += 1;
    }
    expected[28] += 1;
    assert_eq!(march(&app).await, expected);
    app.stop().await;
}

#[tokio::test]
async fn a_dropped_stream_reconnects_and_resumes() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    stream.inject(Fault::Disconnect);
    stream.inject(Fault::Disconnect);
    stream.append(log(&mut events, 250));
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(stream.head()).await;
    let subscriptions = stream.subscriptions();
    // Batches are 100 events: it broke after 100 and after 200.
    assert_eq!(subscriptions[..3], [1, 101, 201], "{subscriptions:?}");
    assert_eq!(march(&app).await, expected_march(250));
    app.stop().await;
}

#[tokio::test]
async fn health_waits_for_the_first_catch_up_and_reads_survive_an_outage() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    stream.append(log(&mut events, 5));
    stream.set_down(true);
    let app = App::spawn(&dir, stream.clone()).await;
    let mut health = HealthClient::new(app.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };

    // Down from the start: NOT_SERVING, DISCONNECTED, yet queries answer.
    let patience = Duration::from_secs(5);
    let projection = app.projection.clone();
    assert!(
        eventually(patience, || projection.state()
            == pb::ProjectionState::Disconnected)
        .await
    );
    for service in ["", "hotel.v1.QueryService"] {
        let status = health
            .check(check(service))
            .await
            .expect("health")
            .into_inner();
        assert_eq!(status.status(), ServingStatus::NotServing, "{service:?}");
    }
    let mut client = app.client().await;
    let status = client
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state(), pb::ProjectionState::Disconnected);
    assert_eq!(status.checkpoint, 0);

    // Up: it reconnects by itself, catches up, and serves.
    stream.set_down(false);
    app.wait_for(stream.head()).await;
    assert!(eventually(patience, || projection.state() == pb::ProjectionState::Live).await);
    for service in ["", "hotel.v1.QueryService"] {
        let status = health
            .check(check(service))
            .await
            .expect("health")
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }

    // The stream breaks and the server stays down: still SERVING, the
    // projection DISCONNECTED, answers labelled with their position.
    stream.set_down(true);
    stream.inject(Fault::Disconnect);
    let stay = Stay::new("h1", "DBL", "late", "2030-03-29", "2030-03-30");
    stream.append([events.confirmed(&stay)]);
    app.wait_for(stream.head()).await;
    assert!(
        eventually(patience, || projection.state()
            == pb::ProjectionState::Disconnected)
        .await
    );
    let status = health.check(check("")).await.expect("health").into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);
    let reply = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: stay.reservation_id.clone(),
            min_position: 0,
        })
        .await
        .expect("reads go on")
        .into_inner();
    assert_eq!(reply.as_of_position, stream.head());

    // Back again: it follows new events without a restart.
    stream.set_down(false);
    let stay = Stay::new("h1", "DBL", "later", "2030-03-29", "2030-03-30");
    stream.append([events.confirmed(&stay)]);
    app.wait_for(stream.head()).await;
    assert!(eventually(patience, || projection.state() == pb::ProjectionState::Live).await);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint_in_the_file() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    stream.append(log(&mut events, 40));
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(42).await;
    app.stop().await;

    stream.append(bookings(&mut events, 5));
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(stream.head()).await;
    assert_eq!(*stream.subscriptions().last().expect("subscribed"), 43);
    let mut expected = expected_march(40);
    for i in 0..5 {
        expected[i % 28] += 1;
    }
    assert_eq!(march(&app).await, expected);
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_swaps_in_an_identical_read_model_while_queries_run() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    let mut initial = log(&mut events, 3_000);
    let cancelled = Stay::new("h1", "DBL", "zed", "2030-03-05", "2030-03-06");
    initial.push(events.confirmed(&cancelled));
    initial.push(events.cancelled(&cancelled, S::Confirmed));
    stream.append(initial);
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(stream.head()).await;
    let before = march(&app).await;

    // Queries hammer the server during the rebuild; none may fail.
    let addr = app.addr;
    let stop_readers = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for _ in 0..4 {
        let stop = stop_readers.1.clone();
        let reservation_id = cancelled.reservation_id.clone();
        readers.push(tokio::spawn(async move {
            let mut client =
                pb::query_service_client::QueryServiceClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect");
            let mut count = 0_u64;
            let mut last_position = 0;
            while !*stop.borrow() {
                let reply = client
                    .get_reservation(pb::GetReservationRequest {
                        reservation_id: reservation_id.clone(),
                        min_position: 0,
                    })
                    .await
                    .expect("no query fails during a rebuild")
                    .into_inner();
                assert!(
                    reply.as_of_position >= last_position,
                    "positions never go back"
                );
                last_position = reply.as_of_position;
                count += 1;
            }
            count
        }));
    }
    // Writes keep arriving during the rebuild too.
    let writer_stream = stream.clone();
    let mut more = events.continued();
    let writes = tokio::spawn(async move {
        for i in 0..20 {
            let stay = Stay::new("h1", "DBL", "late", "2030-03-29", "2030-03-30");
            writer_stream.append([more.confirmed(&stay)]);
            tokio::time::sleep(Duration::from_millis(5 + i)).await;
        }
    });

    let mut admin =
        pb::query_admin_service_client::QueryAdminServiceClient::new(app.channel().await);
    let reply = admin
        .rebuild_read_model(pb::RebuildReadModelRequest {})
        .await
        .expect("rebuild")
        .into_inner();
    writes.await.expect("writes");
    stop_readers.0.send_replace(true);
    let mut served = 0;
    for reader in readers {
        served += reader.await.expect("reader");
    }
    assert!(served > 0);
    assert!(reply.checkpoint >= 3_004, "{reply:?}");
    assert_eq!(reply.events_replayed, reply.checkpoint);

    app.wait_for(stream.head()).await;
    let mut expected = before;
    expected[28] += 20;
    assert_eq!(march(&app).await, expected);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("rebuild"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_quickly() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let mut stream = ScriptedStream::new();
    stream.max_batch = 1000;
    let bookings = 30_000;
    stream.append(log(&mut events, bookings));
    let started = Instant::now();
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(stream.head()).await;
    let elapsed = started.elapsed();
    let rate = stream.head() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "caught up {} events in {elapsed:?}: {rate:.0} events/s",
        stream.head()
    );
    assert_eq!(march(&app).await, expected_march(bookings));
    app.stop().await;
}
