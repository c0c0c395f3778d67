//! Bounded under abuse: a rebuild's swap never stalls queries, watchers of
//! one key share one read per commit, open watches are capped, watches end
//! with UNAVAILABLE at shutdown, and a search examines a bounded number of
//! room types per page.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hotel_common::pb::{self, ReservationStatus as S};
use support::{App, Events, ScriptedStream, Stay, TempDir, eventually};
use tonic::Code;

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

/// A night's free rooms in an availability answer.
fn free(reply: &pb::GetAvailabilityResponse) -> i32 {
    reply.room_types[0].nights[0].free
}

fn watch_night(night: &str, next: &str) -> pb::WatchAvailabilityRequest {
    pb::WatchAvailabilityRequest {
        hotel_id: "h1".into(),
        room_type_code: "DBL".into(),
        from_date: night.into(),
        to_date: next.into(),
        min_position: 0,
    }
}

/// Reads a stream until `done` holds for a message; returns them all.
async fn read_until<T>(
    stream: &mut tonic::Streaming<T>,
    mut done: impl FnMut(&T) -> bool,
) -> Vec<T> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message in time")
            .expect("the stream stays open")
            .expect("a message");
        let last = done(&message);
        seen.push(message);
        if last {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_one_key_share_one_read_per_commit() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    let watched = Stay::new("h1", "DBL", "ana", "2030-10-01", "2030-10-02");
    let other = Stay::new("h1", "DBL", "bo", "2030-10-03", "2030-10-04");
    stream.append([
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 10, 10_000),
        events.confirmed(&watched),
        events.confirmed(&other),
    ]);
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(stream.head()).await;
    let mut client = app.client().await;

    // 30 watchers of one night, 30 of one reservation; one each of another
    // night and another reservation: four keys.
    let mut night_a = Vec::new();
    let mut reservation_a = Vec::new();
    for _ in 0..30 {
        let mut updates = client
            .watch_availability(watch_night("2030-09-01", "2030-09-02"))
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(
            free(&updates.message().await.expect("ok").expect("first")),
            10
        );
        night_a.push(updates);
        let mut updates = client
            .watch_reservation(pb::WatchReservationRequest {
                reservation_id: watched.reservation_id.clone(),
                min_position: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        updates.message().await.expect("ok").expect("first");
        reservation_a.push(updates);
    }
    let mut night_b = client
        .watch_availability(watch_night("2030-09-05", "2030-09-06"))
        .await
        .expect("watch")
        .into_inner();
    night_b.message().await.expect("ok").expect("first");
    let mut reservation_b = client
        .watch_reservation(pb::WatchReservationRequest {
            reservation_id: other.reservation_id.clone(),
            min_position: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    reservation_b.message().await.expect("ok").expect("first");
    assert_eq!(app.watches.open(), 62);
    assert_eq!(app.watches.feeds(), 4);

    // Eight commits, one at a time: four bookings of night A, two of night
    // B, the watched stay's check-in and check-out, and a cancellation.
    let rereads_before = app.watches.rereads();
    let mut commits = 0;
    let mut commit = |event: pb::EventEnvelope| {
        let position = event.position;
        stream.append([event]);
        commits += 1;
        position
    };
    let mut batches = Vec::new();
    for guest in ["c", "d", "e", "f"] {
        batches.push(events.confirmed(&Stay::new("h1", "DBL", guest, "2030-09-01", "2030-09-02")));
    }
    for guest in ["g", "h"] {
        batches.push(events.confirmed(&Stay::new("h1", "DBL", guest, "2030-09-05", "2030-09-06")));
    }
    batches.push(events.checked_in(&watched));
    batches.push(events.checked_out(&watched));
    batches.push(events.cancelled(&other, S::Confirmed));
    for event in batches {
        let position = commit(event);
        app.wait_for(position).await;
    }

    for updates in &mut night_a {
        let seen = read_until(updates, |reply| free(reply) == 6).await;
        assert!(
            seen.windows(2)
                .all(|w| w[0].as_of_position < w[1].as_of_position)
        );
    }
    for updates in &mut reservation_a {
        let seen = read_until(updates, |reply| {
            reply.reservation.as_ref().map(|r| r.status()) == Some(S::CheckedOut)
        })
        .await;
        let statuses: Vec<_> = seen
            .iter()
            .map(|reply| reply.reservation.as_ref().map(|r| r.status()))
            .collect();
        assert_eq!(statuses, [Some(S::CheckedIn), Some(S::CheckedOut)]);
    }
    read_until(&mut night_b, |reply| free(reply) == 8).await;
    let seen = read_until(&mut reservation_b, |reply| {
        reply.reservation.as_ref().map(|r| r.status()) == Some(S::Cancelled)
    })
    .await;
    assert_eq!(seen.len(), 1);

    // One read per key per commit at most, not one per watcher (62 per commit).
    let rereads = app.watches.rereads() - rereads_before;
    eprintln!("{rereads} reads for {commits} commits and 62 watchers of 4 keys");
    assert!(
        rereads <= 4 * commits,
        "{rereads} reads for {commits} commits of 4 watched keys"
    );
    assert!(
        rereads >= commits,
        "the feeds read on every commit: {rereads}"
    );

    // Watchers that leave end their feeds.
    drop(night_a);
    drop(reservation_a);
    drop(night_b);
    drop(reservation_b);
    assert!(
        eventually(Duration::from_secs(5), || app.watches.open() == 0
            && app.watches.feeds() == 0)
        .await,
        "{:?}",
        app.watches
    );
    app.stop().await;
}

#[tokio::test]
async fn open_watches_are_capped() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    let stay = Stay::new("h1", "DBL", "ana", "2030-10-01", "2030-10-02");
    stream.append([
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 10, 10_000),
        events.confirmed(&stay),
    ]);
    let app = App::spawn_configured(&dir, stream.clone(), |config| config.max_watchers = 3).await;
    app.wait_for(stream.head()).await;
    let mut client = app.client().await;

    let watch_stay = || pb::WatchReservationRequest {
        reservation_id: stay.reservation_id.clone(),
        min_position: 0,
    };
    let first = client
        .watch_availability(watch_night("2030-09-01", "2030-09-02"))
        .await
        .expect("first watch");
    let _second = client
        .watch_availability(watch_night("2030-09-01", "2030-09-02"))
        .await
        .expect("second watch");
    let _third = client
        .watch_reservation(watch_stay())
        .await
        .expect("third watch");
    for refused in [
        client.watch_reservation(watch_stay()).await.map(drop),
        client
            .watch_availability(watch_night("2030-09-03", "2030-09-04"))
            .await
            .map(drop),
    ] {
        let status = refused.expect_err("past the cap");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("--max-watchers"), "{status:?}");
    }
    // Unary queries are not watches.
    client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: stay.reservation_id.clone(),
            min_position: 0,
        })
        .await
        .expect("a query past the cap");

    // A watcher that leaves makes room.
    drop(first);
    assert!(eventually(Duration::from_secs(5), || app.watches.open() == 2).await);
    client
        .watch_reservation(watch_stay())
        .await
        .expect("room again");
    app.stop().await;
}

