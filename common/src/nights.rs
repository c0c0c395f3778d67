//! What an event does to the night counts: the rooms booked and the
//! reservations waiting, per room type and night.
//!
//! One definition for every place that follows the log: the query server's
//! read model and its in-memory availability, and the command server's
//! writer when it brings the counts it carries up to date with another
//! command server's commits. Each of them must add exactly what the command
//! server added when it wrote the event.

use crate::pb::{self, event::Kind};

/// What one event does to night counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NightEffect<'e> {
    /// Counts added over a stay.
    Stay(StayCounts<'e>),
    /// A room type added or its inventory changed: no count changes, but
    /// what the counts are measured against does.
    RoomType {
        hotel_id: &'e str,
        room_type_code: &'e str,
    },
    /// No night count changes: a hotel registered, a check-in, a check-out.
    Unchanged,
}

/// `booked` rooms and `waiting` reservations (negative: taken away) added
/// to every night `[check_in, check_out)` of a room type. The dates are the
/// event's text (`YYYY-MM-DD`), unparsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StayCounts<'e> {
    pub hotel_id: &'e str,
    pub room_type_code: &'e str,
    pub check_in: &'e str,
    pub check_out: &'e str,
    pub booked: i32,
    pub waiting: i32,
}

/// What `event` does to night counts, or why that cannot be told: a kind
/// this version does not know, a booking event without its booking, a
/// cancellation whose previous status held neither rooms nor a place on
/// the waiting list.
pub fn night_effect(event: &pb::Event) -> Result<NightEffect<'_>, &'static str> {
    match event.kind.as_ref().ok_or("the event's kind is unknown")? {
        Kind::HotelRegistered(_) | Kind::GuestCheckedIn(_) | Kind::GuestCheckedOut(_) => {
            Ok(NightEffect::Unchanged)
        }
        Kind::RoomTypeAdded(e) => Ok(NightEffect::RoomType {
            hotel_id: &e.hotel_id,
            room_type_code: &e.code,
        }),
        Kind::RoomInventoryChanged(e) => Ok(NightEffect::RoomType {
            hotel_id: &e.hotel_id,
            room_type_code: &e.room_type_code,
        }),
        Kind::ReservationConfirmed(e) => booking(e.booking.as_ref(), 1, 0),
        Kind::ReservationWaitlisted(e) => booking(e.booking.as_ref(), 0, 1),
        // A waiting reservation took a room.
        Kind::ReservationPromoted(e) => Ok(NightEffect::Stay(StayCounts {
            hotel_id: &e.hotel_id,
            room_type_code: &e.room_type_code,
            check_in: &e.check_in,
            check_out: &e.check_out,
            booked: 1,
            waiting: -1,
        })),
        Kind::ReservationCancelled(e) => {
            // What it held: the rooms of a confirmed (or checked-in) stay,
            // or a place on the waiting list.
            let (booked, waiting) = match e.previous_status() {
                pb::ReservationStatus::Confirmed | pb::ReservationStatus::CheckedIn => (-1, 0),
                pb::ReservationStatus::Waitlisted => (0, -1),
                _ => return Err("a cancellation's previous status held no room and no place"),
            };
            Ok(NightEffect::Stay(StayCounts {
                hotel_id: &e.hotel_id,
                room_type_code: &e.room_type_code,
                check_in: &e.check_in,
                check_out: &e.check_out,
                booked,
                waiting,
            }))
        }
    }
}

