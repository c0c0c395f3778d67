//! Shaping rows into replies: plain functions over plain data.

use hotel_common::{dates, pb};

use super::request::NightRange;
use crate::read_model::reads::{NightCounts, RoomType};

/// Availability per room type and night of `range`; nights without stored
/// counts have nothing booked and nobody waiting.
pub fn availability(
    room_types: Vec<RoomType>,
    counts: &[NightCounts],
    range: NightRange,
) -> Vec<pb::RoomTypeAvailability> {
    room_types
        .into_iter()
        .map(|room_type| {
            let stored: Vec<&NightCounts> = counts
                .iter()
                .filter(|c| c.room_type_code == room_type.code)
                .collect();
            let mut stored = stored.into_iter().peekable();
            let nights = dates::nights(range.from, range.to)
                .map(|night| {
                    let date = dates::format(night);
                    let (booked, waiting) = match stored.next_if(|c| c.night == date) {
                        Some(c) => (c.booked, c.waiting),
                        None => (0, 0),
                    };
                    pb::NightAvailability {
                        inventory: room_type.inventory,
                        booked,
                        free: (room_type.inventory - booked).max(0),
                        waiting,
                        date,
                    }
                })
                .collect();
            pb::RoomTypeAvailability {
                room_type_code: room_type.code,
                name: room_type.name,
                max_guests: room_type.max_guests,
                nightly_rate: Some(room_type.rate),
                nights,
            }
        })
        .collect()
}

/// Occupancy per night of `range`: `booked` holds the stored nights only.
pub fn occupancy(
    rooms: i64,
    booked: &[(String, i64)],
    range: NightRange,
) -> Vec<pb::OccupancyNight> {
    let mut booked = booked.iter().peekable();
    dates::nights(range.from, range.to)
        .map(|night| {
            let date = dates::format(night);
            let rooms_booked = booked.next_if(|(d, _)| *d == date).map_or(0, |(_, b)| *b);
            pb::OccupancyNight {
                rooms: clamp_i32(rooms),
                booked: clamp_i32(rooms_booked),
                occupancy: if rooms > 0 {
                    rooms_booked as f64 / rooms as f64
                } else {
                    0.0
                },
                date,
            }
        })
        .collect()
}

fn clamp_i32(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(if value < 0 { i32::MIN } else { i32::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: &str, to: &str) -> NightRange {
        NightRange {
            from: dates::parse(from).expect("date"),
            to: dates::parse(to).expect("date"),
        }
    }

    #[test]
    fn fills_missing_nights_with_zeroes() {
        let room_type = RoomType {
            code: "DBL".into(),
            name: "Double".into(),
            max_guests: 2,
            inventory: 3,
            rate: pb::Money {
                amount_minor: 100,
                currency: "EUR".into(),
            },
        };
        let counts = [NightCounts {
            room_type_code: "DBL".into(),
            night: "2030-01-02".into(),
            booked: 3,
            waiting: 2,
        }];
        let result = availability(vec![room_type], &counts, range("2030-01-01", "2030-01-04"));
        let nights: Vec<(String, i32, i32, i32)> = result[0]
            .nights
            .iter()
            .map(|n| (n.date.clone(), n.booked, n.free, n.waiting))
            .collect();
        assert_eq!(
            nights,
            [
                ("2030-01-01".into(), 0, 3, 0),
                ("2030-01-02".into(), 3, 0, 2),
                ("2030-01-03".into(), 0, 3, 0),
            ]
        );
    }

    #[test]
    fn occupancy_is_zero_without_rooms() {
        let nights = occupancy(0, &[], range("2030-01-01", "2030-01-02"));
        assert_eq!(nights[0].occupancy, 0.0);
        let nights = occupancy(
            4,
            &[("2030-01-01".into(), 1)],
            range("2030-01-01", "2030-01-03"),
        );
        assert_eq!(nights[0].occupancy, 0.25);
        assert_eq!(nights[1].booked, 0);
    }
}
