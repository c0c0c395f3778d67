//! `kill -9` of a query server during its catch-up of 35,000+ events, at
//! random moments, then a restart on the same SQLite file: the read model it
//! ends with, read through the query API, equals MySQL's write model.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use hotel_common::pb::{self, command_service_client::CommandServiceClient};
use rand::Rng;
use support::*;
use tonic::transport::Channel;

/// Events the write phase produces at least: more than [`KILLS`] catch-up
/// commits of at most 10,000 events each, so that a kill right after a
/// round's first commit still interrupts the catch-up (30,000 at most by
/// the third).
const TARGET_EVENTS: i64 = 35_000;
/// Concurrent command tasks.
const WRITERS: usize = 32;
const HOTELS: usize = 10;
const ROOM_TYPES: [&str; 2] = ["DBL", "SGL"];
const INVENTORY: i32 = 5;
/// Stays start on day 1 to this day (plus a few check-in stays on day 0).
const LAST_CHECK_IN_DAY: i64 = 355;
/// Times the query server is killed during its catch-up.
const KILLS: usize = 3;

fn hotel(index: usize) -> String {
    format!("kh{index}")
}

/// One writer: books stays of 1 to 5 nights on random room types, cancels
/// some of its earlier bookings (promoting waitlisted ones), checks guests
/// in and out of same-day stays; task 0 also raises some inventories.
async fn write_until(mut client: CommandServiceClient<Channel>, task: usize, head: Arc<AtomicI64>) {
    let mut mine: Vec<String> = Vec::new();
    let mut raised = 0;
    let mut round = 0usize;
    while head.load(Ordering::Relaxed) < TARGET_EVENTS {
        round += 1;
        let (roll, hotel_index, code, from, nights, guest, priority) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..100),
                rng.random_range(0..HOTELS),
                ROOM_TYPES[rng.random_range(0..ROOM_TYPES.len())],
                rng.random_range(1..=LAST_CHECK_IN_DAY),
                rng.random_range(1..=5),
                format!("g{}", rng.random_range(0..300)),
                if rng.random_ratio(1, 10) { 1 } else { 0 },
            )
        };
        let position = if roll < 15 && !mine.is_empty() {
            let index = rand::rng().random_range(0..mine.len());
            let reservation_id = mine.swap_remove(index);
            match client
                .cancel_reservation(pb::CancelReservationRequest {
                    precondition: None,
                    command_id: new_id(),
                    reservation_id,
                    reason: "plans changed".into(),
                    correlation_id: String::new(),
                })
                .await
            {
                Ok(reply) => reply.into_inner().position,
                // It may have been checked in by this task (see below).
                Err(status) if status.code() == tonic::Code::FailedPrecondition => 0,
                Err(status) => panic!("cancel: {status:?}"),
            }
        } else if roll < 17 {
            // A stay starting today, so the guest can check in (and out).
            let reply = client
                .book_room(booking(&hotel(hotel_index), code, 0, nights, &guest))
                .await
                .expect("book for today")
                .into_inner();
            let mut position = reply.position;
            if reply.status == pb::ReservationStatus::Confirmed as i32 {
                position = client
                    .check_in(pb::CheckInRequest {
                        precondition: None,
                        command_id: new_id(),
                        reservation_id: reply.reservation_id.clone(),
                        correlation_id: String::new(),
                    })
                    .await
                    .expect("check in")
                    .into_inner()
                    .position;
                if roll == 16 {
                    position = client
                        .check_out(pb::CheckOutRequest {
                            precondition: None,
                            command_id: new_id(),
                            reservation_id: reply.reservation_id.clone(),
                            correlation_id: String::new(),
                        })
                        .await
                        .expect("check out")
                        .into_inner()
                        .position;
                }
            } else {
                mine.push(reply.reservation_id);
            }
            position
        } else if task == 0 && round.is_multiple_of(40) && raised < HOTELS {
            // Only this task changes inventories, and only upwards: promotions.
            let position = client
                .set_room_inventory(pb::SetRoomInventoryRequest {
                    precondition: None,
                    command_id: new_id(),
                    hotel_id: hotel(raised),
                    room_type_code: "DBL".into(),
                    inventory: INVENTORY + 2,
                    correlation_id: String::new(),
                })
                .await
                .expect("raise inventory")
                .into_inner()
                .position;
            raised += 1;
            position
        } else {
            let mut request = booking(&hotel(hotel_index), code, from, from + nights, &guest);
            request.priority = priority;
            let reply = client.book_room(request).await.expect("book").into_inner();
            mine.push(reply.reservation_id);
            reply.position
        };
        head.fetch_max(position, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_catch_up_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let commands = command_server(&db, logs.path());
    let mut setup = commands.commands().await;
    for index in 0..HOTELS {
        register_hotel(&mut setup, &hotel(index), "Coimbra").await;
        for code in ROOM_TYPES {
            add_room_type(&mut setup, &hotel(index), code, INVENTORY).await;
        }
    }

    // The write model: 35,000+ events from 32 concurrent writers.
    let head = Arc::new(AtomicI64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|task| tokio::spawn(write_until(setup.clone(), task, head.clone())))
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let head = assert_gap_free(&db).await;
    assert!(head >= TARGET_EVENTS, "head {head}");
    assert_no_overbooking(&db).await;
    let promoted = db
        .count("SELECT COUNT(*) FROM events WHERE event_type = 'ReservationPromoted'")
        .await;
    assert!(promoted > 0, "cancellations promoted waitlisted bookings");
    let written = started.elapsed();

    // Catch-up, killed at random moments, restarted on the same file.
    let path = data.path().join("read-model.db");
    let mut kills = Vec::new();
    let mut committed_before_kill = 0;
    for round in 0..KILLS {
        let mut server = query_server(&commands.url(), &path, logs.path());
        let mut queries = server.queries().await;
        let status = queries
            .get_projection_status(pb::GetProjectionStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(
            status.checkpoint >= committed_before_kill,
            "round {round}: restarted at {} but {committed_before_kill} was committed before the kill",
            status.checkpoint
        );
        // A random moment, or just after this round's first commit, so the
        // kill still lands in the catch-up on a fast machine: one commit
        // takes up to 10,000 events, so "once most of the log is in" could
        // already be the end.
        let delay = Duration::from_millis(rand::rng().random_range(50..=600));
        let since = Instant::now();
        let status = loop {
            let status = queries
                .get_projection_status(pb::GetProjectionStatusRequest {})
                .await
                .expect("status")
                .into_inner();
            if since.elapsed() >= delay || status.checkpoint > committed_before_kill {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let delay = since.elapsed().as_millis();
        server.kill9();
        assert!(
            status.checkpoint < head,
            "round {round}: the kill after {delay} ms must interrupt the catch-up, \
             but the checkpoint was already {} of {head}",
            status.checkpoint
        );
        committed_before_kill = status.checkpoint;
        kills.push((delay, status.checkpoint));
    }

    let caught_up_from = Instant::now();
    let server = query_server(&commands.url(), &path, logs.path());
    let mut queries = server.queries().await;
    let status = eventually(Duration::from_secs(60), || {
        let mut queries = queries.clone();
        async move {
            let status = queries
                .get_projection_status(pb::GetProjectionStatusRequest {})
                .await
                .expect("status")
                .into_inner();
            (status.checkpoint == head).then_some(status)
        }
    })
    .await;
    assert_eq!(status.head, head);
    assert_eq!(status.lag_events, 0);
    let catch_up = caught_up_from.elapsed();

    // The read model equals the write model: every reservation and every
    // night of every room type, read through the query API at the head.
    let (reservations, compared) =
        convergence::assert_read_model_matches(&db, &mut queries, head).await;

    eprintln!(
        "{head} events ({promoted} promotions, {} reservations) written in {written:?}; \
         kills (after ms, checkpoint) {kills:?}; final catch-up {catch_up:?}; \
         {compared} nights compared; total {:?}",
        reservations,
        started.elapsed()
    );
    drop(server);
    drop(commands);
    db.cleanup().await;
}
