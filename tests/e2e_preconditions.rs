//! Stale-read preconditions end to end (issue 16): clients read from a real
//! query server, decide, and command through two real command servers on
//! one MySQL. Of two decisions on the same read, one wins; the other is
//! refused with the version and the position to read again at, and changes
//! nothing in MySQL or in the read model.

mod support;

use std::time::Duration;

use hotel_common::pb::{self, precondition::Condition};
use support::*;
use tonic::{Code, Status};
use tonic_types::StatusExt;

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

/// (current_version, changed_position) of a STALE_READ refusal.
fn stale_read(status: &Status) -> (i64, i64) {
    assert_eq!(status.code(), Code::Aborted, "{status}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "STALE_READ", "{status}");
    let number = |key: &str| -> i64 { info.metadata[key].parse().expect("a number") };
    (number("current_version"), number("changed_position"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_decisions_on_one_read_through_two_instances_one_wins() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let first = command_server(&db, logs.path());
    let second = command_server(&db, logs.path());
    let query = query_server(&first.url(), &data.path().join("read.db"), logs.path());
    let mut one = first.commands().await;
    let mut two = second.commands().await;
    let mut queries = query.queries().await;
    register_hotel(&mut one, "h1", "Porto").await;
    add_room_type(&mut one, "h1", "DBL", 50).await;

    const ROUNDS: usize = 12;
    let mut check_ins = 0;
    for round in 0..ROUNDS {
        let booked = one
            .book_room(booking("h1", "DBL", 0, 2, &format!("g{round}")))
            .await
            .expect("book")
            .into_inner();
        let id = booked.reservation_id.clone();
        let read = queries
            .get_reservation(pb::GetReservationRequest {
                reservation_id: id.clone(),
                min_position: booked.position,
            })
            .await
            .expect("read")
            .into_inner();
        let version = read.reservation.expect("the reservation").version;
        assert_eq!(version, 1);

        // Two clerks decided on that read, at the same moment.
        let check_in = pb::CheckInRequest {
            command_id: new_id(),
            reservation_id: id.clone(),
            precondition: expected_version(version),
            correlation_id: String::new(),
        };
        let cancel = pb::CancelReservationRequest {
            command_id: new_id(),
            reservation_id: id.clone(),
            reason: "changed plans".to_owned(),
            precondition: expected_version(version),
            correlation_id: String::new(),
        };
        let (checked_in, cancelled) =
            tokio::join!(one.check_in(check_in), two.cancel_reservation(cancel));
        let (won, winner_status, refusal) = match (checked_in, cancelled) {
            (Ok(won), Err(refusal)) => {
                check_ins += 1;
                (won.into_inner().position, "CHECKED_IN", refusal)
            }
            (Err(refusal), Ok(won)) => (won.into_inner().position, "CANCELLED", refusal),
            (a, b) => panic!("exactly one must win: {a:?} / {b:?}"),
        };
        assert_eq!(stale_read(&refusal), (2, won), "round {round}");

        // MySQL holds one change; so does the read model.
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE aggregate_id = ?")
            .bind(&id)
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(events, 2, "booked and one change");
        let reread = queries
            .get_reservation(pb::GetReservationRequest {
                reservation_id: id.clone(),
                min_position: won,
            })
            .await
            .expect("read again")
            .into_inner()
            .reservation
            .expect("the reservation");
        assert_eq!(reread.version, 2);
        assert_eq!(reread.last_position, won);
        assert_eq!(
            pb::ReservationStatus::try_from(reread.status)
                .expect("a status")
                .as_str_name(),
            format!("RESERVATION_STATUS_{winner_status}")
        );
    }
    eprintln!("{check_ins} of {ROUNDS} rounds won by the check-in");
    assert_gap_free(&db).await;

    // A watch shows the same versions.
    let mut watch = queries
        .watch_availability(pb::WatchAvailabilityRequest {
            hotel_id: "h1".to_owned(),
            room_type_code: "DBL".to_owned(),
            from_date: day(0),
            to_date: day(2),
            min_position: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let first_answer = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("in time")
        .expect("a message")
        .expect("an answer");
    // Registered and one room type added.
    assert_eq!(first_answer.hotel_version, 2);

    drop(query);
    drop(second);
    drop(first);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_decision_on_a_stale_availability_read_is_refused_then_made_again() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let commands = command_server(&db, logs.path());
    let query = query_server(&commands.url(), &data.path().join("read.db"), logs.path());
    let mut client = commands.commands().await;
    let mut queries = query.queries().await;
    register_hotel(&mut client, "h1", "Porto").await;
    let added = add_room_type(&mut client, "h1", "DBL", 4).await;

    let availability = |min_position: i64| pb::GetAvailabilityRequest {
        hotel_id: "h1".to_owned(),
        room_type_code: "DBL".to_owned(),
        from_date: day(0),
        to_date: day(3),
        min_position,
    };
    let read = queries
        .get_availability(availability(added))
        .await
        .expect("read")
        .into_inner();
    let p = read.as_of_position;
    // A booking lands at P + 1 while the operator decides.
    let booked = client
        .book_room(booking("h1", "DBL", 1, 2, "ana"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(booked.position, p + 1);
    let set = |precondition| pb::SetRoomInventoryRequest {
        command_id: new_id(),
        hotel_id: "h1".to_owned(),
        room_type_code: "DBL".to_owned(),
        inventory: 2,
        precondition,
        correlation_id: String::new(),
    };
    let refused = client
        .set_room_inventory(set(unchanged_since(p)))
        .await
        .expect_err("decided before the booking");
    let (hotel_version, changed) = stale_read(&refused);
    assert_eq!((hotel_version, changed), (read.hotel_version, p + 1));

    // Read again at the position the refusal names, decide again.
    let reread = queries
        .get_availability(availability(changed))
        .await
        .expect("read again")
        .into_inner();
    assert!(reread.as_of_position >= changed);
    let booked_night = &reread.room_types[0].nights[1];
    assert_eq!(booked_night.booked, 1, "the read shows the booking");
    let accepted = client
        .set_room_inventory(set(unchanged_since(reread.as_of_position)))
        .await
        .expect("decided on the fresh read")
        .into_inner();
    let after = queries
        .get_availability(availability(accepted.position))
        .await
        .expect("read the change")
        .into_inner();
    assert_eq!(after.room_types[0].nights[1].inventory, 2);
    assert_eq!(after.hotel_version, reread.hotel_version + 1);

    drop(query);
    drop(commands);
    db.cleanup().await;
}
