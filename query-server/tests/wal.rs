//! The read model's write-ahead log under load, in a test binary of its
//! own: the checkpointer thread needs CPU time while batches commit, and
//! the read model tests running beside it in one binary (thousands of
//! events each, on the same 2 cores) starved it often enough that the WAL
//! passed its bound for want of a turn, not for want of a restart. Since
//! then a writer that finds the WAL at twice its restart size waits for
//! the thread (the second test shows it).

mod support;

use hotel_common::pb;
use query_server::read_model::{ReadModel, WalSettings, Writer};
use support::{Events, Stay, TempDir};

/// SQLite's own checkpoint is off; the checkpointer thread copies the WAL
/// back while batches keep committing and readers keep reading, and the WAL
/// starts over: it stays a fraction of all that went through it (without
/// the checkpointer, or with a checkpoint that races the writer and never
/// ends with nothing left, it holds every frame ever written).
#[test]
fn the_wal_starts_over_while_batches_commit_and_readers_read() {
    let dir = TempDir::new();
    let (mut writer, batches, wal) = writer_with(
        &dir,
        1_500,
        WalSettings {
            restart_at: 4 * 1024 * 1024,
            ..WalSettings::default()
        },
    );
    let readers = ReadModel::new(&dir.db());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut largest_wal = 0;
    std::thread::scope(|scope| {
        let readers = &readers;
        let stop = &stop;
        let reading = scope.spawn(move || {
            let mut reads = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                readers.checkpoint().expect("reads");
                reads += 1;
            }
            reads
        });
        for batch in &batches {
            writer.apply_batch(batch).expect("applies");
            largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reading.join().expect("reader") > 0);
    });
    assert_eq!(readers.checkpoint().expect("checkpoint").position, 15_002);
    let written = std::fs::metadata(writer.path()).expect("db").len();
    eprintln!("largest WAL {largest_wal} bytes; database file {written} bytes");
    // 15,000 bookings in 1,500 commits write ~70 MiB of frames (measured
    // with no restart): the WAL started over several times.
    assert!(
        largest_wal < 16 * 1024 * 1024,
        "the WAL grew to {largest_wal} bytes"
    );
    // And the pages reached the database file itself.
    assert!(
        written > 1024 * 1024,
        "the database file holds {written} bytes"
    );
}

/// A writer of a new file in `dir` with `wal` settings, the hotel and room
/// type applied, `count` batches of ten bookings to apply, and its WAL's path.
fn writer_with(
    dir: &TempDir,
    count: usize,
    wal: WalSettings,
) -> (Writer, Vec<Vec<pb::EventEnvelope>>, std::path::PathBuf) {
    let mut writer = Writer::open(&dir.db()).expect("open the read model");
    let batches = bookings(&mut writer, count);
    let wal_path = query_server::read_model::with_suffix(writer.path(), "-wal");
    writer.set_wal(wal).expect("settings");
    (writer, batches, wal_path)
}

/// Applies a hotel and a room type, and returns `count` batches of ten
/// bookings to apply after them.
fn bookings(writer: &mut Writer, count: usize) -> Vec<Vec<pb::EventEnvelope>> {
    let mut events = Events::new();
    let hotel = events.hotel("h1", "Hotel One", "Lisboa");
    let room = events.room_type("h1", "DBL", 2, 1_000_000, 12_000);
    writer.apply_batch(&[hotel, room]).expect("applies");
    let batches: Vec<Vec<pb::EventEnvelope>> = (0..count)
        .map(|b| {
            (0..10)
                .map(|i| {
                    let day = 1 + (b + i) % 28;
                    let stay = Stay::new(
                        "h1",
                        "DBL",
                        &format!("g{}", (b * 10 + i) % 997),
                        &format!("2030-03-{day:02}"),
                        &format!("2030-03-{:02}", day + 1),
                    );
                    events.confirmed(&stay)
                })
                .collect()
        })
        .collect();
    batches
}

