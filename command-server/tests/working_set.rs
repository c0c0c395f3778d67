//! The writer's working set (store/working_set.rs) on MariaDB: what its
//! write script checks before the COMMIT, and what it carries from one
//! batch to the next.

mod support;

use command_server::commands::{Command, ValidCommand};
use command_server::domain::ReservationStatus;
use command_server::store::{
    MIGRATOR,
    others::{self, Change},
    script::Script,
    working_set::{Carried, WorkingSet},
};
use sqlx::{Connection, Executor, MySqlConnection};
use support::*;

async fn migrated() -> (TestDb, MySqlConnection) {
    let db = TestDb::create().await;
    MIGRATOR.run(&db.pool).await.expect("migrations");
    let conn = MySqlConnection::connect(&db.url).await.expect("connect");
    (db, conn)
}

async fn insert_reservation(db: &TestDb, id: &str) {
    sqlx::query(
        "INSERT INTO reservations (reservation_id, hotel_id, room_type_code, check_in, \
         check_out, guest_id, guest_name, guest_email, guests, priority, status, total_minor, \
         currency, booked_position, booked_at_ms, version) VALUES (?, 'h1', 'DBL', \
         '2027-03-01', '2027-03-03', 'g', 'G', 'g@example.com', 1, 0, 'CONFIRMED', 100, \
         'EUR', 1, 0, 1)",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .expect("insert a reservation");
}

/// Status changes go in the write script with a check that the update
/// found every row it changes: if a reservation the batch read is gone by
/// its write (nothing but a writer holding the head lock should touch the
/// table, so this is someone else's doing), the script stops before its
/// COMMIT, naming the check, and nothing of it stays. With every row there,
/// the same script commits.
#[tokio::test]
async fn a_status_change_that_finds_no_row_stops_the_script_before_its_commit() {
    let (db, mut conn) = migrated().await;
    for id in ["r1", "r2"] {
        insert_reservation(&db, id).await;
    }
    let status = |id: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM reservations WHERE reservation_id = ?",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("status")
        }
    };
    let cancel_both = |rows: &mut WorkingSet| {
        for id in ["r1", "r2"] {
            rows.set_status(id, ReservationStatus::Cancelled)
                .expect("held");
        }
        let mut script = Script::new();
        rows.flush(&mut script).expect("flush");
        let before_commit = script.statements();
        script.sql("COMMIT").end();
        (script, before_commit)
    };

    // r2 disappears between the batch's read and its write.
    conn.execute("BEGIN").await.expect("begin");
    let mut rows = WorkingSet::default();
    for id in ["r1", "r2"] {
        rows.reservation(&mut conn, id).await.expect("read");
    }
    sqlx::query("DELETE FROM reservations WHERE reservation_id = 'r2'")
        .execute(&db.pool)
        .await
        .expect("delete behind the batch's back");
    let (script, before_commit) = cancel_both(&mut rows);
    let failed = script.run(&mut conn).await.expect_err("the check stops it");
    assert!(
        failed.error.to_string().contains("update_found_every_row"),
        "{}",
        failed.error
    );
    assert!(
        failed.completed < before_commit,
        "stopped before the COMMIT"
    );
    conn.execute("ROLLBACK").await.expect("rollback");
    assert_eq!(status("r1").await, "CONFIRMED", "r1's change did not stay");
    assert_eq!(db.count("SELECT position FROM event_head").await, 0);

    // Both rows there: the same script commits.
    insert_reservation(&db, "r2").await;
    conn.execute("BEGIN").await.expect("begin");
    let mut rows = WorkingSet::default();
    for id in ["r1", "r2"] {
        rows.reservation(&mut conn, id).await.expect("read");
    }
    let (script, _) = cancel_both(&mut rows);
    script.run(&mut conn).await.expect("the script commits");
    assert_eq!(status("r1").await, "CANCELLED");
    assert_eq!(status("r2").await, "CANCELLED");
    assert_eq!(db.count("SELECT position FROM event_head").await, 0);
    db.cleanup().await;
}

