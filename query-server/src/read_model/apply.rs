//! How each event changes the read model. These rules mirror the command
//! server's write model exactly: after applying positions `1..=n`, every
//! reservation and every night count here equals MySQL's at position `n`.

use std::collections::HashMap;

use hotel_common::{
    dates,
    nights::{NightEffect, night_effect},
    pb::{self, event::Kind},
};
use rusqlite::{Transaction, params};
use time::Date;

/// Why a batch was refused or failed; a refused batch changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The batch does not continue the checkpoint (a gap or a duplicate).
    #[error("expected position {expected}, got {got}")]
    OutOfOrder { expected: i64, got: i64 },
    /// The event cannot be applied as written (a bug on the sending side).
    #[error("event at position {position} is malformed: {reason}")]
    Malformed { position: i64, reason: String },
    /// The event is of a kind this binary does not know (a newer command
    /// server wrote it): applying anything past it would lose it.
    #[error("event type {event_type:?} is unknown to this query server: it needs a newer binary")]
    UnknownKind { event_type: String },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The batch stops before an event that cannot be applied; the events
    /// before it may be kept (the read model then stops at `checkpoint`).
    #[error("event {event_id} at position {position} cannot be applied: {message}")]
    Unapplicable {
        position: i64,
        event_id: String,
        /// Whether it failed for being of an unknown kind (no retry helps).
        unknown_kind: bool,
        message: String,
        /// The checkpoint right before it.
        checkpoint: i64,
    },
}

/// A reservation status as the read model writes it.
pub fn status_name(status: pb::ReservationStatus) -> &'static str {
    use pb::ReservationStatus as S;
    match status {
        S::Confirmed => "CONFIRMED",
        S::Waitlisted => "WAITLISTED",
        S::Cancelled => "CANCELLED",
        S::CheckedIn => "CHECKED_IN",
        S::CheckedOut => "CHECKED_OUT",
        S::Unspecified => "UNSPECIFIED",
    }
}

/// Milliseconds since the epoch of a protobuf timestamp (0 when absent).
pub fn millis(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    timestamp.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000)
    })
}

/// Applies `events` in order on top of the checkpoint stored in `tx`, and
/// stores the new checkpoint. The first event must be `checkpoint + 1` and
/// each next one exactly one more; otherwise nothing is applied (the caller
/// drops the transaction). Returns the new checkpoint.
pub fn apply_batch(
    tx: &Transaction<'_>,
    events: &[pb::EventEnvelope],
    applied_at_ms: i64,
) -> Result<i64, ApplyError> {
    let mut checkpoint: i64 = tx
        .prepare_cached("SELECT position FROM checkpoint WHERE id = 1")?
        .query_row([], |row| row.get(0))?;
    let mut nights = NightDeltas::for_events(events.len());
    for envelope in events {
        if envelope.position != checkpoint + 1 {
            return Err(ApplyError::OutOfOrder {
                expected: checkpoint + 1,
                got: envelope.position,
            });
        }
        apply_event(tx, envelope, &mut nights).map_err(|error| ApplyError::Unapplicable {
            position: envelope.position,
            event_id: envelope.event_id.clone(),
            unknown_kind: matches!(error, ApplyError::UnknownKind { .. }),
            message: error.to_string(),
            checkpoint,
        })?;
        checkpoint = envelope.position;
    }
    nights.write(tx)?;
    let Some(last) = events.last() else {
        return Ok(checkpoint);
    };
    tx.prepare_cached(
        "UPDATE checkpoint SET position = ?1, applied_at_ms = ?2, event_id = ?3 WHERE id = 1",
    )?
    .execute(params![checkpoint, applied_at_ms, last.event_id])?;
    Ok(checkpoint)
}

/// What a batch adds to each night's counts, written once per night at the
/// end of the batch, in key order. The counts only ever change by these
/// sums, and nothing reads them while a batch applies, so the end state is
/// the one event-by-event upserts gave, for fewer statements, each next to
/// the last one in the B-tree (ADR 0014).
#[derive(Debug)]
pub struct NightDeltas<'e> {
    /// The id of each room type seen in the batch (`night_rooms.id`).
    rooms: HashMap<(&'e str, &'e str), i64>,
    /// (room id, night) and (booked, waiting) to add, in event order;
    /// sorted and summed per night when written.
    deltas: Vec<(NightKey, (i64, i64))>,
}

