//! The availability held in memory (ADR 0015) against the SQLite file it
//! copies: after every batch, every answer the memory gives equals the SQL
//! answer in a snapshot at the same position.

mod support;

use hotel_common::pb::ReservationStatus as S;
use query_server::read_model::{ReadModel, Writer, memory::State, reads};
use support::{Events, Stay, TempDir};

struct Fixture {
    dir: TempDir,
    writer: Writer,
    readers: ReadModel,
    events: Events,
}

fn fixture(max_nights: u64) -> Fixture {
    let dir = TempDir::new();
    let mut writer = Writer::open(&dir.db()).expect("open the read model");
    let readers = ReadModel::new(&dir.db()).with_max_nights_in_memory(max_nights);
    readers.attach(&mut writer);
    Fixture {
        dir,
        writer,
        readers,
        events: Events::new(),
    }
}

const HOTELS: [&str; 4] = ["h1", "h2", "h3", "nope"];
const CODES: [&str; 4] = ["DBL", "SGL", "STE", "NOPE"];
const CITIES: [&str; 4] = ["lisboa", "porto", "faro", "nowhere"];
const RANGES: [(&str, &str); 5] = [
    ("2030-05-01", "2030-05-08"),
    ("2030-05-02", "2030-05-03"),
    ("2030-05-03", "2030-05-05"),
    ("2030-04-01", "2030-06-01"),
    ("2030-05-07", "2030-05-09"),
];

impl Fixture {
    fn apply(&mut self, events: &[hotel_common::pb::EventEnvelope]) {
        self.writer.apply_batch(events).expect("batch applies");
        self.assert_same();
    }

    fn state(&self) -> std::sync::Arc<State> {
        self.readers
            .memory()
            .state()
            .expect("availability held in memory")
    }

    /// Every availability answer and every page of every search equals
    /// SQLite's, at the same position.
    fn assert_same(&self) {
        let state = self.state();
        let position = self.readers.checkpoint().expect("checkpoint").position;
        assert_eq!(
            state.position(),
            position,
            "the memory is at the file's position"
        );
        let mut compared = 0;
        for hotel in HOTELS {
            let sql = self
                .readers
                .read(|tx| reads::hotel(tx, hotel))
                .expect("read");
            assert_eq!(state.hotel(hotel), sql, "hotel {hotel} at {position}");
            for code in CODES.iter().map(Some).chain([None]) {
                let code = code.copied();
                let sql = self
                    .readers
                    .read(|tx| reads::room_types(tx, hotel, code))
                    .expect("read");
                assert_eq!(state.room_types(hotel, code), sql, "{hotel}/{code:?}");
                for (from, to) in RANGES {
                    let sql = self
                        .readers
                        .read(|tx| reads::night_counts(tx, hotel, code, from, to))
                        .expect("read");
                    let memory = state.night_counts(hotel, code, from, to).expect("answers");
                    assert_eq!(memory, sql, "{hotel}/{code:?} {from}..{to} at {position}");
                    compared += 1;
                }
            }
        }
        for city_key in CITIES {
            for (check_in, check_out) in RANGES {
                let nights = nights_between(check_in, check_out);
                for guests in 1..=3 {
                    for (limit, max_examined) in [(100, 1000), (1, 1000), (2, 1), (3, 2)] {
                        let mut search = reads::Search {
                            city_key,
                            check_in,
                            check_out,
                            nights,
                            guests,
                            after: None,
                            limit,
                            max_examined,
                        };
                        // Every page, each continuing after the last.
                        for page in 0.. {
                            assert!(page < 50, "the pages end");
                            let sql = self
                                .readers
                                .read(|tx| reads::search(tx, &search))
                                .expect("search");
                            let memory = state.search(&search).expect("answers");
                            let what = format!("{search:?} at {position}");
                            assert_eq!(memory.results, sql.results, "{what}");
                            assert_eq!(memory.stopped_at, sql.stopped_at, "{what}");
                            compared += 1;
                            search.after = match (sql.results.last(), sql.stopped_at) {
                                (_, Some(stopped)) => Some(stopped),
                                (Some(last), None) if sql.results.len() as i64 == limit => {
                                    Some(last.key())
                                }
                                _ => break,
                            };
                        }
                    }
                }
            }
        }
        assert!(compared > 100);
    }
}

