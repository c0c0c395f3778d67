//! The read model on real SQLite files: every event type, exactly-once
//! batches, and read-only readers.

mod support;

use hotel_common::pb::{self, ReservationStatus as S};
use query_server::{
    queries::QueryError,
    read_model::{ApplyError, ListingIndexes, ReadError, ReadModel, Writer, reads},
};
use support::{Events, Stay, TempDir};

struct Fixture {
    _dir: TempDir,
    writer: Writer,
    readers: ReadModel,
    events: Events,
}

fn fixture() -> Fixture {
    let dir = TempDir::new();
    let writer = Writer::open(&dir.db()).expect("open the read model");
    let readers = ReadModel::new(&dir.db());
    Fixture {
        _dir: dir,
        writer,
        readers,
        events: Events::new(),
    }
}

impl Fixture {
    fn apply(&mut self, events: &[pb::EventEnvelope]) -> i64 {
        self.writer.apply_batch(events).expect("batch applies")
    }

    /// (booked, waiting) of one night; a missing row is (0, 0).
    fn night(&self, hotel: &str, code: &str, night: &str) -> (i32, i32) {
        let counts = self
            .readers
            .read(|tx| reads::night_counts(tx, hotel, Some(code), night, "9999-12-31"))
            .expect("read nights");
        counts
            .iter()
            .find(|c| c.night == night)
            .map_or((0, 0), |c| (c.booked, c.waiting))
    }

    fn reservation(&self, id: &str) -> pb::Reservation {
        self.readers
            .read(|tx| reads::reservation(tx, id))
            .expect("read")
            .expect("reservation exists")
    }

    fn status(&self, id: &str) -> S {
        self.reservation(id).status()
    }

    fn checkpoint(&self) -> i64 {
        self.readers.checkpoint().expect("checkpoint").position
    }

    /// A hotel "h1" in Lisboa with room type DBL of `inventory` rooms.
    fn hotel_with_rooms(&mut self, inventory: i32) {
        let hotel = self.events.hotel("h1", "Hotel One", "Lisboa");
        let room = self.events.room_type("h1", "DBL", 2, inventory, 12_000);
        self.apply(&[hotel, room]);
    }
}

#[test]
fn hotels_room_types_and_inventory_changes() {
    let mut f = fixture();
    f.hotel_with_rooms(3);
    let change = f.events.inventory("h1", "DBL", 3, 7);
    f.apply(&[change]);
    let (hotel, room_types) = f
        .readers
        .read(|tx| Ok((reads::hotel(tx, "h1")?, reads::room_types(tx, "h1", None)?)))
        .expect("read");
    let hotel = hotel.expect("the hotel");
    assert_eq!(
        (hotel.name.as_str(), hotel.city.as_str()),
        ("Hotel One", "Lisboa")
    );
    assert_eq!(room_types.len(), 1);
    assert_eq!(room_types[0].code, "DBL");
    assert_eq!(room_types[0].inventory, 7);
    assert_eq!(room_types[0].max_guests, 2);
    assert_eq!(room_types[0].rate.amount_minor, 12_000);
    assert_eq!(f.checkpoint(), 3);
}

#[test]
fn confirmed_and_waitlisted_bookings_count_their_nights() {
    let mut f = fixture();
    f.hotel_with_rooms(1);
    let first = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-03");
    let second = Stay::new("h1", "DBL", "bo", "2030-05-02", "2030-05-04");
    let confirmed = f.events.confirmed(&first);
    let waitlisted = f.events.waitlisted(&second, 5);
    f.apply(&[confirmed, waitlisted]);

    assert_eq!(f.night("h1", "DBL", "2030-05-01"), (1, 0));
    assert_eq!(f.night("h1", "DBL", "2030-05-02"), (1, 1));
    assert_eq!(f.night("h1", "DBL", "2030-05-03"), (0, 1));
    assert_eq!(f.night("h1", "DBL", "2030-05-04"), (0, 0));

    let reservation = f.reservation(&first.reservation_id);
    assert_eq!(reservation.status(), S::Confirmed);
    assert_eq!(reservation.nights, 2);
    assert_eq!(
        reservation.guest.as_ref().map(|g| g.guest_id.as_str()),
        Some("ana")
    );
    assert_eq!(reservation.last_position, 3);
    assert_eq!(
        reservation.total_price.as_ref().map(|m| m.amount_minor),
        Some(10_000)
    );
    let waiting = f.reservation(&second.reservation_id);
    assert_eq!(waiting.status(), S::Waitlisted);
    assert_eq!(waiting.priority, 5);
}

