//! The queries' SQL. Each function runs inside the read transaction that
//! [`super::ReadModel::read`] opens ([`Snapshot`]), so everything one request reads,
//! including [`checkpoint`], comes from one snapshot; except
//! [`reservation_at_checkpoint`], one statement that reads the checkpoint
//! itself ([`super::ReadModel::read_statement`]).

use std::sync::{Arc, LazyLock};

use hotel_common::{dates, pb, timestamp_from_millis, wire};
use rusqlite::{Connection, OptionalExtension, Row, params, types::Type};

use super::{Snapshot, apply::status_name};

/// A night as `nights` stores it: the Julian day number of its date.
/// Only a `YYYY-MM-DD` text that is the canonical form of its date has
/// one, so nights order as their texts do.
pub fn night_day(text: &str) -> Option<i32> {
    let date = dates::parse(text)?;
    (dates::format(date) == text).then(|| date.to_julian_day())
}

/// The `YYYY-MM-DD` of a stored night.
pub fn night_text(day: i32) -> String {
    time::Date::from_julian_day(day).map_or_else(|_| String::new(), dates::format)
}

/// [`night_day`] of a query's date, which the request checks made
/// canonical; anything else is refused rather than compared as text.
fn query_day(text: &str) -> rusqlite::Result<i32> {
    night_day(text).ok_or_else(|| {
        rusqlite::Error::ToSqlConversionFailure(format!("{text:?} is not a YYYY-MM-DD date").into())
    })
}

/// The last applied position, in this snapshot.
pub fn checkpoint(tx: &Snapshot<'_>) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT position FROM checkpoint WHERE id = 1")?
        .query_row([], |row| row.get(0))
}

/// Columns of `reservations` in the order [`reservation_from_row`] reads them.
const RESERVATION_COLUMNS: &str = "reservation_id, hotel_id, room_type_code, check_in, check_out, \
     nights, guest_id, guest_name, guest_email, guests, status, total_minor, currency, priority, \
     booked_at_ms, updated_at_ms, last_position, booked_position, version";
/// How many [`RESERVATION_COLUMNS`] there are.
const RESERVATION_COLUMN_COUNT: usize = 19;

fn reservation_from_row(row: &Row<'_>) -> rusqlite::Result<pb::Reservation> {
    let status = status_at(row, 10)?;
    let currency: String = row.get(12)?;
    Ok(pb::Reservation {
        reservation_id: row.get(0)?,
        hotel_id: row.get(1)?,
        room_type_code: row.get(2)?,
        check_in: row.get(3)?,
        check_out: row.get(4)?,
        nights: row.get(5)?,
        guest: Some(pb::Guest {
            guest_id: row.get(6)?,
            name: row.get(7)?,
            email: row.get(8)?,
        }),
        guests: row.get(9)?,
        status: status as i32,
        total_price: Some(pb::Money {
            amount_minor: row.get(11)?,
            currency,
        }),
        priority: row.get(13)?,
        booked_at: Some(timestamp_from_millis(row.get(14)?)),
        updated_at: Some(timestamp_from_millis(row.get(15)?)),
        last_position: row.get(16)?,
        version: row.get(18)?,
    })
}

/// Reads the status names written by [`super::apply::status_name`].
pub fn status_from_name(name: &str) -> pb::ReservationStatus {
    use pb::ReservationStatus as S;
    [
        S::Confirmed,
        S::Waitlisted,
        S::Cancelled,
        S::CheckedIn,
        S::CheckedOut,
    ]
    .into_iter()
    .find(|status| status_name(*status) == name)
    .unwrap_or(S::Unspecified)
}

/// The status in column `index` of `row`, read in place.
fn status_at(row: &Row<'_>, index: usize) -> rusqlite::Result<pb::ReservationStatus> {
    Ok(status_from_name(row.get_ref(index)?.as_str()?))
}

/// One reservation, in a read transaction.
pub fn reservation(
    tx: &Snapshot<'_>,
    reservation_id: &str,
) -> rusqlite::Result<Option<pb::Reservation>> {
    Ok(reservation_at_checkpoint(tx, reservation_id)?.0)
}

