//! Stale-read preconditions (issue 16): a command decided on a read names
//! the version or position it read, and changes nothing when that no longer
//! holds: ABORTED with ErrorInfo STALE_READ, the current version and the
//! position to read again at.

mod support;

use std::time::Duration;

use command_server::Config;
use hotel_common::pb::{self, precondition::Condition};
use sqlx::Executor;
use support::*;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

type Client = pb::command_service_client::CommandServiceClient<Channel>;

fn expected_version(version: i64) -> Option<pb::Precondition> {
    Some(pb::Precondition {
        condition: Some(Condition::ExpectedVersion(version)),
    })
}

fn unchanged_since(position: i64) -> Option<pb::Precondition> {
    Some(pb::Precondition {
        condition: Some(Condition::UnchangedSincePosition(position)),
    })
}

fn cancel(
    reservation_id: &str,
    precondition: Option<pb::Precondition>,
) -> pb::CancelReservationRequest {
    pb::CancelReservationRequest {
        command_id: new_id(),
        reservation_id: reservation_id.to_owned(),
        reason: String::new(),
        precondition,
        correlation_id: String::new(),
    }
}

fn check_in(reservation_id: &str, precondition: Option<pb::Precondition>) -> pb::CheckInRequest {
    pb::CheckInRequest {
        command_id: new_id(),
        reservation_id: reservation_id.to_owned(),
        precondition,
        correlation_id: String::new(),
    }
}

fn set_inventory(
    hotel_id: &str,
    code: &str,
    inventory: i32,
    precondition: Option<pb::Precondition>,
) -> pb::SetRoomInventoryRequest {
    pb::SetRoomInventoryRequest {
        command_id: new_id(),
        hotel_id: hotel_id.to_owned(),
        room_type_code: code.to_owned(),
        inventory,
        precondition,
        correlation_id: String::new(),
    }
}