#[test]
fn the_waitlist_is_in_promotion_order_by_position_not_by_clock() {
    let mut f = fixture();
    f.hotel_with_rooms(1);
    let held = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-03");
    let first = Stay::new("h1", "DBL", "bo", "2030-05-01", "2030-05-02");
    let second = Stay::new("h1", "DBL", "cy", "2030-05-01", "2030-05-02");
    let urgent = Stay::new("h1", "DBL", "di", "2030-05-02", "2030-05-03");
    let confirmed = f.events.confirmed(&held);
    let first_waiting = f.events.waitlisted(&first, 0);
    // Booked later (a higher position) on a command server whose clock runs
    // behind: its booked_at is the oldest of all. The command server
    // promotes by position, so it still comes after `first`.
    let mut second_waiting = f.events.waitlisted(&second, 0);
    if let Some(pb::event::Kind::ReservationWaitlisted(e)) = second_waiting
        .event
        .as_mut()
        .and_then(|event| event.kind.as_mut())
    {
        let booking = e.booking.as_mut().expect("a booking");
        booking.booked_at = Some(support::timestamp(1_000));
    }
    let urgent_waiting = f.events.waitlisted(&urgent, 7);
    f.apply(&[confirmed, first_waiting, second_waiting, urgent_waiting]);

    let order: Vec<String> = f
        .readers
        .read(|tx| reads::waitlist(tx, "h1", "DBL"))
        .expect("read the waitlist")
        .into_iter()
        .map(|entry| entry.reservation_id)
        .collect();
    assert_eq!(
        order,
        [
            urgent.reservation_id,
            first.reservation_id,
            second.reservation_id
        ]
    );
}

#[test]
fn a_file_of_the_first_schema_upgrades_in_place() {
    let dir = TempDir::new();
    {
        // A read model written by a binary that knew only migration 0001.
        let conn = rusqlite::Connection::open(dir.db()).expect("open");
        conn.execute_batch(include_str!("../migrations/0001_read_model.sql"))
            .expect("the first schema");
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO hotels VALUES ('h1', 'Hotel One', 'Lisboa', 'lisboa');
             INSERT INTO room_types VALUES ('h1', 'DBL', 'Double', 2, 1, 12000, 'EUR');
             INSERT INTO reservations VALUES
                 ('r1', 'h1', 'DBL', '2030-05-01', '2030-05-02', 1, 'ana', 'Ana', 'a@x.org',
                  2, 'CONFIRMED', 12000, 'EUR', 0, 1000, 1000, 3, 3),
                 ('r2', 'h1', 'DBL', '2030-05-01', '2030-05-02', 1, 'bo', 'Bo', 'b@x.org',
                  2, 'WAITLISTED', 12000, 'EUR', 0, 900, 900, 4, 4);
             INSERT INTO nights VALUES ('h1', 'DBL', '2030-05-01', 1, 1);
             UPDATE checkpoint SET position = 4;",
        )
        .expect("rows of the first schema");
    }
    let writer = Writer::open(&dir.db()).expect("migrates");
    assert_eq!(writer.checkpoint().expect("checkpoint").position, 4);
    let readers = ReadModel::new(&dir.db());
    let search = |check_in: &'static str, check_out: &'static str| reads::Search {
        city_key: "lisboa",
        check_in,
        check_out,
        nights: 1,
        guests: 2,
        after: None,
        limit: 10,
        max_examined: 1000,
    };
    let (full, free, waitlist, reservation) = readers
        .read(|tx| {
            Ok((
                reads::search(tx, &search("2030-05-01", "2030-05-02"))?.results,
                reads::search(tx, &search("2030-05-02", "2030-05-03"))?.results,
                reads::waitlist(tx, "h1", "DBL")?,
                reads::reservation(tx, "r1")?,
            ))
        })
        .expect("read");
    assert!(full.is_empty(), "{full:?}");
    let free: Vec<(&str, &str, i32)> = free
        .iter()
        .map(|r| (&*r.hotel_id, &*r.room_type_code, r.result.free_rooms))
        .collect();
    assert_eq!(free, [("h1", "DBL", 1)]);
    let waitlist: Vec<&str> = waitlist.iter().map(|e| e.reservation_id.as_str()).collect();
    assert_eq!(waitlist, ["r2"]);
    assert_eq!(reservation.map(|r| r.status()), Some(S::Confirmed));
}

