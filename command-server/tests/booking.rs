//! Booking under concurrency: no overbooking, waitlist, promotion, and the
//! domain rules, over real gRPC against a real MariaDB.

mod support;

use futures::future::join_all;
use hotel_common::pb::{self, ReservationStatus};
use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_bookings_for_five_rooms_confirm_exactly_five() {
    let db = TestDb::create().await;
    // Two servers on one database: the head lock must serialise them too.
    let first = TestServer::start(&db).await;
    let second = TestServer::start(&db).await;
    let mut client = first.commands().await;
    register_hotel(&mut client, "h1", "Porto").await;
    add_room_type(&mut client, "h1", "DBL", 5).await;

    // Overlapping stays: nights 3..6 are wanted by everyone.
    let mut calls = Vec::new();
    for i in 0..60 {
        let server = if i % 2 == 0 { &first } else { &second };
        let mut client = server.commands().await;
        let from = 1 + (i % 3) as i64;
        let request = booking("h1", "DBL", from, from + 4, &format!("g{i}"));
        calls.push(async move { client.book_room(request).await });
    }
    let replies: Vec<pb::BookRoomResponse> = join_all(calls)
        .await
        .into_iter()
        .map(|r| {
            r.expect("every booking succeeds (confirmed or waitlisted)")
                .into_inner()
        })
        .collect();
    let confirmed: Vec<_> = replies
        .iter()
        .filter(|r| r.status == ReservationStatus::Confirmed as i32)
        .collect();
    let waitlisted = replies
        .iter()
        .filter(|r| r.status == ReservationStatus::Waitlisted as i32)
        .count();
    assert_eq!(confirmed.len(), 5, "exactly the five rooms are confirmed");
    assert_eq!(waitlisted, 55, "everyone else waits");
    assert_no_overbooking(&db).await;
    let most: i32 = sqlx::query_scalar("SELECT MAX(booked) FROM room_nights")
        .fetch_one(&db.pool)
        .await
        .expect("max booked");
    assert_eq!(most, 5, "the contended nights are exactly full");

    // Cancel one confirmed booking: the first promoted is the oldest
    // waitlisted booking overlapping it whose every night then has a room.
    let cancelled = confirmed[0];
    let stay: (time::Date, time::Date) =
        sqlx::query_as("SELECT check_in, check_out FROM reservations WHERE reservation_id = ?")
            .bind(&cancelled.reservation_id)
            .fetch_one(&db.pool)
            .await
            .expect("stay of the cancelled booking");
    let mut booked: std::collections::HashMap<time::Date, i32> =
        sqlx::query_as("SELECT night, booked FROM room_nights")
            .fetch_all(&db.pool)
            .await
            .expect("nights")
            .into_iter()
            .collect();
    let mut night = stay.0;
    while night < stay.1 {
        *booked.get_mut(&night).expect("a booked night") -= 1;
        night = night.next_day().expect("a next day");
    }
    let candidates: Vec<(String, time::Date, time::Date)> = sqlx::query_as(
        "SELECT reservation_id, check_in, check_out FROM reservations WHERE status = 'WAITLISTED' \
         AND check_in < ? AND check_out > ? ORDER BY priority DESC, booked_position",
    )
    .bind(stay.1)
    .bind(stay.0)
    .fetch_all(&db.pool)
    .await
    .expect("waitlisted bookings");
    let expected = candidates.into_iter().find_map(|(id, from, to)| {
        let mut night = from;
        while night < to {
            if booked.get(&night).copied().unwrap_or(0) >= 5 {
                return None;
            }
            night = night.next_day().expect("a next day");
        }
        Some(id)
    });
    let reply = client
        .cancel_reservation(pb::CancelReservationRequest {
            precondition: None,
            command_id: new_id(),
            reservation_id: cancelled.reservation_id.clone(),
            reason: "plans changed".to_owned(),
            correlation_id: String::new(),
        })
        .await
        .expect("cancel")
        .into_inner();
    let expected = expected.expect("a waitlisted booking fits the freed room");
    assert_eq!(reply.promoted_reservation_ids.first(), Some(&expected));
    assert!(reply.position > cancelled.position);
    assert_no_overbooking(&db).await;
    assert_gap_free(&db).await;

    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_promotes_by_priority_then_age_and_inventory_changes_promote() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h2", "Faro").await;
    add_room_type(&mut client, "h2", "SGL", 1).await;

    let holder = client
        .book_room(booking("h2", "SGL", 2, 4, "holder"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(holder.status, ReservationStatus::Confirmed as i32);
    let old = client
        .book_room(booking("h2", "SGL", 2, 4, "old"))
        .await
        .expect("book")
        .into_inner();
    let mut vip_request = booking("h2", "SGL", 2, 4, "vip");
    vip_request.priority = 10;
    let vip = client
        .book_room(vip_request)
        .await
        .expect("book")
        .into_inner();
    let young = client
        .book_room(booking("h2", "SGL", 2, 4, "young"))
        .await
        .expect("book")
        .into_inner();
    for waiting in [&old, &vip, &young] {
        assert_eq!(waiting.status, ReservationStatus::Waitlisted as i32);
    }

    let cancelled = cancel(&mut client, &holder.reservation_id).await;
    assert_eq!(
        cancelled.promoted_reservation_ids,
        std::slice::from_ref(&vip.reservation_id),
        "higher priority first"
    );

    // Lowering below what is booked is refused and changes nothing.
    let refused = client
        .set_room_inventory(pb::SetRoomInventoryRequest {
            precondition: None,
            command_id: new_id(),
            hotel_id: "h2".to_owned(),
            room_type_code: "SGL".to_owned(),
            inventory: 0,
            correlation_id: String::new(),
        })
        .await
        .expect_err("cannot drop below booked");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // Raising promotes the rest, oldest first.
    let raised = client
        .set_room_inventory(pb::SetRoomInventoryRequest {
            precondition: None,
            command_id: new_id(),
            hotel_id: "h2".to_owned(),
            room_type_code: "SGL".to_owned(),
            inventory: 3,
            correlation_id: String::new(),
        })
        .await
        .expect("raise")
        .into_inner();
    assert_eq!(
        raised.promoted_reservation_ids,
        [old.reservation_id.clone(), young.reservation_id.clone()]
    );
    assert_no_overbooking(&db).await;
    assert_gap_free(&db).await;
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_in_and_check_out_follow_the_rules() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h3", "Braga").await;
    add_room_type(&mut client, "h3", "DBL", 1).await;
    let today = client
        .book_room(booking("h3", "DBL", 0, 2, "a"))
        .await
        .expect("book")
        .into_inner();
    let later = client
        .book_room(booking("h3", "DBL", 5, 6, "b"))
        .await
        .expect("book")
        .into_inner();
    let waiting = client
        .book_room(booking("h3", "DBL", 0, 1, "c"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(waiting.status, ReservationStatus::Waitlisted as i32);

    let check_in = |id: &str| pb::CheckInRequest {
        precondition: None,
        command_id: new_id(),
        reservation_id: id.to_owned(),
        correlation_id: String::new(),
    };
    let check_out = |id: &str| pb::CheckOutRequest {
        precondition: None,
        command_id: new_id(),
        reservation_id: id.to_owned(),
        correlation_id: String::new(),
    };

    let early = client
        .check_in(check_in(&later.reservation_id))
        .await
        .expect_err("too early");
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert!(
        early.message().contains("check-in opens"),
        "{}",
        early.message()
    );
    let not_confirmed = client
        .check_in(check_in(&waiting.reservation_id))
        .await
        .expect_err("waitlisted");
    assert_eq!(not_confirmed.code(), Code::FailedPrecondition);
    let not_in = client
        .check_out(check_out(&today.reservation_id))
        .await
        .expect_err("not checked in");
    assert_eq!(not_in.code(), Code::FailedPrecondition);
    let unknown = client
        .check_in(check_in(&new_id()))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);

    let events_before = db.count("SELECT COUNT(*) FROM events").await;
    let checked_in = client
        .check_in(check_in(&today.reservation_id))
        .await
        .expect("check in")
        .into_inner();
    assert_eq!(checked_in.position, events_before + 1);
    let cancel_after_check_in = client
        .cancel_reservation(pb::CancelReservationRequest {
            precondition: None,
            command_id: new_id(),
            reservation_id: today.reservation_id.clone(),
            reason: String::new(),
            correlation_id: String::new(),
        })
        .await
        .expect_err("checked in");
    assert_eq!(cancel_after_check_in.code(), Code::FailedPrecondition);
    client
        .check_out(check_out(&today.reservation_id))
        .await
        .expect("check out");
    let status: String =
        sqlx::query_scalar("SELECT status FROM reservations WHERE reservation_id = ?")
            .bind(&today.reservation_id)
            .fetch_one(&db.pool)
            .await
            .expect("status");
    assert_eq!(status, "CHECKED_OUT");

    // Unknown hotel or room type.
    let missing = client
        .book_room(booking("nope", "DBL", 1, 2, "d"))
        .await
        .expect_err("no hotel");
    assert_eq!(missing.code(), Code::NotFound);
    let duplicate = client
        .register_hotel(pb::RegisterHotelRequest {
            command_id: new_id(),
            hotel_id: "h3".to_owned(),
            name: "Again".to_owned(),
            city: "Braga".to_owned(),
            correlation_id: String::new(),
        })
        .await
        .expect_err("exists");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert_gap_free(&db).await;
    server.stop().await;
    db.cleanup().await;
}

/// Forty wait for two nights (more than a page of the waiting list), then
/// one for the second night only; the second night frees up: the one that
/// fits is found behind the forty that do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_promotes_past_a_long_waiting_list_that_does_not_fit() {
    promotes_the_one_that_fits_behind("h4", "Evora", 40).await;
}

/// More waiters overlap the freed room than a cancellation reads at once
/// by date (256): it reads the list a page at a time in promotion order,
/// and still finds the one that fits behind the 300 that do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_promotes_past_more_waiters_than_it_reads_at_once() {
    promotes_the_one_that_fits_behind("h5", "Faro", 300).await;
}

/// Night 1 and night 2 of a one-room type are each taken; `waiters` wait
/// for both nights, then one for night 2 alone. Night 2 frees up; night 1
/// stays full, so only the last one fits, and it is promoted.
async fn promotes_the_one_that_fits_behind(hotel_id: &'static str, city: &str, waiters: usize) {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, hotel_id, city).await;
    add_room_type(&mut client, hotel_id, "SGL", 1).await;
    client
        .book_room(booking(hotel_id, "SGL", 1, 2, "first-night"))
        .await
        .expect("book");
    let second_night = client
        .book_room(booking(hotel_id, "SGL", 2, 3, "second-night"))
        .await
        .expect("book")
        .into_inner();
    // In rounds of 30 at once: the writer batches them.
    for first in (0..waiters).step_by(30) {
        let waiting = (first..(first + 30).min(waiters)).map(|i| {
            let mut client = client.clone();
            async move {
                client
                    .book_room(booking(hotel_id, "SGL", 1, 3, &format!("both-{i}")))
                    .await
                    .expect("book")
                    .into_inner()
            }
        });
        for reply in futures::future::join_all(waiting).await {
            assert_eq!(reply.status, ReservationStatus::Waitlisted as i32);
        }
    }
    let last = client
        .book_room(booking(hotel_id, "SGL", 2, 3, "last"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(last.status, ReservationStatus::Waitlisted as i32);

    let cancelled = cancel(&mut client, &second_night.reservation_id).await;
    assert_eq!(
        cancelled.promoted_reservation_ids,
        std::slice::from_ref(&last.reservation_id),
        "the one that fits is found behind the {waiters} that do not"
    );
    assert_no_overbooking(&db).await;
    assert_waitlist_settled(&db).await;
    assert_reservations_match_events(&db).await;
    server.stop().await;
    db.cleanup().await;
}

/// A cancellation reads the waiters overlapping what it freed by check-in
/// date, from 30 nights (the longest stay) before it: a 30-night stay that
/// ends with the freed night is found and promoted; one that ends the night
/// before (and waits for another night) stays waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_finds_the_longest_stay_ending_in_the_night_it_freed() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h6", "Tavira").await;
    add_room_type(&mut client, "h6", "SGL", 1).await;
    let taken = client
        .book_room(booking("h6", "SGL", 40, 41, "taken"))
        .await
        .expect("book")
        .into_inner();
    client
        .book_room(booking("h6", "SGL", 10, 11, "night-ten"))
        .await
        .expect("book");
    let long = client
        .book_room(booking("h6", "SGL", 11, 41, "thirty-nights"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(long.status, ReservationStatus::Waitlisted as i32);
    let before = client
        .book_room(booking("h6", "SGL", 10, 40, "ends-before"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(before.status, ReservationStatus::Waitlisted as i32);

    let cancelled = cancel(&mut client, &taken.reservation_id).await;
    assert_eq!(
        cancelled.promoted_reservation_ids,
        std::slice::from_ref(&long.reservation_id),
        "the thirty-night stay ending with the freed night moves up"
    );
    assert_no_overbooking(&db).await;
    assert_waitlist_settled(&db).await;
    assert_reservations_match_events(&db).await;
    server.stop().await;
    db.cleanup().await;
}

/// The status of a booking of nights 3-4 of h7's DBL.
async fn book_h7(client: &mut Client, guest: &str) -> i32 {
    client
        .book_room(booking("h7", "DBL", 3, 5, guest))
        .await
        .expect("book")
        .into_inner()
        .status
}

type Client = pb::command_service_client::CommandServiceClient<tonic::transport::Channel>;

async fn cancel(client: &mut Client, reservation_id: &str) -> pb::CancelReservationResponse {
    client
        .cancel_reservation(pb::CancelReservationRequest {
            precondition: None,
            command_id: new_id(),
            reservation_id: reservation_id.to_owned(),
            reason: String::new(),
            correlation_id: String::new(),
        })
        .await
        .expect("cancel")
        .into_inner()
}

/// Each writer carries the night counts it read and wrote from one batch
/// to the next while nobody else commits: a booking through another
/// instance in between must still count. Two rooms, three bookings of the
/// same night alternating between the instances: the third waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sees_nights_another_server_booked() {
    let db = TestDb::create().await;
    let first = TestServer::start(&db).await;
    let second = TestServer::start(&db).await;
    let mut one = first.commands().await;
    let mut two = second.commands().await;
    register_hotel(&mut one, "h7", "Beja").await;
    add_room_type(&mut one, "h7", "DBL", 2).await;
    assert_eq!(
        book_h7(&mut one, "a").await,
        ReservationStatus::Confirmed as i32
    );
    assert_eq!(
        book_h7(&mut two, "b").await,
        ReservationStatus::Confirmed as i32
    );
    assert_eq!(
        book_h7(&mut one, "c").await,
        ReservationStatus::Waitlisted as i32,
        "the first server counts the room the second one booked"
    );
    assert_no_overbooking(&db).await;
    assert_reservations_match_events(&db).await;
    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}

/// A writer that found another instance's commits before its last batch
/// reads, with its next lock, the events committed since its own last
/// commit, and brings the night counts it carries up to date with them
/// (bookings, waits, cancellations, promotions) instead of reading them
/// again. Two rooms, bookings and cancellations of one stay alternating
/// between two instances: every answer must count what the other did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_catches_up_with_what_another_server_booked_and_cancelled() {
    alternate_bookings_and_cancellations(1_000).await;
}

/// The same with `--writer-catch-up-events 0`: a writer that finds another
/// instance's commit forgets what it carries and reads it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_catching_up_a_server_reads_again_what_another_server_changed() {
    alternate_bookings_and_cancellations(0).await;
}

async fn alternate_bookings_and_cancellations(catch_up_events: usize) {
    let db = TestDb::create().await;
    let start = || {
        let mut config = command_server::Config::for_tests(&db.url);
        config.writer_catch_up_events = catch_up_events;
        TestServer::start_with(config)
    };
    let first = start().await;
    let second = start().await;
    let mut one = first.commands().await;
    let mut two = second.commands().await;
    register_hotel(&mut one, "h7", "Beja").await;
    add_room_type(&mut one, "h7", "DBL", 2).await;
    let book = |client: &mut Client, guest: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .book_room(booking("h7", "DBL", 3, 5, guest))
                .await
                .expect("book")
                .into_inner()
        }
    };
    const CONFIRMED: i32 = ReservationStatus::Confirmed as i32;
    const WAITLISTED: i32 = ReservationStatus::Waitlisted as i32;

    let a = book(&mut one, "a").await;
    let b = book(&mut two, "b").await;
    assert_eq!((a.status, b.status), (CONFIRMED, CONFIRMED));
    // The first instance finds the second's commit: it reads the nights.
    let c = book(&mut one, "c").await;
    assert_eq!(c.status, WAITLISTED, "both rooms are taken");
    // From here on each catches up from the other's events.
    let freed = cancel(&mut two, &a.reservation_id).await;
    assert_eq!(
        freed.promoted_reservation_ids,
        std::slice::from_ref(&c.reservation_id),
        "the second instance counts the wait the first one booked"
    );
    let d = book(&mut one, "d").await;
    assert_eq!(
        d.status, WAITLISTED,
        "a's room went to c: the first instance counts the cancellation and the promotion"
    );
    let e = book(&mut two, "e").await;
    assert_eq!(e.status, WAITLISTED);
    let freed = cancel(&mut one, &b.reservation_id).await;
    assert_eq!(
        freed.promoted_reservation_ids,
        std::slice::from_ref(&d.reservation_id),
        "d waited first"
    );
    let freed = cancel(&mut two, &c.reservation_id).await;
    assert_eq!(
        freed.promoted_reservation_ids,
        std::slice::from_ref(&e.reservation_id)
    );
    let f = book(&mut one, "f").await;
    assert_eq!(f.status, WAITLISTED, "d and e hold both rooms");
    assert_no_overbooking(&db).await;
    assert_waitlist_settled(&db).await;
    assert_reservations_match_events(&db).await;
    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sees_room_types_another_server_changed() {
    // Each writer carries the room types it read from one batch to the
    // next while nobody else commits: a change through another instance
    // must still be seen at once.
    let db = TestDb::create().await;
    let first = TestServer::start(&db).await;
    let second = TestServer::start(&db).await;
    let mut one = first.commands().await;
    let mut two = second.commands().await;
    register_hotel(&mut one, "h5", "Tomar").await;
    add_room_type(&mut one, "h5", "SGL", 1).await;
    let taken = one
        .book_room(booking("h5", "SGL", 1, 2, "a"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(taken.status, ReservationStatus::Confirmed as i32);
    let missing = one
        .book_room(booking("h5", "DBL", 1, 2, "b"))
        .await
        .expect_err("no such room type yet");
    assert_eq!(missing.code(), Code::NotFound);

    // The other server adds a room and a room type.
    two.set_room_inventory(pb::SetRoomInventoryRequest {
        precondition: None,
        command_id: new_id(),
        hotel_id: "h5".to_owned(),
        room_type_code: "SGL".to_owned(),
        inventory: 2,
        correlation_id: String::new(),
    })
    .await
    .expect("raise");
    add_room_type(&mut two, "h5", "DBL", 1).await;

    let second_room = one
        .book_room(booking("h5", "SGL", 1, 2, "c"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(
        second_room.status,
        ReservationStatus::Confirmed as i32,
        "the first server books the room the second one added"
    );
    let new_type = one
        .book_room(booking("h5", "DBL", 1, 2, "d"))
        .await
        .expect("the first server finds the room type the second one added")
        .into_inner();
    assert_eq!(new_type.status, ReservationStatus::Confirmed as i32);
    assert_no_overbooking(&db).await;
    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}
