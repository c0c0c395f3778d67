//! The availability side of the read model held in memory: hotels, their
//! room types and the per-night counts, copied from the SQLite file by the
//! writer right after each commit and published as one immutable
//! [`State`] tagged with the checkpoint it equals. GetAvailability and
//! SearchAvailability answer from it without touching SQLite
//! (docs/decisions/0015-availability-in-memory.md).
//!
//! Exactness: a [`State`] is only ever built from the committed file, by
//! the writer's own connection, between two commits, and published with the
//! checkpoint read in the same place; so its answers are the file's at that
//! position. After a commit, only what the batch touched is read again
//! (each event names its hotel, room type and nights); when the batch does
//! not follow the published position (a commit it did not see), everything
//! is loaded again. A state that cannot be kept (an error, more nights than
//! the cap) is dropped and the queries read SQLite, as before. While
//! catching up (commits of [`LARGE_COMMIT`] events or more) the state is
//! dropped too, rather than read back almost whole at every commit; the
//! first smaller commit loads it whole.
//!
//! Copies are cheap: hotels and room types are shared (`Arc`) between
//! successive states, and a commit copies only the room types it touched.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use hotel_common::{
    nights::{NightEffect, night_effect},
    pb::{self, event::Kind},
    wire,
};
use rusqlite::{Connection, params};

use super::reads::{
    Found, Hit, Hotel, NightCounts, RoomType, Search, SearchKey, night_day, night_text,
};

/// Default cap on the nights held in memory (about 20 bytes each).
pub const DEFAULT_MAX_NIGHTS: u64 = 500_000;
/// A commit of this many events or more (catching up) drops the state
/// instead of reading again what it touched, which would be most of it at
/// every commit; the first smaller commit loads it all once.
const LARGE_COMMIT: usize = 1_000;

/// A night as the read model stores it: its Julian day number
/// ([`night_day`]).
type NightKey = i32;

/// The counts of one stored night.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Night {
    night: NightKey,
    booked: i32,
    waiting: i32,
}

/// A room type with its stored nights, in night order.
#[derive(Debug, Clone)]
struct RoomTypeState {
    code: String,
    name: String,
    max_guests: i32,
    inventory: i32,
    rate_minor: i64,
    currency: String,
    nights: Vec<Night>,
}

impl RoomTypeState {
    /// The stored nights in `[from, to)`.
    fn nights_in(&self, from: &NightKey, to: &NightKey) -> &[Night] {
        let start = lower_bound(&self.nights, *from);
        let end = lower_bound(&self.nights, *to).max(start);
        &self.nights[start..end]
    }
}

/// The index of the first night at or after `day` in `nights` (distinct
/// days in order). Booked nights are nearly contiguous, so the night `day`
/// is looked for first where it would be with no gap, then a few places
/// before it: a search then reads one or two cache lines instead of a
/// binary search's ~8 scattered ones.
fn lower_bound(nights: &[Night], day: NightKey) -> usize {
    /// Gaps stepped over one by one before a binary search.
    const STEPS: usize = 8;
    let Some(first) = nights.first() else {
        return 0;
    };
    // Days are distinct and increasing: night i is at least first + i, so
    // the answer is at most `day - first`.
    let Ok(most) = usize::try_from(i64::from(day) - i64::from(first.night)) else {
        return 0;
    };
    let mut at = most.min(nights.len());
    for _ in 0..STEPS {
        if at == 0 || nights[at - 1].night < day {
            return at;
        }
        at -= 1;
    }
    nights[..at].partition_point(|n| n.night < day)
}

/// A hotel with its room types, by code.
#[derive(Debug, Clone)]
struct HotelState {
    name: String,
    city: String,
    city_key: String,
    version: i64,
    room_types: Vec<Arc<RoomTypeState>>,
}

impl HotelState {
    fn room_type(&self, code: &str) -> Option<&Arc<RoomTypeState>> {
        self.room_types
            .binary_search_by(|rt| rt.code.as_str().cmp(code))
            .ok()
            .map(|i| &self.room_types[i])
    }

    fn nights(&self) -> usize {
        self.room_types.iter().map(|rt| rt.nights.len()).sum()
    }
}