#[test]
fn promotion_cancellation_check_in_and_out() {
    let mut f = fixture();
    f.hotel_with_rooms(1);
    let first = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-03");
    let second = Stay::new("h1", "DBL", "bo", "2030-05-01", "2030-05-03");
    let batch = [f.events.confirmed(&first), f.events.waitlisted(&second, 0)];
    f.apply(&batch);

    // Cancelling the confirmed one frees its nights; the waitlisted is promoted.
    let batch = [
        f.events.cancelled(&first, S::Confirmed),
        f.events.promoted(&second),
    ];
    f.apply(&batch);
    assert_eq!(f.status(&first.reservation_id), S::Cancelled);
    assert_eq!(f.status(&second.reservation_id), S::Confirmed);
    assert_eq!(f.night("h1", "DBL", "2030-05-01"), (1, 0));
    assert_eq!(f.night("h1", "DBL", "2030-05-02"), (1, 0));

    let checked_in = f.events.checked_in(&second);
    f.apply(&[checked_in]);
    assert_eq!(f.status(&second.reservation_id), S::CheckedIn);
    assert_eq!(
        f.night("h1", "DBL", "2030-05-01"),
        (1, 0),
        "check-in keeps counts"
    );
    let checked_out = f.events.checked_out(&second);
    let position = checked_out.position;
    f.apply(&[checked_out]);
    let reservation = f.reservation(&second.reservation_id);
    assert_eq!(reservation.status(), S::CheckedOut);
    assert_eq!(reservation.last_position, position);
    assert_eq!(
        reservation.updated_at.map(|t| t.seconds),
        Some(f.events.clock_ms / 1000),
        "updated_at is the envelope's occurred_at"
    );
    assert_eq!(
        f.night("h1", "DBL", "2030-05-01"),
        (1, 0),
        "check-out keeps counts"
    );

    // Cancelling a waitlisted reservation only removes it from the waiting counts.
    let third = Stay::new("h1", "DBL", "cy", "2030-05-02", "2030-05-03");
    let batch = [
        f.events.waitlisted(&third, 0),
        f.events.cancelled(&third, S::Waitlisted),
    ];
    f.apply(&batch);
    assert_eq!(f.night("h1", "DBL", "2030-05-02"), (1, 0));

    // Every change after the booking is kept, in order.
    let changes = f
        .readers
        .read(|tx| reads::reservation_changes_after(tx, &second.reservation_id, 0))
        .expect("read changes");
    let statuses: Vec<S> = changes.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [S::Confirmed, S::CheckedIn, S::CheckedOut]);
    // Each change carries the reservation's version after it.
    let versions: Vec<i64> = changes.iter().map(|c| c.version).collect();
    assert_eq!(versions, [2, 3, 4]);
    assert_eq!(f.reservation(&second.reservation_id).version, 4);
    assert_eq!(f.reservation(&first.reservation_id).version, 2);
}

/// The night counts follow `hotel_common::nights`, the one definition the
/// command server's writer also follows: a cancellation frees what its
/// previous status held (a checked-in stay's rooms too), and one whose
/// previous status held nothing is not counted as zero but stops the read
/// model before it.
#[test]
fn a_cancellation_frees_what_its_previous_status_held_or_stops_the_read_model() {
    let mut f = fixture();
    f.hotel_with_rooms(2);
    let stay = Stay::new("h1", "DBL", "ana", "2030-06-01", "2030-06-03");
    let batch = [f.events.confirmed(&stay), f.events.checked_in(&stay)];
    f.apply(&batch);
    assert_eq!(f.night("h1", "DBL", "2030-06-01"), (1, 0));
    let cancelled = f.events.cancelled(&stay, S::CheckedIn);
    f.apply(&[cancelled]);
    assert_eq!(f.status(&stay.reservation_id), S::Cancelled);
    assert_eq!(f.night("h1", "DBL", "2030-06-01"), (0, 0));
    assert_eq!(f.night("h1", "DBL", "2030-06-02"), (0, 0));

    let other = Stay::new("h1", "DBL", "bo", "2030-06-01", "2030-06-02");
    let booked = f.events.confirmed(&other);
    let position = f.apply(&[booked]);
    let odd = f.events.cancelled(&other, S::CheckedOut);
    let error = f
        .writer
        .apply_batch(&[odd])
        .expect_err("a cancellation of a checked-out stay");
    match &error {
        ApplyError::Unapplicable {
            position: at,
            checkpoint,
            message,
            ..
        } => {
            assert_eq!((*at, *checkpoint), (position + 1, position));
            assert!(message.contains("previous status"), "{message}");
        }
        other => panic!("expected Unapplicable, got {other}"),
    }
    assert_eq!(f.checkpoint(), position);
    assert_eq!(f.status(&other.reservation_id), S::Confirmed);
    assert_eq!(f.night("h1", "DBL", "2030-06-01"), (1, 0));
}

