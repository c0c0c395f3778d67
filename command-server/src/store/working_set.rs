//! The rows one batch transaction reads and writes, held in memory.
//!
//! The batch holds the `event_head` lock, so no other command transaction
//! writes until it commits: a row it has read stays true, apart from its own
//! changes. So the writer reads what its commands need in a few multi-row
//! statements before the first command ([`WorkingSet::prefetch`]), decides
//! every command in memory, in order, each seeing the changes of the ones
//! before, and writes every changed row back in a few multi-row statements
//! at the end ([`WorkingSet::flush`]). A row not read up front is loaded on
//! first use, the same way. Round trips per batch stay about constant
//! instead of growing with its commands (ADR 0002).
//!
//! Once a row is here, this copy is the truth: a later load never replaces
//! it, and night counts are written back as absolute values.

use std::collections::{BTreeMap, HashMap};

use hotel_common::pb;
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row, mysql::MySqlRow};
use time::Date;

use super::{others::Change, padded_chunks, script::Script};
use crate::{
    domain::command::{Command, ValidCommand},
    domain::{Rate, ReservationStatus, Stay, rules::MAX_NIGHTS, waitlist::Waiting},
    error::CommandError,
};

/// A room type: `(hotel_id, code)`.
pub type RoomKey = (String, String);

/// A room type as the write model holds it.
#[derive(Debug, Clone)]
pub struct RoomType {
    pub max_guests: i32,
    pub inventory: i32,
    pub rate: Rate,
}

/// A reservation as the write model holds it.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub hotel_id: String,
    pub code: String,
    pub stay: Stay,
    pub status: ReservationStatus,
    pub version: i64,
    pub priority: i32,
    pub booked_position: i64,
    /// The columns only a new reservation writes: set when it was booked in
    /// this batch (it is inserted at flush).
    pub new: Option<Box<NewReservation>>,
    /// Changed in this batch.
    dirty: bool,
}

impl Reservation {
    /// A reservation booked in this batch, at version 1.
    pub fn booked(
        (hotel_id, code): RoomKey,
        stay: Stay,
        status: ReservationStatus,
        priority: i32,
        booked_position: i64,
        new: NewReservation,
    ) -> Self {
        Self {
            hotel_id,
            code,
            stay,
            status,
            version: 1,
            priority,
            booked_position,
            new: Some(Box::new(new)),
            dirty: true,
        }
    }
}

/// The columns of a reservation written once, when it is booked.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub guest: pb::Guest,
    pub guests: i32,
    pub total: Rate,
    pub booked_at_ms: i64,
}

/// One night of a room type.
#[derive(Debug, Clone, Copy, Default)]
struct Night {
    booked: i32,
    waiting: i32,
    dirty: bool,
}

/// Columns read for a reservation.
const RESERVATION_COLUMNS: &str = "reservation_id, hotel_id, room_type_code, check_in, check_out, \
     status, version, priority, booked_position";

/// What one batch has read, and changed, of the write model.
#[derive(Debug, Default)]
pub struct WorkingSet {
    /// `None`: known not to exist.
    room_types: HashMap<RoomKey, Option<RoomType>>,
    /// `None`: known not to exist.
    reservations: HashMap<String, Option<Reservation>>,
    /// Every night of a loaded range has an entry (0 when it has no row).
    nights: HashMap<RoomKey, BTreeMap<Date, Night>>,
    /// Windows `[from, until)` whose waitlisted reservations are all here.
    waitlists: HashMap<RoomKey, Vec<(Date, Date)>>,
    /// The stays whose nights changed since the last flush: the flush
    /// looks at these nights only, not at every night held (night counts
    /// are carried from batch to batch, up to a hundred thousand of them).
    changed_stays: Vec<(RoomKey, Stay)>,
}

/// The reads of rows asked in a script ([`WorkingSet::ask`]): for each
/// kind, the statement that answers and the keys asked, so that a key with
/// no row is held as absent.
#[derive(Debug, Default)]
pub struct Asked {
    reservations: Option<(usize, Vec<String>)>,
    room_types: Option<(usize, Vec<RoomKey>)>,
    nights: Option<(usize, Vec<(RoomKey, Stay)>)>,
}

/// What commands name in their requests: the reservations they act on,
/// and the room types and stays they book.
struct Named<'c> {
    reservation_ids: Vec<&'c str>,
    room_types: Vec<RoomKey>,
    stays: Vec<(RoomKey, Stay)>,
}