/// One reservation, and the checkpoint it is read at, in one statement:
/// a statement reads one snapshot of its own, so the hottest point read
/// needs no `BEGIN` and `COMMIT` around it. The checkpoint row is always
/// there; the reservation's columns are NULL when there is no such
/// reservation.
pub fn reservation_at_checkpoint(
    conn: &Connection,
    reservation_id: &str,
) -> rusqlite::Result<(Option<pb::Reservation>, i64)> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {RESERVATION_COLUMNS}, checkpoint.position FROM checkpoint \
             LEFT JOIN reservations ON reservation_id = ?1 WHERE checkpoint.id = 1"
        )
    });
    conn.prepare_cached(&SQL)?
        .query_row([reservation_id], |row| {
            let found = row.get_ref(0)?.data_type() != Type::Null;
            let reservation = found.then(|| reservation_from_row(row)).transpose()?;
            Ok((reservation, row.get(RESERVATION_COLUMN_COUNT)?))
        })
}

/// A state a reservation was in, from `reservation_changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationChange {
    pub position: i64,
    pub status: pb::ReservationStatus,
    pub updated_at_ms: i64,
    /// The reservation's version after the change.
    pub version: i64,
}

/// The changes of a reservation after `after_position`, oldest first.
pub fn reservation_changes_after(
    tx: &Snapshot<'_>,
    reservation_id: &str,
    after_position: i64,
) -> rusqlite::Result<Vec<ReservationChange>> {
    tx.prepare_cached(
        "SELECT position, status, updated_at_ms, version FROM reservation_changes
         WHERE reservation_id = ?1 AND position > ?2
         ORDER BY position",
    )?
    .query_map(params![reservation_id, after_position], |row| {
        Ok(ReservationChange {
            position: row.get(0)?,
            status: status_at(row, 1)?,
            updated_at_ms: row.get(2)?,
            version: row.get(3)?,
        })
    })?
    .collect()
}

/// Which reservations a listing includes.
#[derive(Debug, Clone)]
pub struct ListFilter<'a> {
    /// Up to five status names; `None` slots match nothing.
    pub statuses: [Option<&'static str>; 5],
    /// Only reservations booked before this position (the page token).
    pub before_position: i64,
    /// Rows to return.
    pub limit: i64,
    /// Most rows examined, so that a filter matching few of many
    /// reservations cannot hold a worker for long.
    pub max_examined: i64,
    /// The guest or hotel whose reservations are listed.
    pub owner: &'a str,
}

/// A page of a listing, and where it stopped early.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Up to `limit` reservations, newest first.
    pub listed: Vec<Listed>,
    /// The booking position of the last row examined when `max_examined`
    /// ended the walk before `limit` rows: the next page continues before it.
    pub stopped_before: Option<i64>,
}

/// A reservation in a listing, with its sort key (the booking position).
pub type Listed = (pb::Reservation, i64);

/// A guest's reservations, newest first.
pub fn reservations_of_guest(
    tx: &Snapshot<'_>,
    filter: &ListFilter<'_>,
) -> rusqlite::Result<Listing> {
    list(tx, "guest_id", "reservations_by_guest", filter)
}

/// A hotel's reservations, newest first.
pub fn reservations_of_hotel(
    tx: &Snapshot<'_>,
    filter: &ListFilter<'_>,
) -> rusqlite::Result<Listing> {
    list(tx, "hotel_id", "reservations_by_hotel", filter)
}

