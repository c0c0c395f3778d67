//! The event log: positions 1..N, no gap, no duplicate, in commit order,
//! with concurrent writers and rolled-back transactions, while a reader
//! tails the table.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{Connection, MySqlConnection};
use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_are_gap_free_in_commit_order_under_concurrency_and_rollbacks() {
    let db = TestDb::create().await;
    let first = TestServer::start(&db).await;
    let second = TestServer::start(&db).await;
    let mut setup = first.commands().await;
    for h in 0..4 {
        register_hotel(&mut setup, &format!("h{h}"), "Evora").await;
        add_room_type(&mut setup, &format!("h{h}"), "DBL", 3).await;
    }

    let done = Arc::new(AtomicBool::new(false));

    // A reader tailing `position > last` must never see a later position
    // before an earlier one.
    let tail = {
        let url = db.url.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut conn = MySqlConnection::connect(&url).await.expect("tail connects");
            let mut last = 0i64;
            let mut jumps = 0usize;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let seen: Vec<i64> = sqlx::query_scalar(
                    "SELECT position FROM events WHERE position > ? ORDER BY position",
                )
                .bind(last)
                .fetch_all(&mut conn)
                .await
                .expect("tail reads");
                for position in seen {
                    if position != last + 1 {
                        jumps += 1;
                        break;
                    }
                    last = position;
                }
                if finished {
                    return (last, jumps);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // Transactions that take positions and roll back must leave no gap.
    let rollbacks = {
        let url = db.url.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut conn = MySqlConnection::connect(&url)
                .await
                .expect("rollback connects");
            let mut count = 0usize;
            while !done.load(Ordering::SeqCst) {
                let mut tx = conn.begin().await.expect("begin");
                let head: i64 =
                    sqlx::query_scalar("SELECT position FROM event_head WHERE id = 1 FOR UPDATE")
                        .fetch_one(&mut *tx)
                        .await
                        .expect("lock head");
                sqlx::query(
                    "INSERT INTO events (position, event_id, event_type, aggregate_kind, aggregate_id, \
                     aggregate_version, hotel_id, command_id, correlation_id, occurred_at_ms, payload) \
                     VALUES (?, UUID(), 'HotelRegistered', 'hotel', 'ghost', 1, 'ghost', UUID(), '', 0, '')",
                )
                .bind(head + 1)
                .execute(&mut *tx)
                .await
                .expect("insert doomed event");
                sqlx::query("UPDATE event_head SET position = ? WHERE id = 1")
                    .bind(head + 1)
                    .execute(&mut *tx)
                    .await
                    .expect("bump head");
                tokio::time::sleep(Duration::from_millis(2)).await;
                tx.rollback().await.expect("rollback");
                count += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            count
        })
    };

    let refused = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for task in 0..16 {
        let server = if task % 2 == 0 { &first } else { &second };
        let mut client = server.commands().await;
        let refused = refused.clone();
        writers.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..25 {
                let hotel = if i % 7 == 3 {
                    "missing".to_owned()
                } else {
                    format!("h{}", (task + i) % 4)
                };
                let from = 1 + (i % 5) as i64;
                match client
                    .book_room(booking(&hotel, "DBL", from, from + 2, &format!("t{task}")))
                    .await
                {
                    Ok(reply) => positions.push(reply.into_inner().position),
                    Err(status) => {
                        assert_eq!(status.code(), Code::NotFound, "{status:?}");
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            positions
        }));
    }
    let mut positions = Vec::new();
    for writer in writers {
        positions.extend(writer.await.expect("writer task"));
    }
    done.store(true, Ordering::SeqCst);
    let rolled_back = rollbacks.await.expect("rollback task");
    let (tail_last, jumps) = tail.await.expect("tail task");

    let head = assert_gap_free(&db).await;
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(
        positions.len(),
        16 * 25 - refused.load(Ordering::SeqCst),
        "every reply has its own position"
    );
    assert_eq!(
        head,
        8 + positions.len() as i64,
        "8 set-up events plus one per booking"
    );
    assert!(rolled_back > 0, "rolled-back transactions ran alongside");
    assert_eq!(tail_last, head, "the tail saw every event");
    assert_eq!(
        jumps, 0,
        "the tail never saw a position before its predecessor"
    );
    let ghosts = db
        .count("SELECT COUNT(*) FROM events WHERE aggregate_id = 'ghost'")
        .await;
    assert_eq!(ghosts, 0, "rolled-back events are gone");

    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}