#[test]
fn replies_show_the_versions_of_their_aggregates() {
    let mut f = fixture();
    f.hotel_with_rooms(1);
    let hotel_version = |f: &Fixture| {
        f.readers
            .read(|tx| reads::hotel(tx, "h1"))
            .expect("read")
            .expect("the hotel")
            .version
    };
    assert_eq!(hotel_version(&f), 2, "registered, one room type");
    let change = f.events.inventory("h1", "DBL", 1, 2);
    f.apply(&[change]);
    assert_eq!(hotel_version(&f), 3);

    let stay = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-02");
    let full = Stay::new("h1", "DBL", "bo", "2030-05-01", "2030-05-02");
    let late = Stay::new("h1", "DBL", "cy", "2030-05-01", "2030-05-02");
    let batch = [
        f.events.confirmed(&stay),
        f.events.confirmed(&full),
        f.events.waitlisted(&late, 0),
    ];
    f.apply(&batch);
    assert_eq!(hotel_version(&f), 3, "bookings are not hotel events");
    assert_eq!(f.reservation(&stay.reservation_id).version, 1);
    let checked_in = f.events.checked_in(&stay);
    f.apply(&[checked_in]);
    assert_eq!(f.reservation(&stay.reservation_id).version, 2);
    let waitlist = f
        .readers
        .read(|tx| reads::waitlist(tx, "h1", "DBL"))
        .expect("read");
    assert_eq!(waitlist[0].reservation_id, late.reservation_id);
    assert_eq!(waitlist[0].version, 1);
}

#[test]
fn versions_of_a_read_model_built_before_them_are_filled_in_on_upgrade() {
    let dir = TempDir::new();
    {
        // A read model written by a binary that knew migrations 0001-0005.
        let conn = rusqlite::Connection::open(dir.db()).expect("open");
        for sql in [
            include_str!("../migrations/0001_read_model.sql"),
            include_str!("../migrations/0002_search_room_types.sql"),
            include_str!("../migrations/0003_waitlist_by_position.sql"),
            include_str!("../migrations/0004_reservations_status_check.sql"),
            include_str!("../migrations/0005_checkpoint_event_id.sql"),
        ] {
            conn.execute_batch(sql).expect("an earlier schema");
        }
        conn.execute_batch(
            "PRAGMA user_version = 5;
             INSERT INTO hotels VALUES ('h1', 'Hotel One', 'Lisboa', 'lisboa');
             INSERT INTO room_types VALUES ('h1', 'DBL', 'Double', 2, 1, 12000, 'EUR');
             INSERT INTO reservations VALUES
                 ('r1', 'h1', 'DBL', '2030-05-01', '2030-05-02', 1, 'ana', 'Ana', 'a@x.org',
                  2, 'CHECKED_OUT', 12000, 'EUR', 0, 1000, 1000, 3, 6),
                 ('r2', 'h1', 'DBL', '2030-05-01', '2030-05-02', 1, 'bo', 'Bo', 'b@x.org',
                  2, 'WAITLISTED', 12000, 'EUR', 0, 900, 900, 4, 4);
             INSERT INTO reservation_changes VALUES
                 ('r1', 5, 'CHECKED_IN', 1000), ('r1', 6, 'CHECKED_OUT', 1000);
             UPDATE checkpoint SET position = 6;",
        )
        .expect("rows of the earlier schema");
    }
    let writer = Writer::open(&dir.db()).expect("migrates");
    assert_eq!(writer.checkpoint().expect("checkpoint").position, 6);
    let readers = ReadModel::new(&dir.db());
    let (r1, r2, changes, hotel) = readers
        .read(|tx| {
            Ok((
                reads::reservation(tx, "r1")?.expect("r1"),
                reads::reservation(tx, "r2")?.expect("r2"),
                reads::reservation_changes_after(tx, "r1", 0)?,
                reads::hotel(tx, "h1")?.expect("h1"),
            ))
        })
        .expect("read");
    assert_eq!((r1.version, r2.version), (3, 1), "exact: 1 + its changes");
    let versions: Vec<i64> = changes.iter().map(|c| c.version).collect();
    assert_eq!(versions, [2, 3]);
    assert_eq!(hotel.version, 0, "unknown until the hotel's next event");
}

