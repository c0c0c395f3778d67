//! The writer decides a whole batch of commands in memory between a few
//! multi-row reads and writes (ADR 0002). These tests send mixed commands
//! concurrently, through two servers on one database, so batches hold
//! bookings, cancellations (of rooms and of places on the waiting list),
//! promotions, check-ins and refusals side by side, and check after every
//! round that the write model is exactly what its events say.

mod support;

use futures::future::join_all;
use hotel_common::pb::{self, ReservationStatus};
use rand::{Rng, SeedableRng, rngs::StdRng};
use support::*;
use tonic::{Code, transport::Channel};

type Client = pb::command_service_client::CommandServiceClient<Channel>;

/// What one call did, for the next rounds and the final checks.
enum Outcome {
    Booked(pb::BookRoomResponse),
    Promoted(usize),
    Refused,
    Other,
}

async fn cancel(mut client: Client, reservation_id: String) -> Outcome {
    let request = pb::CancelReservationRequest {
        command_id: new_id(),
        reservation_id,
        reason: "churn".to_owned(),
        correlation_id: String::new(),
    };
    match client.cancel_reservation(request).await {
        Ok(reply) => Outcome::Promoted(reply.into_inner().promoted_reservation_ids.len()),
        Err(status) if status.code() == Code::FailedPrecondition => Outcome::Refused,
        Err(status) => panic!("cancel failed: {status}"),
    }
}

async fn check_in(mut client: Client, reservation_id: String) -> Outcome {
    let request = pb::CheckInRequest {
        command_id: new_id(),
        reservation_id,
        correlation_id: String::new(),
    };
    match client.check_in(request).await {
        Ok(_) => Outcome::Other,
        Err(status) if status.code() == Code::FailedPrecondition => Outcome::Refused,
        Err(status) => panic!("check-in failed: {status}"),
    }
}

async fn book(mut client: Client, request: pb::BookRoomRequest) -> Outcome {
    match client.book_room(request).await {
        Ok(reply) => Outcome::Booked(reply.into_inner()),
        Err(status) if status.code() == Code::NotFound => Outcome::Refused,
        Err(status) => panic!("booking failed: {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_concurrent_batches_keep_the_write_model_equal_to_its_events() {
    let db = TestDb::create().await;
    let servers = [TestServer::start(&db).await, TestServer::start(&db).await];
    let mut admin = servers[0].commands().await;
    register_hotel(&mut admin, "h1", "Lisbon").await;
    let room_types = [("h1", "SGL", 1), ("h1", "DBL", 2), ("h1", "STE", 3)];
    for (hotel, code, inventory) in room_types {
        add_room_type(&mut admin, hotel, code, inventory).await;
    }

    let mut rng = StdRng::seed_from_u64(7);
    let mut reservations: Vec<String> = Vec::new();
    let (mut promotions, mut waitlisted, mut refused) = (0, 0, 0);
    for round in 0..6 {
        let mut calls = Vec::new();
        for i in 0..48 {
            let client = servers[i % 2].commands().await;
            let roll = rng.random_range(0..100);
            if roll < 30 && !reservations.is_empty() {
                let id = reservations[rng.random_range(0..reservations.len())].clone();
                calls.push(tokio::spawn(cancel(client, id)));
            } else if roll < 40 && !reservations.is_empty() {
                let id = reservations[rng.random_range(0..reservations.len())].clone();
                calls.push(tokio::spawn(check_in(client, id)));
            } else {
                let (hotel, code, _) = room_types[rng.random_range(0..room_types.len())];
                // Some stays start today, so that check-ins can succeed.
                let from = rng.random_range(0..6);
                let nights = rng.random_range(1..4);
                let mut request = booking(hotel, code, from, from + nights, &format!("g{i}"));
                request.priority = rng.random_range(0..3);
                // Now and then a room type that does not exist: refused in
                // the middle of a batch, changing nothing.
                if rng.random_range(0..20) == 0 {
                    request.room_type_code = "NOPE".to_owned();
                }
                calls.push(tokio::spawn(book(client, request)));
            }
        }
        for outcome in join_all(calls).await {
            match outcome.expect("the call's task ends") {
                Outcome::Booked(reply) => {
                    if reply.status == ReservationStatus::Waitlisted as i32 {
                        waitlisted += 1;
                    }
                    reservations.push(reply.reservation_id);
                }
                Outcome::Promoted(count) => promotions += count,
                Outcome::Refused => refused += 1,
                Outcome::Other => {}
            }
        }
        assert_gap_free(&db).await;
        assert_no_overbooking(&db).await;
        assert_waitlist_settled(&db).await;
        assert_reservations_match_events(&db).await;
        eprintln!(
            "round {round}: {} reservations, {waitlisted} waitlisted, {promotions} promoted, {refused} refused",
            reservations.len()
        );
    }
    // The run exercised what it is about.
    assert!(waitlisted > 0, "some bookings waited");
    assert!(promotions > 0, "some cancellations promoted");
    assert!(refused > 0, "some commands were refused");

    for server in servers {
        server.stop().await;
    }
    db.cleanup().await;
}