#[tokio::test]
async fn watches_end_unavailable_at_shutdown() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    let stay = Stay::new("h1", "DBL", "ana", "2030-10-01", "2030-10-02");
    stream.append([
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 10, 10_000),
        events.confirmed(&stay),
    ]);
    let app = App::spawn(&dir, stream.clone()).await;
    app.wait_for(stream.head()).await;
    let mut client = app.client().await;
    let mut reservation = client
        .watch_reservation(pb::WatchReservationRequest {
            reservation_id: stay.reservation_id.clone(),
            min_position: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    reservation.message().await.expect("ok").expect("first");
    let mut availability = client
        .watch_availability(watch_night("2030-10-01", "2030-10-02"))
        .await
        .expect("watch")
        .into_inner();
    availability.message().await.expect("ok").expect("first");

    let stopped = tokio::spawn(app.stop());
    let ends = [
        tokio::time::timeout(Duration::from_secs(5), reservation.message())
            .await
            .expect("the reservation watch ends")
            .map(drop),
        tokio::time::timeout(Duration::from_secs(5), availability.message())
            .await
            .expect("the availability watch ends")
            .map(drop),
    ];
    for end in ends {
        let status = end.expect_err("a watch does not end OK at shutdown");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("watch again"), "{status:?}");
    }
    stopped.await.expect("stopped");
}