#[test]
fn a_batch_must_continue_the_checkpoint_or_changes_nothing() {
    let mut f = fixture();
    f.hotel_with_rooms(2);
    let stay = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-02");

    // A gap: position 4 while the checkpoint is 2.
    f.events.position += 1;
    let skipped = f.events.confirmed(&stay);
    let error = f.writer.apply_batch(&[skipped]).expect_err("gap refused");
    assert!(
        matches!(
            error,
            ApplyError::OutOfOrder {
                expected: 3,
                got: 4
            }
        ),
        "{error}"
    );

    // A duplicate: position 2 again.
    let mut again = Events::new();
    let duplicate = [
        again.hotel("h1", "x", "y"),
        again.room_type("h1", "DBL", 2, 9, 1),
    ];
    let error = f
        .writer
        .apply_batch(&duplicate)
        .expect_err("duplicate refused");
    assert!(
        matches!(
            error,
            ApplyError::OutOfOrder {
                expected: 3,
                got: 1
            }
        ),
        "{error}"
    );

    // A batch that starts right but breaks in the middle: none of it stays.
    let mut events = Events::new();
    events.position = 2;
    let good = events.confirmed(&stay);
    events.position += 1;
    let after_gap = events.checked_in(&stay);
    let error = f
        .writer
        .apply_batch(&[good, after_gap])
        .expect_err("refused");
    assert!(
        matches!(
            error,
            ApplyError::OutOfOrder {
                expected: 4,
                got: 5
            }
        ),
        "{error}"
    );

    assert_eq!(f.checkpoint(), 2);
    assert_eq!(f.night("h1", "DBL", "2030-05-01"), (0, 0));
    let missing = f
        .readers
        .read(|tx| reads::reservation(tx, &stay.reservation_id))
        .expect("read");
    assert!(missing.is_none(), "nothing of a refused batch is applied");
}

#[test]
fn events_and_checkpoint_commit_together_and_survive_reopening() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stay = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-04");
    {
        let mut writer = Writer::open(&dir.db()).expect("open");
        let batch = [
            events.hotel("h1", "Hotel One", "Lisboa"),
            events.room_type("h1", "DBL", 2, 1, 100),
            events.confirmed(&stay),
        ];
        assert_eq!(writer.apply_batch(&batch).expect("applies"), 3);
        // No close: like a crash after the commit.
        drop(writer);
    }
    let writer = Writer::open(&dir.db()).expect("reopen");
    assert_eq!(writer.checkpoint().expect("checkpoint").position, 3);
    let readers = ReadModel::new(&dir.db());
    let reservation = readers
        .read(|tx| reads::reservation(tx, &stay.reservation_id))
        .expect("read")
        .expect("the committed reservation is there");
    assert_eq!(reservation.last_position, 3);
}