impl<'c> Named<'c> {
    fn in_requests(commands: &[&'c ValidCommand]) -> Self {
        let mut named = Self {
            reservation_ids: Vec::new(),
            room_types: Vec::new(),
            stays: Vec::new(),
        };
        for command in commands {
            match &command.command {
                Command::CancelReservation { reservation_id, .. }
                | Command::CheckIn { reservation_id }
                | Command::CheckOut { reservation_id } => {
                    named.reservation_ids.push(reservation_id.as_str());
                }
                Command::BookRoom {
                    hotel_id,
                    code,
                    stay,
                    ..
                } => {
                    let key = (hotel_id.clone(), code.clone());
                    named.room_types.push(key.clone());
                    named.stays.push((key, *stay));
                }
                _ => {}
            }
        }
        named
    }
}

/// Rows known to hold, carried from one batch to the next: room types, and
/// the night counts of room types (at most a cap of nights).
#[derive(Debug, Default)]
pub struct Carried {
    room_types: HashMap<RoomKey, Option<RoomType>>,
    nights: HashMap<RoomKey, BTreeMap<Date, Night>>,
}

impl Carried {
    /// Nights held, over every room type.
    pub fn nights(&self) -> usize {
        self.nights.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing is carried.
    pub fn is_empty(&self) -> bool {
        self.room_types.is_empty() && self.nights.is_empty()
    }
}

impl WorkingSet {
    /// A working set that starts with `carried`, which must still hold: the
    /// writer carries rows over only when nobody else has committed since
    /// its own last commit.
    pub fn with_carried(carried: Carried) -> Self {
        Self {
            room_types: carried.room_types,
            nights: carried.nights,
            ..Self::default()
        }
    }

    /// What to carry to the next batch once this one commits (after its
    /// [`flush`](Self::flush): nothing is dirty): the room types, and the
    /// night counts unless there are more than `max_nights` of them (then
    /// none: the next batch reads what it needs).
    pub fn into_carried(self, max_nights: usize) -> Carried {
        let mut carried = Carried {
            room_types: self.room_types,
            nights: self.nights,
        };
        if carried.nights() > max_nights {
            carried.nights.clear();
        }
        carried
    }

    /// Adds to `script` the reads of the rows `commands` name in their
    /// requests: the reservations they name, the room types they book and
    /// the nights of those stays, each not held yet, one statement each.
    /// The writer sends them with its lock (one round trip); [`take`]
    /// (Self::take) holds what came back.
    pub fn ask(&self, script: &mut Script, commands: &[&ValidCommand]) -> Asked {
        let Named {
            reservation_ids: ids,
            room_types,
            stays,
        } = Named::in_requests(commands);
        Asked {
            reservations: self.ask_reservations(script, &ids),
            room_types: self.ask_room_types(script, &room_types),
            nights: self.ask_nights(script, &stays),
        }
    }

    /// Holds the rows `results` (a script's, by statement) hold for
    /// `asked`; a key asked for that has no row is held as absent.
    pub fn take(&mut self, asked: Asked, results: &[Vec<MySqlRow>]) -> Result<(), CommandError> {
        let rows = |index: usize| {
            results.get(index).ok_or_else(|| {
                CommandError::Internal(format!("the read script returned no result {index}"))
            })
        };
        if let Some((index, ids)) = asked.reservations {
            self.take_reservations(ids, rows(index)?)?;
        }
        if let Some((index, keys)) = asked.room_types {
            self.take_room_types(keys, rows(index)?)?;
        }
        if let Some((index, stays)) = asked.nights {
            self.take_nights(stays, rows(index)?)?;
        }
        Ok(())
    }

    /// Brings the rows carried from the last batch up to date with
    /// `changes`: what other processes' commits did since, in order (see
    /// [`changes`](super::others::changes)). Nights not held stay unheld (a
    /// read finds them as they are now). False when a count would go below
    /// zero: the rows were not what the changes started from, and must be
    /// forgotten.
    pub fn catch_up(&mut self, changes: &[Change]) -> bool {
        for change in changes {
            match change {
                Change::Nights {
                    key,
                    stay,
                    booked,
                    waiting,
                } => {
                    let Some(nights) = self.nights.get_mut(key) else {
                        continue;
                    };
                    for date in stay.nights() {
                        if let Some(night) = nights.get_mut(&date) {
                            night.booked += booked;
                            night.waiting += waiting;
                            if night.booked < 0 || night.waiting < 0 {
                                return false;
                            }
                        }
                    }
                }
                Change::RoomType(key) => {
                    self.room_types.remove(key);
                }
                Change::Nothing => {}
            }
        }
        true
    }