/// The nights a booking asks for, held by a batch that read them, as it
/// would carry them with a cap of `cap` nights.
async fn carried_after_reading(
    conn: &mut MySqlConnection,
    command: &ValidCommand,
    cap: usize,
) -> Carried {
    let Command::BookRoom {
        hotel_id,
        code,
        stay,
        ..
    } = &command.command
    else {
        panic!("a booking")
    };
    let mut rows = WorkingSet::default();
    let key = (hotel_id.clone(), code.clone());
    let booked = rows.booked(conn, &key, *stay).await.expect("nights");
    assert_eq!(booked, [0, 0, 0], "no night has a row yet: none booked");
    rows.into_carried(cap)
}

/// Statements a batch that starts with `carried` asks to read for `command`.
fn reads_asked(carried: Carried, command: &ValidCommand) -> usize {
    let rows = WorkingSet::with_carried(carried);
    let mut script = Script::new();
    let _ = rows.ask(&mut script, &[command]);
    script.statements()
}

/// Night counts a batch held are carried to the next batch, which then does
/// not read them again; past the cap (`--writer-carried-nights`) none are
/// carried, and the next batch reads them.
#[tokio::test]
async fn night_counts_are_carried_up_to_the_cap() {
    let (db, mut conn) = migrated().await;
    let three_nights = |guest: &str| {
        command_server::commands::parse::validate(&booking("h1", "DBL", 10, 13, guest))
            .expect("valid")
    };
    let (first, next) = (three_nights("g1"), three_nights("g2"));
    let fresh = reads_asked(Carried::default(), &next);
    assert_eq!(fresh, 2, "nothing carried: its room type and its nights");

    let carried = carried_after_reading(&mut conn, &first, 3).await;
    assert_eq!(carried.nights(), 3, "three nights, at the cap: carried");
    assert_eq!(
        reads_asked(carried, &next),
        1,
        "its room type only: the nights are held"
    );

    let carried = carried_after_reading(&mut conn, &first, 2).await;
    assert_eq!(
        carried.nights(),
        0,
        "three nights over a cap of two: none carried"
    );
    assert_eq!(reads_asked(carried, &next), 2, "the nights are read again");
    db.cleanup().await;
}

/// A flush writes every night a batch changed, with its final count, once
/// the stays that changed it overlap, across room types; and nothing else:
/// not the nights carried from the batch before and left as they were, and
/// not again at the next flush.
#[tokio::test]
async fn a_flush_writes_the_nights_the_batch_changed_and_no_other() {
    use command_server::domain::Stay;
    use time::{Date, Month};

    let (db, mut conn) = migrated().await;
    let day = |d: u8| Date::from_calendar_date(2027, Month::March, d).expect("a date");
    let stay = |from: u8, until: u8| Stay {
        check_in: day(from),
        check_out: day(until),
    };
    let double = ("h1".to_owned(), "DBL".to_owned());
    let single = ("h1".to_owned(), "SGL".to_owned());

    // An earlier batch held ten nights of each room type, and changed none.
    let mut rows = WorkingSet::default();
    for key in [&double, &single] {
        rows.booked(&mut conn, key, stay(10, 20))
            .await
            .expect("nights");
    }
    let mut rows = WorkingSet::with_carried(rows.into_carried(1_000));

    // This batch: two overlapping stays in one room type, one in the other.
    rows.add_to_nights(&mut conn, &double, stay(12, 14), 1, 0)
        .await
        .expect("book");
    rows.add_to_nights(&mut conn, &double, stay(13, 16), 1, 0)
        .await
        .expect("book");
    rows.add_to_nights(&mut conn, &single, stay(18, 19), 0, 1)
        .await
        .expect("waitlist");
    let mut script = Script::new();
    rows.flush(&mut script).expect("flush");
    assert_eq!(script.statements(), 1, "one upsert of night counts");
    script.run(&mut conn).await.expect("the script runs");
    let written: Vec<(String, Date, i32, i32)> =
        sqlx::query_as("SELECT code, night, booked, waiting FROM room_nights ORDER BY code, night")
            .fetch_all(&db.pool)
            .await
            .expect("night counts");
    assert_eq!(
        written,
        vec![
            ("DBL".to_owned(), day(12), 1, 0),
            ("DBL".to_owned(), day(13), 2, 0),
            ("DBL".to_owned(), day(14), 1, 0),
            ("DBL".to_owned(), day(15), 1, 0),
            ("SGL".to_owned(), day(18), 0, 1),
        ],
        "the changed nights, each with its final count, and no other"
    );

    // Flushed: the next flush has nothing to write.
    let mut again = Script::new();
    rows.flush(&mut again).expect("flush");
    assert_eq!(again.statements(), 0, "nothing changed since");
    db.cleanup().await;
}

