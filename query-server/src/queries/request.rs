//! Request validation: every query request is turned into a checked value
//! here, or into one `INVALID_ARGUMENT` naming every bad field.

use hotel_common::{dates, pb, validate::Violations};
use time::Date;
use tonic::Status;

use super::paging;
use crate::read_model::{apply::status_name, reads::SearchKey};

/// Most nights a date range may span.
pub const MAX_RANGE_NIGHTS: i64 = 366;
/// Most guests a search asks a room for (room types hold up to 20).
const MAX_SEARCH_GUESTS: i32 = 20;

/// `[from, to)` nights, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NightRange {
    pub from: Date,
    pub to: Date,
}

impl NightRange {
    pub fn nights(self) -> i64 {
        (self.to - self.from).whole_days()
    }

    pub fn from_text(self) -> String {
        dates::format(self.from)
    }

    pub fn to_text(self) -> String {
        dates::format(self.to)
    }
}

fn night_range(
    v: &mut Violations,
    from_field: &str,
    from: &str,
    to_field: &str,
    to: &str,
) -> Option<NightRange> {
    let from = v.date(from_field, from);
    let to = v.date(to_field, to);
    let (from, to) = (from?, to?);
    let nights = (to - from).whole_days();
    if nights < 1 {
        v.add(to_field, format!("must be after {from_field}"));
        return None;
    }
    if nights > MAX_RANGE_NIGHTS {
        v.add(
            to_field,
            format!("the range may span at most {MAX_RANGE_NIGHTS} nights, got {nights}"),
        );
        return None;
    }
    Some(NightRange { from, to })
}

fn page_size(v: &mut Violations, value: i32) -> i64 {
    let size = if value == 0 {
        paging::DEFAULT_PAGE_SIZE
    } else {
        v.in_range("page_size", value, 1, paging::MAX_PAGE_SIZE)
            .unwrap_or(paging::DEFAULT_PAGE_SIZE)
    };
    i64::from(size)
}

fn min_position(v: &mut Violations, value: i64) -> i64 {
    v.position("min_position", value).unwrap_or(0)
}

/// The reservation ids the command server assigns: UUIDs, canonical lower case.
fn reservation_id(v: &mut Violations, value: &str) -> Option<String> {
    v.uuid("reservation_id", value)
        .map(|id| id.hyphenated().to_string())
}

pub struct GetReservation {
    pub reservation_id: String,
    pub min_position: i64,
}

pub fn get_reservation(request: &pb::GetReservationRequest) -> Result<GetReservation, Status> {
    let mut v = Violations::new();
    let reservation_id = reservation_id(&mut v, &request.reservation_id);
    let min_position = min_position(&mut v, request.min_position);
    v.finish()?;
    Ok(GetReservation {
        reservation_id: reservation_id.expect("validated"),
        min_position,
    })
}

pub fn watch_reservation(request: &pb::WatchReservationRequest) -> Result<GetReservation, Status> {
    get_reservation(&pb::GetReservationRequest {
        reservation_id: request.reservation_id.clone(),
        min_position: request.min_position,
    })
}

/// Whose reservations a listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Guest(String),
    Hotel(String),
}

