//! The booking domain as plain data and plain functions: no database, no
//! gRPC. The store loads state, asks these functions what to do, and writes
//! what they decide.

pub mod command;
pub mod rules;
pub mod waitlist;

use hotel_common::pb;
use time::Date;

/// The life cycle of a reservation, as stored in MySQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Confirmed,
    Waitlisted,
    Cancelled,
    CheckedIn,
    CheckedOut,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "CONFIRMED",
            Self::Waitlisted => "WAITLISTED",
            Self::Cancelled => "CANCELLED",
            Self::CheckedIn => "CHECKED_IN",
            Self::CheckedOut => "CHECKED_OUT",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "CONFIRMED" => Self::Confirmed,
            "WAITLISTED" => Self::Waitlisted,
            "CANCELLED" => Self::Cancelled,
            "CHECKED_IN" => Self::CheckedIn,
            "CHECKED_OUT" => Self::CheckedOut,
            _ => return None,
        })
    }

    pub fn to_pb(self) -> pb::ReservationStatus {
        match self {
            Self::Confirmed => pb::ReservationStatus::Confirmed,
            Self::Waitlisted => pb::ReservationStatus::Waitlisted,
            Self::Cancelled => pb::ReservationStatus::Cancelled,
            Self::CheckedIn => pb::ReservationStatus::CheckedIn,
            Self::CheckedOut => pb::ReservationStatus::CheckedOut,
        }
    }

    /// Whether the reservation holds a room on each of its nights.
    pub fn holds_rooms(self) -> bool {
        matches!(self, Self::Confirmed | Self::CheckedIn)
    }
}

/// The nights `[check_in, check_out)` of one reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stay {
    pub check_in: Date,
    pub check_out: Date,
}

impl Stay {
    pub fn nights(&self) -> impl Iterator<Item = Date> {
        hotel_common::dates::nights(self.check_in, self.check_out)
    }

    pub fn night_count(&self) -> i64 {
        (self.check_out - self.check_in).whole_days()
    }
}

/// Price of one night of a room type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub amount_minor: i64,
    pub currency: String,
}

impl Rate {
    pub fn total_for(&self, stay: &Stay) -> Rate {
        Rate {
            amount_minor: self.amount_minor.saturating_mul(stay.night_count()),
            currency: self.currency.clone(),
        }
    }

    pub fn to_pb(&self) -> pb::Money {
        pb::Money {
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
        }
    }
}