    /// Forgets the rows carried from the last batch (another process's
    /// commit since may have changed them).
    pub fn forget_carried(&mut self) {
        self.room_types.clear();
        self.nights.clear();
    }

    /// Reads whatever `commands` will need that is not held yet, in at most
    /// two round trips: the reservations they name, then the room types they
    /// book or free and the nights of all those stays. (Waiting lists are
    /// read only when a cancellation can promote, a page at a time: see
    /// [`load_waitlist_page`](Self::load_waitlist_page).)
    pub async fn prefetch(
        &mut self,
        conn: &mut MySqlConnection,
        commands: &[&ValidCommand],
    ) -> Result<(), CommandError> {
        let Named {
            reservation_ids,
            mut room_types,
            mut stays,
        } = Named::in_requests(commands);
        self.load_reservations(conn, &reservation_ids).await?;

        // What a cancellation frees: its reservation's nights, in its room
        // type when it holds rooms.
        for command in commands {
            if let Command::CancelReservation { reservation_id, .. } = &command.command
                && let Some(Some(r)) = self.reservations.get(reservation_id)
            {
                let key = (r.hotel_id.clone(), r.code.clone());
                stays.push((key.clone(), r.stay));
                if r.status.holds_rooms() {
                    room_types.push(key);
                }
            }
        }
        self.load(conn, |held, script| Asked {
            room_types: held.ask_room_types(script, &room_types),
            nights: held.ask_nights(script, &stays),
            ..Asked::default()
        })
        .await
    }

    /// The room type, loaded if needed; `NOT_FOUND` when it does not exist.
    pub async fn room_type(
        &mut self,
        conn: &mut MySqlConnection,
        hotel_id: &str,
        code: &str,
    ) -> Result<RoomType, CommandError> {
        let key = (hotel_id.to_owned(), code.to_owned());
        self.load_room_types(conn, std::slice::from_ref(&key))
            .await?;
        self.room_types.get(&key).cloned().flatten().ok_or_else(|| {
            CommandError::NotFound(format!("hotel {hotel_id} has no room type {code}"))
        })
    }

    /// The reservation, loaded if needed; `NOT_FOUND` when it does not exist.
    pub async fn reservation(
        &mut self,
        conn: &mut MySqlConnection,
        reservation_id: &str,
    ) -> Result<&Reservation, CommandError> {
        self.load_reservations(conn, &[reservation_id]).await?;
        self.reservations
            .get(reservation_id)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                CommandError::NotFound(format!("reservation {reservation_id} does not exist"))
            })
    }

    /// Records a reservation booked in this batch.
    pub fn insert_reservation(&mut self, reservation_id: String, reservation: Reservation) {
        self.reservations.insert(reservation_id, Some(reservation));
    }

    /// Moves a loaded reservation to `status`; returns its new version.
    pub fn set_status(
        &mut self,
        reservation_id: &str,
        status: ReservationStatus,
    ) -> Result<i64, CommandError> {
        let reservation = self
            .reservations
            .get_mut(reservation_id)
            .and_then(Option::as_mut)
            .ok_or_else(|| {
                CommandError::Internal(format!("reservation {reservation_id} was not loaded"))
            })?;
        reservation.status = status;
        reservation.version += 1;
        reservation.dirty = true;
        Ok(reservation.version)
    }

    /// Rooms booked on each night of `stay`, in order.
    pub async fn booked(
        &mut self,
        conn: &mut MySqlConnection,
        key: &RoomKey,
        stay: Stay,
    ) -> Result<Vec<i32>, CommandError> {
        self.load_nights(conn, &[(key.clone(), stay)]).await?;
        let nights = self.nights.get(key);
        Ok(stay
            .nights()
            .map(|night| nights.and_then(|n| n.get(&night)).map_or(0, |n| n.booked))
            .collect())
    }