/// Walks the owner's reservations newest first and keeps those whose
/// status the filter names (in Rust: the walk has to count what it
/// examines), until `limit` are kept or `max_examined` are seen. Through
/// `index` only (`INDEXED BY`): a read model replaying the log builds it at
/// the end (ADR 0014), and until then the statement fails rather than scan
/// the table.
fn list(
    tx: &Snapshot<'_>,
    owner_column: &str,
    index: &str,
    filter: &ListFilter<'_>,
) -> rusqlite::Result<Listing> {
    let limit = usize::try_from(filter.limit).unwrap_or(0);
    let max_examined = usize::try_from(filter.max_examined).unwrap_or(0);
    let mut listing = Listing::default();
    if limit == 0 {
        return Ok(listing);
    }
    let mut statement = tx.prepare_cached(&format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations INDEXED BY {index}
         WHERE {owner_column} = ?1 AND booked_position < ?2
         ORDER BY booked_position DESC"
    ))?;
    let mut rows = statement.query(params![filter.owner, filter.before_position])?;
    let mut examined = 0;
    while let Some(row) = rows.next()? {
        examined += 1;
        let status: String = row.get(10)?;
        let booked_position: i64 = row.get(17)?;
        if filter
            .statuses
            .iter()
            .flatten()
            .any(|wanted| *wanted == status)
        {
            listing
                .listed
                .push((reservation_from_row(row)?, booked_position));
            if listing.listed.len() == limit {
                break;
            }
        }
        if examined >= max_examined {
            listing.stopped_before = Some(booked_position);
            break;
        }
    }
    Ok(listing)
}

/// A hotel as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hotel {
    pub name: String,
    pub city: String,
    /// Its aggregate version (0: unknown, in a read model built before
    /// versions were kept).
    pub version: i64,
}

/// A hotel, if the read model knows it.
pub fn hotel(tx: &Snapshot<'_>, hotel_id: &str) -> rusqlite::Result<Option<Hotel>> {
    tx.prepare_cached("SELECT name, city, version FROM hotels WHERE hotel_id = ?1")?
        .query_row([hotel_id], |row| {
            Ok(Hotel {
                name: row.get(0)?,
                city: row.get(1)?,
                version: row.get(2)?,
            })
        })
        .optional()
}

/// A room type as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomType {
    pub code: String,
    pub name: String,
    pub max_guests: i32,
    pub inventory: i32,
    pub rate: pb::Money,
}

/// A hotel's room types by code, or only `code` when given.
pub fn room_types(
    tx: &Snapshot<'_>,
    hotel_id: &str,
    code: Option<&str>,
) -> rusqlite::Result<Vec<RoomType>> {
    tx.prepare_cached(
        "SELECT code, name, max_guests, inventory, rate_minor, currency FROM room_types
         WHERE hotel_id = ?1 AND (?2 IS NULL OR code = ?2)
         ORDER BY code",
    )?
    .query_map(params![hotel_id, code], |row| {
        Ok(RoomType {
            code: row.get(0)?,
            name: row.get(1)?,
            max_guests: row.get(2)?,
            inventory: row.get(3)?,
            rate: pb::Money {
                amount_minor: row.get(4)?,
                currency: row.get(5)?,
            },
        })
    })?
    .collect()
}

/// A stored per-night count; nights without a row are 0 and 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NightCounts {
    pub room_type_code: String,
    pub night: String,
    pub booked: i32,
    pub waiting: i32,
}

/// The stored night counts of a hotel in `[from, to)`, by room type and night.
pub fn night_counts(
    tx: &Snapshot<'_>,
    hotel_id: &str,
    code: Option<&str>,
    from: &str,
    to: &str,
) -> rusqlite::Result<Vec<NightCounts>> {
    // Two statements, so that each walks the primary key over the range
    // only: `?2 IS NULL OR room_type_code = ?2` would scan the hotel's nights.
    let mut statement = match code {
        Some(_) => tx.prepare_cached(
            "SELECT r.room_type_code, n.night, n.booked, n.waiting
             FROM night_rooms r JOIN nights n ON n.room_id = r.id
             WHERE r.hotel_id = ?1 AND r.room_type_code = ?2
               AND n.night >= ?3 AND n.night < ?4
             ORDER BY r.room_type_code, n.night",
        )?,
        None => tx.prepare_cached(
            "SELECT r.room_type_code, n.night, n.booked, n.waiting
             FROM night_rooms r JOIN nights n ON n.room_id = r.id
             WHERE r.hotel_id = ?1 AND ?2 IS NULL AND r.room_type_code IN
                   (SELECT code FROM room_types WHERE hotel_id = ?1)
               AND n.night >= ?3 AND n.night < ?4
             ORDER BY r.room_type_code, n.night",
        )?,
    };
    statement
        .query_map(
            params![hotel_id, code, query_day(from)?, query_day(to)?],
            |row| {
                Ok(NightCounts {
                    room_type_code: row.get(0)?,
                    night: night_text(row.get(1)?),
                    booked: row.get(2)?,
                    waiting: row.get(3)?,
                })
            },
        )?
        .collect()
}

