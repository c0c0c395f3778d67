//! The event stream across two real command-server processes on one
//! database: concurrent writers, rolled-back transactions, a live
//! subscriber and one that keeps disconnecting and resuming, plus a slow
//! subscriber that must not make the server buffer without bound.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use hotel_common::pb::{self, subscribe_response::Message};
use rand::Rng;
use sqlx::{Connection, MySqlConnection};
use support::*;
use tokio_stream::StreamExt;

/// Follows `url` from position 1 until `target` (once set) is reached,
/// reconnecting after `drop_after` messages when given.
async fn follow(
    urls: Vec<String>,
    target: Arc<AtomicI64>,
    resume_randomly: bool,
) -> Vec<pb::EventEnvelope> {
    let mut received: Vec<pb::EventEnvelope> = Vec::new();
    let mut reconnects = 0;
    loop {
        let next = received.last().map_or(1, |e| e.position + 1);
        let url = urls[reconnects % urls.len()].clone();
        let mut client = pb::event_stream_client::EventStreamClient::connect(url)
            .await
            .expect("connect to a command server");
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                from_position: next,
                filter: None,
                max_batch: 50,
                expected_event_id: String::new(),
            })
            .await
            .expect("subscribe")
            .into_inner();
        let budget = if resume_randomly {
            rand::rng().random_range(1..6)
        } else {
            usize::MAX
        };
        let mut messages = 0;
        while messages < budget {
            let target = target.load(Ordering::SeqCst);
            if target > 0 && received.last().map_or(0, |e| e.position) >= target {
                return received;
            }
            let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("the stream keeps talking (heartbeats)");
            let Some(Ok(response)) = item else { break };
            messages += 1;
            if let Some(Message::Events(batch)) = response.message {
                for event in batch.events {
                    let expected = received.last().map_or(1, |e| e.position + 1);
                    assert_eq!(event.position, expected, "no gap, no duplicate, in order");
                    received.push(event);
                }
            }
        }
        reconnects += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscriber_gets_exactly_one_to_n_across_two_instances() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let a = command_server(&db, logs.path());
    let b = command_server(&db, logs.path());
    let mut setup = a.commands().await;
    for h in 0..4 {
        register_hotel(&mut setup, &format!("h{h}"), "Evora").await;
        add_room_type(&mut setup, &format!("h{h}"), "DBL", 4).await;
    }

    let target = Arc::new(AtomicI64::new(0));
    let live = tokio::spawn(follow(vec![a.url()], target.clone(), false));
    let resuming = tokio::spawn(follow(vec![a.url(), b.url()], target.clone(), true));

    let done = Arc::new(AtomicBool::new(false));
    let rollbacks = {
        let url = db.url.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut conn = MySqlConnection::connect(&url).await.expect("connect");
            let mut count = 0;
            while !done.load(Ordering::SeqCst) {
                let mut tx = conn.begin().await.expect("begin");
                let head: i64 =
                    sqlx::query_scalar("SELECT position FROM event_head WHERE id = 1 FOR UPDATE")
                        .fetch_one(&mut *tx)
                        .await
                        .expect("lock head");
                sqlx::query("UPDATE event_head SET position = ? WHERE id = 1")
                    .bind(head + 1)
                    .execute(&mut *tx)
                    .await
                    .expect("bump");
                tokio::time::sleep(Duration::from_millis(2)).await;
                tx.rollback().await.expect("rollback");
                count += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            count
        })
    };

    let mut writers = Vec::new();
    for task in 0..16 {
        let mut client = if task % 2 == 0 {
            a.commands().await
        } else {
            b.commands().await
        };
        writers.push(tokio::spawn(async move {
            for i in 0..30 {
                let hotel = if i % 9 == 4 {
                    "missing".to_owned()
                } else {
                    format!("h{}", (task + i) % 4)
                };
                let from = 1 + (i % 6) as i64;
                let _ = client
                    .book_room(booking(&hotel, "DBL", from, from + 2, "g"))
                    .await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    assert!(rollbacks.await.expect("rollbacks") > 0);
    let head = assert_gap_free(&db).await;
    target.store(head, Ordering::SeqCst);

    let live = tokio::time::timeout(Duration::from_secs(60), live)
        .await
        .expect("live finishes")
        .expect("task");
    let resumed = tokio::time::timeout(Duration::from_secs(60), resuming)
        .await
        .expect("resuming finishes")
        .expect("task");
    let stored: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, payload FROM events ORDER BY position")
            .fetch_all(&db.pool)
            .await
            .expect("events");
    for received in [&live, &resumed] {
        assert_eq!(received.len() as i64, head);
        for (event, (position, payload)) in received.iter().zip(&stored) {
            assert_eq!(event.position, *position);
            let encoded = prost::Message::encode_to_vec(event.event.as_ref().expect("payload"));
            assert_eq!(&encoded, payload, "payload at {position} equals MySQL's");
        }
    }
    drop((a, b));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_subscriber_keeps_server_memory_bounded_and_gets_everything() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let server = command_server(&db, logs.path());
    let mut setup = server.commands().await;
    register_hotel(&mut setup, "big", "Lisbon").await;
    add_room_type(&mut setup, "big", "DBL", 10_000).await;

    // A subscriber that sleeps between messages while 10,000+ events land.
    let mut client = server.events().await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            from_position: 1,
            filter: None,
            max_batch: 100,
            expected_event_id: String::new(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let baseline = server.rss_kib();
    let total = 10_240i64;
    let mut writers = Vec::new();
    for task in 0..32 {
        let mut client = server.commands().await;
        writers.push(tokio::spawn(async move {
            for i in 0..(total / 32) {
                let mut request =
                    booking("big", "DBL", 1 + i % 20, 2 + i % 20, &format!("t{task}"));
                // Large names make any buffering of the backlog visible.
                request.guest.as_mut().expect("guest").name = format!("{task} {}", "N".repeat(190));
                client.book_room(request).await.expect("book");
            }
        }));
    }
    let mut peak = baseline;
    let mut last = 0i64;
    let head = 2 + total;
    while last < head {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream keeps talking")
            .expect("open")
            .expect("no error");
        if let Some(Message::Events(batch)) = item.message {
            for event in batch.events {
                assert_eq!(event.position, last + 1);
                last = event.position;
            }
        }
        peak = peak.max(server.rss_kib());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(last, head);
    let grown_mib = (peak.saturating_sub(baseline)) / 1024;
    assert!(
        peak / 1024 < 150,
        "server RSS peaked at {} MiB",
        peak / 1024
    );
    assert!(
        grown_mib < 48,
        "server RSS grew by {grown_mib} MiB for a slow subscriber"
    );
    drop(server);
    db.cleanup().await;
}