/// The STALE_READ refusal's metadata: (subject, current_version,
/// changed_position); panics on any other outcome.
fn stale_read(status: &Status) -> (String, i64, i64) {
    assert_eq!(status.code(), Code::Aborted, "{status}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "STALE_READ", "{status}");
    assert_eq!(info.domain, "hotel.v1");
    let number = |key: &str| -> i64 {
        info.metadata
            .get(key)
            .unwrap_or_else(|| panic!("metadata {key} in {status}"))
            .parse()
            .expect("a number")
    };
    (
        info.metadata.get("subject").cloned().expect("subject"),
        number("current_version"),
        number("changed_position"),
    )
}

async fn book(client: &mut Client, guest: &str, code: &str) -> pb::BookRoomResponse {
    client
        .book_room(booking("h1", code, 0, 2, guest))
        .await
        .expect("book")
        .into_inner()
}

/// Events of one aggregate in MySQL.
async fn events_of(db: &TestDb, aggregate_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE aggregate_id = ?")
        .bind(aggregate_id)
        .fetch_one(&db.pool)
        .await
        .expect("count events")
}

async fn setup(server: &TestServer) -> Client {
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Porto").await;
    add_room_type(&mut client, "h1", "DBL", 10).await;
    add_room_type(&mut client, "h1", "SGL", 10).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_version_that_moved_on_is_refused_and_changes_nothing() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = setup(&server).await;
    let booked = book(&mut client, "ana", "DBL").await;
    let id = &booked.reservation_id;

    // Decided on version 1: it holds.
    let checked_in = client
        .check_in(check_in(id, expected_version(1)))
        .await
        .expect("check-in at version 1")
        .into_inner();
    // Decided on version 1 too, but the check-in came first.
    let refused = client
        .cancel_reservation(cancel(id, expected_version(1)))
        .await
        .expect_err("a cancel decided on version 1");
    let (subject, current, changed) = stale_read(&refused);
    assert_eq!(subject, format!("reservation:{id}"));
    assert_eq!(current, 2);
    assert_eq!(changed, checked_in.position);
    assert!(refused.message().contains("min_position"), "{refused:?}");
    assert_eq!(events_of(&db, id).await, 2, "the refusal wrote nothing");

    // Decided on the read at the check-in's position: holds.
    let unchanged = client
        .check_out(pb::CheckOutRequest {
            command_id: new_id(),
            reservation_id: id.clone(),
            precondition: unchanged_since(checked_in.position),
            correlation_id: String::new(),
        })
        .await
        .expect("check-out unchanged since the check-in");
    assert!(unchanged.into_inner().position > checked_in.position);
    // A read from before it: stale.
    let refused = client
        .cancel_reservation(cancel(id, unchanged_since(booked.position)))
        .await
        .expect_err("a cancel decided before the check-out");
    assert_eq!(stale_read(&refused).1, 3);

    // Without a precondition: judged on the state alone, as before.
    let plain = client
        .cancel_reservation(cancel(id, None))
        .await
        .expect_err("a checked-out stay cannot be cancelled");
    assert_eq!(plain.code(), Code::FailedPrecondition);

    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_rules_first_and_reuse_stays_distinguishable() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = setup(&server).await;
    let booked = book(&mut client, "ana", "DBL").await;
    let id = &booked.reservation_id;

    let first = check_in(id, expected_version(1));
    let reply = client
        .check_in(first.clone())
        .await
        .expect("check-in")
        .into_inner();
    client
        .check_out(pb::CheckOutRequest {
            command_id: new_id(),
            reservation_id: id.clone(),
            precondition: None,
            correlation_id: String::new(),
        })
        .await
        .expect("check-out");
    // The reservation is at version 3 now; the retry replays the first reply.
    let again = client
        .check_in(first.clone())
        .await
        .expect("a retry replays")
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.position, reply.position);

    // The same id with another precondition is another command.
    let mut reused = first.clone();
    reused.precondition = expected_version(3);
    let status = client.check_in(reused).await.expect_err("reused id");
    assert_eq!(status.code(), Code::Aborted);
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "COMMAND_ID_REUSED");

    // Bad values: INVALID_ARGUMENT naming the field, nothing written.
    let before = events_of(&db, id).await;
    let status = client
        .cancel_reservation(cancel(id, expected_version(0)))
        .await
        .expect_err("version 0");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = hotel_common::validate::field_violations(&status);
    assert_eq!(fields[0].0, "precondition.expected_version", "{fields:?}");
    let status = client
        .cancel_reservation(cancel(id, unchanged_since(-5)))
        .await
        .expect_err("a negative position");
    let fields = hotel_common::validate::field_violations(&status);
    assert_eq!(fields[0].0, "precondition.unchanged_since_position");
    assert_eq!(events_of(&db, id).await, before);

    // A position beyond the head came from another history.
    let status = client
        .cancel_reservation(cancel(id, unchanged_since(1_000_000)))
        .await
        .expect_err("a position beyond the head");
    stale_read(&status);
    assert!(
        status.message().contains("beyond the log's head"),
        "{status:?}"
    );

    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_precondition_is_judged_in_batch_order() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = setup(&server).await;
    let r1 = book(&mut client, "ana", "DBL").await.reservation_id;
    let r2 = book(&mut client, "bea", "DBL").await.reservation_id;

    // While the lock is held, the writer takes a first command and waits;
    // the next ones queue behind it, in the order sent, and then run
    // together as one batch.
    let mut lock = hold_write_lock(&db).await;
    let pause = Duration::from_millis(150);
    let first = tokio::spawn({
        let mut client = client.clone();
        async move { client.book_room(booking("h1", "SGL", 0, 2, "carl")).await }
    });
    tokio::time::sleep(pause).await;
    let cancel_r1 = tokio::spawn({
        let mut client = client.clone();
        let request = cancel(&r1, None);
        async move { client.cancel_reservation(request).await }
    });
    tokio::time::sleep(pause).await;
    let stale_check_in = tokio::spawn({
        let mut client = client.clone();
        let request = check_in(&r1, expected_version(1));
        async move { client.check_in(request).await }
    });
    tokio::time::sleep(pause).await;
    let fresh_check_in = tokio::spawn({
        let mut client = client.clone();
        let request = check_in(&r2, expected_version(1));
        async move { client.check_in(request).await }
    });
    tokio::time::sleep(pause).await;
    lock.execute("ROLLBACK").await.expect("release the lock");

    let first = first.await.expect("join").expect("first booking");
    let cancelled = cancel_r1.await.expect("join").expect("cancel").into_inner();
    let refused = stale_check_in
        .await
        .expect("join")
        .expect_err("checked in on a version the cancel replaced");
    let fresh = fresh_check_in
        .await
        .expect("join")
        .expect("a check-in whose version holds")
        .into_inner();

    // The order of the batch is the order of positions, and the refused
    // command saw the change made before it in the same batch.
    assert_eq!(cancelled.position, first.into_inner().position + 1);
    assert_eq!(fresh.position, cancelled.position + 1);
    let (subject, current, changed) = stale_read(&refused);
    assert_eq!(subject, format!("reservation:{r1}"));
    assert_eq!((current, changed), (2, cancelled.position));
    // The cancel and the later check-in committed together.
    let batch_times: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT occurred_at_ms FROM events WHERE position IN (?, ?)")
            .bind(cancelled.position)
            .bind(fresh.position)
            .fetch_all(&db.pool)
            .await
            .expect("commit times");
    assert_eq!(batch_times.len(), 1, "one batch");
    assert_eq!(events_of(&db, &r1).await, 2, "booked and cancelled only");
    assert_gap_free(&db).await;

    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_room_inventory_unchanged_since_a_read_sees_bookings() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = setup(&server).await;
    let read_at = book(&mut client, "ana", "DBL").await.position;
    // Another room type's booking does not touch DBL.
    let other = book(&mut client, "bea", "SGL").await.position;
    client
        .set_room_inventory(set_inventory("h1", "DBL", 12, unchanged_since(read_at)))
        .await
        .expect("DBL unchanged since the read");

    // A booking of DBL at P + 1 makes a read at P stale.
    let read_at = other + 1;
    let booked = book(&mut client, "carl", "DBL").await;
    assert_eq!(booked.position, read_at + 1);
    let refused = client
        .set_room_inventory(set_inventory("h1", "DBL", 3, unchanged_since(read_at)))
        .await
        .expect_err("decided before the booking");
    let (subject, current, changed) = stale_read(&refused);
    assert_eq!(subject, "room_type:h1/DBL");
    assert_eq!(changed, booked.position);
    // The hotel's version: registered, two room types, one inventory change.
    assert_eq!(current, 4);
    // Read again at the booking's position, decide again: accepted.
    client
        .set_room_inventory(set_inventory("h1", "DBL", 3, unchanged_since(changed)))
        .await
        .expect("decided on the fresh read");
    let inventory: i32 = sqlx::query_scalar(
        "SELECT inventory FROM room_types WHERE hotel_id = 'h1' AND code = 'DBL'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("inventory");
    assert_eq!(inventory, 3);

    // expected_version is the hotel's version: bookings do not move it.
    book(&mut client, "dan", "DBL").await;
    client
        .set_room_inventory(set_inventory("h1", "DBL", 4, expected_version(5)))
        .await
        .expect("the hotel is still at version 5");
    let refused = client
        .add_room_type(pb::AddRoomTypeRequest {
            command_id: new_id(),
            hotel_id: "h1".to_owned(),
            code: "TWN".to_owned(),
            name: "Twin".to_owned(),
            max_guests: 2,
            inventory: 1,
            nightly_rate: Some(pb::Money {
                amount_minor: 100,
                currency: "EUR".to_owned(),
            }),
            precondition: expected_version(5),
            correlation_id: String::new(),
        })
        .await
        .expect_err("the inventory change moved the hotel to version 6");
    let (subject, current, _) = stale_read(&refused);
    assert_eq!((subject.as_str(), current), ("hotel:h1", 6));

    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_limit_refuses_reads_too_old_to_check() {
    let db = TestDb::create().await;
    let mut config = Config::for_tests(&db.url);
    config.precondition_scan_limit = 3;
    let server = TestServer::start_with(config).await;
    let mut client = setup(&server).await;
    let read_at = book(&mut client, "ana", "DBL").await.position;
    for guest in ["b", "c", "d"] {
        book(&mut client, guest, "SGL").await;
    }
    // Three events behind: checked, and DBL did not change.
    let changed = client
        .set_room_inventory(set_inventory("h1", "DBL", 11, unchanged_since(read_at)))
        .await
        .expect("within the scan limit")
        .into_inner()
        .position;
    for guest in ["e", "f", "g", "h"] {
        book(&mut client, guest, "SGL").await;
    }
    // Four events behind: refused as too old to check, though nothing of
    // DBL's availability moved since.
    let refused = client
        .set_room_inventory(set_inventory("h1", "DBL", 12, unchanged_since(changed)))
        .await
        .expect_err("beyond the scan limit");
    stale_read(&refused);
    assert!(
        refused.message().contains("--precondition-scan-limit"),
        "{refused:?}"
    );
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_stale_command_fails_with_its_details() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = setup(&server).await;
    let booked = book(&mut client, "ana", "DBL").await;
    let cancelled = client
        .cancel_reservation(cancel(&booked.reservation_id, None))
        .await
        .expect("cancel")
        .into_inner();
    let request = check_in(&booked.reservation_id, expected_version(1));
    client
        .submit_command(pb::SubmitCommandRequest {
            priority: 0,
            command: Some(pb::submit_command_request::Command::CheckIn(
                request.clone(),
            )),
        })
        .await
        .expect("submitted");
    let status = wait_until_final(&mut client, &request.command_id).await;
    assert_eq!(status.state, pb::CommandState::Failed as i32);
    let error = status.error.expect("the refusal");
    assert_eq!(error.code, Code::Aborted as i32);
    assert_eq!(error.reason, "STALE_READ");
    assert_eq!(error.metadata["current_version"], "2");
    assert_eq!(
        error.metadata["changed_position"],
        cancelled.position.to_string()
    );
    // The direct call with the same id replays the refusal, details included.
    let replayed = client.check_in(request).await.expect_err("replayed");
    let (_, current, changed) = stale_read(&replayed);
    assert_eq!((current, changed), (2, cancelled.position));
    server.stop().await;
    db.cleanup().await;
}