/// What a search looks for.
#[derive(Debug, Clone)]
pub struct Search<'a> {
    pub city_key: &'a str,
    pub check_in: &'a str,
    pub check_out: &'a str,
    pub nights: i64,
    pub guests: i32,
    /// Results strictly after this sort key (the page token).
    pub after: Option<SearchKey>,
    pub limit: i64,
    /// Most candidate room types examined (each costs a read of its nights),
    /// so that a city of full hotels cannot hold a worker for long.
    pub max_examined: i64,
}

/// What a search found, and where it stopped early.
#[derive(Debug, Default)]
pub struct Found {
    /// Up to `limit` results, in order.
    pub results: Vec<Hit>,
    /// The key of the last room type examined when `max_examined` ended the
    /// walk before `limit` results: the next page continues after it.
    pub stopped_at: Option<SearchKey>,
}

/// One search result, as sent, with the room type it is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub result: wire::SearchResult,
    pub hotel_id: Arc<str>,
    pub room_type_code: Arc<str>,
}

impl Hit {
    /// Its place in the results' order: a page that ends here continues
    /// after it.
    pub fn key(&self) -> SearchKey {
        SearchKey {
            total_minor: self.result.total_minor,
            hotel_id: self.hotel_id.to_string(),
            room_type_code: self.room_type_code.to_string(),
        }
    }
}

/// The sort order of search results: total price, hotel, room type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchKey {
    pub total_minor: i64,
    pub hotel_id: String,
    pub room_type_code: String,
}

/// Room types in the city that hold the guests and have a free room every
/// night of the stay, cheapest stay first.
///
/// `search_room_types` hands out a city's room types already in result
/// order (by nightly rate, which orders the stays' totals the same way), so
/// the fewest free rooms are computed once per candidate, full ones are
/// skipped here, and the walk stops once `limit` results are found, or
/// after `max_examined` candidates.
pub fn search(tx: &Snapshot<'_>, search: &Search<'_>) -> rusqlite::Result<Found> {
    let (after_total, after_hotel, after_code) = match &search.after {
        Some(key) => (
            Some(key.total_minor),
            Some(key.hotel_id.as_str()),
            Some(key.room_type_code.as_str()),
        ),
        None => (None, None, None),
    };
    let limit = usize::try_from(search.limit).unwrap_or(0);
    let max_examined = usize::try_from(search.max_examined).unwrap_or(0);
    let mut found = Found {
        results: Vec::with_capacity(limit.min(64)),
        stopped_at: None,
    };
    if limit == 0 {
        return Ok(found);
    }
    let mut examined = 0;
    let mut statement = tx.prepare_cached(
        "SELECT hotel_id, hotel_name, city, code, room_type_name, max_guests,
                inventory - COALESCE(
                    (SELECT MAX(n.booked) FROM night_rooms r JOIN nights n ON n.room_id = r.id
                     WHERE r.hotel_id = s.hotel_id AND r.room_type_code = s.code
                       AND n.night >= ?2 AND n.night < ?3),
                    0) AS free_rooms,
                rate_minor, currency, rate_minor * ?4 AS total_minor
         FROM search_room_types s
         WHERE city_key = ?1 AND max_guests >= ?5
           AND (?6 IS NULL OR (rate_minor * ?4, hotel_id, code) > (?6, ?7, ?8))
         ORDER BY rate_minor, hotel_id, code",
    )?;
    let mut rows = statement.query(params![
        search.city_key,
        query_day(search.check_in)?,
        query_day(search.check_out)?,
        search.nights,
        search.guests,
        after_total,
        after_hotel,
        after_code,
    ])?;
    while let Some(row) = rows.next()? {
        examined += 1;
        let free_rooms: i32 = row.get(6)?;
        if free_rooms < 1 {
            if examined >= max_examined {
                found.stopped_at = Some(SearchKey {
                    total_minor: row.get(9)?,
                    hotel_id: row.get(0)?,
                    room_type_code: row.get(3)?,
                });
                break;
            }
            continue;
        }
        let currency: String = row.get(8)?;
        let result = pb::SearchResult {
            hotel_id: row.get(0)?,
            hotel_name: row.get(1)?,
            city: row.get(2)?,
            room_type_code: row.get(3)?,
            room_type_name: row.get(4)?,
            max_guests: row.get(5)?,
            free_rooms,
            nightly_rate: Some(pb::Money {
                amount_minor: row.get(7)?,
                currency: currency.clone(),
            }),
            total_price: Some(pb::Money {
                amount_minor: row.get(9)?,
                currency,
            }),
        };
        found.results.push(Hit {
            result: wire::SearchResult::from_decoded(&result),
            hotel_id: result.hotel_id.into(),
            room_type_code: result.room_type_code.into(),
        });
        if found.results.len() == limit {
            break;
        }
        if examined >= max_examined {
            // Continue after this result: it is the last one examined.
            found.stopped_at = found.results.last().map(Hit::key);
            break;
        }
    }
    Ok(found)
}

