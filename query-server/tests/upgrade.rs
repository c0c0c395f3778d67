//! Upgrading a read model in place (issue 13): a file written by the query
//! server of the previous read-model schema (7, in
//! `tests/fixtures/schema-7`, made by that binary from the log beside it) is
//! opened by this binary, which migrates it and goes on applying a log that
//! mixes the events a command server wrote before its own upgrade (no trace
//! context) with events written after it (trace context, and fields this
//! binary does not know, as a newer command server adds them under the
//! rules of ADR 0009). It ends with the same schema and the same rows as a
//! read model this binary builds from scratch from the whole log.
//!
//! The payloads have one version so far: no event kind has changed shape.
//! What differs between the two halves of the log is the envelope
//! (`traceparent`, added with tracing) and, for the second half, fields
//! unknown to this binary in the envelope and in a payload.

mod support;

use std::{collections::HashMap, path::Path, time::Duration};

use hotel_common::pb::{self, ReservationStatus as S, event::Kind};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use query_server::read_model::{Writer, retention::ChangeRetention};
use rusqlite::{Connection, OpenFlags, types::Value};
use support::{Events, Stay, TempDir};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-7");
/// The schema the fixture was written at: the one before this binary's.
const PREVIOUS_SCHEMA: i64 = 7;

/// The fixture's log, as the previous command server encoded it.
fn old_log() -> Vec<pb::EventEnvelope> {
    let bytes = std::fs::read(Path::new(FIXTURE).join("log.bin")).expect("the fixture's log");
    let mut rest = bytes.as_slice();
    let mut log = Vec::new();
    while !rest.is_empty() {
        log.push(pb::EventEnvelope::decode_length_delimited(&mut rest).expect("an event"));
    }
    log
}

/// The stays booked in `log`, by guest.
fn stays(log: &[pb::EventEnvelope]) -> HashMap<String, Stay> {
    log.iter()
        .filter_map(|envelope| match envelope.event.as_ref()?.kind.as_ref()? {
            Kind::ReservationConfirmed(pb::ReservationConfirmed { booking })
            | Kind::ReservationWaitlisted(pb::ReservationWaitlisted { booking }) => {
                booking.as_ref()
            }
            _ => None,
        })
        .map(|booking| {
            let guest = booking.guest.as_ref().expect("a guest").guest_id.clone();
            let stay = Stay {
                reservation_id: booking.reservation_id.clone(),
                hotel_id: booking.hotel_id.clone(),
                code: booking.room_type_code.clone(),
                guest_id: guest.clone(),
                check_in: booking.check_in.clone(),
                check_out: booking.check_out.clone(),
            };
            (guest, stay)
        })
        .collect()
}

/// A W3C trace context, as the upgraded command server stores with events.
fn traceparent(position: i64) -> String {
    format!("00-{:032x}-{:016x}-01", position + 1, position + 7)
}

/// Appends a length-delimited field `tag` holding `bytes` to `out`.
fn append_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `envelope` as a newer command server would encode it: a field of the
/// envelope this binary does not know (14), and in a confirmed booking's
/// payload another (`ReservationConfirmed` field 2).
fn with_unknown_fields(envelope: &pb::EventEnvelope) -> Vec<u8> {
    let mut bytes = match envelope.event.as_ref().and_then(|e| e.kind.as_ref()) {
        Some(Kind::ReservationConfirmed(confirmed)) => {
            let mut payload = confirmed.encode_to_vec();
            encode_key(2, WireType::Varint, &mut payload);
            encode_varint(7, &mut payload);
            let mut event = Vec::new();
            append_field(&mut event, 4, &payload);
            let mut bytes = pb::EventEnvelope {
                event: None,
                ..envelope.clone()
            }
            .encode_to_vec();
            append_field(&mut bytes, 11, &event);
            bytes
        }
        _ => envelope.encode_to_vec(),
    };
    append_field(&mut bytes, 14, b"a newer field");
    bytes
}

/// The events after the upgrade, as encoded on the wire: they change rows
/// the previous binary wrote (cancellations, promotions, check-in and out,
/// an inventory change) and add a hotel; each carries a trace context,
/// every other one unknown fields.
fn new_log(old: &[pb::EventEnvelope]) -> Vec<Vec<u8>> {
    let stay = stays(old);
    let mut e = Events::after(old);
    let j = Stay::new("h1", "DBL", "jo", "2030-05-03", "2030-05-04");
    let k = Stay::new("h3", "DBL", "ka", "2030-07-01", "2030-07-03");
    let l = Stay::new("h1", "SGL", "lu", "2030-05-20", "2030-05-21");
    let events = vec![
        e.cancelled(&stay["ana"], S::Confirmed),
        e.promoted(&stay["di"]),
        e.checked_out(&stay["io"]),
        e.waitlisted(&j, 2),
        e.inventory("h1", "DBL", 2, 3),
        e.promoted(&j),
        e.cancelled(&stay["gu"], S::Confirmed),
        e.cancelled(&stay["cy"], S::Confirmed),
        e.hotel("h3", "Hotel Three", "Faro"),
        e.room_type("h3", "DBL", 2, 1, 11_000),
        e.confirmed(&k),
        e.checked_in(&k),
        e.confirmed(&l),
        e.inventory("h2", "DBL", 2, 1),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, mut envelope)| {
            envelope.traceparent = traceparent(envelope.position);
            if i % 2 == 0 {
                with_unknown_fields(&envelope)
            } else {
                envelope.encode_to_vec()
            }
        })
        .collect()
}

