//! The business rules of DESIGN.md, each a plain function.

use time::{Date, Duration};

use super::{ReservationStatus, Stay};

/// Longest stay, in nights.
pub const MAX_NIGHTS: i64 = 30;
/// How far ahead a stay may start, in days.
pub const MAX_DAYS_AHEAD: i64 = 730;
/// Most rooms of one room type.
pub const MAX_INVENTORY: i32 = 10_000;
/// Most guests in one room.
pub const MAX_GUESTS: i32 = 20;
/// Highest waitlist or queue priority.
pub const MAX_PRIORITY: i32 = 100;

/// The problems with a requested stay, as (field, reason); empty when it is
/// bookable on `today`.
pub fn stay_violations(stay: &Stay, today: Date) -> Vec<(&'static str, String)> {
    let mut problems = stay_length_violations(stay);
    problems.extend(stay_date_violations(stay, today));
    problems
}

/// The problems with a stay's length, whatever the date.
pub fn stay_length_violations(stay: &Stay) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let nights = stay.night_count();
    if nights < 1 {
        problems.push(("check_out", "must be after check_in".to_owned()));
    } else if nights > MAX_NIGHTS {
        problems.push((
            "check_out",
            format!("a stay is 1 to {MAX_NIGHTS} nights, this one is {nights}"),
        ));
    }
    problems
}

/// The problems with a stay's dates as seen on `today`: a queued booking is
/// judged on the day it runs.
pub fn stay_date_violations(stay: &Stay, today: Date) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if stay.check_in < today {
        problems.push((
            "check_in",
            format!("must not be in the past (today is {today} UTC)"),
        ));
    } else if stay.check_in > today + Duration::days(MAX_DAYS_AHEAD) {
        problems.push((
            "check_in",
            "must be at most 2 years (730 days) ahead".to_owned(),
        ));
    }
    problems
}

/// Whether one more room fits on every night, given the rooms already booked
/// on each night of the stay.
pub fn room_free_every_night(booked_per_night: &[i32], inventory: i32) -> bool {
    booked_per_night.iter().all(|&booked| booked < inventory)
}

/// A reservation can be cancelled while it is confirmed or waitlisted.
pub fn check_cancel(status: ReservationStatus) -> Result<(), String> {
    match status {
        ReservationStatus::Confirmed | ReservationStatus::Waitlisted => Ok(()),
        other => Err(format!(
            "a {} reservation cannot be cancelled",
            other.as_str()
        )),
    }
}

/// Check-in: confirmed reservations only, from the check-in date until the
/// day before check-out.
pub fn check_check_in(status: ReservationStatus, stay: &Stay, today: Date) -> Result<(), String> {
    if status != ReservationStatus::Confirmed {
        return Err(format!(
            "only a CONFIRMED reservation can check in; this one is {}",
            status.as_str()
        ));
    }
    if today < stay.check_in {
        return Err(format!(
            "check-in opens on {} (today is {today} UTC)",
            stay.check_in
        ));
    }
    if today >= stay.check_out {
        return Err(format!("the stay ended on {}", stay.check_out));
    }
    Ok(())
}

/// Check-out: after check-in only.
pub fn check_check_out(status: ReservationStatus) -> Result<(), String> {
    if status != ReservationStatus::CheckedIn {
        return Err(format!(
            "only a CHECKED_IN reservation can check out; this one is {}",
            status.as_str()
        ));
    }
    Ok(())
}

/// Inventory may never drop below what any night has booked.
pub fn check_inventory_change(
    new_inventory: i32,
    most_booked_any_night: i32,
) -> Result<(), String> {
    if new_inventory < most_booked_any_night {
        return Err(format!(
            "cannot lower inventory to {new_inventory}: a night already has {most_booked_any_night} rooms booked"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotel_common::dates::parse;

    fn stay(from: &str, to: &str) -> Stay {
        Stay {
            check_in: parse(from).expect("test date"),
            check_out: parse(to).expect("test date"),
        }
    }

    fn today() -> Date {
        parse("2027-01-10").expect("test date")
    }

    #[test]
    fn accepts_a_stay_of_one_to_thirty_nights() {
        assert!(stay_violations(&stay("2027-01-10", "2027-01-11"), today()).is_empty());
        assert!(stay_violations(&stay("2027-01-10", "2027-02-09"), today()).is_empty());
    }

    #[test]
    fn refuses_bad_stays_naming_the_field() {
        let cases = [
            (stay("2027-01-12", "2027-01-12"), "check_out"),
            (stay("2027-01-12", "2027-01-11"), "check_out"),
            (stay("2027-01-10", "2027-02-10"), "check_out"),
            (stay("2027-01-09", "2027-01-11"), "check_in"),
            (stay("2029-01-10", "2029-01-11"), "check_in"),
        ];
        for (stay, field) in cases {
            let problems = stay_violations(&stay, today());
            assert_eq!(problems.len(), 1, "{stay:?}: {problems:?}");
            assert_eq!(problems[0].0, field, "{stay:?}");
        }
    }

    #[test]
    fn a_room_is_free_only_if_every_night_has_one() {
        assert!(room_free_every_night(&[0, 4, 2], 5));
        assert!(!room_free_every_night(&[0, 5, 2], 5));
        assert!(!room_free_every_night(&[0], 0));
    }

    #[test]
    fn status_rules() {
        use ReservationStatus::*;
        assert!(check_cancel(Confirmed).is_ok());
        assert!(check_cancel(Waitlisted).is_ok());
        assert!(check_cancel(Cancelled).is_err());
        assert!(check_cancel(CheckedIn).is_err());

        let s = stay("2027-01-10", "2027-01-12");
        assert!(check_check_in(Confirmed, &s, today()).is_ok());
        assert!(check_check_in(Waitlisted, &s, today()).is_err());
        assert!(check_check_in(Cancelled, &s, today()).is_err());
        let later = stay("2027-01-11", "2027-01-12");
        assert!(check_check_in(Confirmed, &later, today()).is_err());
        let past = stay("2027-01-08", "2027-01-10");
        assert!(check_check_in(Confirmed, &past, today()).is_err());

        assert!(check_check_out(CheckedIn).is_ok());
        assert!(check_check_out(Confirmed).is_err());
    }

    #[test]
    fn inventory_never_below_booked() {
        assert!(check_inventory_change(3, 3).is_ok());
        assert!(check_inventory_change(2, 3).is_err());
    }
}
