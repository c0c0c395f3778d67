//! Bounded under abuse: a rebuild's swap never stalls queries, watchers of
//! one key share one read per commit, open watches are capped, watches end
//! with UNAVAILABLE at shutdown, and a search examines a bounded number of
//! room types per page.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hotel_common::pb::{self, ReservationStatus as S, query_service_client::QueryServiceClient};
use support::{App, Events, ScriptedStream, Stay, TempDir, eventually};
use tonic::{Code, transport::Channel};

/// A hotel with one big room type, then `count` confirmed one-night stays.
fn busy_hotel(events: &mut Events, count: usize) -> (Vec<pb::EventEnvelope>, Vec<Stay>) {
    let mut log = vec![
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 1_000_000, 10_000),
    ];
    let stays: Vec<Stay> = (0..count)
        .map(|i| {
            let day = 1 + (i % 28);
            Stay::new(
                "h1",
                "DBL",
                &format!("g{}", i % 500),
                &format!("2030-03-{day:02}"),
                &format!("2030-03-{:02}", day + 1),
            )
        })
        .collect();
    for stay in &stays {
        log.push(events.confirmed(stay));
    }
    (log, stays)
}

/// Pause between one client's calls: 64 clients make a steady load that
/// leaves the two cores room, so that a stall shows as one.
const PACE: Duration = Duration::from_millis(100);

/// Holds a read transaction on the live file from another connection (as a
/// backup or an operator's `sqlite3` would) until a rebuild reaches its swap
/// and 300 ms more; returns when the swap began. A thread of its own: a
/// stalled runtime must not keep it from letting go.
fn outside_reader(
    dir: std::path::PathBuf,
    db: std::path::PathBuf,
) -> std::thread::JoinHandle<Instant> {
    let (ready, is_ready) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open");
        conn.execute_batch("BEGIN").expect("begin");
        let _: i64 = conn
            .query_row("SELECT count(*) FROM reservations", [], |row| row.get(0))
            .expect("read");
        ready.send(()).expect("ready");
        let began = swap_begins(&dir);
        std::thread::sleep(Duration::from_millis(300));
        conn.execute_batch("COMMIT").expect("commit");
        began
    });
    is_ready.recv().expect("the outside reader started");
    thread
}

/// Waits until a rebuild file's WAL, once seen in use, is emptied or gone:
/// the rebuild has reached the swap.
fn swap_begins(dir: &std::path::Path) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while Instant::now() < deadline {
        let wal = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                let name = path.to_string_lossy();
                name.contains(".rebuild-") && name.ends_with("-wal")
            });
        let size = wal
            .and_then(|path| std::fs::metadata(path).ok())
            .map(|m| m.len());
        match size {
            Some(size) if size > 0 => seen = true,
            _ if seen => return Instant::now(),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the rebuild did not reach its swap");
}

/// Reads go on while a rebuild's swap closes, renames and reopens files. An
/// outside reader holds a snapshot of the live file, so closing it (a full
/// checkpoint) waits until that reader lets go, 300 ms into the swap: a
/// swap that held readers off for its whole length stalled every query that
/// long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swap_stalls_no_query() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    let (log, stays) = busy_hotel(&mut events, 3_000);
    stream.append(log);
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(stream.head()).await;
    // Commits after the outside reader's snapshot stay in the WAL for it.
    let outside = outside_reader(dir.path().to_owned(), dir.db());
    let more: Vec<_> = (0..2_000)
        .map(|i| {
            let stay = Stay::new("h1", "DBL", &format!("late{i}"), "2030-04-01", "2030-04-02");
            events.confirmed(&stay)
        })
        .collect();
    stream.append(more);
    app.wait_for(stream.head()).await;

    // 64 clients read at a steady pace during the whole rebuild; each
    // call's start and latency are recorded.
    let stop = tokio::sync::watch::channel(false);
    let calls = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    let mut clients = Vec::new();
    for i in 0..64 {
        let mut client = app.client().await;
        let mut stop = stop.1.clone();
        let calls = calls.clone();
        let reservation_id = stays[i * 37 % stays.len()].reservation_id.clone();
        clients.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !*stop.borrow_and_update() {
                let started = Instant::now();
                let reply = client
                    .get_reservation(pb::GetReservationRequest {
                        reservation_id: reservation_id.clone(),
                        min_position: 0,
                    })
                    .await
                    .expect("no query fails during a rebuild");
                mine.push((started, started.elapsed()));
                assert!(reply.into_inner().reservation.is_some());
                tokio::time::sleep(PACE).await;
            }
            calls.lock().expect("calls").extend(mine);
        }));
    }
    let mut admin =
        pb::query_admin_service_client::QueryAdminServiceClient::new(app.channel().await);
    let rebuild = tokio::spawn(async move {
        admin
            .rebuild_read_model(pb::RebuildReadModelRequest {})
            .await
            .expect("rebuild")
            .into_inner()
    });
    let reply = rebuild.await.expect("rebuild task");
    let swap_began = outside.join().expect("outside reader");
    let swap_took = swap_began.elapsed();
    // Reads after the swap run on the new file.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.0.send_replace(true);
    for client in clients {
        client.await.expect("client");
    }
    assert_eq!(reply.checkpoint, stream.head());

    // The calls made while the swap ran (catch-up before it competes for
    // the cores, which is not what this measures).
    let calls = std::mem::take(&mut *calls.lock().expect("calls"));
    let mut during: Vec<Duration> = calls
        .iter()
        .filter(|(started, _)| *started >= swap_began)
        .map(|(_, latency)| *latency)
        .collect();
    during.sort();
    let mut slowest: Vec<_> = calls
        .iter()
        .filter(|(started, _)| *started >= swap_began)
        .map(|(started, latency)| (latency.as_millis(), (*started - swap_began).as_millis()))
        .collect();
    slowest.sort();
    eprintln!(
        "slowest (ms, started ms after swap began): {:?}",
        &slowest[slowest.len().saturating_sub(12)..]
    );
    let max = *during.last().expect("queries ran during the swap");
    let p50 = during[during.len() / 2];
    eprintln!(
        "{} queries during a swap of {swap_took:?}: p50 {p50:?}, max {max:?}",
        during.len(),
    );
    assert!(
        max < Duration::from_millis(100),
        "a query waited {max:?} during the swap"
    );
    assert!(
        during.len() >= 64,
        "only {} queries during the swap",
        during.len()
    );
    app.stop().await;
}