fn nights_between(from: &str, to: &str) -> i64 {
    let from = hotel_common::dates::parse(from).expect("date");
    let to = hotel_common::dates::parse(to).expect("date");
    (to - from).whole_days()
}

/// Three hotels in two cities (one city written two ways), with room types
/// of equal and different rates so that the search order has ties.
fn hotels(f: &mut Fixture) {
    let batch = [
        f.events.hotel("h1", "Hotel One", "Lisboa"),
        f.events.room_type("h1", "DBL", 2, 2, 12_000),
        f.events.room_type("h1", "SGL", 1, 1, 8_000),
        f.events.hotel("h2", "Hotel Two", " LISBOA "),
        f.events.room_type("h2", "DBL", 2, 1, 12_000),
        f.events.hotel("h3", "Hotel Three", "Porto"),
        f.events.room_type("h3", "STE", 4, 3, 30_000),
    ];
    f.apply(&batch);
}

#[test]
fn answers_equal_sqlite_after_every_kind_of_change() {
    let mut f = fixture(1_000);
    f.assert_same();
    hotels(&mut f);

    // Bookings in one batch across hotels, filling h2's only double.
    let ana = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-04");
    let bo = Stay::new("h2", "DBL", "bo", "2030-05-02", "2030-05-05");
    let cy = Stay::new("h1", "SGL", "cy", "2030-05-03", "2030-05-04");
    let batch = [
        f.events.confirmed(&ana),
        f.events.confirmed(&bo),
        f.events.confirmed(&cy),
    ];
    f.apply(&batch);

    // The waiting list, then a promotion after a cancellation.
    let di = Stay::new("h2", "DBL", "di", "2030-05-03", "2030-05-06");
    let batch = [f.events.waitlisted(&di, 1)];
    f.apply(&batch);
    let batch = [
        f.events.cancelled(&bo, S::Confirmed),
        f.events.promoted(&di),
    ];
    f.apply(&batch);

    // Check-in and check-out change no counts; a waitlisted cancellation does.
    let ed = Stay::new("h1", "SGL", "ed", "2030-05-03", "2030-05-05");
    let batch = [f.events.waitlisted(&ed, 0), f.events.checked_in(&ana)];
    f.apply(&batch);
    let batch = [
        f.events.cancelled(&ed, S::Waitlisted),
        f.events.checked_out(&ana),
    ];
    f.apply(&batch);

    // Inventory, a new room type, and a hotel renamed and moved: the
    // search order and candidates change.
    let batch = [f.events.inventory("h1", "DBL", 2, 1)];
    f.apply(&batch);
    let batch = [f.events.room_type("h3", "DBL", 2, 2, 9_000)];
    f.apply(&batch);
    let batch = [f.events.hotel("h2", "Hotel Two Again", "Porto")];
    f.apply(&batch);
    let fy = Stay::new("h3", "DBL", "fy", "2030-05-01", "2030-05-09");
    let gu = Stay::new("h3", "DBL", "gu", "2030-05-04", "2030-05-06");
    let batch = [f.events.confirmed(&fy), f.events.confirmed(&gu)];
    f.apply(&batch);

    // A hotel registered after its room type.
    let batch = [
        f.events.room_type("h4", "DBL", 2, 1, 5_000),
        f.events.hotel("h4", "Hotel Four", "Faro"),
    ];
    f.apply(&batch);
    assert!(f.state().hotel("h4").is_some());
}

#[test]
fn a_commit_it_did_not_see_reloads_it() {
    let mut f = fixture(1_000);
    hotels(&mut f);
    // Another writer of the same file commits without telling the memory.
    let mut other = Writer::open(&f.dir.db()).expect("a second writer");
    let ana = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-04");
    let batch = [f.events.confirmed(&ana)];
    other.apply_batch(&batch).expect("applies");
    other.close().expect("closes");
    assert_eq!(f.state().position(), 7, "the memory missed position 8");
    // The next commit notices the gap and loads everything again.
    let bo = Stay::new("h1", "DBL", "bo", "2030-05-02", "2030-05-03");
    let batch = [f.events.confirmed(&bo)];
    f.apply(&batch);
    assert_eq!(f.state().position(), 9);
}