/// `GetReservation`'s read: one statement, no transaction around it, yet
/// the reservation and the checkpoint come from one snapshot. A reader
/// asks, over and over, for the reservation the next commit brings: it
/// must be there exactly when the checkpoint includes its position.
#[test]
fn a_reservation_and_its_checkpoint_are_read_in_one_snapshot_while_batches_commit() {
    const BOOKINGS: usize = 1_500;
    let mut f = fixture();
    let hotel = f.events.hotel("h1", "Hotel One", "Lisboa");
    let room = f.events.room_type("h1", "DBL", 2, 10_000, 100);
    f.apply(&[hotel, room]);
    let stays: Vec<Stay> = (0..BOOKINGS)
        .map(|i| Stay::new("h1", "DBL", &format!("g{i}"), "2030-05-01", "2030-05-02"))
        .collect();
    let batches: Vec<pb::EventEnvelope> =
        stays.iter().map(|stay| f.events.confirmed(stay)).collect();
    let (booked_at, ids): (Vec<i64>, Vec<String>) = batches
        .iter()
        .zip(&stays)
        .map(|(event, stay)| (event.position, stay.reservation_id.clone()))
        .unzip();
    let Fixture {
        writer, readers, ..
    } = &mut f;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut reads, mut seen_both_ways) = (0_u64, [false, false]);
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let checkpoint = readers.checkpoint().expect("checkpoint").position;
                // The reservation of the next commit, or the last one's.
                let next = booked_at.partition_point(|position| *position <= checkpoint);
                let k = next.min(BOOKINGS - 1);
                let (reservation, as_of) = readers
                    .read_statement(|conn| reads::reservation_at_checkpoint(conn, &ids[k]))
                    .expect("read");
                assert_eq!(
                    reservation.is_some(),
                    booked_at[k] <= as_of,
                    "reservation {k} (booked at {}) read at {as_of}",
                    booked_at[k]
                );
                if let Some(reservation) = reservation {
                    assert_eq!(reservation.reservation_id, ids[k]);
                }
                seen_both_ways[usize::from(booked_at[k] <= as_of)] = true;
                reads += 1;
            }
            (reads, seen_both_ways)
        });
        for event in &batches {
            writer
                .apply_batch(std::slice::from_ref(event))
                .expect("batch applies");
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        let (reads, seen_both_ways) = reader.join().expect("the reader");
        assert!(reads > 100, "only {reads} reads");
        assert_eq!(seen_both_ways, [true, true], "both answers were read");
    });
}

#[test]
fn an_event_that_cannot_apply_stops_its_batch_right_before_it() {
    // Issue 13: the read model stops at the event (checkpoint = its
    // position - 1), keeping what came before it in the batch, and nothing
    // of the event itself or after it.
    let mut f = fixture();
    f.hotel_with_rooms(1);
    let known = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-02");
    let unknown = Stay::new("h1", "DBL", "bo", "2030-05-01", "2030-05-02");
    let later = Stay::new("h1", "DBL", "cy", "2030-05-02", "2030-05-03");
    let batch = [
        f.events.confirmed(&known),
        f.events.checked_in(&unknown),
        f.events.confirmed(&later),
    ];
    let error = f
        .writer
        .apply_batch(&batch)
        .expect_err("unknown reservation");
    match &error {
        ApplyError::Unapplicable {
            position,
            event_id,
            unknown_kind,
            message,
            checkpoint,
        } => {
            assert_eq!((*position, *checkpoint), (4, 3));
            assert_eq!(event_id, &batch[1].event_id);
            assert!(!unknown_kind);
            assert!(message.contains("is unknown"), "{message}");
        }
        other => panic!("expected Unapplicable, got {other}"),
    }
    assert_eq!(f.checkpoint(), 3);
    assert_eq!(f.night("h1", "DBL", "2030-05-01"), (1, 0));
    assert_eq!(f.night("h1", "DBL", "2030-05-02"), (0, 0));
}

#[test]
fn readers_cannot_write() {
    let f = fixture();
    let error = f
        .readers
        .read(|tx| tx.execute("UPDATE checkpoint SET position = 99", []))
        .expect_err("a read-only connection refuses writes");
    let message = error.to_string();
    assert!(
        message.contains("readonly")
            || message.contains("read-only")
            || message.contains("read only"),
        "{message}"
    );
    assert_eq!(f.checkpoint(), 0);
}

