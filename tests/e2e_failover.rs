//! Failover of the command database on real MariaDB replication (issue 13,
//! docs/failover.md, ADR 0013): a primary and a replica `mariadbd` of the
//! test's own, the real binaries, gRPC.
//!
//! - Semi-synchronous (`AFTER_SYNC`): while 32 clients book and cancel,
//!   the replica's link to the primary stalls for a second (asynchronous
//!   replication would acknowledge, and then lose, hundreds of commands
//!   meanwhile), then the primary is killed with `kill -9` and the replica
//!   promoted. Every acknowledged command is on the new primary exactly
//!   once, positions go on without a gap, and the query server that
//!   followed the old primary goes on following the new one without
//!   stopping and ends equal to MySQL. The command server that still
//!   pointed at the database address (moved to the replica, as a virtual IP
//!   would be) stops by itself rather than serve the new server's log with
//!   its memory of the old one; a command server does not start on the
//!   promoted replica while it is read-only, and writes nothing while it is
//!   read-only again.
//! - Asynchronous: the replica misses the last commits, which the query
//!   servers applied; after the failover new commits take the head past
//!   their checkpoint while the command server they follow still runs. It
//!   stops when its database address leads to the new primary (going on,
//!   it would stream the new history on top of the old to its live
//!   subscribers); started again, a query server stops (LOG_REWRITTEN),
//!   keeps serving the history it has and never the new one; with
//!   `--rebuild-on-rewrite` one rebuilds onto the new history and ends
//!   equal to MySQL.
//!
//! `HOTEL_FAILOVER_CLIENTS` (32) and `HOTEL_FAILOVER_COMMANDS` (150, the
//! acknowledged commands wanted before the kill and again after the
//! promotion) make a longer run.

mod support;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hotel_common::pb::{
    self, command_service_client::CommandServiceClient,
    query_admin_service_client::QueryAdminServiceClient, query_service_client::QueryServiceClient,
};
use rand::Rng;
use support::{
    convergence::assert_read_model_matches,
    mariadb::{ReplicatedPair, Replication, admin_sql},
    tcp_proxy::TcpProxy,
    *,
};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PATIENCE: Duration = Duration::from_secs(30);
const HOTELS: [&str; 4] = ["fo1", "fo2", "fo3", "fo4"];
const ROOM_TYPES: [&str; 2] = ["DBL", "SGL"];
const INVENTORY: i32 = 4;
/// Longest wait for one command; then it is sent again (same command id).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the replica's link to the primary stalls before the primary
/// dies: well below the semi-synchronous timeout.
const STALL: Duration = Duration::from_secs(1);
/// Pause before a command is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn status(queries: &mut QueryServiceClient<Channel>) -> pb::GetProjectionStatusResponse {
    queries
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Waits until the query server's checkpoint is `position` (and `state`).
async fn wait_for_checkpoint(
    queries: &QueryServiceClient<Channel>,
    position: i64,
    state: pb::ProjectionState,
) -> pb::GetProjectionStatusResponse {
    eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move {
            let status = status(&mut queries).await;
            (status.checkpoint == position && status.state == state as i32).then_some(status)
        }
    })
    .await
}

