//! The write path across real command-server processes (issue 11): a
//! paused instance holding the write lock is fenced within the bound, and
//! the commands a killed instance had claimed from the shared queue run
//! once on another.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use hotel_common::pb;
use sqlx::{Connection, Executor, MySqlConnection};
use support::*;
use tokio::sync::Mutex;
use tonic::Code;

type Calls = Arc<
    Mutex<
        Vec<(
            pb::BookRoomRequest,
            Result<pb::BookRoomResponse, tonic::Status>,
        )>,
    >,
>;

async fn events_of(db: &TestDb, command_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE command_id = ?")
        .bind(command_id)
        .fetch_one(&db.pool)
        .await
        .expect("count events")
}

/// Whether some session holds a transaction with locked rows (the only
/// writer at work is the one under test).
async fn a_transaction_holds_locks(db: &TestDb) -> bool {
    let holding: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_rows_locked > 0",
    )
    .fetch_one(&db.pool)
    .await
    .expect("read INNODB_TRX");
    holding > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_command_server_stalls_the_others_at_most_the_fence_bound() {
    let logs = tempfile::tempdir().expect("log dir");
    let db = TestDb::create().await;
    let paused = command_server(&db, logs.path());
    let other = command_server(&db, logs.path());
    let mut admin = other.commands().await;
    register_hotel(&mut admin, "h1", "Faro").await;
    add_room_type(&mut admin, "h1", "DBL", 10_000).await;

    // Load on the instance that will be paused, so that it holds the lock
    // most of the time.
    let calls: Calls = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..8 {
        let mut client = paused.commands().await;
        let (calls, stop) = (calls.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let request = booking("h1", "DBL", 5, 7, &format!("p{c}-{i}"));
                let outcome = client
                    .book_room(request.clone())
                    .await
                    .map(|r| r.into_inner());
                calls.lock().await.push((request, outcome));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Pause it while its writer holds the write lock. A batch holds it
    // only between its first round trip and its COMMIT, too briefly to
    // catch by chance, so: a session of the test's own takes the lock, the
    // instance's next batch waits for it, the instance is paused, and the
    // lock passes to its waiting batch when the test's session lets go.
    let holder = hold_write_lock(&db).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&paused, "STOP");
    holder.close().await.expect("release the write lock");
    let mut caught = false;
    for _ in 0..40 {
        // InnoDB refreshes this table at most every 100 ms.
        if a_transaction_holds_locks(&db).await {
            caught = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        caught,
        "the paused instance's batch never took the write lock"
    );
    let paused_at = Instant::now();

    // 32 clients book through the other instance meanwhile.
    let bound = Duration::from_millis(3_000 + 1_500);
    let mut clients = Vec::new();
    for c in 0..32 {
        let mut client = other.commands().await;
        let calls = calls.clone();
        clients.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for i in 0..3 {
                let request = booking("h1", "DBL", 5, 7, &format!("o{c}-{i}"));
                let sent = Instant::now();
                let outcome = client
                    .book_room(request.clone())
                    .await
                    .map(|r| r.into_inner());
                slowest = slowest.max(sent.elapsed());
                if let Err(status) = &outcome {
                    assert_eq!(status.code(), Code::Unavailable, "{status}");
                }
                calls.lock().await.push((request, outcome));
            }
            slowest
        }));
    }
    for slowest in join_all(clients).await {
        let slowest = slowest.expect("a client task");
        assert!(
            slowest <= bound,
            "a call through the other instance took {slowest:?} (bound {bound:?})"
        );
    }
    // Paused for a while longer, then resumed.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(paused_at.elapsed())).await;
    signal(&paused, "CONT");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the paused instance's callers are answered after it resumes")
            .expect("a load task");
    }

    // Nothing acknowledged is lost or doubled; every retry of a call that
    // failed replays its first outcome or runs it once.
    let calls = std::mem::take(&mut *calls.lock().await);
    let mut client = other.commands().await;
    let (mut acknowledged, mut retried) = (0, 0);
    for (request, outcome) in &calls {
        match outcome {
            Ok(reply) => {
                acknowledged += 1;
                assert_eq!(events_of(&db, &request.command_id).await, 1);
                let again = client
                    .book_room(request.clone())
                    .await
                    .expect("retry")
                    .into_inner();
                assert!(again.replayed);
                assert_eq!(again.reservation_id, reply.reservation_id);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status}");
                retried += 1;
                client
                    .book_room(request.clone())
                    .await
                    .expect("a retry runs or replays");
                assert_eq!(events_of(&db, &request.command_id).await, 1);
            }
        }
    }
    eprintln!("{acknowledged} acknowledged, {retried} retried after UNAVAILABLE");
    assert!(acknowledged > 96 / 2, "the other instance kept booking");
    assert_gap_free(&db).await;
    assert_no_overbooking(&db).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instances_claimed_commands_run_once_on_another() {
    let logs = tempfile::tempdir().expect("log dir");
    let db = TestDb::create().await;
    let flags = [
        "--queue-claim-ms",
        "1000",
        "--queue-poll-ms",
        "100",
        "--fence-after-ms",
        "60000",
        "--lock-wait-ms",
        "30000",
        "--writer-queue-timeout-ms",
        "30000",
    ];
    let mut doomed = command_server_with(&db, "127.0.0.1:0", &flags, logs.path());
    let survivor = command_server_with(&db, "127.0.0.1:0", &flags, logs.path());
    let mut admin = survivor.commands().await;
    register_hotel(&mut admin, "h1", "Braga").await;
    add_room_type(&mut admin, "h1", "DBL", 10_000).await;

    // A backlog submitted to the doomed instance while writes are stalled:
    // both instances claim part of it and wait for the lock.
    let mut stuck = MySqlConnection::connect(&db.url).await.expect("connect");
    stuck
        .execute("SET SESSION autocommit = 0")
        .await
        .expect("autocommit off");
    stuck
        .execute("SELECT position FROM event_head WHERE id = 1 FOR UPDATE")
        .await
        .expect("take the write lock");
    let mut client = doomed.commands().await;
    let mut submitted = Vec::new();
    for i in 0..300 {
        let request = booking("h1", "DBL", 5, 7, &format!("k{i}"));
        client
            .submit_command(pb::SubmitCommandRequest {
                priority: (i % 3) * 50,
                command: Some(pb::submit_command_request::Command::BookRoom(
                    request.clone(),
                )),
            })
            .await
            .expect("submitted");
        submitted.push(request.command_id);
    }
    // Wait until the doomed instance holds claims, then kill it.
    let claimed_by_doomed: Vec<String> = eventually(Duration::from_secs(10), || async {
        let claimed: Vec<(String, String)> =
            sqlx::query_as("SELECT command_id, claimed_by FROM commands WHERE state = 'RUNNING'")
                .fetch_all(&db.pool)
                .await
                .expect("claims");
        let doomed_pid = format!("{}-", doomed.pid());
        let mine: Vec<String> = claimed
            .into_iter()
            .filter(|(_, by)| by.starts_with(&doomed_pid))
            .map(|(id, _)| id)
            .collect();
        (!mine.is_empty()).then_some(mine)
    })
    .await;
    doomed.kill9();
    stuck.execute("COMMIT").await.expect("release the lock");

    // The survivor runs everything, the dead instance's claims included.
    eventually(Duration::from_secs(60), || async {
        let queued = db
            .count("SELECT COUNT(*) FROM commands WHERE state IN ('PENDING', 'RUNNING')")
            .await;
        (queued == 0).then_some(())
    })
    .await;
    for id in &submitted {
        assert_eq!(events_of(&db, id).await, 1, "command {id} ran once");
    }
    let mut client = survivor.commands().await;
    for id in &claimed_by_doomed {
        let status = client
            .get_command_status(pb::GetCommandStatusRequest {
                command_id: id.clone(),
            })
            .await
            .expect("status")
            .into_inner();
        assert_eq!(status.state, pb::CommandState::Succeeded as i32, "{id}");
    }
    assert_gap_free(&db).await;
    db.cleanup().await;
}