    /// Adds `booked` and `waiting` to every night of `stay`.
    pub async fn add_to_nights(
        &mut self,
        conn: &mut MySqlConnection,
        key: &RoomKey,
        stay: Stay,
        booked: i32,
        waiting: i32,
    ) -> Result<(), CommandError> {
        self.load_nights(conn, &[(key.clone(), stay)]).await?;
        self.changed_stays.push((key.clone(), stay));
        let nights = self.nights.entry(key.clone()).or_default();
        for date in stay.nights() {
            let night = nights.entry(date).or_default();
            night.booked += booked;
            night.waiting += waiting;
            if night.booked < 0 || night.waiting < 0 {
                return Err(CommandError::Internal(format!(
                    "{}/{} on {date} would have {} booked and {} waiting",
                    key.0, key.1, night.booked, night.waiting
                )));
            }
            night.dirty = true;
        }
        Ok(())
    }

    /// Rooms booked per night of `span`, for promotion.
    pub async fn ledger(
        &mut self,
        conn: &mut MySqlConnection,
        key: &RoomKey,
        span: Stay,
    ) -> Result<BTreeMap<Date, i32>, CommandError> {
        let (from, until) = (span.check_in, span.check_out);
        self.load_nights(conn, &[(key.clone(), span)]).await?;
        Ok(self
            .nights
            .get(key)
            .map(|nights| {
                nights
                    .range(from..until)
                    .map(|(date, night)| (*date, night.booked))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The waitlisted reservations of a room type that overlap
    /// `[from, until)` and start today or later, loaded if needed.
    pub async fn waitlist(
        &mut self,
        conn: &mut MySqlConnection,
        today: Date,
        key: &RoomKey,
        from: Date,
        until: Date,
    ) -> Result<Vec<Waiting>, CommandError> {
        self.load_waitlists(conn, today, &[(key.clone(), from, until)])
            .await?;
        Ok(self.waitlisted(today, key, from, until))
    }

    /// Reads every waitlisted reservation of a room type whose stay overlaps
    /// `[from, until)` and starts today or later, if there are at most
    /// `max`: then they are all held (true). If there are more, it holds
    /// none of them (false), and the caller reads the list a page at a time
    /// in promotion order instead ([`load_waitlist_page`](Self::load_waitlist_page)).
    ///
    /// The read goes by check-in date (index `waitlist_by_check_in`): a stay
    /// is at most [`MAX_NIGHTS`] long, so one that ends after `from` starts
    /// no earlier than `from - MAX_NIGHTS`. Walking the list in promotion
    /// order instead reads every waiter when few overlap: 571 ms for 87,140
    /// waiters of one room type (ADR 0002).
    pub async fn load_overlapping_waitlist(
        &mut self,
        conn: &mut MySqlConnection,
        today: Date,
        key: &RoomKey,
        (from, until): (Date, Date),
        max: usize,
    ) -> Result<bool, CommandError> {
        let earliest = today.max(from.saturating_sub(time::Duration::days(MAX_NIGHTS)));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations FORCE INDEX (waitlist_by_check_in) \
             WHERE hotel_id = ? AND room_type_code = ? AND status = 'WAITLISTED' \
             AND check_in >= ? AND check_in < ? AND check_out > ? LIMIT ?"
        )))
        .bind(&key.0)
        .bind(&key.1)
        .bind(earliest)
        .bind(until)
        .bind(from)
        .bind(max as i64 + 1)
        .fetch_all(&mut *conn)
        .await?;
        if rows.len() > max {
            return Ok(false);
        }
        for row in &rows {
            let (id, reservation) = reservation_from_row(row)?;
            self.reservations.entry(id).or_insert(Some(reservation));
        }
        self.waitlists
            .entry(key.clone())
            .or_default()
            .push((from, until));
        Ok(true)
    }

    /// Loads the next `limit` waitlisted reservations of a room type that
    /// overlap `[from, until)` and start today or later, in promotion order
    /// (priority first, then oldest), after `after`. Returns the order key
    /// of the last one read, and whether there may be more.
    #[allow(clippy::too_many_arguments)]
    pub async fn load_waitlist_page(
        &mut self,
        conn: &mut MySqlConnection,
        today: Date,
        key: &RoomKey,
        (from, until): (Date, Date),
        after: Option<OrderKey>,
        limit: usize,
    ) -> Result<(Option<OrderKey>, bool), CommandError> {
        let mut select = QueryBuilder::<MySql>::new(format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE hotel_id = "
        ));
        select
            .push_bind(&key.0)
            .push(" AND room_type_code = ")
            .push_bind(&key.1)
            .push(" AND status = 'WAITLISTED' AND check_in >= ")
            .push_bind(today)
            .push(" AND check_in < ")
            .push_bind(until)
            .push(" AND check_out > ")
            .push_bind(from);
        if let Some((priority, position)) = after {
            select
                .push(" AND (priority < ")
                .push_bind(priority)
                .push(" OR (priority = ")
                .push_bind(priority)
                .push(" AND booked_position > ")
                .push_bind(position)
                .push("))");
        }
        select
            .push(" ORDER BY priority DESC, booked_position LIMIT ")
            .push_bind(limit as i64);
        let rows = select.build().fetch_all(&mut *conn).await?;
        let mut last = after;
        for row in &rows {
            let (id, reservation) = reservation_from_row(row)?;
            last = Some((reservation.priority, reservation.booked_position));
            self.reservations.entry(id).or_insert(Some(reservation));
        }
        Ok((last, rows.len() == limit))
    }