/// The checkpoint thread copies the WAL at most once every 100 ms. A writer
/// that commits faster than that would grow the WAL by megabytes between
/// two of its passes (and without bound when the thread gets no CPU): once
/// a commit leaves it at twice the restart size, the writer waits for the
/// thread's next pass, and the WAL starts over near that size.
#[test]
fn a_writer_ahead_of_the_checkpoint_thread_waits_for_it() {
    let dir = TempDir::new();
    let restart_at = 256 * 1024;
    let (mut writer, batches, wal) = writer_with(
        &dir,
        600,
        WalSettings {
            restart_at,
            ..WalSettings::default()
        },
    );
    let mut largest_wal = 0;
    let started = std::time::Instant::now();
    for batch in &batches {
        writer.apply_batch(batch).expect("applies");
        largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    let took = started.elapsed();
    eprintln!("largest WAL {largest_wal} bytes after 600 commits in {took:?}");
    // Twice the restart size, one commit's frames past it, and the WAL
    // header: not the megabytes 100 ms of commits write.
    assert!(
        largest_wal < 4 * restart_at as u64,
        "the WAL grew to {largest_wal} bytes"
    );
}

/// On a machine too busy to run the checkpoint thread at all, a writer
/// that finds the WAL past twice its restart size waits for it at most
/// `catch_up_wait` (`--wal-catch-up-wait-ms`), once until the WAL starts
/// over: the projector slows down for a moment and goes on, and the WAL
/// starts over once the thread runs again.
#[test]
fn a_writer_waits_for_a_stalled_checkpoint_thread_at_most_the_catch_up_wait_once() {
    let dir = TempDir::new();
    let restart_at = 256 * 1024;
    let catch_up_wait = std::time::Duration::from_millis(500);
    let (mut writer, batches, wal) = writer_with(
        &dir,
        300,
        WalSettings {
            restart_at,
            catch_up_wait,
        },
    );
    let (stalled, rest) = batches.split_at(200);
    let mut slow = Vec::new();
    let mut largest_wal = 0;
    let stall = writer.checkpoint_stall();
    {
        let _stalled = stall.lock().expect("stall");
        for (i, batch) in stalled.iter().enumerate() {
            let started = std::time::Instant::now();
            writer.apply_batch(batch).expect("applies");
            let took = started.elapsed();
            largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            if took >= catch_up_wait {
                slow.push((i, took));
            }
        }
    }
    eprintln!("slow commits while stalled: {slow:?}; largest WAL {largest_wal} bytes");
    assert_eq!(slow.len(), 1, "one commit waited: {slow:?}");
    let (_, took) = slow[0];
    // Not the default 2 s.
    assert!(
        took < std::time::Duration::from_millis(1_900),
        "the commit waited {took:?}, not about {catch_up_wait:?}"
    );
    // Nothing started the WAL over meanwhile: it outgrew its bound.
    assert!(
        largest_wal > 4 * restart_at as u64,
        "the WAL held {largest_wal} bytes"
    );
    // The thread runs again: the WAL starts over and is cut back.
    let mut smallest_after = u64::MAX;
    for batch in rest {
        writer.apply_batch(batch).expect("applies");
        std::thread::sleep(std::time::Duration::from_millis(2));
        smallest_after = smallest_after.min(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(
        smallest_after <= 2 * restart_at as u64,
        "the WAL never came back under {} bytes (smallest {smallest_after})",
        2 * restart_at
    );
}

/// `--wal-catch-up-wait-ms 0`: the writer never waits, however far the
/// stalled thread leaves the WAL behind.
#[test]
fn a_zero_catch_up_wait_never_holds_the_writer() {
    let dir = TempDir::new();
    let restart_at = 256 * 1024;
    let (mut writer, batches, wal) = writer_with(
        &dir,
        200,
        WalSettings {
            restart_at,
            catch_up_wait: std::time::Duration::ZERO,
        },
    );
    let stall = writer.checkpoint_stall();
    let _stalled = stall.lock().expect("stall");
    let mut slowest = std::time::Duration::ZERO;
    for batch in &batches {
        let started = std::time::Instant::now();
        writer.apply_batch(batch).expect("applies");
        slowest = slowest.max(started.elapsed());
    }
    let largest_wal = std::fs::metadata(&wal).map_or(0, |m| m.len());
    eprintln!("slowest commit {slowest:?}; WAL {largest_wal} bytes");
    assert!(
        largest_wal > 4 * restart_at as u64,
        "the WAL went past twice its restart size ({largest_wal} bytes)"
    );
    assert!(
        slowest < std::time::Duration::from_millis(400),
        "a commit took {slowest:?}"
    );
}