pub struct ListReservations {
    pub owner: Owner,
    pub statuses: [Option<&'static str>; 5],
    pub page_size: i64,
    /// Continue before this booking position (`i64::MAX` on the first page).
    pub before_position: i64,
    pub min_position: i64,
}

pub fn list_reservations(
    request: &pb::ListReservationsRequest,
) -> Result<ListReservations, Status> {
    let mut v = Violations::new();
    let owner = match (request.guest_id.is_empty(), request.hotel_id.is_empty()) {
        (false, true) => v
            .identifier("guest_id", &request.guest_id)
            .map(Owner::Guest),
        (true, false) => v
            .identifier("hotel_id", &request.hotel_id)
            .map(Owner::Hotel),
        (true, true) => {
            v.add(
                "guest_id",
                "exactly one of guest_id and hotel_id is required",
            );
            None
        }
        (false, false) => {
            v.add("hotel_id", "give guest_id or hotel_id, not both");
            None
        }
    };
    let mut statuses = [None; 5];
    if request.statuses.is_empty() {
        use pb::ReservationStatus as S;
        for (slot, status) in statuses.iter_mut().zip([
            S::Confirmed,
            S::Waitlisted,
            S::Cancelled,
            S::CheckedIn,
            S::CheckedOut,
        ]) {
            *slot = Some(status_name(status));
        }
    } else if v.item_count("statuses", request.statuses.len()) {
        for (index, value) in request.statuses.iter().enumerate() {
            match pb::ReservationStatus::try_from(*value) {
                Ok(status) if status != pb::ReservationStatus::Unspecified => {
                    let name = status_name(status);
                    // Five statuses exist, so a repeat is the only way to run out of slots.
                    if let Some(slot) = statuses
                        .iter_mut()
                        .find(|slot| slot.is_none() || **slot == Some(name))
                    {
                        *slot = Some(name);
                    }
                }
                _ => v.add(
                    format!("statuses[{index}]"),
                    format!("{value} is not a reservation status"),
                ),
            }
        }
    }
    let page_size = page_size(&mut v, request.page_size);
    let before_position = if request.page_token.is_empty() {
        i64::MAX
    } else {
        paging::parse_listing_token(&request.page_token).unwrap_or_else(|| {
            v.add("page_token", "is not a token from a previous reply");
            i64::MAX
        })
    };
    let min_position = min_position(&mut v, request.min_position);
    v.finish()?;
    Ok(ListReservations {
        owner: owner.expect("validated"),
        statuses,
        page_size,
        before_position,
        min_position,
    })
}

pub struct GetAvailability {
    pub hotel_id: String,
    pub room_type_code: Option<String>,
    pub range: NightRange,
    pub min_position: i64,
}

pub fn get_availability(request: &pb::GetAvailabilityRequest) -> Result<GetAvailability, Status> {
    let mut v = Violations::new();
    let hotel_id = v.identifier("hotel_id", &request.hotel_id);
    let room_type_code = if request.room_type_code.is_empty() {
        Some(None)
    } else {
        v.room_type_code("room_type_code", &request.room_type_code)
            .map(Some)
    };
    let range = night_range(
        &mut v,
        "from_date",
        &request.from_date,
        "to_date",
        &request.to_date,
    );
    let min_position = min_position(&mut v, request.min_position);
    v.finish()?;
    Ok(GetAvailability {
        hotel_id: hotel_id.expect("validated"),
        room_type_code: room_type_code.expect("validated"),
        range: range.expect("validated"),
        min_position,
    })
}

pub fn watch_availability(
    request: &pb::WatchAvailabilityRequest,
) -> Result<GetAvailability, Status> {
    get_availability(&pb::GetAvailabilityRequest {
        hotel_id: request.hotel_id.clone(),
        room_type_code: request.room_type_code.clone(),
        from_date: request.from_date.clone(),
        to_date: request.to_date.clone(),
        min_position: request.min_position,
    })
}

pub struct SearchAvailability {
    /// The city as the read model keys it (lower case).
    pub city_key: String,
    pub stay: NightRange,
    pub guests: i32,
    pub page_size: i64,
    pub after: Option<SearchKey>,
    pub min_position: i64,
}

pub fn search_availability(
    request: &pb::SearchAvailabilityRequest,
) -> Result<SearchAvailability, Status> {
    let mut v = Violations::new();
    let city = v.text("city", &request.city, 1, 100);
    let stay = night_range(
        &mut v,
        "check_in",
        &request.check_in,
        "check_out",
        &request.check_out,
    );
    let guests = v.in_range("guests", request.guests, 1, MAX_SEARCH_GUESTS);
    let page_size = page_size(&mut v, request.page_size);
    let after = if request.page_token.is_empty() {
        None
    } else {
        let after = paging::parse_search_token(&request.page_token);
        if after.is_none() {
            v.add("page_token", "is not a token from a previous reply");
        }
        after
    };
    let min_position = min_position(&mut v, request.min_position);
    v.finish()?;
    Ok(SearchAvailability {
        city_key: crate::read_model::apply::city_key(&city.expect("validated")),
        stay: stay.expect("validated"),
        guests: guests.expect("validated"),
        page_size,
        after,
        min_position,
    })
}

pub struct GetWaitlist {
    pub hotel_id: String,
    pub room_type_code: String,
    pub min_position: i64,
}

pub fn get_waitlist(request: &pb::GetWaitlistRequest) -> Result<GetWaitlist, Status> {
    let mut v = Violations::new();
    let hotel_id = v.identifier("hotel_id", &request.hotel_id);
    let room_type_code = v.room_type_code("room_type_code", &request.room_type_code);
    let min_position = min_position(&mut v, request.min_position);
    v.finish()?;
    Ok(GetWaitlist {
        hotel_id: hotel_id.expect("validated"),
        room_type_code: room_type_code.expect("validated"),
        min_position,
    })
}

pub struct GetOccupancy {
    pub hotel_id: String,
    pub range: NightRange,
    pub min_position: i64,
}

pub fn get_occupancy(request: &pb::GetOccupancyRequest) -> Result<GetOccupancy, Status> {
    let mut v = Violations::new();
    let hotel_id = v.identifier("hotel_id", &request.hotel_id);
    let range = night_range(
        &mut v,
        "from_date",
        &request.from_date,
        "to_date",
        &request.to_date,
    );
    let min_position = min_position(&mut v, request.min_position);
    v.finish()?;
    Ok(GetOccupancy {
        hotel_id: hotel_id.expect("validated"),
        range: range.expect("validated"),
        min_position,
    })
}