    /// The waitlisted reservations held here for a room type, overlapping
    /// `[from, until)` from today on, whose order key is after `after` and
    /// not after `through` (`None`: no bound).
    pub fn waitlisted_between(
        &self,
        today: Date,
        key: &RoomKey,
        (from, until): (Date, Date),
        after: Option<OrderKey>,
        through: Option<OrderKey>,
    ) -> Vec<Waiting> {
        self.waitlisted(today, key, from, until)
            .into_iter()
            .filter(|w| {
                let order = (w.priority, w.booked_position);
                after.is_none_or(|a| comes_before(a, order))
                    && through.is_none_or(|t| !comes_before(t, order))
            })
            .collect()
    }

    /// Whether every one of `nights` is fully booked.
    pub fn all_full(&self, key: &RoomKey, nights: &[Date], inventory: i32) -> bool {
        let held = self.nights.get(key);
        nights.iter().all(|night| {
            held.and_then(|h| h.get(night))
                .is_some_and(|n| n.booked >= inventory)
        })
    }

    fn waitlisted(&self, today: Date, key: &RoomKey, from: Date, until: Date) -> Vec<Waiting> {
        self.reservations
            .iter()
            .filter_map(|(id, r)| Some((id, r.as_ref()?)))
            .filter(|(_, r)| {
                r.status == ReservationStatus::Waitlisted
                    && r.hotel_id == key.0
                    && r.code == key.1
                    && r.stay.check_in >= today
                    && r.stay.check_in < until
                    && r.stay.check_out > from
            })
            .map(|(id, r)| Waiting {
                reservation_id: id.clone(),
                priority: r.priority,
                booked_position: r.booked_position,
                stay: r.stay,
            })
            .collect()
    }

    /// Adds every changed row's write to `script`, one statement each, to
    /// run with the batch's other writes: status changes (the update's
    /// rows are counted), new reservations and night counts. What is held
    /// stays valid.
    pub fn flush(&mut self, script: &mut Script) -> Result<(), CommandError> {
        let mut new = Vec::new();
        let mut changed = Vec::new();
        for (id, reservation) in &mut self.reservations {
            if let Some(r) = reservation.as_mut().filter(|r| r.dirty) {
                r.dirty = false;
                if r.new.is_some() {
                    new.push((id.as_str(), &*r));
                } else {
                    changed.push((id.as_str(), &*r));
                }
            }
        }
        insert_reservations(script, &new)?;
        update_reservations(script, &changed);
        // Inserted once: from now on their changes are updates.
        for reservation in self.reservations.values_mut().flatten() {
            reservation.new = None;
        }

        // Each changed night once (stays overlap: the first visit clears
        // its flag), in room type and date order.
        let stays = std::mem::take(&mut self.changed_stays);
        let mut nights = Vec::new();
        for (index, (key, stay)) in stays.iter().enumerate() {
            // (`range_mut` panics on a reversed range; such a stay has no
            // nights to change.)
            let Some(dates) = self
                .nights
                .get_mut(key)
                .filter(|_| stay.check_in <= stay.check_out)
            else {
                continue;
            };
            for (date, night) in dates.range_mut(stay.check_in..stay.check_out) {
                if night.dirty {
                    night.dirty = false;
                    nights.push((index, *date, *night));
                }
            }
        }
        nights.sort_unstable_by(|(a, a_date, _), (b, b_date, _)| {
            stays[*a].0.cmp(&stays[*b].0).then(a_date.cmp(b_date))
        });
        if !nights.is_empty() {
            // Absolute values: what the batch decided, whatever was there.
            script
                .sql("INSERT INTO room_nights (hotel_id, code, night, booked, waiting)")
                .values(&nights, |row, (index, date, night)| {
                    let key = &stays[*index].0;
                    row.value(&key.0)
                        .value(&key.1)
                        .value(*date)
                        .value(night.booked)
                        .value(night.waiting);
                })
                .sql(" ON DUPLICATE KEY UPDATE booked = VALUES(booked), waiting = VALUES(waiting)")
                .end();
        }
        Ok(())
    }