/// A new reservation's stay: `booked` rooms or `waiting` places added.
fn booking(
    booking: Option<&pb::Booking>,
    booked: i32,
    waiting: i32,
) -> Result<NightEffect<'_>, &'static str> {
    let b = booking.ok_or("the booking is missing")?;
    Ok(NightEffect::Stay(StayCounts {
        hotel_id: &b.hotel_id,
        room_type_code: &b.room_type_code,
        check_in: &b.check_in,
        check_out: &b.check_out,
        booked,
        waiting,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind) -> pb::Event {
        pb::Event { kind: Some(kind) }
    }

    fn booking_of(hotel_id: &str) -> pb::Booking {
        pb::Booking {
            hotel_id: hotel_id.into(),
            room_type_code: "DBL".into(),
            check_in: "2027-01-01".into(),
            check_out: "2027-01-03".into(),
            ..Default::default()
        }
    }

    fn stay_of(hotel_id: &str, booked: i32, waiting: i32) -> NightEffect<'_> {
        NightEffect::Stay(StayCounts {
            hotel_id,
            room_type_code: "DBL",
            check_in: "2027-01-01",
            check_out: "2027-01-03",
            booked,
            waiting,
        })
    }

    fn cancelled(previous: pb::ReservationStatus) -> pb::Event {
        event(Kind::ReservationCancelled(pb::ReservationCancelled {
            hotel_id: "h".into(),
            room_type_code: "DBL".into(),
            check_in: "2027-01-01".into(),
            check_out: "2027-01-03".into(),
            previous_status: previous as i32,
            ..Default::default()
        }))
    }

    #[test]
    fn bookings_promotions_and_cancellations_move_rooms_and_places() {
        let confirmed = event(Kind::ReservationConfirmed(pb::ReservationConfirmed {
            booking: Some(booking_of("h")),
        }));
        assert_eq!(night_effect(&confirmed), Ok(stay_of("h", 1, 0)));
        let waitlisted = event(Kind::ReservationWaitlisted(pb::ReservationWaitlisted {
            booking: Some(booking_of("h")),
        }));
        assert_eq!(night_effect(&waitlisted), Ok(stay_of("h", 0, 1)));
        let promoted = event(Kind::ReservationPromoted(pb::ReservationPromoted {
            hotel_id: "h".into(),
            room_type_code: "DBL".into(),
            check_in: "2027-01-01".into(),
            check_out: "2027-01-03".into(),
            ..Default::default()
        }));
        assert_eq!(night_effect(&promoted), Ok(stay_of("h", 1, -1)));
        use pb::ReservationStatus as S;
        for (previous, booked, waiting) in [
            (S::Confirmed, -1, 0),
            (S::CheckedIn, -1, 0),
            (S::Waitlisted, 0, -1),
        ] {
            assert_eq!(
                night_effect(&cancelled(previous)),
                Ok(stay_of("h", booked, waiting)),
                "cancelled from {previous:?}"
            );
        }
    }

    #[test]
    fn what_cannot_be_told_is_an_error_not_a_zero() {
        use pb::ReservationStatus as S;
        for previous in [S::Unspecified, S::Cancelled, S::CheckedOut] {
            assert!(night_effect(&cancelled(previous)).is_err(), "{previous:?}");
        }
        let no_booking = event(Kind::ReservationConfirmed(pb::ReservationConfirmed {
            booking: None,
        }));
        assert_eq!(night_effect(&no_booking), Err("the booking is missing"));
        assert!(night_effect(&pb::Event { kind: None }).is_err());
    }

    #[test]
    fn catalogue_and_stay_events_change_no_count() {
        let added = event(Kind::RoomTypeAdded(pb::RoomTypeAdded {
            hotel_id: "h".into(),
            code: "DBL".into(),
            ..Default::default()
        }));
        assert_eq!(
            night_effect(&added),
            Ok(NightEffect::RoomType {
                hotel_id: "h",
                room_type_code: "DBL"
            })
        );
        let changed = event(Kind::RoomInventoryChanged(pb::RoomInventoryChanged {
            hotel_id: "h".into(),
            room_type_code: "DBL".into(),
            ..Default::default()
        }));
        assert_eq!(
            night_effect(&changed),
            Ok(NightEffect::RoomType {
                hotel_id: "h",
                room_type_code: "DBL"
            })
        );
        for kind in [
            Kind::HotelRegistered(pb::HotelRegistered::default()),
            Kind::GuestCheckedIn(pb::GuestCheckedIn::default()),
            Kind::GuestCheckedOut(pb::GuestCheckedOut::default()),
        ] {
            assert_eq!(night_effect(&event(kind)), Ok(NightEffect::Unchanged));
        }
    }
}