/// A search candidate: one room type of a city, in result order.
#[derive(Debug, Clone)]
struct Candidate {
    rate_minor: i64,
    hotel_id: Arc<str>,
    code: Arc<str>,
    /// Its results' fields that do not depend on the stay, encoded.
    fields: wire::RoomTypeFields,
}

/// The availability side of the read model at one position.
#[derive(Debug, Clone)]
pub struct State {
    position: i64,
    hotels: HashMap<Arc<str>, Arc<HotelState>>,
    /// Each city's room types by (nightly rate, hotel id, code): the
    /// order of `search_room_types`.
    cities: HashMap<String, Arc<Vec<Candidate>>>,
    /// Nights held, for the cap.
    nights: usize,
}

impl State {
    /// The checkpoint this state equals.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// As [`super::reads::hotel`].
    pub fn hotel(&self, hotel_id: &str) -> Option<Hotel> {
        self.hotels.get(hotel_id).map(|h| Hotel {
            name: h.name.clone(),
            city: h.city.clone(),
            version: h.version,
        })
    }

    /// As [`super::reads::room_types`].
    pub fn room_types(&self, hotel_id: &str, code: Option<&str>) -> Vec<RoomType> {
        let Some(hotel) = self.hotels.get(hotel_id) else {
            return Vec::new();
        };
        hotel
            .room_types
            .iter()
            .filter(|rt| code.is_none_or(|code| rt.code == code))
            .map(|rt| RoomType {
                code: rt.code.clone(),
                name: rt.name.clone(),
                max_guests: rt.max_guests,
                inventory: rt.inventory,
                rate: pb::Money {
                    amount_minor: rt.rate_minor,
                    currency: rt.currency.clone(),
                },
            })
            .collect()
    }

    /// As [`super::reads::night_counts`]; `None` when a date is not a
    /// stored night's shape (the caller asks SQLite).
    pub fn night_counts(
        &self,
        hotel_id: &str,
        code: Option<&str>,
        from: &str,
        to: &str,
    ) -> Option<Vec<NightCounts>> {
        let (from, to) = (night_day(from)?, night_day(to)?);
        let Some(hotel) = self.hotels.get(hotel_id) else {
            return Some(Vec::new());
        };
        let mut counts = Vec::new();
        for rt in &hotel.room_types {
            if code.is_some_and(|code| rt.code != code) {
                continue;
            }
            for night in rt.nights_in(&from, &to) {
                counts.push(NightCounts {
                    room_type_code: rt.code.clone(),
                    night: night_text(night.night),
                    booked: night.booked,
                    waiting: night.waiting,
                });
            }
        }
        Some(counts)
    }

    /// As [`super::reads::search`]; `None` when this state cannot answer
    /// exactly as SQLite would (a date of another shape, an overflow), and
    /// the caller asks SQLite.
    pub fn search(&self, search: &Search<'_>) -> Option<Found> {
        let (from, to) = (night_day(search.check_in)?, night_day(search.check_out)?);
        let limit = usize::try_from(search.limit).unwrap_or(0);
        let max_examined = usize::try_from(search.max_examined).unwrap_or(0);
        let mut found = Found {
            results: Vec::with_capacity(limit.min(64)),
            stopped_at: None,
        };
        if limit == 0 {
            return Some(found);
        }
        let Some(candidates) = self.cities.get(search.city_key) else {
            return Some(found);
        };
        let mut examined = 0;
        for candidate in candidates.iter() {
            let hotel = self.hotels.get(&candidate.hotel_id)?;
            let rt = hotel.room_type(&candidate.code)?;
            if rt.max_guests < search.guests {
                continue;
            }
            let total_minor = rt.rate_minor.checked_mul(search.nights)?;
            if let Some(after) = &search.after
                && (total_minor, &*candidate.hotel_id, &*candidate.code)
                    <= (
                        after.total_minor,
                        after.hotel_id.as_str(),
                        after.room_type_code.as_str(),
                    )
            {
                continue;
            }
            examined += 1;
            let most_booked = rt
                .nights_in(&from, &to)
                .iter()
                .map(|n| i64::from(n.booked))
                .max()
                .unwrap_or(0);
            let free_rooms = i32::try_from(i64::from(rt.inventory) - most_booked).ok()?;
            if free_rooms < 1 {
                if examined >= max_examined {
                    found.stopped_at = Some(SearchKey {
                        total_minor,
                        hotel_id: candidate.hotel_id.to_string(),
                        room_type_code: candidate.code.to_string(),
                    });
                    break;
                }
                continue;
            }
            found.results.push(Hit {
                result: wire::SearchResult {
                    room_type: candidate.fields.clone(),
                    free_rooms,
                    total_minor,
                },
                hotel_id: Arc::clone(&candidate.hotel_id),
                room_type_code: Arc::clone(&candidate.code),
            });
            if found.results.len() == limit {
                break;
            }
            if examined >= max_examined {
                found.stopped_at = found.results.last().map(Hit::key);
                break;
            }
        }
        Some(found)
    }

