//! The event log in MySQL.
//!
//! Positions come from `event_head`, locked by every command transaction
//! before it writes, so they are gap-free and in commit order (see
//! docs/decisions/0001-gap-free-positions.md). Readers still stop at the
//! first missing position and wait, never step past it.

use hotel_common::{pb, timestamp_from_millis, wire};
use prost::bytes::Bytes;
use sqlx::{MySqlPool, Row};

use super::script::Script;

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub position: i64,
    pub event_id: String,
    pub event_type: &'static str,
    pub aggregate_kind: &'static str,
    pub aggregate_id: String,
    pub aggregate_version: i64,
    pub hotel_id: String,
    pub command_id: String,
    pub correlation_id: String,
    pub occurred_at_ms: i64,
    /// `event`, protobuf-encoded, as stored.
    pub payload: Vec<u8>,
    pub event: pb::Event,
}

/// The envelope of an event just written, as a reader of the log gets it
/// (its stored payload as the event); `traceparent` is its command's trace
/// context (empty when not traced).
pub fn envelope(event: NewEvent, traceparent: &str) -> wire::Envelope {
    wire::Envelope {
        head: pb::EventEnvelope {
            position: event.position,
            event_id: event.event_id,
            aggregate_kind: event.aggregate_kind.to_owned(),
            aggregate_id: event.aggregate_id,
            aggregate_version: event.aggregate_version,
            occurred_at: Some(timestamp_from_millis(event.occurred_at_ms)),
            command_id: event.command_id,
            correlation_id: event.correlation_id,
            hotel_id: event.hotel_id,
            event_type: event.event_type.to_owned(),
            event: None,
            traceparent: traceparent.to_owned(),
        },
        payload: event.payload.into(),
    }
}

/// The type name of an event payload, as in `EventEnvelope.event_type`.
pub fn event_type(kind: &pb::event::Kind) -> &'static str {
    use pb::event::Kind;
    match kind {
        Kind::HotelRegistered(_) => "HotelRegistered",
        Kind::RoomTypeAdded(_) => "RoomTypeAdded",
        Kind::RoomInventoryChanged(_) => "RoomInventoryChanged",
        Kind::ReservationConfirmed(_) => "ReservationConfirmed",
        Kind::ReservationWaitlisted(_) => "ReservationWaitlisted",
        Kind::ReservationPromoted(_) => "ReservationPromoted",
        Kind::ReservationCancelled(_) => "ReservationCancelled",
        Kind::GuestCheckedIn(_) => "GuestCheckedIn",
        Kind::GuestCheckedOut(_) => "GuestCheckedOut",
    }
}

/// Every event type name.
pub const EVENT_TYPES: [&str; 9] = [
    "HotelRegistered",
    "RoomTypeAdded",
    "RoomInventoryChanged",
    "ReservationConfirmed",
    "ReservationWaitlisted",
    "ReservationPromoted",
    "ReservationCancelled",
    "GuestCheckedIn",
    "GuestCheckedOut",
];

/// Adds the insert of `events` to `script`, one multi-row statement.
/// `traceparents` holds each event's trace context, in the same order
/// (empty: not traced, stored as NULL); missing entries count as empty.
pub fn append(script: &mut Script, events: &[NewEvent], traceparents: &[&str]) {
    if events.is_empty() {
        return;
    }
    let traced = |index: usize| {
        traceparents
            .get(index)
            .copied()
            .filter(|traceparent| !traceparent.is_empty())
    };
    script
        .sql(
            "INSERT INTO events (position, event_id, event_type, aggregate_kind, aggregate_id, \
             aggregate_version, hotel_id, command_id, correlation_id, occurred_at_ms, payload, \
             traceparent)",
        )
        .values(events.iter().enumerate(), |row, (index, event)| {
            row.value(event.position)
                .value(&event.event_id)
                .value(event.event_type)
                .value(event.aggregate_kind)
                .value(&event.aggregate_id)
                .value(event.aggregate_version)
                .value(&event.hotel_id)
                .value(&event.command_id)
                .value(&event.correlation_id)
                .value(event.occurred_at_ms)
                .value(&event.payload)
                .value(traced(index));
        })
        .end();
}

/// The last committed position (0 for an empty log).
pub async fn head(pool: &MySqlPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT position FROM event_head WHERE id = 1")
        .fetch_one(pool)
        .await
}

/// The id of the event at `position`, if the log holds one there.
pub async fn event_id_at(pool: &MySqlPool, position: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT event_id FROM events WHERE position = ?")
        .bind(position)
        .fetch_optional(pool)
        .await
}

/// Reads events `from..=through` in order, at most `limit`, stopping before
/// the first missing position so a reader never steps past a hole.
pub async fn read_range(
    pool: &MySqlPool,
    from: i64,
    through: i64,
    limit: i64,
) -> sqlx::Result<Vec<wire::Envelope>> {
    let rows = sqlx::query(
        "SELECT position, event_id, event_type, aggregate_kind, aggregate_id, aggregate_version, \
                hotel_id, command_id, correlation_id, occurred_at_ms, payload, traceparent \
         FROM events WHERE position >= ? AND position <= ? ORDER BY position LIMIT ?",
    )
    .bind(from)
    .bind(through)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut envelopes = Vec::with_capacity(rows.len());
    for (expected, row) in (from..).zip(rows) {
        let position: i64 = row.try_get(0)?;
        if position != expected {
            break;
        }
        envelopes.push(envelope_from_row(&row)?);
    }
    Ok(envelopes)
}

/// An event from a row of [`read_range`]'s select, whose columns it reads
/// by place (by name, each is a lookup: a few per cent of a replay's CPU).
/// The payload goes out as stored, not decoded (ADR 0014).
fn envelope_from_row(row: &sqlx::mysql::MySqlRow) -> sqlx::Result<wire::Envelope> {
    let payload: &[u8] = row.try_get(10)?;
    Ok(wire::Envelope {
        head: pb::EventEnvelope {
            position: row.try_get(0)?,
            event_id: row.try_get(1)?,
            event_type: row.try_get(2)?,
            aggregate_kind: row.try_get(3)?,
            aggregate_id: row.try_get(4)?,
            aggregate_version: row.try_get(5)?,
            hotel_id: row.try_get(6)?,
            command_id: row.try_get(7)?,
            correlation_id: row.try_get(8)?,
            occurred_at: Some(timestamp_from_millis(row.try_get(9)?)),
            event: None,
            traceparent: row.try_get::<Option<String>, _>(11)?.unwrap_or_default(),
        },
        payload: Bytes::copy_from_slice(payload),
    })
}