    /// Forgets everything (after a [`flush`](Self::flush)), for commands
    /// that change the write model with their own statements.
    pub fn forget(&mut self) {
        *self = Self::default();
    }

    /// Runs the reads `ask` adds to a script of their own (none: nothing
    /// to do) and holds what they return.
    async fn load(
        &mut self,
        conn: &mut MySqlConnection,
        ask: impl FnOnce(&Self, &mut Script) -> Asked,
    ) -> Result<(), CommandError> {
        let mut script = Script::new();
        let asked = ask(self, &mut script);
        if script.statements() == 0 {
            return Ok(());
        }
        let results = script.fetch(conn).await.map_err(|failed| failed.error)?;
        self.take(asked, &results)
    }

    async fn load_reservations(
        &mut self,
        conn: &mut MySqlConnection,
        ids: &[&str],
    ) -> Result<(), CommandError> {
        self.load(conn, |held, script| Asked {
            reservations: held.ask_reservations(script, ids),
            ..Asked::default()
        })
        .await
    }

    async fn load_room_types(
        &mut self,
        conn: &mut MySqlConnection,
        keys: &[RoomKey],
    ) -> Result<(), CommandError> {
        self.load(conn, |held, script| Asked {
            room_types: held.ask_room_types(script, keys),
            ..Asked::default()
        })
        .await
    }

    /// Loads the nights of each `(room type, stay)` not wholly held yet.
    async fn load_nights(
        &mut self,
        conn: &mut MySqlConnection,
        stays: &[(RoomKey, Stay)],
    ) -> Result<(), CommandError> {
        self.load(conn, |held, script| Asked {
            nights: held.ask_nights(script, stays),
            ..Asked::default()
        })
        .await
    }