#[tokio::test]
async fn a_search_page_examines_at_most_the_scan_limit() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    // Six hotels in Faro, one room each, cheapest first; the four cheapest
    // are full on the night searched.
    let mut log = Vec::new();
    for i in 1..=6 {
        let hotel = format!("f{i}");
        log.push(events.hotel(&hotel, &format!("Faro {i}"), "Faro"));
        log.push(events.room_type(&hotel, "DBL", 2, 1, 1_000 * i));
        if i <= 4 {
            log.push(events.confirmed(&Stay::new(&hotel, "DBL", "x", "2030-11-01", "2030-11-02")));
        }
    }
    stream.append(log);
    let app = App::spawn_configured(&dir, stream.clone(), |config| config.scan_limit = 3).await;
    app.wait_for(stream.head()).await;
    let mut client = app.client().await;

    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .search_availability(pb::SearchAvailabilityRequest {
                city: "faro".into(),
                check_in: "2030-11-01".into(),
                check_out: "2030-11-02".into(),
                guests: 2,
                page_size: 10,
                page_token: page_token.clone(),
                min_position: 0,
            })
            .await
            .expect("search")
            .into_inner();
        let hotels: Vec<String> = page.results.iter().map(|r| r.hotel_id.clone()).collect();
        pages.push(hotels);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        assert!(pages.len() < 10, "{pages:?}");
    }
    // Three full rooms fill the first page's scan; the next finds the two free.
    assert_eq!(
        pages,
        [vec![], vec!["f5".to_owned(), "f6".to_owned()], vec![]],
        "pages: {pages:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_listing_page_examines_at_most_the_scan_limit() {
    let dir = TempDir::new();
    let mut events = Events::new();
    let stream = ScriptedStream::new();
    // Twelve reservations at h1; only the two oldest are cancelled.
    let mut log = vec![
        events.hotel("h1", "Hotel One", "Lisboa"),
        events.room_type("h1", "DBL", 2, 100, 10_000),
    ];
    let stays: Vec<Stay> = (0..12)
        .map(|i| Stay::new("h1", "DBL", &format!("g{i}"), "2030-12-01", "2030-12-02"))
        .collect();
    for stay in &stays {
        log.push(events.confirmed(stay));
    }
    for stay in &stays[..2] {
        log.push(events.cancelled(stay, S::Confirmed));
    }
    stream.append(log);
    let app = App::spawn_configured(&dir, stream.clone(), |config| config.scan_limit = 4).await;
    app.wait_for(stream.head()).await;
    let mut client = app.client().await;

    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_reservations(pb::ListReservationsRequest {
                guest_id: String::new(),
                hotel_id: "h1".into(),
                statuses: vec![S::Cancelled as i32],
                page_size: 10,
                page_token: page_token.clone(),
                min_position: 0,
            })
            .await
            .expect("list")
            .into_inner();
        pages.push(page.reservations.len());
        for reservation in &page.reservations {
            assert_eq!(reservation.status(), S::Cancelled);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        assert!(pages.len() < 10, "{pages:?}");
    }
    // Four rows per page, newest first: the ten confirmed fill two pages
    // and half the third, which finds both cancelled ones; the fourth finds
    // that nothing is left.
    assert_eq!(pages, [0, 0, 2, 0], "reservations per page");
    app.stop().await;
}
