//! Waiting-list promotion: when rooms free up, waitlisted reservations are
//! confirmed, higher priority first, then oldest first, whenever every one
//! of their nights now has a room.

use std::collections::BTreeMap;

use time::Date;

use super::Stay;

/// A waitlisted reservation competing for rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reservation_id: String,
    pub priority: i32,
    /// Position of its booking event: smaller is older.
    pub booked_position: i64,
    pub stay: Stay,
}

/// Rooms of one room type: the inventory and what each night has booked.
#[derive(Debug, Clone, Default)]
pub struct NightLedger {
    pub inventory: i32,
    /// Booked rooms per night; a missing night has none booked.
    pub booked: BTreeMap<Date, i32>,
}

impl NightLedger {
    fn fits(&self, stay: &Stay) -> bool {
        stay.nights()
            .all(|night| self.booked.get(&night).copied().unwrap_or(0) < self.inventory)
    }

    fn take(&mut self, stay: &Stay) {
        for night in stay.nights() {
            *self.booked.entry(night).or_insert(0) += 1;
        }
    }
}

/// Decides which waitlisted reservations to confirm, in order, and books
/// their nights in `ledger`. A reservation that does not fit is skipped, so
/// a shorter stay behind it can still be promoted.
pub fn promote_waitlist(ledger: &mut NightLedger, mut waiting: Vec<Waiting>) -> Vec<Waiting> {
    waiting.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.booked_position.cmp(&b.booked_position))
    });
    let mut promoted = Vec::new();
    for candidate in waiting {
        if ledger.fits(&candidate.stay) {
            ledger.take(&candidate.stay);
            promoted.push(candidate);
        }
    }
    promoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotel_common::dates::parse;

    fn waiting(id: &str, priority: i32, booked_position: i64, from: &str, to: &str) -> Waiting {
        Waiting {
            reservation_id: id.to_owned(),
            priority,
            booked_position,
            stay: Stay {
                check_in: parse(from).expect("test date"),
                check_out: parse(to).expect("test date"),
            },
        }
    }

    fn ids(promoted: &[Waiting]) -> Vec<&str> {
        promoted.iter().map(|w| w.reservation_id.as_str()).collect()
    }

    fn ledger(inventory: i32, booked: &[(&str, i32)]) -> NightLedger {
        NightLedger {
            inventory,
            booked: booked
                .iter()
                .map(|(night, n)| (parse(night).expect("test date"), *n))
                .collect(),
        }
    }

    #[test]
    fn promotes_oldest_first_when_priorities_are_equal() {
        let mut rooms = ledger(1, &[]);
        let promoted = promote_waitlist(
            &mut rooms,
            vec![
                waiting("newer", 0, 9, "2027-01-01", "2027-01-03"),
                waiting("older", 0, 4, "2027-01-01", "2027-01-03"),
            ],
        );
        assert_eq!(ids(&promoted), ["older"]);
    }

    #[test]
    fn higher_priority_goes_first() {
        let mut rooms = ledger(1, &[]);
        let promoted = promote_waitlist(
            &mut rooms,
            vec![
                waiting("old-low", 0, 1, "2027-01-01", "2027-01-03"),
                waiting("new-high", 5, 8, "2027-01-01", "2027-01-03"),
            ],
        );
        assert_eq!(ids(&promoted), ["new-high"]);
    }

    #[test]
    fn skips_what_does_not_fit_and_takes_what_does() {
        // Night 2 is full, so the long stay waits; the short one fits.
        let mut rooms = ledger(2, &[("2027-01-02", 2)]);
        let promoted = promote_waitlist(
            &mut rooms,
            vec![
                waiting("long", 0, 1, "2027-01-01", "2027-01-04"),
                waiting("short", 0, 2, "2027-01-01", "2027-01-02"),
            ],
        );
        assert_eq!(ids(&promoted), ["short"]);
        assert_eq!(rooms.booked[&parse("2027-01-01").expect("date")], 1);
    }

    #[test]
    fn never_books_past_inventory() {
        let mut rooms = ledger(2, &[]);
        let candidates = (0..5)
            .map(|i| waiting(&format!("r{i}"), 0, i, "2027-01-01", "2027-01-05"))
            .collect();
        let promoted = promote_waitlist(&mut rooms, candidates);
        assert_eq!(ids(&promoted), ["r0", "r1"]);
        assert!(rooms.booked.values().all(|&b| b <= 2));
    }
}