#[test]
fn a_rebuilt_file_swaps_in_atomically() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let batch = [events.hotel("h1", "Old", "Lisboa")];
    let mut live = Writer::open(&dir.db()).expect("open");
    live.apply_batch(&batch).expect("applies");
    let readers = ReadModel::new(&dir.db());
    assert_eq!(readers.checkpoint().expect("read").position, 1);

    let rebuilt_path = dir.path().join("read-model.db.rebuild-1");
    let mut rebuilt = Writer::open(&rebuilt_path).expect("open rebuild");
    let mut fresh = Events::new();
    let batch = [
        fresh.hotel("h1", "New", "Lisboa"),
        fresh.hotel("h2", "Two", "Porto"),
    ];
    rebuilt.apply_batch(&batch).expect("applies");

    let writer = readers.swap_in(live, rebuilt).expect("swap");
    assert_eq!(writer.path(), dir.db());
    assert!(!rebuilt_path.exists());
    let (hotel, checkpoint) = readers
        .read(|tx| Ok((reads::hotel(tx, "h1")?, reads::checkpoint(tx)?)))
        .expect("read");
    assert_eq!(hotel.map(|h| h.name).as_deref(), Some("New"));
    assert_eq!(checkpoint, 2);
    assert_eq!(writer.checkpoint().expect("checkpoint").position, 2);
}

