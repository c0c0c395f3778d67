//! The write path under a stuck session, impatient callers, oversized
//! requests, a shared asynchronous queue and retention (issue 11). Every
//! wait is bounded: these tests hold the write lock from their own MySQL
//! session and measure what callers see.

mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use command_server::{
    Config,
    store::command_log::{self, ClaimOrder, CommandRecord},
};
use futures::future::join_all;
use hotel_common::pb;
use prost::Message;
use sqlx::{Connection, Executor, MySqlConnection};
use support::*;
use tonic::Code;

async fn hotel(server: &TestServer) {
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Porto").await;
    add_room_type(&mut client, "h1", "DBL", 1000).await;
}

/// How many events a command caused.
async fn events_of(db: &TestDb, command_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE command_id = ?")
        .bind(command_id)
        .fetch_one(&db.pool)
        .await
        .expect("count events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_holding_the_write_lock_is_fenced_within_the_bound() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    hotel(&server).await;
    let bound = Duration::from_millis(Config::for_tests(&db.url).fence_after_ms)
        + Duration::from_millis(1500);

    let mut stuck = hold_write_lock(&db).await;
    let started = Instant::now();
    let calls = (0..32).map(|i| {
        let server_url = server.url();
        async move {
            let mut client = pb::command_service_client::CommandServiceClient::connect(server_url)
                .await
                .expect("connect");
            let request = booking("h1", "DBL", 10, 12, &format!("g{i}"));
            let sent = Instant::now();
            let outcome = client.book_room(request.clone()).await;
            (request, outcome.map(|r| r.into_inner()), sent.elapsed())
        }
    });
    let outcomes = join_all(calls).await;
    let mut acknowledged = Vec::new();
    for (request, outcome, took) in &outcomes {
        assert!(
            *took <= bound,
            "a call waited {took:?} behind a stuck session (bound {bound:?})"
        );
        match outcome {
            Ok(reply) => acknowledged.push((request.clone(), reply.clone())),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status}"),
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "with the stuck session fenced, bookings go through (all {} failed)",
        outcomes.len()
    );
    assert!(
        started.elapsed() <= bound,
        "writes resumed within the bound"
    );
    // The stuck session was ended.
    let after = stuck.execute("SELECT 1").await;
    assert!(after.is_err(), "the lock holder's session was killed");

    // Every acknowledged booking is there once; retries replay.
    let mut client = server.commands().await;
    for (request, reply) in &acknowledged {
        assert_eq!(events_of(&db, &request.command_id).await, 1);
        let again = client
            .book_room(request.clone())
            .await
            .expect("retry")
            .into_inner();
        assert!(again.replayed);
        assert_eq!(again.reservation_id, reply.reservation_id);
    }
    assert_gap_free(&db).await;
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_command_starts_after_its_callers_deadline() {
    let db = TestDb::create().await;
    // Peers must not fence the test's session in this test: the stall is
    // the point.
    let mut config = Config::for_tests(&db.url);
    config.fence_after_ms = 30_000;
    config.lock_wait_ms = 20_000;
    let server = TestServer::start_with(config).await;
    hotel(&server).await;

    let mut stuck = hold_write_lock(&db).await;
    let calls = (0..200).map(|i| {
        let server_url = server.url();
        async move {
            let mut client = pb::command_service_client::CommandServiceClient::connect(server_url)
                .await
                .expect("connect");
            let booking = booking("h1", "DBL", 10, 12, &format!("d{i}"));
            let mut request = tonic::Request::new(booking.clone());
            request.set_timeout(Duration::from_millis(200));
            (booking.command_id, client.book_room(request).await)
        }
    });
    let outcomes = join_all(calls).await;
    // The stall outlasts every deadline, then ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stuck.execute("COMMIT").await.expect("release the lock");

    // A booking after the stall goes through: the writer is free again.
    let mut client = server.commands().await;
    let after = client
        .book_room(booking("h1", "DBL", 10, 12, "after"))
        .await
        .expect("a booking after the stall")
        .into_inner();
    assert!(after.position > 0);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut late = 0;
    for (command_id, outcome) in &outcomes {
        let status = outcome
            .as_ref()
            .expect_err("every call outlived its deadline");
        // tonic's client times the request itself and reports its own
        // timer as CANCELLED; the server answers DEADLINE_EXCEEDED.
        assert!(
            [Code::DeadlineExceeded, Code::Cancelled].contains(&status.code()),
            "{status}"
        );
        late += events_of(&db, command_id).await;
    }
    assert_eq!(late, 0, "commands committed after their caller's deadline");
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_at_once_and_accepted_ones_stored_whole() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    hotel(&server).await;
    let mut client = server.commands().await;
    let commands_before = db.count("SELECT COUNT(*) FROM commands").await;

    for size in [70 * 1024, 2 * 1024 * 1024] {
        // Whitespace pads a name past the limit; it trims to a valid name.
        let mut big = booking("h1", "DBL", 10, 12, "big");
        let guest = big.guest.as_mut().expect("a guest");
        guest.name = format!("Big {}", " ".repeat(size));
        let started = Instant::now();
        let direct = client.book_room(big.clone()).await.expect_err("refused");
        let submitted = client
            .submit_command(pb::SubmitCommandRequest {
                priority: 0,
                command: Some(pb::submit_command_request::Command::BookRoom(big)),
            })
            .await
            .expect_err("refused");
        for status in [direct, submitted] {
            // Never UNAVAILABLE: a retry could never succeed.
            // Past the transport's limit, RESOURCE_EXHAUSTED; past the
            // command's, INVALID_ARGUMENT naming the request.
            let expected = if size > 1024 * 1024 {
                Code::ResourceExhausted
            } else {
                Code::InvalidArgument
            };
            assert_eq!(status.code(), expected, "{size} bytes: {status:?}");
            if status.code() == Code::InvalidArgument {
                let fields = hotel_common::validate::field_violations(&status);
                assert_eq!(fields[0].0, "request", "{fields:?}");
                assert!(fields[0].1.contains("at most 16384 bytes"), "{fields:?}");
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once"
        );
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM commands").await,
        commands_before,
        "nothing was stored"
    );

    // Just under the limit: stored byte for byte, run exactly as sent.
    let mut padded = pb::CancelReservationRequest {
        precondition: None,
        command_id: new_id(),
        reservation_id: new_id(),
        reason: format!("changed plans{}", " ".repeat(15_000)),
        correlation_id: "corr-exact".to_owned(),
    };
    padded.reason.truncate(16 * 1024 - 200);
    let sent = padded.encode_to_vec();
    client
        .submit_command(pb::SubmitCommandRequest {
            priority: 0,
            command: Some(pb::submit_command_request::Command::CancelReservation(
                padded.clone(),
            )),
        })
        .await
        .expect("accepted");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT request FROM commands WHERE command_id = ?")
        .bind(&padded.command_id)
        .fetch_one(&db.pool)
        .await
        .expect("stored");
    assert_eq!(stored, sent, "the stored request is the request submitted");
    let status = wait_until_final(&mut client, &padded.command_id).await;
    // It ran as submitted: an unknown reservation, refused with the reason.
    assert_eq!(status.state, pb::CommandState::Failed as i32, "{status:?}");
    assert_eq!(status.error.expect("an error").code, Code::NotFound as i32);
    server.stop().await;
    db.cleanup().await;
}

fn pending(priority: i32, accepted_at_ms: i64) -> CommandRecord {
    let request = booking("h1", "DBL", 10, 12, "q");
    CommandRecord {
        command_id: request.command_id.clone(),
        kind: "BookRoom".to_owned(),
        request: request.encode_to_vec(),
        state: command_log::PENDING.to_owned(),
        priority,
        response: None,
        error_code: None,
        error_message: None,
        error_info: None,
        position: 0,
        accepted_at_ms,
        finished_at_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_priority_with_ageing_and_skip_claimed_rows() {
    let db = TestDb::create().await;
    command_server::store::prepare(&db.url, 2)
        .await
        .expect("migrate");
    let now = 1_000_000;
    // (priority, waited ms): with one point per 100 ms, the old priority-0
    // command (waited 9 s: +90) ranks between 100 and 50.
    let rows = [(50, 0), (0, 9_000), (100, 0), (0, 0), (100, 500), (50, 100)];
    let mut ids = Vec::new();
    for (priority, waited) in rows {
        let record = pending(priority, now - waited);
        assert!(
            command_log::insert_pending(&db.pool, &record)
                .await
                .expect("insert")
        );
        // The same id again is refused, not stored twice.
        assert!(
            !command_log::insert_pending(&db.pool, &record)
                .await
                .expect("insert")
        );
        ids.push(record.command_id);
    }
    let order = ClaimOrder {
        ageing_ms: 100,
        lease_ms: 1_000,
    };
    let first = command_log::claim(&db.pool, "a", now, order, 3)
        .await
        .expect("claim");
    let second = command_log::claim(&db.pool, "b", now, order, 10)
        .await
        .expect("claim");
    let claimed: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|r| r.command_id.as_str())
        .collect();
    // 100 (older first), 100, aged 0 (=90), 50+1, 50, 0.
    let expected = [&ids[4], &ids[2], &ids[1], &ids[5], &ids[0], &ids[3]];
    assert_eq!(claimed, expected.map(String::as_str));
    // Nothing is left to claim until a claim lapses; then it is taken over.
    assert!(
        command_log::claim(&db.pool, "c", now, order, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let lapsed = command_log::claim(&db.pool, "c", now + 1_001, order, 10)
        .await
        .expect("claim");
    assert_eq!(lapsed.len(), 6, "lapsed claims are taken over");
    let states: Vec<String> = sqlx::query_scalar("SELECT DISTINCT state FROM commands")
        .fetch_all(&db.pool)
        .await
        .expect("states");
    assert_eq!(states, ["RUNNING"]);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_drain_a_backlog_once_each_in_priority_order() {
    let db = TestDb::create().await;
    let config = || {
        let mut config = Config::for_tests(&db.url);
        config.fence_after_ms = 60_000;
        config.lock_wait_ms = 30_000;
        config.queue_in_flight = 8;
        // No ageing within this test: pure priority order.
        config.queue_ageing_ms = 3_600_000;
        config.queue_poll_ms = 100;
        config
    };
    let servers = [
        TestServer::start_with(config()).await,
        TestServer::start_with(config()).await,
    ];
    hotel(&servers[0]).await;
    let mut priority_of = HashMap::new();

    // The backlog forms while the writers wait for the lock.
    let mut stuck = hold_write_lock(&db).await;
    let priorities = [0, 50, 100];
    let clients = [servers[0].commands().await, servers[1].commands().await];
    let mut submissions = Vec::new();
    for i in 0..900 {
        let priority = priorities[i % 3];
        let request = booking("h1", "DBL", 10, 12, &format!("b{i}"));
        priority_of.insert(request.command_id.clone(), priority);
        let mut client = clients[i % 2].clone();
        submissions.push(async move {
            client
                .submit_command(pb::SubmitCommandRequest {
                    priority,
                    command: Some(pb::submit_command_request::Command::BookRoom(request)),
                })
                .await
                .expect("submitted")
        });
        if submissions.len() == 64 {
            join_all(submissions.drain(..)).await;
        }
    }
    join_all(submissions).await;
    stuck.execute("COMMIT").await.expect("release the lock");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let queued = db
            .count("SELECT COUNT(*) FROM commands WHERE state IN ('PENDING', 'RUNNING')")
            .await;
        if queued == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{queued} commands still queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each ran exactly once.
    let per_command: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.command_id, (SELECT COUNT(*) FROM events e WHERE e.command_id = c.command_id) \
         FROM commands c WHERE c.kind = 'BookRoom'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("events per command");
    assert_eq!(per_command.len(), 900);
    for (id, events) in &per_command {
        assert_eq!(*events, 1, "command {id} caused {events} events");
    }
    // Commit order honours priority across the backlog: only the commands
    // claimed before the backlog was complete (at most the slots of both
    // instances, and those claimed around a priority boundary) break it.
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT command_id FROM events WHERE event_type <> 'HotelRegistered' \
         AND event_type <> 'RoomTypeAdded' ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .expect("commit order");
    let seq: Vec<i32> = order.iter().map(|id| priority_of[id]).collect();
    // The first claims (both instances' slots) were made while the backlog
    // was still arriving, in arrival order.
    let early = 2 * 8;
    let out_of_place = seq
        .iter()
        .enumerate()
        .skip(early)
        .filter(|(i, p)| {
            // Where a command of this priority belongs in a perfect order.
            let rank = match **p {
                100 => 0..300,
                50 => 300..600,
                _ => 600..900,
            };
            !rank.contains(i)
        })
        .count();
    // Around each of the two priority boundaries, both instances may be
    // finishing what they claimed just before it.
    assert!(
        out_of_place <= early + 2 * 2 * 8,
        "start order ignores priority: {out_of_place} out of place: {seq:?}"
    );
    for server in servers {
        server.stop().await;
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_submissions_and_stores_nothing() {
    let db = TestDb::create().await;
    let mut config = Config::for_tests(&db.url);
    config.queue_max_depth = 5;
    config.fence_after_ms = 60_000;
    config.lock_wait_ms = 30_000;
    let server = TestServer::start_with(config).await;
    hotel(&server).await;
    let mut client = server.commands().await;
    let mut stuck = hold_write_lock(&db).await;
    let mut refused = Vec::new();
    for i in 0..8 {
        let request = booking("h1", "DBL", 10, 12, &format!("f{i}"));
        let outcome = client
            .submit_command(pb::SubmitCommandRequest {
                priority: 0,
                command: Some(pb::submit_command_request::Command::BookRoom(
                    request.clone(),
                )),
            })
            .await;
        match outcome {
            Ok(_) => assert!(i < 5, "submission {i} accepted past the depth"),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
                assert!(status.message().contains("--queue-max-depth"), "{status}");
                refused.push(request.command_id);
            }
        }
    }
    assert_eq!(refused.len(), 3);
    for id in &refused {
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM commands WHERE command_id = ?")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(stored, 0, "a refused submission wrote nothing");
    }
    stuck.execute("COMMIT").await.expect("release");
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_records_are_pruned_after_the_retention_window() {
    let db = TestDb::create().await;
    let mut config = Config::for_tests(&db.url);
    config.command_retention_secs = 2;
    config.prune_interval_ms = 200;
    let server = TestServer::start_with(config).await;
    hotel(&server).await;
    let mut client = server.commands().await;
    let old = booking("h1", "DBL", 10, 12, "old");
    client.book_room(old.clone()).await.expect("booked");
    let replayed = client
        .book_room(old.clone())
        .await
        .expect("retry")
        .into_inner();
    assert!(replayed.replayed, "a retry inside the window replays");

    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let recent = booking("h1", "DBL", 10, 12, "recent");
    client.book_room(recent.clone()).await.expect("booked");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = |id: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM commands WHERE command_id = ?")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    assert_eq!(
        kept(old.command_id.clone()).await,
        0,
        "pruned after the window"
    );
    assert_eq!(
        kept(recent.command_id.clone()).await,
        1,
        "kept inside the window"
    );
    let again = client.book_room(recent).await.expect("retry").into_inner();
    assert!(again.replayed, "a retry inside the window still replays");
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_wait_and_the_queue_bound_bite() {
    let db = TestDb::create().await;
    let configured = |lock_wait_ms: u64, queue_ms: u64| {
        let mut config = Config::for_tests(&db.url);
        config.fence_after_ms = 60_000;
        config.lock_wait_ms = lock_wait_ms;
        config.writer_queue_timeout_ms = queue_ms;
        config
    };
    let first = TestServer::start_with(configured(300, 30_000)).await;
    hotel(&first).await;
    let mut stuck = hold_write_lock(&db).await;

    // The lock is never free: three waits of --lock-wait-ms, then UNAVAILABLE.
    let mut client = first.commands().await;
    let started = Instant::now();
    let refused = client
        .book_room(booking("h1", "DBL", 10, 12, "lw"))
        .await
        .expect_err("the lock is held");
    let took = started.elapsed();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(
        refused.message().contains("not free within 300ms"),
        "{refused}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    first.stop().await;

    // A command not started within --writer-queue-timeout-ms is shed.
    let second = TestServer::start_with(configured(400, 600)).await;
    let mut client = second.commands().await;
    let started = Instant::now();
    let shed = client
        .book_room(booking("h1", "DBL", 10, 12, "qt"))
        .await
        .expect_err("the lock is held");
    let took = started.elapsed();
    assert_eq!(shed.code(), Code::Unavailable, "{shed}");
    assert!(shed.message().contains("without starting"), "{shed}");
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
    stuck.execute("COMMIT").await.expect("release");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM events WHERE event_type = 'ReservationConfirmed'")
            .await,
        0,
        "nothing ran"
    );
    second.stop().await;
    db.cleanup().await;
}

/// A MySQL "server" that accepts connections and never says a word: a
/// client waits for its greeting forever unless it bounds the wait.
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

struct NoListener;

impl command_server::store::CommitListener for NoListener {
    fn committed(&self, _events: Vec<hotel_common::wire::Envelope>) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_bites_on_a_server_that_never_answers() {
    let db = TestDb::create().await;
    let (pool, primary) = command_server::store::prepare(&db.url, 2)
        .await
        .expect("migrate");
    let (silent, task) = silent_server().await;
    let options =
        command_server::store::connect_options(&format!("mysql://hotel:hotel@{silent}/hotel"))
            .expect("options");
    let limits = command_server::store::writer::Limits {
        connect_timeout: Duration::from_millis(300),
        queue_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let writer = command_server::store::writer::Writer::spawn(
        options,
        pool,
        primary,
        limits,
        std::sync::Arc::new(NoListener),
    );
    let command = command_server::commands::parse::validate(&booking("h1", "DBL", 10, 12, "ct"))
        .expect("valid");
    let started = Instant::now();
    let outcome = writer.execute(command, None).await;
    let took = started.elapsed();
    let error = outcome.expect_err("no database answers");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(error.to_string().contains("300ms"), "{error}");
    // Three attempts of 300 ms each, not a wait without end.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    task.abort();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_timeout_cuts_a_batch_stalled_inside_the_lock() {
    let db = TestDb::create().await;
    let mut config = Config::for_tests(&db.url);
    config.batch_timeout_ms = 400;
    config.fence_after_ms = 5_000;
    config.lock_wait_ms = 10_000;
    let server = TestServer::start_with(config).await;
    hotel(&server).await;

    // The test's session holds the hotel's row: the writer gets the write
    // lock, then stalls inside its batch on that row (InnoDB would let it
    // wait --lock-wait-ms, 10 s).
    let mut holder = MySqlConnection::connect(&db.url).await.expect("connect");
    holder
        .execute("SET SESSION autocommit = 0")
        .await
        .expect("autocommit off");
    holder
        .execute("SELECT version FROM hotels WHERE hotel_id = 'h1' FOR UPDATE")
        .await
        .expect("lock the hotel row");
    let mut client = server.commands().await;
    let request = pb::AddRoomTypeRequest {
        command_id: new_id(),
        hotel_id: "h1".to_owned(),
        code: "SGL".to_owned(),
        name: "Single".to_owned(),
        max_guests: 1,
        inventory: 3,
        nightly_rate: Some(pb::Money {
            amount_minor: 100,
            currency: "EUR".to_owned(),
        }),
        precondition: None,
        correlation_id: String::new(),
    };
    let started = Instant::now();
    let refused = client
        .add_room_type(request.clone())
        .await
        .expect_err("the batch stalls");
    let took = started.elapsed();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(
        refused
            .message()
            .contains("longer than its deadline (400ms)"),
        "{refused}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM room_types WHERE code = 'SGL'")
            .await,
        0,
        "the cut batch was rolled back"
    );
    // Writes go on once the row is free; the retry runs the command once.
    holder.execute("COMMIT").await.expect("release");
    client
        .add_room_type(request.clone())
        .await
        .expect("the retry runs");
    assert_eq!(events_of(&db, &request.command_id).await, 1);
    server.stop().await;
    db.cleanup().await;
}

/// The ids of the sessions on the test database, the caller's excepted.
async fn sessions_of(db: &TestDb) -> Vec<i64> {
    let database = db
        .url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    sqlx::query_scalar(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
    )
    .bind(database)
    .fetch_all(&db.pool)
    .await
    .expect("process list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_lets_mysql_close_the_writer_session_and_it_reconnects() {
    let db = TestDb::create().await;
    let mut config = Config::for_tests(&db.url);
    config.db_idle_timeout_secs = 1;
    let server = TestServer::start_with(config).await;
    hotel(&server).await;
    let mut client = server.commands().await;
    client
        .book_room(booking("h1", "DBL", 10, 12, "it1"))
        .await
        .expect("book");
    let serving = sessions_of(&db).await;
    // Idle for longer than --db-idle-timeout-secs: MySQL ends the writer's
    // session (readers' pooled sessions keep MySQL's default, 8 hours, and
    // nothing else closes a session here).
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let idle = sessions_of(&db).await;
    let closed: Vec<&i64> = serving.iter().filter(|id| !idle.contains(id)).collect();
    assert_eq!(
        closed.len(),
        1,
        "the idle writer session was closed: {serving:?} -> {idle:?}"
    );
    // The next command reconnects and runs once.
    let request = booking("h1", "DBL", 10, 12, "it2");
    client.book_room(request.clone()).await.expect("book again");
    assert_eq!(events_of(&db, &request.command_id).await, 1);
    server.stop().await;
    db.cleanup().await;
}