/// A row of `nights`: the room type's id and the night's Julian day.
type NightKey = (i64, i32);

impl<'e> NightDeltas<'e> {
    /// Room for the deltas of `events` bookings of a few nights each: a
    /// replay's batch grows this to ~1 MiB, and growing it by doubling
    /// (each time in fresh pages the kernel zeroes) was 3 % of a replaying
    /// query server's CPU.
    fn for_events(events: usize) -> Self {
        Self {
            rooms: HashMap::new(),
            deltas: Vec::with_capacity(events.saturating_mul(2)),
        }
    }

    /// Adds `booked` and `waiting` (either may be negative) to every night of the stay.
    fn add(
        &mut self,
        tx: &Transaction<'_>,
        (hotel_id, room_type_code): (&'e str, &'e str),
        stay: Stay,
        (booked, waiting): (i64, i64),
    ) -> Result<(), ApplyError> {
        let room_id = match self.rooms.get(&(hotel_id, room_type_code)) {
            Some(id) => *id,
            None => {
                let id = night_room_id(tx, hotel_id, room_type_code)?;
                self.rooms.insert((hotel_id, room_type_code), id);
                id
            }
        };
        for night in stay.nights() {
            self.deltas
                .push(((room_id, night.to_julian_day()), (booked, waiting)));
        }
        Ok(())
    }

    /// Upserts every night touched (a night whose sums are 0 still gets its
    /// row, as the event-by-event upserts left one).
    fn write(mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        if self.deltas.is_empty() {
            return Ok(());
        }
        // Unstable (in place, no scratch buffer): integer sums do not
        // depend on the order.
        self.deltas.sort_unstable_by_key(|(key, _)| *key);
        let mut upsert = tx.prepare_cached(
            "INSERT INTO nights (room_id, night, booked, waiting)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (room_id, night) DO UPDATE
             SET booked = booked + excluded.booked, waiting = waiting + excluded.waiting",
        )?;
        let mut deltas = self.deltas.into_iter().peekable();
        while let Some((key, (mut booked, mut waiting))) = deltas.next() {
            while let Some((_, (more_booked, more_waiting))) =
                deltas.next_if(|(next, _)| *next == key)
            {
                booked += more_booked;
                waiting += more_waiting;
            }
            let (room_id, night) = key;
            upsert.execute(params![room_id, night, booked, waiting])?;
        }
        Ok(())
    }
}

/// The id a room type's rows of `nights` hang off, given on first use.
fn night_room_id(
    tx: &Transaction<'_>,
    hotel_id: &str,
    room_type_code: &str,
) -> Result<i64, ApplyError> {
    let known = tx
        .prepare_cached("SELECT id FROM night_rooms WHERE hotel_id = ?1 AND room_type_code = ?2")?
        .query_row(params![hotel_id, room_type_code], |row| row.get(0));
    match known {
        Err(rusqlite::Error::QueryReturnedNoRows) => {
            tx.prepare_cached(
                "INSERT INTO night_rooms (hotel_id, room_type_code) VALUES (?1, ?2)",
            )?
            .execute(params![hotel_id, room_type_code])?;
            Ok(tx.last_insert_rowid())
        }
        known => Ok(known?),
    }
}