async fn health(process: &Process) -> i32 {
    HealthClient::new(process.channel().await)
        .check(HealthCheckRequest {
            service: "hotel.v1.QueryService".to_owned(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

/// The GTID position of the replica (the new primary).
async fn gtid_position(pair: &ReplicatedPair) -> String {
    sqlx::query_scalar("SELECT @@gtid_current_pos")
        .fetch_one(&mut pair.replica.admin().await)
        .await
        .expect("GTID position")
}

async fn head_of(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT position FROM event_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .expect("head")
}

async fn set_up_hotels(commands: &mut CommandServiceClient<Channel>) {
    for hotel in HOTELS {
        register_hotel(commands, hotel, "Porto").await;
        for code in ROOM_TYPES {
            add_room_type(commands, hotel, code, INVENTORY).await;
        }
    }
}

/// A command a load client sends until it is acknowledged.
#[derive(Clone)]
enum Request {
    Book(pb::BookRoomRequest),
    Cancel(pb::CancelReservationRequest),
}

impl Request {
    fn command_id(&self) -> &str {
        match self {
            Self::Book(request) => &request.command_id,
            Self::Cancel(request) => &request.command_id,
        }
    }

    /// The event type only this command writes, once.
    fn own_event(&self, event_type: &str) -> bool {
        match self {
            Self::Book(_) => {
                event_type == "ReservationConfirmed" || event_type == "ReservationWaitlisted"
            }
            Self::Cancel(_) => event_type == "ReservationCancelled",
        }
    }
}

/// An acknowledged command: what the client was told.
#[derive(Clone)]
struct Acked {
    request: Request,
    position: i64,
    replayed: bool,
}

/// Clients booking and cancelling their own bookings, each sending a
/// command again (same command id) until it is acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    /// Calls that failed (and were sent again).
    failures: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|task| {
                let channel = Endpoint::from_shared(url.to_owned())
                    .expect("a URL")
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy();
                tokio::spawn(client(
                    CommandServiceClient::new(channel),
                    task,
                    stop.clone(),
                    acked.clone(),
                    failures.clone(),
                ))
            })
            .collect();
        Self {
            stop,
            acked,
            failures,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("acked lock").len()
    }

    /// Waits until `count` commands in all are acknowledged.
    async fn until_acked(&self, count: usize) {
        eventually(Duration::from_secs(60), || async move {
            (self.acked() >= count).then_some(())
        })
        .await;
    }

    async fn stop(self) -> (Vec<Acked>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client");
        }
        let acked = self.acked.lock().expect("acked lock").clone();
        (acked, self.failures.load(Ordering::Relaxed))
    }
}

async fn client(
    mut commands: CommandServiceClient<Channel>,
    task: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failures: Arc<AtomicU64>,
) {
    let mut mine: Vec<String> = Vec::new();
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let request = if round.is_multiple_of(6) && !mine.is_empty() {
            let index = rand::rng().random_range(0..mine.len());
            Request::Cancel(pb::CancelReservationRequest {
                precondition: None,
                command_id: new_id(),
                reservation_id: mine.swap_remove(index),
                reason: "failover test".to_owned(),
                correlation_id: String::new(),
            })
        } else {
            let (hotel, code, from, nights) = {
                let mut rng = rand::rng();
                (
                    HOTELS[rng.random_range(0..HOTELS.len())],
                    ROOM_TYPES[rng.random_range(0..ROOM_TYPES.len())],
                    rng.random_range(1..=30),
                    rng.random_range(1..=3),
                )
            };
            Request::Book(booking(
                hotel,
                code,
                from,
                from + nights,
                &format!("c{task}"),
            ))
        };
        loop {
            let sent = match &request {
                Request::Book(book) => {
                    tokio::time::timeout(CALL_TIMEOUT, commands.book_room(book.clone()))
                        .await
                        .map(|reply| {
                            reply.map(|reply| {
                                let reply = reply.into_inner();
                                mine.push(reply.reservation_id);
                                (reply.position, reply.replayed)
                            })
                        })
                }
                Request::Cancel(cancel) => {
                    tokio::time::timeout(CALL_TIMEOUT, commands.cancel_reservation(cancel.clone()))
                        .await
                        .map(|reply| {
                            reply.map(|reply| {
                                let reply = reply.into_inner();
                                (reply.position, reply.replayed)
                            })
                        })
                }
            };
            match sent {
                Ok(Ok((position, replayed))) => {
                    acked.lock().expect("acked lock").push(Acked {
                        request: request.clone(),
                        position,
                        replayed,
                    });
                    break;
                }
                Ok(Err(status)) if sent_again(&status) => {}
                Ok(Err(status)) => panic!(
                    "command {} refused: {status:?} (a booking acknowledged before the \
                     failover and missing after it shows as NOT_FOUND here)",
                    request.command_id()
                ),
                Err(_) => {}
            }
            failures.fetch_add(1, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                // Never acknowledged: it may or may not have run.
                return;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Whether a failed call is one to send again, the same command, as the
/// API says: the database or the command server is away, or the
/// connection broke under the call (which tonic may report as `INTERNAL`
/// with an h2 error).
fn sent_again(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Internal => status.message().contains("h2 protocol error"),
        _ => false,
    }
}

/// Asserts that every acknowledged command is in `db` exactly once, at
/// the position its reply gave.
async fn assert_all_acknowledged_are_in(db: &TestDb, acked: &[Acked]) {
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT command_id, position, event_type FROM events")
            .fetch_all(&db.pool)
            .await
            .expect("events");
    let mut by_command: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for (command_id, position, event_type) in rows {
        by_command
            .entry(command_id)
            .or_default()
            .push((position, event_type));
    }
    let succeeded: HashSet<String> =
        sqlx::query_scalar("SELECT command_id FROM commands WHERE state = 'SUCCEEDED'")
            .fetch_all(&db.pool)
            .await
            .expect("command records")
            .into_iter()
            .collect();
    for ack in acked {
        let id = ack.request.command_id();
        let events = by_command.get(id).unwrap_or_else(|| {
            panic!(
                "command {id}, acknowledged at position {}, is not on the new primary",
                ack.position
            )
        });
        let own = events
            .iter()
            .filter(|(_, event_type)| ack.request.own_event(event_type))
            .count();
        assert_eq!(own, 1, "command {id} ran once: {events:?}");
        let last = events.iter().map(|(position, _)| *position).max();
        assert_eq!(
            last,
            Some(ack.position),
            "command {id}: its reply's position is its last event's"
        );
        assert!(succeeded.contains(id), "command {id} has its record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semi_sync_failover_loses_no_acknowledged_command_and_the_read_model_goes_on() {
    let started = Instant::now();
    let clients = setting("HOTEL_FAILOVER_CLIENTS", 32);
    let wanted = setting("HOTEL_FAILOVER_COMMANDS", 150);
    let logs = tempfile::tempdir().expect("log dir");
    let data = tempfile::tempdir().expect("data dir");
    let mut pair = ReplicatedPair::start(Replication::SemiSync).await;
    let database = pair.create_database().await;
    // The command servers reach the database through an address that a
    // failover moves (here a proxy; a virtual IP or a DNS name in a
    // deployment).
    let address = TcpProxy::start(pair.primary.addr()).await;
    let via_address = TestDb {
        url: format!("mysql://root@{}/{database}", address.addr),
        ..pair.replica.test_db(&database)
    };
    let new_primary = pair.replica.test_db(&database);

    let mut old = command_server_with(
        &via_address,
        "127.0.0.1:0",
        &["--shutdown-grace-secs", "2"],
        logs.path(),
    );
    let listen = old.addr.to_string();
    let query = query_server(&old.url(), &data.path().join("rm.db"), logs.path());
    let mut queries = query.queries().await;
    set_up_hotels(&mut old.commands().await).await;

    // Load; then the replica's link to the primary stalls, so it falls
    // behind while the clients go on; then the primary dies. Replicated
    // asynchronously, the commands acknowledged during the stall would be
    // lost (this test fails so); semi-synchronously none is acknowledged
    // before the replica has it.
    let load = Load::start(&old.url(), clients);
    load.until_acked(wanted).await;
    pair.link.pause();
    let stalled_at = load.acked();
    tokio::time::sleep(STALL).await;
    let (semi_sync, acknowledged_by_replica, not_acknowledged) = pair.semi_sync_counters().await;
    pair.primary.kill9();
    let acked_before_kill = load.acked();
    let checkpoint_before = status(&mut queries).await.checkpoint;
    assert_eq!(semi_sync, "ON", "the primary was semi-synchronous");
    assert!(acknowledged_by_replica > 0);
    assert_eq!(
        not_acknowledged, 0,
        "every commit waited for the replica (no fall-back to asynchronous)"
    );
    assert!(checkpoint_before > 0, "the query server was following");
    let killed_at = Instant::now();

    // Promotion: the replica applies what it received and leaves its
    // primary; the database address moves to it.
    let gtid = pair.promote_replica().await;
    let promoted_head = head_of(&new_primary).await;
    assert!(
        promoted_head >= checkpoint_before,
        "the new primary has every event the query server applied ({promoted_head} < \
         {checkpoint_before})"
    );
    address.point_at(pair.replica.addr());

    // The command server on the moved address meets another server and
    // stops, rather than serve it with its memory of the old one.
    let exit = old.exited_within(PATIENCE).await;
    assert!(!exit.success(), "it stops with an error: {exit}");
    assert!(
        old.logs().contains("another MySQL server"),
        "it says why: {}",
        old.logs()
    );

    // The promoted replica is still read-only: a command server refuses to
    // start on it, and writes nothing there (not even the no-op DDL of its
    // start-up, which would be the replica's own transactions).
    let refused = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(binary("command-server"))
            .args(["--listen-addr", &listen, "--metrics-addr", "off"])
            .args(["--database-url", &via_address.url])
            .output(),
    )
    .await
    .expect("it exits")
    .expect("run command-server");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("read-only"), "{said}");
    assert_eq!(gtid_position(&pair).await, gtid, "nothing written");

    // The last step of the promotion; the command server is started again
    // (its supervisor's job) where it listened.
    pair.open_for_writes().await;
    let new = command_server_with(
        &via_address,
        &listen,
        &["--shutdown-grace-secs", "2"],
        logs.path(),
    );
    let failover_took = killed_at.elapsed();
    let reopened_at = load.acked();
    load.until_acked(reopened_at + wanted / 2).await;

    // Read-only again for a moment (a primary being demoted): the running
    // command server's writer starts no batch on it, whatever its user may
    // do. (One that took the write lock just before may still commit, with
    // the commands that joined it at the lock, which may include one sent
    // after the SET: so a few calls are sent, one after another, until one
    // is refused. The writer runs one batch at a time, so once a command is
    // refused, none is in flight.)
    let mut conn = pair.replica.admin().await;
    admin_sql(&mut conn, "SET GLOBAL read_only = ON").await;
    let mut commands = new.commands().await;
    let mut refused = None;
    for attempt in 0..10 {
        let guest = format!("demoted-{attempt}");
        if let Err(status) = commands
            .book_room(booking("fo1", "DBL", 40, 41, &guest))
            .await
        {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("the database is read-only: one of ten calls is refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("read-only"), "{refused:?}");
    let frozen = gtid_position(&pair).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gtid_position(&pair).await, frozen, "nothing written");
    admin_sql(&mut conn, "SET GLOBAL read_only = OFF").await;
    let writable_at = load.acked();
    load.until_acked(writable_at + wanted / 2).await;
    let (acked, failures) = load.stop().await;

    // Every acknowledged command is there once; positions go on without a
    // gap; the write model still holds.
    let head = assert_gap_free(&new_primary).await;
    assert_all_acknowledged_are_in(&new_primary, &acked).await;
    assert_no_overbooking(&new_primary).await;
    assert_reservations_match_events(&new_primary).await;
    assert!(failures > 0, "the clients saw the failover");
    let replayed = acked.iter().filter(|ack| ack.replayed).count();

    // The query server followed the old primary and goes on with the new
    // one: never stopped (it would stay stopped without
    // --rebuild-on-rewrite), never rebuilt, now equal to MySQL.
    let live = wait_for_checkpoint(&queries, head, pb::ProjectionState::Live).await;
    assert!(live.stopped.is_none(), "{live:?}");
    assert!(!query.logs().contains("LOG_REWRITTEN"), "{}", query.logs());
    assert_eq!(health(&query).await, 1, "SERVING");
    let (reservations, nights) = assert_read_model_matches(&new_primary, &mut queries, head).await;

    eprintln!(
        "semi-sync failover: {clients} clients, {acked_before_kill} commands acknowledged before \
         the kill ({} during the replica's {STALL:?} stall), {} in all ({replayed} replayed after the failover, {failures} failed calls \
         sent again); from the kill to a command server on the new primary {failover_took:?}; query server at {checkpoint_before} \
         before, {head} after; {reservations} reservations and {nights} nights compared; \
         {:?} in all",
        acked_before_kill - stalled_at,
        acked.len(),
        started.elapsed()
    );
    drop(new);
    drop(query);
}

/// A booking through `commands`, acknowledged.
async fn book(commands: &mut CommandServiceClient<Channel>, guest: &str) -> pb::BookRoomResponse {
    let (from, nights) = {
        let mut rng = rand::rng();
        (rng.random_range(1..=30), rng.random_range(1..=3))
    };
    commands
        .book_room(booking(
            HOTELS[guest.len() % HOTELS.len()],
            "DBL",
            from,
            from + nights,
            guest,
        ))
        .await
        .expect("booked")
        .into_inner()
}

async fn reservation(
    queries: &mut QueryServiceClient<Channel>,
    reservation_id: &str,
) -> Result<pb::GetReservationResponse, tonic::Status> {
    queries
        .get_reservation(pb::GetReservationRequest {
            reservation_id: reservation_id.to_owned(),
            min_position: 0,
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_failover_that_lost_commits_stops_read_models_or_rebuilds_them() {
    let started = Instant::now();
    let logs = tempfile::tempdir().expect("log dir");
    let data = tempfile::tempdir().expect("data dir");
    let mut pair = ReplicatedPair::start(Replication::Async).await;
    let database = pair.create_database().await;
    let new_primary = pair.replica.test_db(&database);
    let address = TcpProxy::start(pair.primary.addr()).await;
    let via_address = TestDb {
        url: format!("mysql://root@{}/{database}", address.addr),
        ..pair.replica.test_db(&database)
    };
    let mut old = command_server_with(
        &via_address,
        "127.0.0.1:0",
        &["--shutdown-grace-secs", "2"],
        logs.path(),
    );
    let listen = old.addr.to_string();
    let waiting = query_server(&old.url(), &data.path().join("waits.db"), logs.path());
    let rebuilding = query_server_with(
        &old.url(),
        &data.path().join("rebuilds.db"),
        &["--rebuild-on-rewrite"],
        logs.path(),
    );
    let mut waits = waiting.queries().await;
    let mut rebuilds = rebuilding.queries().await;
    let mut commands = old.commands().await;
    set_up_hotels(&mut commands).await;
    let mut kept = Vec::new();
    for i in 0..10 {
        kept.push(book(&mut commands, &format!("kept{i}")).await);
    }

    // The replica stops receiving; the primary commits more, which both
    // query servers apply, then dies.
    pair.replica_caught_up().await;
    pair.stop_replication().await;
    let mut lost = Vec::new();
    for i in 0..5 {
        lost.push(book(&mut commands, &format!("lost{i}")).await);
    }
    let old_head = lost.last().expect("five").position;
    wait_for_checkpoint(&waits, old_head, pb::ProjectionState::Live).await;
    wait_for_checkpoint(&rebuilds, old_head, pb::ProjectionState::Live).await;
    pair.primary.kill9();

    // Promoted, and written past the query servers' checkpoint by another
    // command server, while the one they follow still runs.
    pair.promote_replica().await;
    pair.open_for_writes().await;
    assert_eq!(
        head_of(&new_primary).await,
        kept.last().expect("ten").position,
        "the replica missed the last five commits"
    );
    let mut writer = command_server(&new_primary, logs.path());
    let mut commands = writer.commands().await;
    let mut rewritten = Vec::new();
    for i in 0..8 {
        rewritten.push(book(&mut commands, &format!("new{i}")).await);
    }
    let new_head = rewritten.last().expect("eight").position;
    assert!(new_head > old_head, "the new history passed the checkpoint");

    // The database address moves to the new primary. The command server
    // the query servers follow meets it and stops: going on, it would hand
    // them the new history's events right after the old history's (their
    // subscriptions are live, the positions continue), and they would
    // apply them, never checked again.
    address.point_at(pair.replica.addr());
    let exit = old.exited_within(PATIENCE).await;
    assert!(!exit.success(), "it stops with an error: {exit}");
    assert!(
        old.logs().contains("another MySQL server"),
        "{}",
        old.logs()
    );
    writer.terminate();
    // Started again where it listened (its supervisor's job).
    let _new = command_server_on(&via_address, &listen, logs.path());

    // Without --rebuild-on-rewrite: stopped, visibly, on its own history.
    let stopped = wait_for_checkpoint(&waits, old_head, pb::ProjectionState::Stopped).await;
    let stop = stopped.stopped.expect("why it stopped");
    assert_eq!(stop.reason, "LOG_REWRITTEN");
    assert_eq!(stop.position, old_head);
    assert_eq!(health(&waiting).await, 2, "NOT_SERVING");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&mut waits).await.checkpoint, old_head, "not moving");
    for reply in &lost {
        let held = reservation(&mut waits, &reply.reservation_id)
            .await
            .expect("its own history is still served");
        assert_eq!(held.as_of_position, old_head);
    }
    for reply in &rewritten {
        let missing = reservation(&mut waits, &reply.reservation_id)
            .await
            .expect_err("nothing of the new history");
        assert_eq!(missing.code(), Code::NotFound);
    }

    // With it: rebuilt onto the new history, equal to MySQL.
    let live = wait_for_checkpoint(&rebuilds, new_head, pb::ProjectionState::Live).await;
    assert!(live.stopped.is_none(), "{live:?}");
    assert!(
        rebuilding
            .logs()
            .contains("rebuilding the read model from position 0"),
        "{}",
        rebuilding.logs()
    );
    for reply in &lost {
        let gone = reservation(&mut rebuilds, &reply.reservation_id)
            .await
            .expect_err("the lost commits are gone");
        assert_eq!(gone.code(), Code::NotFound);
    }
    let compared = assert_read_model_matches(&new_primary, &mut rebuilds, new_head).await;

    // The stopped one, rebuilt by its operator, ends the same.
    QueryAdminServiceClient::new(waiting.channel().await)
        .rebuild_read_model(pb::RebuildReadModelRequest {})
        .await
        .expect("rebuild");
    wait_for_checkpoint(&waits, new_head, pb::ProjectionState::Live).await;
    assert_eq!(health(&waiting).await, 1, "SERVING again");
    assert_eq!(
        assert_read_model_matches(&new_primary, &mut waits, new_head).await,
        compared
    );
    eprintln!(
        "async failover: {} commits lost, head {old_head} before and {new_head} after; \
         {compared:?} (reservations, nights) compared; {:?} in all",
        lost.len(),
        started.elapsed()
    );
}