/// Prints how fast batches apply; run with `--release --nocapture` to measure.
#[test]
fn apply_throughput() {
    let mut f = fixture();
    f.hotel_with_rooms(1_000_000);
    let events: Vec<pb::EventEnvelope> = (0..30_000)
        .map(|i| {
            let day = 1 + (i % 28);
            let stay = Stay::new(
                "h1",
                "DBL",
                &format!("g{}", i % 50),
                &format!("2030-03-{day:02}"),
                &format!("2030-03-{:02}", day + 1),
            );
            f.events.confirmed(&stay)
        })
        .collect();
    let started = std::time::Instant::now();
    let cpu_started = thread_cpu_seconds();
    for batch in events.chunks(5_000) {
        f.writer.apply_batch(batch).expect("applies");
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu_seconds() - cpu_started;
    // Wall time suffers on a shared machine; CPU time of this thread does not.
    eprintln!(
        "applied {} events in {elapsed:?} ({cpu:.3} s of CPU): {:.0} events/s, {:.0} per CPU second",
        events.len(),
        events.len() as f64 / elapsed.as_secs_f64(),
        events.len() as f64 / cpu,
    );
    assert_eq!(f.checkpoint(), 30_002);
}

/// CPU time this thread has run, from Linux's schedstat (0 elsewhere).
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// Rows of `reservation_changes`, read beside the writer.
fn change_rows(f: &Fixture) -> i64 {
    rusqlite::Connection::open(f.writer.path())
        .expect("open")
        .query_row("SELECT COUNT(*) FROM reservation_changes", [], |row| {
            row.get(0)
        })
        .expect("count")
}

#[test]
fn old_reservation_changes_are_pruned_after_the_window_at_the_interval() {
    use query_server::read_model::retention::ChangeRetention;
    use std::time::Duration;
    let mut f = fixture();
    let retention = ChangeRetention {
        keep: Duration::from_secs(24 * 3600),
        every: Duration::from_secs(3600),
    };
    f.writer.set_change_retention(retention);
    // Changes committed ten days ago.
    let day_ms = 24 * 3600 * 1000;
    f.events.clock_ms = query_server::read_model::now_millis() - 10 * day_ms;
    f.hotel_with_rooms(5);
    let stays: Vec<Stay> = (0..3)
        .map(|i| Stay::new("h1", "DBL", &format!("g{i}"), "2030-05-01", "2030-05-02"))
        .collect();
    let booked: Vec<_> = stays.iter().map(|s| f.events.confirmed(s)).collect();
    f.apply(&booked);
    let changed: Vec<_> = stays.iter().map(|s| f.events.checked_in(s)).collect();
    f.apply(&changed);
    assert_eq!(change_rows(&f), 3, "not yet: the writer pruned an hour ago");

    // Once the interval has passed (a new setting starts it over), the
    // next batch prunes what is older than the window, and keeps the rest.
    f.writer.set_change_retention(retention);
    f.events.clock_ms = query_server::read_model::now_millis();
    let recent = f.events.checked_out(&stays[0]);
    f.apply(&[recent]);
    assert_eq!(change_rows(&f), 1, "only the recent change is left");
    // The reservations themselves are untouched.
    let reservation = f.reservation(&stays[0].reservation_id);
    assert_eq!(
        (reservation.status(), reservation.version),
        (S::CheckedOut, 3)
    );
    assert_eq!(f.status(&stays[1].reservation_id), S::CheckedIn);
}

/// The ids a guest's listing shows, newest first.
fn listing_of(readers: &ReadModel, guest: &str) -> Result<Vec<String>, ReadError> {
    let filter = reads::ListFilter {
        statuses: [Some("CONFIRMED"), Some("WAITLISTED"), None, None, None],
        before_position: i64::MAX,
        limit: 100,
        max_examined: 100,
        owner: guest,
    };
    readers.read(|tx| {
        Ok(reads::reservations_of_guest(tx, &filter)?
            .listed
            .into_iter()
            .map(|(r, _)| r.reservation_id)
            .collect())
    })
}

/// A replay from position 1 with more of the log to come drops the listing
/// indexes in its first commit; the file stays without them across a
/// restart (the absence is the state), listings answer UNAVAILABLE rather
/// than scan, and the commit that reaches the head builds them.
#[test]
fn a_replay_from_scratch_builds_the_listing_indexes_in_the_commit_that_reaches_the_head() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stays: Vec<Stay> = (0..4)
        .map(|i| {
            Stay::new(
                "h1",
                "DBL",
                "ana",
                &format!("2030-05-0{}", i + 1),
                &format!("2030-05-0{}", i + 2),
            )
        })
        .collect();
    let first = [
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 5, 12_000),
        events.confirmed(&stays[0]),
        events.confirmed(&stays[1]),
    ];
    let second = [events.confirmed(&stays[2]), events.confirmed(&stays[3])];

    let mut writer = Writer::open(&dir.db()).expect("open");
    assert!(!writer.listing_indexes_deferred(), "a new file has them");
    writer
        .apply_batch_and(&first, ListingIndexes::DeferIfEmpty)
        .expect("applies");
    assert!(writer.listing_indexes_deferred());
    let readers = ReadModel::new(&dir.db());
    let missing = listing_of(&readers, "ana").expect_err("no listing without its index");
    assert!(missing.listing_index_missing(), "{missing}");
    let status = tonic::Status::from(QueryError::Read(missing));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // Other reads go on.
    let one = readers
        .read(|tx| reads::reservation(tx, &stays[0].reservation_id))
        .expect("read");
    assert!(one.is_some());

    // A writer opened again on the file (a restart) knows.
    drop(writer);
    let mut writer = Writer::open(&dir.db()).expect("reopen");
    assert!(writer.listing_indexes_deferred());
    // Not empty any more: nothing to defer, and nothing is built before the head.
    writer
        .apply_batch_and(&[], ListingIndexes::DeferIfEmpty)
        .expect("nothing");
    assert!(writer.listing_indexes_deferred());

    writer
        .apply_batch_and(&second, ListingIndexes::Build)
        .expect("applies");
    assert!(!writer.listing_indexes_deferred());
    let newest_first: Vec<String> = stays
        .iter()
        .rev()
        .map(|s| s.reservation_id.clone())
        .collect();
    assert_eq!(listing_of(&readers, "ana").expect("listed"), newest_first);

    // A file that holds events is never stripped.
    let third = [events.confirmed(&Stay::new("h1", "DBL", "bo", "2030-06-01", "2030-06-02"))];
    writer
        .apply_batch_and(&third, ListingIndexes::DeferIfEmpty)
        .expect("applies");
    assert!(!writer.listing_indexes_deferred());
    assert_eq!(listing_of(&readers, "ana").expect("listed"), newest_first);
}

/// A rebuild that hands over before its stream reached the head still
/// swaps in a file with its listing indexes.
#[test]
fn a_rebuilt_file_swaps_in_with_its_listing_indexes() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stay = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-02");
    let batch = [
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 5, 12_000),
        events.confirmed(&stay),
    ];
    let mut live = Writer::open(&dir.db()).expect("open");
    live.apply_batch(&batch).expect("applies");
    let readers = ReadModel::new(&dir.db());

    let mut rebuilt = Writer::open(&dir.path().join("read-model.db.rebuild-1")).expect("open");
    rebuilt
        .apply_batch_and(&batch, ListingIndexes::DeferIfEmpty)
        .expect("applies");
    assert!(rebuilt.listing_indexes_deferred());
    let writer = readers.swap_in(live, rebuilt).expect("swap");
    assert!(!writer.listing_indexes_deferred());
    assert_eq!(
        listing_of(&readers, "ana").expect("listed"),
        std::slice::from_ref(&stay.reservation_id)
    );
}