/// A writer that prunes nothing: both files keep every change.
fn open_writer(path: &Path) -> Writer {
    let mut writer = Writer::open(path).expect("open the read model");
    writer.set_change_retention(ChangeRetention {
        keep: Duration::from_secs(100 * 365 * 24 * 3600),
        every: Duration::from_secs(3600),
    });
    writer
}

fn apply_in_batches(writer: &mut Writer, events: &[pb::EventEnvelope], batch: usize) {
    for chunk in events.chunks(batch) {
        writer.apply_batch(chunk).expect("the batch applies");
    }
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .expect("open")
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("user_version")
}

/// The schema: every table and index with its SQL.
fn schema(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    let mut statement = conn
        .prepare(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' \
             ORDER BY type, name",
        )
        .expect("prepare");
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Every row of every table, sorted, but for the wall-clock time of the
/// last batch (`checkpoint.applied_at_ms`).
fn rows(conn: &Connection) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = schema(conn)
        .into_iter()
        .filter(|(kind, _, _)| kind == "table")
        .map(|(_, name, _)| name)
        .collect();
    let mut all = Vec::new();
    for table in tables {
        let mut statement = conn
            .prepare(&format!("SELECT * FROM \"{table}\""))
            .expect("prepare");
        let columns: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut table_rows: Vec<String> = statement
            .query_map([], |row| {
                let mut values = Vec::new();
                for (i, column) in columns.iter().enumerate() {
                    let value: Value = row.get(i)?;
                    if table == "checkpoint" && column == "applied_at_ms" {
                        continue;
                    }
                    values.push(format!("{column}={value:?}"));
                }
                Ok(values.join(", "))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        table_rows.sort();
        all.push((table, table_rows));
    }
    all
}

fn read_only(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only")
}

#[test]
fn a_previous_schema_file_upgrades_in_place_and_ends_as_a_fresh_rebuild() {
    let dir = TempDir::new();
    let old = old_log();
    let head = old.last().expect("the fixture has events").position;
    let wire = new_log(&old);
    let new: Vec<pb::EventEnvelope> = wire
        .iter()
        .map(|bytes| pb::EventEnvelope::decode(bytes.as_slice()).expect("this binary decodes it"))
        .collect();
    assert!(new.iter().all(|e| !e.traceparent.is_empty()));
    assert!(old.iter().all(|e| e.traceparent.is_empty()));

    // The previous binary's file, as it left it.
    let upgraded = dir.path().join("upgraded.db");
    Connection::open(&upgraded)
        .expect("create")
        .execute_batch(
            &std::fs::read_to_string(Path::new(FIXTURE).join("read-model.sql"))
                .expect("the fixture's read model"),
        )
        .expect("load the fixture");
    assert_eq!(user_version(&upgraded), PREVIOUS_SCHEMA);

    // Opened by this binary: migrated, where it was.
    let mut writer = open_writer(&upgraded);
    let checkpoint = writer.checkpoint().expect("checkpoint");
    assert_eq!(checkpoint.position, head);
    assert_eq!(
        checkpoint.event_id.as_deref(),
        Some(old.last().expect("events").event_id.as_str()),
        "it still names its last event, for the log identity check"
    );
    apply_in_batches(&mut writer, &new, 4);
    writer.close().expect("close");
    let current_schema = user_version(&upgraded);
    assert!(
        current_schema == PREVIOUS_SCHEMA + 1,
        "schema {current_schema}: a new migration needs this test's fixture made again with the \
         previous binary (tests/fixtures/schema-7/README.md)"
    );

    // The same log from scratch.
    let fresh = dir.path().join("fresh.db");
    let mut writer = open_writer(&fresh);
    apply_in_batches(&mut writer, &old, 5);
    apply_in_batches(&mut writer, &new, 4);
    writer.close().expect("close");

    let (upgraded, fresh) = (read_only(&upgraded), read_only(&fresh));
    assert_eq!(
        schema(&upgraded),
        schema(&fresh),
        "the migrated schema is the fresh one"
    );
    let (upgraded_rows, fresh_rows) = (rows(&upgraded), rows(&fresh));
    for ((table, got), (_, want)) in upgraded_rows.iter().zip(&fresh_rows) {
        assert_eq!(
            got, want,
            "table {table}: upgraded (left) and fresh (right)"
        );
    }
    assert_eq!(upgraded_rows.len(), fresh_rows.len());

    // And the new events did reach the rows the previous binary wrote.
    let di: (String, i64) = upgraded
        .query_row(
            "SELECT r.status, r.version FROM reservations r WHERE r.guest_id = 'di'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("di's reservation");
    assert_eq!(
        di,
        ("CONFIRMED".to_owned(), 2),
        "promoted after the upgrade"
    );
    let position: i64 = upgraded
        .query_row("SELECT position FROM checkpoint", [], |row| row.get(0))
        .expect("checkpoint");
    assert_eq!(position, head + new.len() as i64);
}