    /// Rebuilds the search candidates of `city_key` from the hotels.
    fn index_city(&mut self, city_key: &str) {
        let mut candidates: Vec<Candidate> = self
            .hotels
            .iter()
            .filter(|(_, h)| h.city_key == city_key)
            .flat_map(|(id, h)| {
                h.room_types.iter().map(|rt| Candidate {
                    rate_minor: rt.rate_minor,
                    hotel_id: Arc::clone(id),
                    code: Arc::from(rt.code.as_str()),
                    fields: wire::RoomTypeFields::new(
                        &pb::SearchResult {
                            hotel_id: id.to_string(),
                            hotel_name: h.name.clone(),
                            city: h.city.clone(),
                            room_type_code: rt.code.clone(),
                            room_type_name: rt.name.clone(),
                            max_guests: rt.max_guests,
                            free_rooms: 0,
                            nightly_rate: Some(pb::Money {
                                amount_minor: rt.rate_minor,
                                currency: rt.currency.clone(),
                            }),
                            total_price: None,
                        },
                        &rt.currency,
                    ),
                })
            })
            .collect();
        if candidates.is_empty() {
            self.cities.remove(city_key);
            return;
        }
        candidates.sort_by(|a, b| {
            (a.rate_minor, &*a.hotel_id, &*a.code).cmp(&(b.rate_minor, &*b.hotel_id, &*b.code))
        });
        self.cities
            .insert(city_key.to_owned(), Arc::new(candidates));
    }
}

/// Why a state could not be kept.
#[derive(Debug, thiserror::Error)]
enum Unkept {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("more than {0} nights")]
    TooManyNights(u64),
}

/// The published [`State`], if any, and what keeps it.
#[derive(Debug)]
pub struct Memory {
    /// `None`: nothing published (not loaded, or dropped): reads use SQLite.
    current: RwLock<Option<Arc<State>>>,
    /// Most nights held; past it the state is dropped (0: never held).
    max_nights: u64,
    /// Dropped for a large commit: the next small one loads everything.
    reload: AtomicBool,
}

impl Memory {
    /// An empty memory holding at most `max_nights` nights.
    pub fn new(max_nights: u64) -> Self {
        Self {
            current: RwLock::new(None),
            max_nights,
            reload: AtomicBool::new(false),
        }
    }