    /// The reservations of `ids` not held yet, asked in `script`.
    fn ask_reservations(&self, script: &mut Script, ids: &[&str]) -> Option<(usize, Vec<String>)> {
        let mut missing: Vec<String> = ids
            .iter()
            .filter(|id| !self.reservations.contains_key(**id))
            .map(|id| (*id).to_owned())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return None;
        }
        let index = script.statements();
        script
            .sql("SELECT ")
            .sql(RESERVATION_COLUMNS)
            .sql(" FROM reservations WHERE reservation_id IN (")
            .each(&missing, ", ", |script, id| {
                script.value(id);
            })
            .sql(")")
            .end();
        Some((index, missing))
    }

    fn take_reservations(
        &mut self,
        ids: Vec<String>,
        rows: &[MySqlRow],
    ) -> Result<(), CommandError> {
        for row in rows {
            let (id, reservation) = reservation_from_row(row)?;
            self.reservations.entry(id).or_insert(Some(reservation));
        }
        for id in ids {
            self.reservations.entry(id).or_insert(None);
        }
        Ok(())
    }

    /// The room types of `keys` not held yet, asked in `script`.
    fn ask_room_types(
        &self,
        script: &mut Script,
        keys: &[RoomKey],
    ) -> Option<(usize, Vec<RoomKey>)> {
        let mut missing: Vec<RoomKey> = keys
            .iter()
            .filter(|key| !self.room_types.contains_key(*key))
            .cloned()
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return None;
        }
        let index = script.statements();
        script
            .sql(
                "SELECT hotel_id, code, max_guests, inventory, rate_minor, currency \
                 FROM room_types WHERE ",
            )
            .each(&missing, " OR ", |script, (hotel_id, code)| {
                script
                    .sql("(hotel_id = ")
                    .value(hotel_id)
                    .sql(" AND code = ")
                    .value(code)
                    .sql(")");
            })
            .end();
        Some((index, missing))
    }

    fn take_room_types(
        &mut self,
        keys: Vec<RoomKey>,
        rows: &[MySqlRow],
    ) -> Result<(), CommandError> {
        let mut found: HashMap<RoomKey, RoomType> = rows
            .iter()
            .map(room_type_from_row)
            .collect::<Result<_, _>>()?;
        for key in keys {
            let room_type = found.remove(&key);
            self.room_types.insert(key, room_type);
        }
        Ok(())
    }

    /// The nights of each `(room type, stay)` not wholly held yet, asked in
    /// `script`.
    fn ask_nights(
        &self,
        script: &mut Script,
        stays: &[(RoomKey, Stay)],
    ) -> Option<(usize, Vec<(RoomKey, Stay)>)> {
        let missing: Vec<(RoomKey, Stay)> = stays
            .iter()
            .filter(|(key, stay)| {
                let held = self.nights.get(key);
                !stay
                    .nights()
                    .all(|night| held.is_some_and(|h| h.contains_key(&night)))
            })
            .cloned()
            .collect();
        if missing.is_empty() {
            return None;
        }
        let index = script.statements();
        script
            .sql("SELECT hotel_id, code, night, booked, waiting FROM room_nights WHERE ")
            .each(&missing, " OR ", |script, (key, stay)| {
                script
                    .sql("(hotel_id = ")
                    .value(&key.0)
                    .sql(" AND code = ")
                    .value(&key.1)
                    .sql(" AND night >= ")
                    .value(stay.check_in)
                    .sql(" AND night < ")
                    .value(stay.check_out)
                    .sql(")");
            })
            .end();
        Some((index, missing))
    }

    fn take_nights(
        &mut self,
        stays: Vec<(RoomKey, Stay)>,
        rows: &[MySqlRow],
    ) -> Result<(), CommandError> {
        let mut stored: HashMap<(RoomKey, Date), Night> = HashMap::new();
        for row in rows {
            let key: RoomKey = (row.try_get("hotel_id")?, row.try_get("code")?);
            let night = Night {
                booked: row.try_get("booked")?,
                waiting: row.try_get("waiting")?,
                dirty: false,
            };
            stored.insert((key, row.try_get("night")?), night);
        }
        for (key, stay) in stays {
            let held = self.nights.entry(key.clone()).or_default();
            for date in stay.nights() {
                held.entry(date).or_insert_with(|| {
                    stored
                        .get(&(key.clone(), date))
                        .copied()
                        .unwrap_or_default()
                });
            }
        }
        Ok(())
    }

    /// Loads the waitlisted reservations of each `(room type, from, until)`
    /// window not wholly held yet.
    async fn load_waitlists(
        &mut self,
        conn: &mut MySqlConnection,
        today: Date,
        windows: &[(RoomKey, Date, Date)],
    ) -> Result<(), CommandError> {
        let missing: Vec<&(RoomKey, Date, Date)> = windows
            .iter()
            .filter(|(key, from, until)| {
                !self
                    .waitlists
                    .get(key)
                    .is_some_and(|held| held.iter().any(|(f, u)| f <= from && until <= u))
            })
            .collect();
        for chunk in padded_chunks(&missing) {
            let mut select = QueryBuilder::<MySql>::new(format!(
                "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE "
            ));
            let mut terms = select.separated(" OR ");
            for (key, from, until) in chunk.into_iter().copied() {
                terms.push("(hotel_id = ");
                terms.push_bind_unseparated(&key.0);
                terms.push_unseparated(" AND room_type_code = ");
                terms.push_bind_unseparated(&key.1);
                terms.push_unseparated(" AND status = 'WAITLISTED' AND check_in >= ");
                terms.push_bind_unseparated(today);
                terms.push_unseparated(" AND check_in < ");
                terms.push_bind_unseparated(*until);
                terms.push_unseparated(" AND check_out > ");
                terms.push_bind_unseparated(*from);
                terms.push_unseparated(")");
            }
            for row in select.build().fetch_all(&mut *conn).await? {
                let (id, reservation) = reservation_from_row(&row)?;
                self.reservations.entry(id).or_insert(Some(reservation));
            }
        }
        for (key, from, until) in missing {
            self.waitlists
                .entry(key.clone())
                .or_default()
                .push((*from, *until));
        }
        Ok(())
    }
}

/// A waitlisted reservation's place in promotion order: `(priority,
/// booked_position)`, higher priority first, then oldest.
pub type OrderKey = (i32, i64);