/// The waiting list of a room type in the command server's promotion order:
/// higher priority first, then the earlier booking event (by position).
pub fn waitlist(
    tx: &Snapshot<'_>,
    hotel_id: &str,
    room_type_code: &str,
) -> rusqlite::Result<Vec<pb::WaitlistEntry>> {
    tx.prepare_cached(
        "SELECT reservation_id, guest_id, guest_name, guest_email, check_in, check_out,
                priority, booked_at_ms, version
         FROM reservations
         WHERE hotel_id = ?1 AND room_type_code = ?2 AND status = 'WAITLISTED'
         ORDER BY priority DESC, booked_position",
    )?
    .query_map(params![hotel_id, room_type_code], |row| {
        Ok(pb::WaitlistEntry {
            reservation_id: row.get(0)?,
            guest: Some(pb::Guest {
                guest_id: row.get(1)?,
                name: row.get(2)?,
                email: row.get(3)?,
            }),
            check_in: row.get(4)?,
            check_out: row.get(5)?,
            priority: row.get(6)?,
            booked_at: Some(timestamp_from_millis(row.get(7)?)),
            version: row.get(8)?,
        })
    })?
    .collect()
}

/// All rooms of a hotel, and the rooms booked per night in `[from, to)`
/// (nights with nothing booked are absent).
pub fn occupancy(
    tx: &Snapshot<'_>,
    hotel_id: &str,
    from: &str,
    to: &str,
) -> rusqlite::Result<(i64, Vec<(String, i64)>)> {
    let rooms: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(inventory), 0) FROM room_types WHERE hotel_id = ?1")?
        .query_row([hotel_id], |row| row.get(0))?;
    let booked = tx
        .prepare_cached(
            "SELECT n.night, SUM(n.booked)
             FROM night_rooms r JOIN nights n ON n.room_id = r.id
             WHERE r.hotel_id = ?1 AND n.night >= ?2 AND n.night < ?3
             GROUP BY n.night
             ORDER BY n.night",
        )?
        .query_map(params![hotel_id, query_day(from)?, query_day(to)?], |row| {
            Ok((night_text(row.get(0)?), row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok((rooms, booked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_count_is_the_column_list_s() {
        assert_eq!(
            RESERVATION_COLUMNS.split(',').count(),
            RESERVATION_COLUMN_COUNT
        );
    }

    #[test]
    fn every_status_reads_back_from_its_stored_name() {
        // Every value of the enum, those added later included.
        let statuses: Vec<_> = (0..64)
            .filter_map(|value| pb::ReservationStatus::try_from(value).ok())
            .collect();
        assert!(statuses.len() >= 6, "{statuses:?}");
        for status in statuses {
            assert_eq!(status_from_name(status_name(status)), status);
        }
        use pb::ReservationStatus as S;
        assert_eq!(status_from_name("confirmed"), S::Unspecified);
        assert_eq!(status_from_name(""), S::Unspecified);
    }
}