    /// The published state, if any.
    pub fn state(&self) -> Option<Arc<State>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, state: Option<State>) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state.map(Arc::new);
    }

    /// Drops the state: reads use SQLite until the next [`Self::load`].
    pub fn clear(&self) {
        self.reload.store(false, Ordering::Relaxed);
        self.publish(None);
    }

    /// Loads everything from `conn` (the writer's connection, between
    /// commits) and publishes it.
    pub fn load(&self, conn: &Connection) {
        if self.max_nights == 0 {
            return self.clear();
        }
        self.reload.store(false, Ordering::Relaxed);
        match load_all(conn, self.max_nights) {
            Ok(state) => self.publish(Some(state)),
            Err(error) => {
                tracing::warn!(%error, "availability not held in memory; queries read SQLite");
                self.clear();
            }
        }
    }

    /// After a commit of (a prefix of) `events` on `conn`: reads again what
    /// they touched and publishes the state at the new checkpoint.
    pub fn committed(&self, conn: &Connection, events: &[pb::EventEnvelope]) {
        if events.len() >= LARGE_COMMIT {
            if self.state().is_some() || self.reload.load(Ordering::Relaxed) {
                self.publish(None);
                self.reload.store(true, Ordering::Relaxed);
            }
            return;
        }
        if self.reload.load(Ordering::Relaxed) {
            return self.load(conn);
        }
        let Some(state) = self.state() else {
            return;
        };
        let refreshed = (|| -> Result<Option<State>, Unkept> {
            let checkpoint: i64 =
                conn.query_row("SELECT position FROM checkpoint WHERE id = 1", [], |row| {
                    row.get(0)
                })?;
            if checkpoint == state.position {
                return Ok(None);
            }
            let follows = events
                .first()
                .is_some_and(|first| first.position == state.position + 1)
                && events
                    .last()
                    .is_some_and(|last| last.position >= checkpoint);
            if !follows {
                // A commit this memory did not see: start over.
                return load_all(conn, self.max_nights).map(Some);
            }
            refresh(conn, &state, events, checkpoint, self.max_nights).map(Some)
        })();
        match refreshed {
            Ok(None) => {}
            Ok(Some(state)) => self.publish(Some(state)),
            Err(error) => {
                tracing::warn!(%error, "availability dropped from memory; queries read SQLite");
                self.clear();
            }
        }
    }
}

/// What a batch touched in one hotel.
#[derive(Default)]
struct Touched {
    /// A hotel event (or one not understood): read the whole hotel again.
    whole: bool,
    /// Night ranges `[from, to)` by room type code.
    nights: BTreeMap<String, (NightKey, NightKey)>,
}

fn touched(events: &[pb::EventEnvelope]) -> HashMap<&str, Touched> {
    let mut touched: HashMap<&str, Touched> = HashMap::new();
    for envelope in events {
        let stay = match envelope.event.as_ref() {
            // A check-in or check-out changes nothing held here.
            Some(event)
                if matches!(
                    event.kind,
                    Some(Kind::GuestCheckedIn(_) | Kind::GuestCheckedOut(_))
                ) =>
            {
                continue;
            }
            Some(event) => match night_effect(event) {
                Ok(NightEffect::Stay(counts)) => Some((
                    counts.hotel_id,
                    counts.room_type_code,
                    counts.check_in,
                    counts.check_out,
                )),
                // Hotels, room types, inventory, and anything unknown.
                _ => None,
            },
            None => None,
        };
        let range = stay.and_then(|(hotel_id, code, check_in, check_out)| {
            Some((hotel_id, code, night_day(check_in)?, night_day(check_out)?))
        });
        match range {
            Some((hotel_id, code, from, to)) => {
                let entry = touched.entry(hotel_id).or_default();
                let range = entry.nights.entry(code.to_owned()).or_insert((from, to));
                range.0 = range.0.min(from);
                range.1 = range.1.max(to);
            }
            None => touched.entry(&envelope.hotel_id).or_default().whole = true,
        }
    }
    touched
}

