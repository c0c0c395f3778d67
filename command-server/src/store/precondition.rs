//! Stale-read preconditions (`hotel.v1.Precondition`, ADR 0011): a command
//! decided on a read names what it read, and runs only while that holds.
//!
//! The check runs inside the batch transaction, under the write lock, right
//! before the command itself: what it sees is the state the command will
//! change, including every earlier command of the same batch. A command
//! without a precondition pays nothing here.
//!
//! What is checked (the command's *subject*):
//! - `CancelReservation`, `CheckIn`, `CheckOut`: the reservation; its version
//!   is its aggregate version, its last change the position of its latest
//!   event.
//! - `AddRoomType`: the hotel; its version counts its own events
//!   (`HotelRegistered`, `RoomTypeAdded`, `RoomInventoryChanged`).
//! - `SetRoomInventory`: the hotel's version for `expected_version`; for
//!   `unchanged_since_position`, the room type with everything that moves its
//!   availability (its inventory and every reservation event of it). The log
//!   has no index by room type, so that check reads the hotel's events after
//!   the position, at most `scan_limit` of the log's events: an older read is
//!   refused as stale (it is cheap to read again), never checked unbounded
//!   under the write lock.

use hotel_common::pb::{self, event::Kind};
use prost::Message;
use sqlx::{MySqlConnection, Row};

use super::{
    events::NewEvent,
    execute::{Batch, hotel_version},
    working_set::WorkingSet,
};
use crate::{
    domain::command::{Command, Precondition, ValidCommand},
    error::{CommandError, StaleRead},
};

/// What a precondition is about.
#[derive(Debug, Clone, Copy)]
enum Subject<'a> {
    Reservation(&'a str),
    Hotel(&'a str),
    RoomType(&'a str, &'a str),
}

impl Subject<'_> {
    fn name(self) -> String {
        match self {
            Self::Reservation(id) => format!("reservation:{id}"),
            Self::Hotel(id) => format!("hotel:{id}"),
            Self::RoomType(hotel_id, code) => format!("room_type:{hotel_id}/{code}"),
        }
    }

    /// Whether `event` changed this subject.
    fn changed_by(self, event: &NewEvent) -> bool {
        match self {
            Self::Reservation(id) => {
                event.aggregate_kind == "reservation" && event.aggregate_id == id
            }
            Self::Hotel(id) => event.aggregate_kind == "hotel" && event.aggregate_id == id,
            Self::RoomType(hotel_id, code) => {
                event.hotel_id == hotel_id && room_type_of(&event.event) == Some(code)
            }
        }
    }
}

/// The room type an event concerns (every event but `HotelRegistered`).
fn room_type_of(event: &pb::Event) -> Option<&str> {
    Some(match event.kind.as_ref()? {
        Kind::HotelRegistered(_) => return None,
        Kind::RoomTypeAdded(e) => &e.code,
        Kind::RoomInventoryChanged(e) => &e.room_type_code,
        Kind::ReservationConfirmed(e) => &e.booking.as_ref()?.room_type_code,
        Kind::ReservationWaitlisted(e) => &e.booking.as_ref()?.room_type_code,
        Kind::ReservationPromoted(e) => &e.room_type_code,
        Kind::ReservationCancelled(e) => &e.room_type_code,
        Kind::GuestCheckedIn(e) => &e.room_type_code,
        Kind::GuestCheckedOut(e) => &e.room_type_code,
    })
}

