//! Other processes' commits, as the rows a writer carries see them.
//!
//! A writer carries room types and night counts from one batch to the next
//! (ADR 0002). Another command server's commit in between may have changed
//! them. Rather than forget them all and read them again, a batch that
//! expects such commits (its last one found some) asks, with its lock, for
//! the log's events after its own last commit, and applies what they did:
//! a booking, a promotion or a cancellation adds to or takes from the night
//! counts of its stay, and a room type added or changed is forgotten (read
//! again when needed). The events are the whole truth of what changed: every
//! change to the write model is an event, committed under the same lock.

use hotel_common::{
    dates,
    nights::{NightEffect, night_effect},
    pb,
};
use prost::Message;
use sqlx::{Row, mysql::MySqlRow};

use super::{script::Script, working_set::RoomKey};
use crate::domain::Stay;

/// What one event of another process did to the rows a writer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Rooms booked and reservations waiting, added to every night of a
    /// stay (negative: taken away).
    Nights {
        key: RoomKey,
        stay: Stay,
        booked: i32,
        waiting: i32,
    },
    /// A room type added or its inventory changed: to be read again.
    RoomType(RoomKey),
    /// Nothing carried (a hotel registered, a check-in, a check-out).
    Nothing,
}

/// Asks, in `script`, for the events after position `after`, at most
/// `limit` of them (when more came, [`changes`] finds fewer than the head
/// says). Returns the statement's index.
pub fn ask(script: &mut Script, after: i64, limit: usize) -> usize {
    let index = script.statements();
    script
        .sql("SELECT position, payload FROM events WHERE position > ")
        .value(after)
        .sql(" ORDER BY position LIMIT ")
        .value(i64::try_from(limit).unwrap_or(i64::MAX))
        .end();
    index
}

/// The changes of `rows` (the answer to [`ask`]), when they are exactly
/// the events after `after` up to `head`, in order; `None` when they are
/// not (more came than were asked for, a position is missing) or one of
/// them cannot be read: the carried rows must then be forgotten.
pub fn changes(rows: &[MySqlRow], after: i64, head: i64) -> Option<Vec<Change>> {
    if i64::try_from(rows.len()).ok()? != head - after {
        return None;
    }
    let mut changes = Vec::with_capacity(rows.len());
    for (row, expected) in rows.iter().zip(after + 1..) {
        let position: i64 = row.try_get(0).ok()?;
        let payload: &[u8] = row.try_get(1).ok()?;
        if position != expected {
            return None;
        }
        changes.push(change(&pb::Event::decode(payload).ok()?)?);
    }
    Some(changes)
}

/// What `event` did to the rows a writer carries; `None` for an event this
/// version cannot read (the carried rows are then forgotten).
pub fn change(event: &pb::Event) -> Option<Change> {
    Some(match night_effect(event).ok()? {
        NightEffect::Stay(counts) => Change::Nights {
            key: (counts.hotel_id.to_owned(), counts.room_type_code.to_owned()),
            stay: Stay {
                check_in: dates::parse(counts.check_in)?,
                check_out: dates::parse(counts.check_out)?,
            },
            booked: counts.booked,
            waiting: counts.waiting,
        },
        NightEffect::RoomType {
            hotel_id,
            room_type_code,
        } => Change::RoomType((hotel_id.to_owned(), room_type_code.to_owned())),
        NightEffect::Unchanged => Change::Nothing,
    })
}