/// Applies one event, adding its night counts to `nights`. Does not touch
/// the checkpoint.
pub fn apply_event<'e>(
    tx: &Transaction<'_>,
    envelope: &'e pb::EventEnvelope,
    nights: &mut NightDeltas<'e>,
) -> Result<(), ApplyError> {
    let position = envelope.position;
    let Some((event, kind)) = envelope
        .event
        .as_ref()
        .and_then(|e| Some((e, e.kind.as_ref()?)))
    else {
        // A kind this binary does not know (a newer command server): never
        // skipped, the read model stops before it (ADR 0009).
        return Err(ApplyError::UnknownKind {
            event_type: envelope.event_type.clone(),
        });
    };
    match kind {
        Kind::HotelRegistered(e) => {
            tx.prepare_cached(
                "INSERT INTO hotels (hotel_id, name, city, city_key, version)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (hotel_id) DO UPDATE
                 SET name = excluded.name, city = excluded.city, city_key = excluded.city_key,
                     version = excluded.version",
            )?
            .execute(params![
                e.hotel_id,
                e.name,
                e.city,
                city_key(&e.city),
                envelope.aggregate_version
            ])?;
            refresh_search_entries(tx, &e.hotel_id)?;
        }
        Kind::RoomTypeAdded(e) => {
            let rate = e.nightly_rate.clone().unwrap_or_default();
            tx.prepare_cached(
                "INSERT INTO room_types
                     (hotel_id, code, name, max_guests, inventory, rate_minor, currency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (hotel_id, code) DO UPDATE
                 SET name = excluded.name, max_guests = excluded.max_guests,
                     inventory = excluded.inventory, rate_minor = excluded.rate_minor,
                     currency = excluded.currency",
            )?
            .execute(params![
                e.hotel_id,
                e.code,
                e.name,
                e.max_guests,
                e.inventory,
                rate.amount_minor,
                rate.currency
            ])?;
            set_hotel_version(tx, &e.hotel_id, envelope.aggregate_version)?;
            refresh_search_entries(tx, &e.hotel_id)?;
        }
        Kind::RoomInventoryChanged(e) => {
            tx.prepare_cached(
                "UPDATE room_types SET inventory = ?3 WHERE hotel_id = ?1 AND code = ?2",
            )?
            .execute(params![e.hotel_id, e.room_type_code, e.inventory])?;
            set_hotel_version(tx, &e.hotel_id, envelope.aggregate_version)?;
            refresh_search_entries(tx, &e.hotel_id)?;
        }
        Kind::ReservationConfirmed(e) => book(
            tx,
            envelope,
            e.booking.as_ref(),
            pb::ReservationStatus::Confirmed,
        )?,
        Kind::ReservationWaitlisted(e) => book(
            tx,
            envelope,
            e.booking.as_ref(),
            pb::ReservationStatus::Waitlisted,
        )?,
        Kind::ReservationPromoted(e) => {
            set_status(
                tx,
                &e.reservation_id,
                pb::ReservationStatus::Confirmed,
                envelope,
            )?;
        }
        Kind::ReservationCancelled(e) => {
            set_status(
                tx,
                &e.reservation_id,
                pb::ReservationStatus::Cancelled,
                envelope,
            )?;
        }
        Kind::GuestCheckedIn(e) => {
            set_status(
                tx,
                &e.reservation_id,
                pb::ReservationStatus::CheckedIn,
                envelope,
            )?;
        }
        Kind::GuestCheckedOut(e) => {
            set_status(
                tx,
                &e.reservation_id,
                pb::ReservationStatus::CheckedOut,
                envelope,
            )?;
        }
    }
    // The night counts, as everything that follows the log counts them.
    match night_effect(event) {
        Ok(NightEffect::Stay(counts)) => {
            let stay = Stay::parse(position, counts.check_in, counts.check_out)?;
            nights.add(
                tx,
                (counts.hotel_id, counts.room_type_code),
                stay,
                (i64::from(counts.booked), i64::from(counts.waiting)),
            )
        }
        Ok(NightEffect::RoomType { .. } | NightEffect::Unchanged) => Ok(()),
        Err(reason) => Err(ApplyError::Malformed {
            position,
            reason: reason.into(),
        }),
    }
}

/// The key `SearchAvailability` matches a city by.
pub fn city_key(city: &str) -> String {
    city.trim().to_lowercase()
}

/// Rewrites a hotel's rows of `search_room_types` from `hotels` and
/// `room_types`. Hotels and room types change rarely, so rewriting them all
/// is simpler than keeping each column in step.
fn refresh_search_entries(tx: &Transaction<'_>, hotel_id: &str) -> Result<(), ApplyError> {
    tx.prepare_cached("DELETE FROM search_room_types WHERE hotel_id = ?1")?
        .execute([hotel_id])?;
    tx.prepare_cached(
        "INSERT INTO search_room_types
             (city_key, rate_minor, hotel_id, code, hotel_name, city, room_type_name,
              max_guests, inventory, currency)
         SELECT h.city_key, rt.rate_minor, h.hotel_id, rt.code, h.name, h.city, rt.name,
                rt.max_guests, rt.inventory, rt.currency
         FROM hotels h
         JOIN room_types rt ON rt.hotel_id = h.hotel_id
         WHERE h.hotel_id = ?1",
    )?
    .execute([hotel_id])?;
    Ok(())
}

/// A new reservation of `status` (confirmed or waitlisted): its row (its
/// nights are counted with every event's, by [`apply_event`]).
fn book(
    tx: &Transaction<'_>,
    envelope: &pb::EventEnvelope,
    booking: Option<&pb::Booking>,
    status: pb::ReservationStatus,
) -> Result<(), ApplyError> {
    let position = envelope.position;
    let booking = booking.ok_or_else(|| ApplyError::Malformed {
        position,
        reason: "the booking is missing".into(),
    })?;
    let stay = Stay::parse(position, &booking.check_in, &booking.check_out)?;
    insert_reservation(tx, envelope, booking, stay, status)
}

/// The nights `[check_in, check_out)` of a stay, checked.
#[derive(Clone, Copy)]
struct Stay {
    check_in: Date,
    check_out: Date,
}

impl Stay {
    fn parse(position: i64, check_in: &str, check_out: &str) -> Result<Self, ApplyError> {
        match (dates::parse(check_in), dates::parse(check_out)) {
            (Some(check_in), Some(check_out)) if check_in < check_out => Ok(Self {
                check_in,
                check_out,
            }),
            _ => Err(ApplyError::Malformed {
                position,
                reason: format!("bad stay {check_in:?} to {check_out:?}"),
            }),
        }
    }

    fn nights(self) -> impl Iterator<Item = Date> {
        dates::nights(self.check_in, self.check_out)
    }

    fn len(self) -> i64 {
        (self.check_out - self.check_in).whole_days()
    }
}

fn insert_reservation(
    tx: &Transaction<'_>,
    envelope: &pb::EventEnvelope,
    booking: &pb::Booking,
    stay: Stay,
    status: pb::ReservationStatus,
) -> Result<(), ApplyError> {
    let (no_guest, no_total) = (pb::Guest::default(), pb::Money::default());
    let guest = booking.guest.as_ref().unwrap_or(&no_guest);
    let total = booking.total_price.as_ref().unwrap_or(&no_total);
    let updated_at = millis(envelope.occurred_at.as_ref());
    tx.prepare_cached(
        "INSERT INTO reservations
             (reservation_id, hotel_id, room_type_code, check_in, check_out, nights,
              guest_id, guest_name, guest_email, guests, status, total_minor, currency,
              priority, booked_at_ms, updated_at_ms, booked_position, last_position, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17,
                 ?18)",
    )?
    .execute(params![
        booking.reservation_id,
        booking.hotel_id,
        booking.room_type_code,
        booking.check_in,
        booking.check_out,
        stay.len(),
        guest.guest_id,
        guest.name,
        guest.email,
        booking.guests,
        status_name(status),
        total.amount_minor,
        total.currency,
        booking.priority,
        millis(booking.booked_at.as_ref()),
        updated_at,
        envelope.position,
        envelope.aggregate_version,
    ])?;
    // No `reservation_changes` row: a watch starts from a snapshot that
    // already holds the booking, so only later changes are ever replayed.
    Ok(())
}

/// Moves a reservation to `status` as of `envelope` (its position, commit
/// time and the reservation's version), and records the change.
fn set_status(
    tx: &Transaction<'_>,
    reservation_id: &str,
    status: pb::ReservationStatus,
    envelope: &pb::EventEnvelope,
) -> Result<(), ApplyError> {
    let position = envelope.position;
    let updated_at_ms = millis(envelope.occurred_at.as_ref());
    let version = envelope.aggregate_version;
    let changed = tx
        .prepare_cached(
            "UPDATE reservations
             SET status = ?2, updated_at_ms = ?3, last_position = ?4, version = ?5
             WHERE reservation_id = ?1",
        )?
        .execute(params![
            reservation_id,
            status_name(status),
            updated_at_ms,
            position,
            version
        ])?;
    if changed == 0 {
        return Err(ApplyError::Malformed {
            position,
            reason: format!("reservation {reservation_id} is unknown"),
        });
    }
    tx.prepare_cached(
        "INSERT INTO reservation_changes
             (reservation_id, position, status, updated_at_ms, version)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        reservation_id,
        position,
        status_name(status),
        updated_at_ms,
        version
    ])?;
    Ok(())
}

/// A hotel's version, from one of its events.
fn set_hotel_version(tx: &Transaction<'_>, hotel_id: &str, version: i64) -> Result<(), ApplyError> {
    tx.prepare_cached("UPDATE hotels SET version = ?2 WHERE hotel_id = ?1")?
        .execute(params![hotel_id, version])?;
    Ok(())
}