/// Whether `a` is promoted before `b`.
fn comes_before(a: OrderKey, b: OrderKey) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The nights from the first candidate's check-in to the last one's
/// check-out.
pub fn span(candidates: &[Waiting]) -> Option<Stay> {
    Some(Stay {
        check_in: candidates.iter().map(|w| w.stay.check_in).min()?,
        check_out: candidates.iter().map(|w| w.stay.check_out).max()?,
    })
}

fn room_type_from_row(row: &MySqlRow) -> Result<(RoomKey, RoomType), sqlx::Error> {
    let key: RoomKey = (row.try_get("hotel_id")?, row.try_get("code")?);
    let room_type = RoomType {
        max_guests: row.try_get("max_guests")?,
        inventory: row.try_get("inventory")?,
        rate: Rate {
            amount_minor: row.try_get("rate_minor")?,
            currency: row.try_get("currency")?,
        },
    };
    Ok((key, room_type))
}

fn reservation_from_row(row: &MySqlRow) -> Result<(String, Reservation), CommandError> {
    let status: String = row.try_get("status")?;
    let reservation = Reservation {
        hotel_id: row.try_get("hotel_id")?,
        code: row.try_get("room_type_code")?,
        stay: Stay {
            check_in: row.try_get("check_in")?,
            check_out: row.try_get("check_out")?,
        },
        status: ReservationStatus::parse(&status)
            .ok_or_else(|| CommandError::Internal(format!("unknown stored status {status}")))?,
        version: row.try_get("version")?,
        priority: row.try_get("priority")?,
        booked_position: row.try_get("booked_position")?,
        new: None,
        dirty: false,
    };
    Ok((row.try_get("reservation_id")?, reservation))
}

fn insert_reservations(
    script: &mut Script,
    rows: &[(&str, &Reservation)],
) -> Result<(), CommandError> {
    if rows.is_empty() {
        return Ok(());
    }
    if rows.iter().any(|(_, r)| r.new.is_none()) {
        return Err(CommandError::Internal(
            "a new reservation lost its booking columns".to_owned(),
        ));
    }
    script
        .sql(
            "INSERT INTO reservations (reservation_id, hotel_id, room_type_code, check_in, \
             check_out, guest_id, guest_name, guest_email, guests, priority, status, \
             total_minor, currency, booked_position, booked_at_ms, version)",
        )
        .values(rows, |row, (id, r)| {
            let new = r.new.as_deref().expect("checked above");
            row.value(*id)
                .value(&r.hotel_id)
                .value(&r.code)
                .value(r.stay.check_in)
                .value(r.stay.check_out)
                .value(&new.guest.guest_id)
                .value(&new.guest.name)
                .value(&new.guest.email)
                .value(new.guests)
                .value(r.priority)
                .value(r.status.as_str())
                .value(new.total.amount_minor)
                .value(&new.total.currency)
                .value(r.booked_position)
                .value(new.booked_at_ms)
                .value(r.version);
        })
        .end();
    Ok(())
}

/// The status changes, as one statement, and a check that it found every
/// row: the statement after it sets the head to -1 (which the constraint
/// `update_found_every_row` refuses, stopping the script before its COMMIT)
/// unless `ROW_COUNT()` says each reservation was found. Each row changes
/// (its version goes up), so rows changed are rows found.
fn update_reservations(script: &mut Script, rows: &[(&str, &Reservation)]) {
    if rows.is_empty() {
        return;
    }
    let when = |script: &mut Script, value: &dyn Fn(&mut Script, &Reservation)| {
        for (id, r) in rows {
            script.sql(" WHEN ").value(*id).sql(" THEN ");
            value(script, r);
        }
    };
    script.sql("UPDATE reservations SET status = CASE reservation_id");
    when(script, &|script, r| {
        script.value(r.status.as_str());
    });
    script.sql(" END, version = CASE reservation_id");
    when(script, &|script, r| {
        script.value(r.version);
    });
    script
        .sql(" END WHERE reservation_id IN (")
        .each(rows, ", ", |script, (id, _)| {
            script.value(*id);
        })
        .sql(")")
        .end();
    script
        .sql("UPDATE event_head SET position = IF(ROW_COUNT() = ")
        .value(rows.len() as i64)
        .sql(", position, -1) WHERE id = 1")
        .end();
}