/// Refuses the command with `STALE_READ` unless its precondition holds.
pub async fn check(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &Batch,
    cmd: &ValidCommand,
) -> Result<(), CommandError> {
    let Some(precondition) = cmd.precondition else {
        return Ok(());
    };
    let subject = match (&cmd.command, precondition) {
        (
            Command::CancelReservation { reservation_id, .. }
            | Command::CheckIn { reservation_id }
            | Command::CheckOut { reservation_id },
            _,
        ) => Subject::Reservation(reservation_id),
        (Command::AddRoomType { hotel_id, .. }, _)
        | (Command::SetRoomInventory { hotel_id, .. }, Precondition::ExpectedVersion(_)) => {
            Subject::Hotel(hotel_id)
        }
        (Command::SetRoomInventory { hotel_id, code, .. }, Precondition::UnchangedSince(_)) => {
            Subject::RoomType(hotel_id, code)
        }
        // Their requests have no precondition field.
        (Command::RegisterHotel { .. } | Command::BookRoom { .. }, _) => return Ok(()),
    };
    let current_version = match subject {
        Subject::Reservation(id) => rows.reservation(conn, id).await?.version,
        Subject::Hotel(id) | Subject::RoomType(id, _) => hotel_version(conn, id).await?,
    };
    let stale = |changed_position: i64, why: String| {
        CommandError::StaleRead(Box::new(StaleRead {
            subject: subject.name(),
            current_version,
            changed_position,
            why,
        }))
    };
    let head = batch.start_head;
    match precondition {
        Precondition::ExpectedVersion(expected) if expected == current_version => Ok(()),
        Precondition::ExpectedVersion(expected) => {
            let changed = last_change(conn, batch, subject, current_version).await?;
            Err(stale(
                changed,
                format!(
                    "{} is at version {current_version}, not {expected}",
                    subject.name()
                ),
            ))
        }
        Precondition::UnchangedSince(position) if position > head => Err(stale(
            head,
            format!(
                "position {position} is beyond the log's head {head}: the read came from \
                 another history (a restore or a failover since)"
            ),
        )),
        Precondition::UnchangedSince(position) => {
            let changed = match subject {
                Subject::RoomType(hotel_id, code) => {
                    if head - position > batch.scan_limit {
                        return Err(stale(
                            head,
                            format!(
                                "the read at position {position} is {} events behind the head \
                                 {head}; a room type is checked over at most {} events \
                                 (--precondition-scan-limit)",
                                head - position,
                                batch.scan_limit
                            ),
                        ));
                    }
                    match in_batch(batch, subject) {
                        Some(changed) => changed,
                        None => room_type_changed_after(conn, hotel_id, code, position)
                            .await?
                            .unwrap_or(0),
                    }
                }
                _ => last_change(conn, batch, subject, current_version).await?,
            };
            if changed > position {
                return Err(stale(
                    changed,
                    format!(
                        "{} changed at position {changed}, after position {position}",
                        subject.name()
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// The position of the subject's latest event in this batch, if any.
fn in_batch(batch: &Batch, subject: Subject<'_>) -> Option<i64> {
    batch
        .events
        .iter()
        .rev()
        .find(|event| subject.changed_by(event))
        .map(|event| event.position)
}

/// The position of an aggregate's latest change (`version` is its version
/// now): in this batch, or the event of that version in the log.
async fn last_change(
    conn: &mut MySqlConnection,
    batch: &Batch,
    subject: Subject<'_>,
    version: i64,
) -> Result<i64, CommandError> {
    if let Some(position) = in_batch(batch, subject) {
        return Ok(position);
    }
    let (kind, id) = match subject {
        Subject::Reservation(id) => ("reservation", id),
        Subject::Hotel(id) | Subject::RoomType(id, _) => ("hotel", id),
    };
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM events \
         WHERE aggregate_kind = ? AND aggregate_id = ? AND aggregate_version = ?",
    )
    .bind(kind)
    .bind(id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(position.unwrap_or(0))
}

/// The position of the latest committed event after `after` that concerns
/// the room type, if any. The caller bounds `head - after`.
async fn room_type_changed_after(
    conn: &mut MySqlConnection,
    hotel_id: &str,
    code: &str,
    after: i64,
) -> Result<Option<i64>, CommandError> {
    let rows =
        sqlx::query("SELECT position, payload FROM events WHERE position > ? AND hotel_id = ?")
            .bind(after)
            .bind(hotel_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut latest = None;
    for row in rows {
        let position: i64 = row.try_get("position")?;
        let payload: Vec<u8> = row.try_get("payload")?;
        let event = pb::Event::decode(payload.as_slice()).map_err(|error| {
            CommandError::Internal(format!("event at position {position}: {error}"))
        })?;
        if room_type_of(&event) == Some(code) {
            latest = latest.max(Some(position));
        }
    }
    Ok(latest)
}