#[test]
fn a_refused_batch_leaves_it_as_it_was() {
    let mut f = fixture(1_000);
    hotels(&mut f);
    let ana = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-04");
    let mut late = f.events.confirmed(&ana);
    late.position += 5;
    f.writer.apply_batch(&[late]).expect_err("a gap is refused");
    assert_eq!(f.state().position(), 7);
    f.assert_same();
}

#[test]
fn the_nights_cap_turns_it_off() {
    let mut f = fixture(4);
    hotels(&mut f);
    let ana = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-04");
    let batch = [f.events.confirmed(&ana)];
    f.apply(&batch);
    assert!(f.readers.memory().state().is_some(), "3 nights fit under 4");
    let bo = Stay::new("h1", "SGL", "bo", "2030-05-01", "2030-05-03");
    let batch = [f.events.confirmed(&bo)];
    f.writer.apply_batch(&batch).expect("applies");
    assert!(
        f.readers.memory().state().is_none(),
        "5 nights do not fit under 4: the queries read SQLite"
    );

    // Loaded again (at a start) over the cap: not held either.
    let f2 = {
        let mut writer = Writer::open(&f.dir.db()).expect("open");
        let readers = ReadModel::new(&f.dir.db()).with_max_nights_in_memory(4);
        readers.attach(&mut writer);
        readers
    };
    assert!(f2.memory().state().is_none());
    let off = fixture(0);
    assert!(off.readers.memory().state().is_none(), "0 holds nothing");
}

#[test]
fn a_rebuilt_file_swapped_in_is_loaded_again() {
    let mut f = fixture(1_000);
    hotels(&mut f);
    let ana = Stay::new("h1", "DBL", "ana", "2030-05-01", "2030-05-04");
    let batch = [f.events.confirmed(&ana)];
    f.apply(&batch);

    // Another history in the rebuilt file: other hotels, other counts.
    let rebuilt_path = f.dir.path().join("rebuilt.db");
    let mut rebuilt = Writer::open(&rebuilt_path).expect("open the rebuild");
    let mut other = Events::new();
    let bo = Stay::new("h3", "STE", "bo", "2030-05-02", "2030-05-03");
    let batch = [
        other.hotel("h3", "Hotel Three", "Porto"),
        other.room_type("h3", "STE", 4, 1, 30_000),
        other.confirmed(&bo),
    ];
    rebuilt.apply_batch(&batch).expect("applies");

    let Fixture {
        dir,
        writer,
        readers,
        events,
    } = f;
    let writer = readers.swap_in(writer, rebuilt).expect("swap");
    let f = Fixture {
        dir,
        writer,
        readers,
        events,
    };
    assert_eq!(f.state().position(), 3);
    assert!(f.state().hotel("h1").is_none(), "the old history is gone");
    f.assert_same();
}

#[test]
fn catching_up_drops_it_until_a_small_commit() {
    let mut f = fixture(100_000);
    hotels(&mut f);
    let large: Vec<_> = (0..1_000)
        .map(|i| {
            let code = if i % 2 == 0 { "DBL" } else { "SGL" };
            let day = 1 + i % 28;
            let stay = Stay::new(
                "h1",
                code,
                "ana",
                &format!("2030-05-{day:02}"),
                &format!("2030-05-{:02}", day + 1),
            );
            f.events.waitlisted(&stay, 0)
        })
        .collect();
    f.writer.apply_batch(&large).expect("applies");
    assert!(
        f.readers.memory().state().is_none(),
        "a large commit drops it: the queries read SQLite"
    );
    let bo = Stay::new("h2", "DBL", "bo", "2030-05-02", "2030-05-03");
    let batch = [f.events.confirmed(&bo)];
    f.apply(&batch);
    assert_eq!(f.state().position(), 1_008);
}
