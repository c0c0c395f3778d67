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
        precondition: None,
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
        precondition: None,
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

/// Books with one `command_id` until an answer comes: `UNAVAILABLE` (the
/// writer lost its connection) is retried as a client would.
async fn book_until_answered(
    mut client: Client,
    request: pb::BookRoomRequest,
) -> (String, pb::BookRoomResponse, u32) {
    let mut failures = 0;
    loop {
        match client.book_room(request.clone()).await {
            Ok(reply) => return (request.command_id, reply.into_inner(), failures),
            Err(status) if status.code() == Code::Unavailable && failures < 500 => {
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(status) => panic!("booking failed: {status}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_lose_nothing_acknowledged_and_apply_nothing_twice() {
    use sqlx::{Connection, Executor, MySqlConnection};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    };

    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut admin = server.commands().await;
    register_hotel(&mut admin, "h1", "Coimbra").await;
    for code in ["SGL", "DBL"] {
        add_room_type(&mut admin, "h1", code, 4).await;
    }

    // Kills every connection to the test database, the writer's included,
    // every few milliseconds, mid-transaction or mid-commit.
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let killer = {
        let (stop, kills, name) = (stop.clone(), kills.clone(), db.name.clone());
        tokio::spawn(async move {
            let mut conn = MySqlConnection::connect(&server_url())
                .await
                .expect("the killer connects");
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(8)).await;
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .expect("list connections");
                for id in ids {
                    let kill = format!("KILL CONNECTION {id}");
                    if conn.execute(sqlx::AssertSqlSafe(kill)).await.is_ok() {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let mut calls = Vec::new();
    for worker in 0..24 {
        let client = server.commands().await;
        calls.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..16 {
                let code = if (worker + i) % 2 == 0 { "SGL" } else { "DBL" };
                let from = ((worker + i) % 5) as i64 + 1;
                let request = booking("h1", code, from, from + 2, &format!("w{worker}-{i}"));
                answers.push(book_until_answered(client.clone(), request).await);
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for call in join_all(calls).await {
        answers.extend(call.expect("the worker's task ends"));
    }
    stop.store(true, Ordering::Relaxed);
    killer.await.expect("the killer stops");

    let retried: u32 = answers.iter().map(|(_, _, failures)| failures).sum();
    eprintln!(
        "{} kills, {retried} failed attempts retried",
        kills.load(Ordering::Relaxed)
    );
    assert!(kills.load(Ordering::Relaxed) > 0, "connections were killed");
    assert!(retried > 0, "some attempts failed and were retried");

    // A fresh pool: the killer also closed the test's own connections.
    let check = TestDb {
        pool: sqlx::MySqlPool::connect(&db.url)
            .await
            .expect("connect again"),
        name: db.name.clone(),
        url: db.url.clone(),
    };
    // Every acknowledged booking is there exactly once, under the id it
    // was acknowledged with.
    assert_eq!(answers.len(), 24 * 16);
    for (command_id, reply, _) in &answers {
        let stored: Vec<(String,)> = sqlx::query_as(
            "SELECT e.aggregate_id FROM events e WHERE e.command_id = ? AND e.aggregate_version = 1",
        )
        .bind(command_id)
        .fetch_all(&check.pool)
        .await
        .expect("the command's events");
        assert_eq!(
            stored,
            [(reply.reservation_id.clone(),)],
            "command {command_id} booked once, the reservation it acknowledged"
        );
    }
    assert_eq!(
        check.count("SELECT COUNT(*) FROM reservations").await,
        answers.len() as i64,
        "no booking was applied twice"
    );
    assert_gap_free(&check).await;
    assert_no_overbooking(&check).await;
    assert_waitlist_settled(&check).await;
    assert_reservations_match_events(&check).await;

    server.stop().await;
    db.pool.close().await;
    check.cleanup().await;
}

/// Records the size of every commit the writer reports.
#[derive(Default)]
struct CommitSizes(std::sync::Mutex<Vec<usize>>);

impl command_server::store::CommitListener for CommitSizes {
    fn committed(&self, events: Vec<hotel_common::wire::Envelope>) {
        self.0.lock().expect("sizes").push(events.len());
    }
}

/// A writer of its own on `db` (patient with a held lock), and the sizes
/// of the commits it reports.
async fn writer_with_commit_sizes(
    db: &TestDb,
) -> (
    command_server::store::writer::Writer,
    std::sync::Arc<CommitSizes>,
) {
    let (pool, primary) = command_server::store::prepare(&db.url, 2)
        .await
        .expect("migrate");
    let sizes = std::sync::Arc::new(CommitSizes::default());
    let writer = command_server::store::writer::Writer::spawn(
        command_server::store::connect_options(&db.url).expect("options"),
        pool,
        primary,
        command_server::store::writer::Limits {
            fence_after: std::time::Duration::from_secs(30),
            lock_wait: std::time::Duration::from_secs(30),
            queue_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        },
        sizes.clone(),
    );
    (writer, sizes)
}

/// Another process (here, the test's own session) holds the write lock
/// while one booking waits for it; twenty more arrive meanwhile. Once the
/// lock is free they all commit in the waiting batch: one commit, not one
/// of one and another of twenty. This is what keeps two command servers on
/// one database as fast as one (each one's batches stay full while the
/// other holds the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_that_queue_while_the_lock_is_held_elsewhere_join_the_waiting_batch() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Porto").await;
    add_room_type(&mut client, "h1", "DBL", 100).await;

    let (writer, sizes) = writer_with_commit_sizes(&db).await;
    let book = |guest: String| {
        let writer = writer.clone();
        let command =
            command_server::commands::parse::validate(&booking("h1", "DBL", 10, 12, &guest))
                .expect("valid");
        tokio::spawn(async move { writer.execute(command, None).await })
    };

    let holder = hold_write_lock(&db).await;
    let first = book("first".to_owned());
    // The first booking's batch is formed and waits for the lock.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later: Vec<_> = (0..20).map(|i| book(format!("later-{i}"))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!first.is_finished(), "the lock is still held");
    // Closing the session rolls its transaction back: the lock is free.
    sqlx::Connection::close(holder)
        .await
        .expect("release the write lock");

    first.await.expect("joined").expect("the first booking");
    for booked in join_all(later).await {
        booked.expect("joined").expect("a later booking");
    }
    assert_eq!(
        *sizes.0.lock().expect("sizes"),
        vec![21],
        "one commit for the waiting batch and everything that queued behind it"
    );
    db.cleanup().await;
}

/// A batch's writes and its COMMIT go to MySQL as one script. When MySQL
/// refuses a statement of it for one command's data (here a trigger
/// refuses one guest's reservation row), nothing of the batch commits, and
/// its commands run again one by one: only that command fails, every other
/// one commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_refused_for_one_command_fails_that_command_alone() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Porto").await;
    add_room_type(&mut client, "h1", "DBL", 100).await;
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON reservations FOR EACH ROW \
         IF NEW.guest_id = 'poison' THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no poison here'; END IF",
    )
    .execute(&db.pool)
    .await
    .expect("create the trigger");
    let head_before = db.count("SELECT position FROM event_head").await;

    let (writer, sizes) = writer_with_commit_sizes(&db).await;
    let book = |guest: &str| {
        let writer = writer.clone();
        let command =
            command_server::commands::parse::validate(&booking("h1", "DBL", 10, 12, guest))
                .expect("valid");
        tokio::spawn(async move { writer.execute(command, None).await })
    };
    // Held lock: the six bookings queue and form one batch.
    let holder = hold_write_lock(&db).await;
    let guests = ["g0", "g1", "poison", "g3", "g4", "g5"];
    let calls: Vec<_> = guests.iter().map(|guest| book(guest)).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sqlx::Connection::close(holder)
        .await
        .expect("release the write lock");

    for (guest, call) in guests.iter().zip(join_all(calls).await) {
        let outcome = call.expect("joined");
        if *guest == "poison" {
            let error = outcome.expect_err("the refused row fails its command");
            assert_eq!(error.code(), Code::Internal, "{error}");
            assert!(error.to_string().contains("no poison here"), "{error}");
        } else {
            outcome.unwrap_or_else(|error| panic!("{guest}: {error}"));
        }
    }
    // The batch of six committed nothing; five commits of one followed.
    assert_eq!(*sizes.0.lock().expect("sizes"), vec![1; 5]);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM reservations").await,
        5,
        "each other booking once, the refused one not at all"
    );
    assert_eq!(
        db.count("SELECT position FROM event_head").await,
        head_before + 5
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM reservations WHERE guest_id = 'poison'")
            .await,
        0
    );
    server.stop().await;
    db.cleanup().await;
}