/// Another command server's events since this writer's last commit, read
/// with the lock, bring the night counts it carries up to date: at most
/// `--writer-catch-up-events` of them (more, and they are not used: the
/// carried rows are forgotten and read again), exactly the ones up to the
/// head, and only changes the carried counts can have started from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_events_bring_carried_nights_up_to_date_within_the_limit() {
    use command_server::domain::Stay;

    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Lisbon").await;
    add_room_type(&mut client, "h1", "DBL", 1).await;
    let mut conn = MySqlConnection::connect(&db.url).await.expect("connect");
    let key = ("h1".to_owned(), "DBL".to_owned());
    let date = |days| hotel_common::dates::parse(&day(days)).expect("a date");
    let stay = Stay {
        check_in: date(10),
        check_out: date(13),
    };
    let head = || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT position FROM event_head")
                .fetch_one(&pool)
                .await
                .expect("head")
        }
    };
    // What this writer carried after its last batch: the stay's three
    // nights, none booked.
    let carried = || {
        let url = db.url.clone();
        let key = key.clone();
        async move {
            let mut conn = MySqlConnection::connect(&url).await.expect("connect");
            let mut rows = WorkingSet::default();
            let booked = rows.booked(&mut conn, &key, stay).await.expect("nights");
            assert_eq!(booked, [0, 0, 0]);
            rows.into_carried(1_000)
        }
    };
    let (stale, fresh) = (carried().await, carried().await);
    let after = head().await;

    // Another server books the last room; a second booking waits.
    for guest in ["a", "b"] {
        client
            .book_room(booking("h1", "DBL", 10, 13, guest))
            .await
            .expect("book");
    }
    let head = head().await;
    assert_eq!(head - after, 2, "two events since");
    async fn events(
        conn: &mut MySqlConnection,
        after: i64,
        limit: usize,
    ) -> Vec<sqlx::mysql::MySqlRow> {
        let mut script = Script::new();
        others::ask(&mut script, after, limit);
        let mut results = script.fetch(conn).await.expect("the events");
        results.remove(0)
    }

    // Within the limit: both events, and the carried nights caught up.
    let read = events(&mut conn, after, 2).await;
    let changes = others::changes(&read, after, head).expect("exactly the events since");
    assert_eq!(
        changes[0],
        Change::Nights {
            key: key.clone(),
            stay,
            booked: 1,
            waiting: 0
        }
    );
    let mut rows = WorkingSet::with_carried(fresh);
    assert!(rows.catch_up(&changes));
    assert_eq!(
        rows.booked(&mut conn, &key, stay).await.expect("held"),
        [1, 1, 1],
        "caught up: the room the other server booked counts"
    );
    // The same carried rows without the catch-up still say none is booked
    // (held rows are not read again): what a writer must not decide on.
    let mut rows = WorkingSet::with_carried(stale);
    assert_eq!(
        rows.booked(&mut conn, &key, stay).await.expect("held"),
        [0, 0, 0]
    );

    // Over the limit (one event of two), or not up to the head: not used.
    assert!(others::changes(&events(&mut conn, after, 1).await, after, head).is_none());
    assert!(others::changes(&read, after, head + 1).is_none());
    // A change the carried counts cannot have started from (a room freed
    // that they never counted): refused, to be forgotten.
    let freed = Change::Nights {
        key: key.clone(),
        stay,
        booked: -1,
        waiting: 0,
    };
    assert!(!rows.catch_up(&[freed]));
    server.stop().await;
    db.cleanup().await;
}