/// The state after a commit: `state` with what `events` touched read again.
fn refresh(
    conn: &Connection,
    state: &State,
    events: &[pb::EventEnvelope],
    checkpoint: i64,
    max_nights: u64,
) -> Result<State, Unkept> {
    let mut next = state.clone();
    next.position = checkpoint;
    let mut cities = HashSet::new();
    for (hotel_id, touched) in touched(events) {
        let old = next.hotels.get(hotel_id).cloned();
        let whole = touched.whole
            || old.as_ref().is_none_or(|hotel| {
                touched
                    .nights
                    .keys()
                    .any(|code| hotel.room_type(code).is_none())
            });
        if let Some(old) = &old {
            next.nights -= old.nights();
        }
        let new = match (whole, old.as_deref()) {
            (false, Some(old)) => {
                let mut hotel = old.clone();
                for (code, (from, to)) in &touched.nights {
                    let i = hotel
                        .room_types
                        .binary_search_by(|rt| rt.code.as_str().cmp(code))
                        .expect("checked above");
                    let mut rt = RoomTypeState::clone(&hotel.room_types[i]);
                    let start = lower_bound(&rt.nights, *from);
                    let end = lower_bound(&rt.nights, *to).max(start);
                    let fresh = read_nights(conn, hotel_id, code, from, to)?;
                    rt.nights.splice(start..end, fresh);
                    hotel.room_types[i] = Arc::new(rt);
                }
                Some(hotel)
            }
            _ => read_hotel(conn, hotel_id)?,
        };
        // Only a whole hotel read again can change a city's candidates.
        if whole {
            cities.extend(old.iter().map(|h| h.city_key.clone()));
            cities.extend(new.iter().map(|h| h.city_key.clone()));
        }
        match new {
            Some(hotel) => {
                next.nights += hotel.nights();
                let key = next
                    .hotels
                    .get_key_value(hotel_id)
                    .map_or_else(|| Arc::from(hotel_id), |(k, _)| Arc::clone(k));
                next.hotels.insert(key, Arc::new(hotel));
            }
            None => {
                next.hotels.remove(hotel_id);
            }
        }
        if next.nights as u64 > max_nights {
            return Err(Unkept::TooManyNights(max_nights));
        }
    }
    for city in cities {
        next.index_city(&city);
    }
    Ok(next)
}

fn read_nights(
    conn: &Connection,
    hotel_id: &str,
    code: &str,
    from: &NightKey,
    to: &NightKey,
) -> Result<Vec<Night>, Unkept> {
    let mut statement = conn.prepare_cached(
        "SELECT n.night, n.booked, n.waiting
         FROM night_rooms r JOIN nights n ON n.room_id = r.id
         WHERE r.hotel_id = ?1 AND r.room_type_code = ?2 AND n.night >= ?3 AND n.night < ?4
         ORDER BY n.night",
    )?;
    let mut rows = statement.query(params![hotel_id, code, from, to])?;
    let mut nights = Vec::new();
    while let Some(row) = rows.next()? {
        nights.push(night_from_row(row, 0)?);
    }
    Ok(nights)
}

fn night_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Night> {
    Ok(Night {
        night: row.get(first)?,
        booked: row.get(first + 1)?,
        waiting: row.get(first + 2)?,
    })
}

fn room_type_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<RoomTypeState> {
    Ok(RoomTypeState {
        code: row.get(first)?,
        name: row.get(first + 1)?,
        max_guests: row.get(first + 2)?,
        inventory: row.get(first + 3)?,
        rate_minor: row.get(first + 4)?,
        currency: row.get(first + 5)?,
        nights: Vec::new(),
    })
}

/// One hotel with its room types and all their nights; `None` when the
/// file does not hold the hotel.
fn read_hotel(conn: &Connection, hotel_id: &str) -> Result<Option<HotelState>, Unkept> {
    let hotel = conn
        .prepare_cached("SELECT name, city, city_key, version FROM hotels WHERE hotel_id = ?1")?
        .query_row([hotel_id], |row| {
            Ok(HotelState {
                name: row.get(0)?,
                city: row.get(1)?,
                city_key: row.get(2)?,
                version: row.get(3)?,
                room_types: Vec::new(),
            })
        });
    let mut hotel = match hotel {
        Ok(hotel) => hotel,
        Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut statement = conn.prepare_cached(
        "SELECT code, name, max_guests, inventory, rate_minor, currency FROM room_types
         WHERE hotel_id = ?1 ORDER BY code",
    )?;
    let mut rows = statement.query([hotel_id])?;
    let mut room_types = Vec::new();
    while let Some(row) = rows.next()? {
        room_types.push(room_type_from_row(row, 0)?);
    }
    let mut statement = conn.prepare_cached(
        "SELECT r.room_type_code, n.night, n.booked, n.waiting
         FROM night_rooms r JOIN nights n ON n.room_id = r.id
         WHERE r.hotel_id = ?1 ORDER BY r.room_type_code, n.night",
    )?;
    let mut rows = statement.query([hotel_id])?;
    while let Some(row) = rows.next()? {
        let code = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        if let Ok(i) = room_types.binary_search_by(|rt| rt.code.as_str().cmp(code)) {
            room_types[i].nights.push(night_from_row(row, 1)?);
        }
    }
    hotel.room_types = room_types.into_iter().map(Arc::new).collect();
    Ok(Some(hotel))
}

/// Everything, from the committed file.
fn load_all(conn: &Connection, max_nights: u64) -> Result<State, Unkept> {
    let position: i64 =
        conn.query_row("SELECT position FROM checkpoint WHERE id = 1", [], |row| {
            row.get(0)
        })?;
    let mut hotels: BTreeMap<String, HotelState> = BTreeMap::new();
    let mut statement =
        conn.prepare("SELECT hotel_id, name, city, city_key, version FROM hotels")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        hotels.insert(
            row.get(0)?,
            HotelState {
                name: row.get(1)?,
                city: row.get(2)?,
                city_key: row.get(3)?,
                version: row.get(4)?,
                room_types: Vec::new(),
            },
        );
    }
    let mut room_types: BTreeMap<(String, String), RoomTypeState> = BTreeMap::new();
    let mut statement = conn.prepare(
        "SELECT hotel_id, code, name, max_guests, inventory, rate_minor, currency
         FROM room_types",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let rt = room_type_from_row(row, 1)?;
        let hotel_id: String = row.get(0)?;
        if hotels.contains_key(&hotel_id) {
            room_types.insert((hotel_id, rt.code.clone()), rt);
        }
    }
    let mut nights: usize = 0;
    let mut statement = conn.prepare(
        "SELECT r.hotel_id, r.room_type_code, n.night, n.booked, n.waiting
         FROM night_rooms r JOIN nights n ON n.room_id = r.id",
    )?;
    let mut rows = statement.query([])?;
    let mut last: Option<(String, String)> = None;
    while let Some(row) = rows.next()? {
        let hotel_id = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        let code = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        if last
            .as_ref()
            .is_none_or(|(h, c)| h.as_str() != hotel_id || c.as_str() != code)
        {
            last = Some((hotel_id.to_owned(), code.to_owned()));
        }
        let key = last.as_ref().expect("set above");
        if let Some(rt) = room_types.get_mut(key) {
            rt.nights.push(night_from_row(row, 2)?);
            nights += 1;
            if nights as u64 > max_nights {
                return Err(Unkept::TooManyNights(max_nights));
            }
        }
    }
    for ((hotel_id, _), mut rt) in room_types {
        // The table's order is not promised without ORDER BY.
        rt.nights.sort_by_key(|night| night.night);
        if let Some(hotel) = hotels.get_mut(&hotel_id) {
            hotel.room_types.push(Arc::new(rt));
        }
    }
    let mut state = State {
        position,
        hotels: hotels
            .into_iter()
            .map(|(id, hotel)| (Arc::from(id.as_str()), Arc::new(hotel)))
            .collect(),
        cities: HashMap::new(),
        nights,
    };
    let cities: HashSet<String> = state.hotels.values().map(|h| h.city_key.clone()).collect();
    for city in cities {
        state.index_city(&city);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nights(days: &[i32]) -> Vec<Night> {
        days.iter()
            .map(|&night| Night {
                night,
                booked: 1,
                waiting: 0,
            })
            .collect()
    }

    #[test]
    fn lower_bound_agrees_with_a_binary_search_with_and_without_gaps() {
        for days in [
            vec![],
            vec![10],
            vec![10, 11, 12, 13],
            vec![10, 12, 13, 20, 21, 40],
            vec![-5, 0, 1, 2, 3000],
        ] {
            let nights = nights(&days);
            for day in -10..50 {
                assert_eq!(
                    lower_bound(&nights, day),
                    nights.partition_point(|n| n.night < day),
                    "{day} in {days:?}"
                );
            }
        }
    }

    #[test]
    fn only_canonical_dates_are_nights() {
        assert!(night_day("2030-05-01").is_some());
        assert_eq!(
            night_day("2030-05-02").map(|d| d - 1),
            night_day("2030-05-01")
        );
        assert_eq!(
            night_text(night_day("2030-12-31").expect("a date")),
            "2030-12-31"
        );
        for bad in ["2030-5-01", "2030-02-30", "20300501", "", "2030-05-01 "] {
            assert_eq!(night_day(bad), None, "{bad}");
        }
    }
}
