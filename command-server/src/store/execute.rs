//! What each command reads and writes, inside the writer's transaction.
//!
//! The transaction already holds the `event_head` lock, so it is the only
//! command transaction running against the database: what it reads is
//! current until it commits. Every function checks all its rules before its
//! first write, so a refused command leaves nothing behind in the batch.

use hotel_common::{dates, pb};
use prost::Message;
use sqlx::MySqlConnection;
use time::Date;
use uuid::Uuid;

use super::{
    events::{NewEvent, event_type},
    precondition,
    script::Script,
    working_set::{self, NewReservation, Reservation, RoomKey, RoomType, WorkingSet},
};
use crate::{
    domain::command::{Command, Reply, ValidCommand},
    domain::{
        ReservationStatus, Stay, rules,
        waitlist::{NightLedger, Waiting, promote_waitlist},
    },
    error::CommandError,
};

/// The state of one batch transaction: positions handed out and events to
/// append at its end.
#[derive(Debug)]
pub struct Batch {
    /// The position the next event gets.
    pub next_position: i64,
    pub events: Vec<NewEvent>,
    /// Commit time recorded in the events.
    pub now_ms: i64,
    pub today: Date,
    /// The head when the batch started: the last committed position.
    pub start_head: i64,
    /// Most log events a room type's stale-read check reads
    /// (`--precondition-scan-limit`).
    pub scan_limit: i64,
}

impl Batch {
    pub fn new(head: i64, now_ms: i64, scan_limit: i64) -> Self {
        Self {
            next_position: head + 1,
            events: Vec::new(),
            now_ms,
            today: dates::today_utc(),
            start_head: head,
            scan_limit,
        }
    }

    /// The last position handed out.
    pub fn head(&self) -> i64 {
        self.next_position - 1
    }

    fn emit(
        &mut self,
        cause: &ValidCommand,
        aggregate: Aggregate<'_>,
        kind: pb::event::Kind,
    ) -> i64 {
        let position = self.next_position;
        self.next_position += 1;
        let (aggregate_kind, aggregate_id, aggregate_version) = match aggregate {
            Aggregate::Hotel { id, version } => ("hotel", id, version),
            Aggregate::Reservation { id, version } => ("reservation", id, version),
        };
        let hotel_id = match &kind {
            pb::event::Kind::HotelRegistered(e) => e.hotel_id.clone(),
            pb::event::Kind::RoomTypeAdded(e) => e.hotel_id.clone(),
            pb::event::Kind::RoomInventoryChanged(e) => e.hotel_id.clone(),
            pb::event::Kind::ReservationConfirmed(e) => booking_hotel(e.booking.as_ref()),
            pb::event::Kind::ReservationWaitlisted(e) => booking_hotel(e.booking.as_ref()),
            pb::event::Kind::ReservationPromoted(e) => e.hotel_id.clone(),
            pb::event::Kind::ReservationCancelled(e) => e.hotel_id.clone(),
            pb::event::Kind::GuestCheckedIn(e) => e.hotel_id.clone(),
            pb::event::Kind::GuestCheckedOut(e) => e.hotel_id.clone(),
        };
        let event_type = event_type(&kind);
        let event = pb::Event { kind: Some(kind) };
        self.events.push(NewEvent {
            position,
            event_id: Uuid::now_v7().to_string(),
            event_type,
            aggregate_kind,
            aggregate_id: aggregate_id.to_owned(),
            aggregate_version,
            hotel_id,
            command_id: cause.command_id.to_string(),
            correlation_id: cause.correlation_id.clone(),
            occurred_at_ms: self.now_ms,
            payload: event.encode_to_vec(),
            event,
        });
        position
    }
}

fn booking_hotel(booking: Option<&pb::Booking>) -> String {
    booking.map(|b| b.hotel_id.clone()).unwrap_or_default()
}

enum Aggregate<'a> {
    Hotel { id: &'a str, version: i64 },
    Reservation { id: &'a str, version: i64 },
}

/// Runs one command in the batch transaction. Bookings, cancellations,
/// check-ins and check-outs work on the batch's [`WorkingSet`]; the rare
/// commands that change hotels and room types write with their own
/// statements, after the working set is written back and forgotten.
pub async fn execute(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
) -> Result<Reply, CommandError> {
    precondition::check(conn, rows, batch, cmd).await?;
    match &cmd.command {
        Command::RegisterHotel {
            hotel_id,
            name,
            city,
        } => {
            start_own_statements(conn, rows).await?;
            register_hotel(conn, batch, cmd, hotel_id, name, city).await
        }
        Command::AddRoomType {
            hotel_id,
            code,
            name,
            max_guests,
            inventory,
            rate,
        } => {
            start_own_statements(conn, rows).await?;
            let room_type = RoomType {
                max_guests: *max_guests,
                inventory: *inventory,
                rate: rate.clone(),
            };
            add_room_type(conn, batch, cmd, hotel_id, code, name, &room_type).await
        }
        Command::SetRoomInventory {
            hotel_id,
            code,
            inventory,
        } => {
            start_own_statements(conn, rows).await?;
            set_room_inventory(conn, rows, batch, cmd, hotel_id, code, *inventory).await
        }
        Command::BookRoom {
            hotel_id,
            code,
            stay,
            guest,
            guests,
            priority,
        } => {
            let booking = Booking {
                key: (hotel_id.clone(), code.clone()),
                stay: *stay,
                guest,
                guests: *guests,
                priority: *priority,
            };
            book_room(conn, rows, batch, cmd, booking).await
        }
        Command::CancelReservation {
            reservation_id,
            reason,
        } => cancel_reservation(conn, rows, batch, cmd, reservation_id, reason).await,
        Command::CheckIn { reservation_id } => {
            check_in(conn, rows, batch, cmd, reservation_id).await
        }
        Command::CheckOut { reservation_id } => {
            check_out(conn, rows, batch, cmd, reservation_id).await
        }
    }
}

/// Before a command that writes with its own statements: the database gets
/// the batch's changes so far, and the working set lets go of rows that
/// command may change.
async fn start_own_statements(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
) -> Result<(), CommandError> {
    let mut writes = Script::new();
    rows.flush(&mut writes)?;
    writes.run(conn).await.map_err(|failed| failed.error)?;
    rows.forget();
    Ok(())
}

async fn register_hotel(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    name: &str,
    city: &str,
) -> Result<Reply, CommandError> {
    let insert =
        sqlx::query("INSERT INTO hotels (hotel_id, name, city, version) VALUES (?, ?, ?, 1)")
            .bind(hotel_id)
            .bind(name)
            .bind(city);
    if !insert_new(conn, insert).await? {
        return Err(CommandError::AlreadyExists(format!(
            "hotel {hotel_id} already exists"
        )));
    }
    let event = pb::HotelRegistered {
        hotel_id: hotel_id.to_owned(),
        name: name.to_owned(),
        city: city.to_owned(),
    };
    let position = batch.emit(
        cmd,
        Aggregate::Hotel {
            id: hotel_id,
            version: 1,
        },
        pb::event::Kind::HotelRegistered(event),
    );
    Ok(Reply::RegisterHotel(pb::RegisterHotelResponse {
        hotel_id: hotel_id.to_owned(),
        position,
        replayed: false,
    }))
}

/// Runs an insert of a new row; `false` when its key exists. A plain
/// insert, not `INSERT IGNORE`, which would also turn a value too long into
/// a silently cut row.
async fn insert_new(
    conn: &mut MySqlConnection,
    insert: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
) -> Result<bool, CommandError> {
    match insert.execute(&mut *conn).await {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// A hotel's version; `NOT_FOUND` when it does not exist.
pub(super) async fn hotel_version(
    conn: &mut MySqlConnection,
    hotel_id: &str,
) -> Result<i64, CommandError> {
    sqlx::query_scalar("SELECT version FROM hotels WHERE hotel_id = ?")
        .bind(hotel_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| CommandError::NotFound(format!("hotel {hotel_id} does not exist")))
}

async fn bump_hotel_version(
    conn: &mut MySqlConnection,
    hotel_id: &str,
    version: i64,
) -> Result<(), CommandError> {
    sqlx::query("UPDATE hotels SET version = ? WHERE hotel_id = ?")
        .bind(version)
        .bind(hotel_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn add_room_type(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    code: &str,
    name: &str,
    room_type: &RoomType,
) -> Result<Reply, CommandError> {
    let RoomType {
        max_guests,
        inventory,
        rate,
    } = room_type;
    let (max_guests, inventory) = (*max_guests, *inventory);
    let version = hotel_version(conn, hotel_id).await? + 1;
    let insert = sqlx::query(
        "INSERT INTO room_types (hotel_id, code, name, max_guests, inventory, rate_minor, currency) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(hotel_id)
    .bind(code)
    .bind(name)
    .bind(max_guests)
    .bind(inventory)
    .bind(rate.amount_minor)
    .bind(&rate.currency);
    if !insert_new(conn, insert).await? {
        return Err(CommandError::AlreadyExists(format!(
            "hotel {hotel_id} already has a room type {code}"
        )));
    }
    bump_hotel_version(conn, hotel_id, version).await?;
    let event = pb::RoomTypeAdded {
        hotel_id: hotel_id.to_owned(),
        code: code.to_owned(),
        name: name.to_owned(),
        max_guests,
        inventory,
        nightly_rate: Some(rate.to_pb()),
    };
    let position = batch.emit(
        cmd,
        Aggregate::Hotel {
            id: hotel_id,
            version,
        },
        pb::event::Kind::RoomTypeAdded(event),
    );
    Ok(Reply::AddRoomType(pb::AddRoomTypeResponse {
        position,
        replayed: false,
    }))
}

async fn set_room_inventory(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    code: &str,
    inventory: i32,
) -> Result<Reply, CommandError> {
    let version = hotel_version(conn, hotel_id).await? + 1;
    let current = rows.room_type(conn, hotel_id, code).await?;
    let most_booked: i32 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(MAX(booked), 0) AS INT) FROM room_nights WHERE hotel_id = ? AND code = ?",
    )
    .bind(hotel_id)
    .bind(code)
    .fetch_one(&mut *conn)
    .await?;
    rules::check_inventory_change(inventory, most_booked).map_err(CommandError::Rejected)?;

    sqlx::query("UPDATE room_types SET inventory = ? WHERE hotel_id = ? AND code = ?")
        .bind(inventory)
        .bind(hotel_id)
        .bind(code)
        .execute(&mut *conn)
        .await?;
    // The room type just read is out of date.
    rows.forget();
    bump_hotel_version(conn, hotel_id, version).await?;
    let event = pb::RoomInventoryChanged {
        hotel_id: hotel_id.to_owned(),
        room_type_code: code.to_owned(),
        previous_inventory: current.inventory,
        inventory,
    };
    let mut position = batch.emit(
        cmd,
        Aggregate::Hotel {
            id: hotel_id,
            version,
        },
        pb::event::Kind::RoomInventoryChanged(event),
    );
    let mut promoted_reservation_ids = Vec::new();
    if inventory > current.inventory {
        let key = (hotel_id.to_owned(), code.to_owned());
        // Every future night is a candidate.
        let window = (batch.today, Date::MAX);
        let promoted = promote(conn, rows, batch, cmd, &key, inventory, window).await?;
        if let Some(last) = promoted.last_position {
            position = last;
        }
        promoted_reservation_ids = promoted.reservation_ids;
    }
    Ok(Reply::SetRoomInventory(pb::SetRoomInventoryResponse {
        position,
        promoted_reservation_ids,
        replayed: false,
    }))
}

/// A BookRoom command's fields.
struct Booking<'a> {
    key: RoomKey,
    stay: Stay,
    guest: &'a pb::Guest,
    guests: i32,
    priority: i32,
}

async fn book_room(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    booking: Booking<'_>,
) -> Result<Reply, CommandError> {
    let Booking {
        key,
        stay,
        guest,
        guests,
        priority,
    } = booking;
    let (hotel_id, code) = (&key.0, &key.1);
    // Judged on the day it runs: a queued booking may have waited past
    // midnight since it was accepted.
    if let Some((field, reason)) = rules::stay_date_violations(&stay, batch.today)
        .into_iter()
        .next()
    {
        return Err(CommandError::InvalidField {
            field: field.to_owned(),
            reason,
        });
    }
    let room_type = rows.room_type(conn, hotel_id, code).await?;
    if guests > room_type.max_guests {
        return Err(CommandError::InvalidField {
            field: "guests".to_owned(),
            reason: format!(
                "room type {code} holds at most {} guests, asked for {guests}",
                room_type.max_guests
            ),
        });
    }
    let per_night = rows.booked(conn, &key, stay).await?;
    let status = if rules::room_free_every_night(&per_night, room_type.inventory) {
        ReservationStatus::Confirmed
    } else {
        ReservationStatus::Waitlisted
    };
    let total = room_type.rate.total_for(&stay);
    let reservation_id = Uuid::now_v7().to_string();
    let position = batch.next_position;

    match status {
        ReservationStatus::Confirmed => rows.add_to_nights(conn, &key, stay, 1, 0).await?,
        _ => rows.add_to_nights(conn, &key, stay, 0, 1).await?,
    }
    rows.insert_reservation(
        reservation_id.clone(),
        Reservation::booked(
            key.clone(),
            stay,
            status,
            priority,
            position,
            NewReservation {
                guest: guest.clone(),
                guests,
                total: total.clone(),
                booked_at_ms: batch.now_ms,
            },
        ),
    );

    let booking = pb::Booking {
        reservation_id: reservation_id.clone(),
        hotel_id: hotel_id.clone(),
        room_type_code: code.clone(),
        check_in: dates::format(stay.check_in),
        check_out: dates::format(stay.check_out),
        guest: Some(guest.clone()),
        guests,
        priority,
        total_price: Some(total.to_pb()),
        booked_at: Some(hotel_common::timestamp_from_millis(batch.now_ms)),
    };
    let event = match status {
        ReservationStatus::Confirmed => {
            pb::event::Kind::ReservationConfirmed(pb::ReservationConfirmed {
                booking: Some(booking),
            })
        }
        _ => pb::event::Kind::ReservationWaitlisted(pb::ReservationWaitlisted {
            booking: Some(booking),
        }),
    };
    let emitted = batch.emit(
        cmd,
        Aggregate::Reservation {
            id: &reservation_id,
            version: 1,
        },
        event,
    );
    debug_assert_eq!(emitted, position);
    Ok(Reply::BookRoom(pb::BookRoomResponse {
        reservation_id,
        status: status.to_pb() as i32,
        total_price: Some(total.to_pb()),
        position,
        replayed: false,
    }))
}

async fn cancel_reservation(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    reservation_id: &str,
    reason: &str,
) -> Result<Reply, CommandError> {
    let stored = rows.reservation(conn, reservation_id).await?;
    rules::check_cancel(stored.status).map_err(CommandError::Rejected)?;
    let (key, stay, previous) = (
        (stored.hotel_id.clone(), stored.code.clone()),
        stored.stay,
        stored.status,
    );
    // Read before the first change, so a failure changes nothing.
    // The room it frees, and which of its nights were full before.
    let freed = if previous.holds_rooms() {
        let inventory = rows.room_type(conn, &key.0, &key.1).await?.inventory;
        let booked = rows.booked(conn, &key, stay).await?;
        let was_full: Vec<Date> = stay
            .nights()
            .zip(booked)
            .filter(|(_, booked)| *booked >= inventory)
            .map(|(night, _)| night)
            .collect();
        Some((inventory, was_full))
    } else {
        None
    };
    if previous.holds_rooms() {
        rows.add_to_nights(conn, &key, stay, -1, 0).await?;
    } else {
        rows.add_to_nights(conn, &key, stay, 0, -1).await?;
    }
    let version = rows.set_status(reservation_id, ReservationStatus::Cancelled)?;
    let event = pb::ReservationCancelled {
        reservation_id: reservation_id.to_owned(),
        hotel_id: key.0.clone(),
        room_type_code: key.1.clone(),
        check_in: dates::format(stay.check_in),
        check_out: dates::format(stay.check_out),
        previous_status: previous.to_pb() as i32,
        reason: reason.to_owned(),
    };
    let mut position = batch.emit(
        cmd,
        Aggregate::Reservation {
            id: reservation_id,
            version,
        },
        pb::event::Kind::ReservationCancelled(event),
    );
    let mut promoted_reservation_ids = Vec::new();
    if let Some((inventory, was_full)) = freed {
        let freed = Freed {
            key: &key,
            inventory,
            stay,
            was_full,
        };
        let promoted = promote_freed(conn, rows, batch, cmd, freed).await?;
        if let Some(last) = promoted.last_position {
            position = last;
        }
        promoted_reservation_ids = promoted.reservation_ids;
    }
    Ok(Reply::CancelReservation(pb::CancelReservationResponse {
        position,
        promoted_reservation_ids,
        replayed: false,
    }))
}

async fn check_in(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    reservation_id: &str,
) -> Result<Reply, CommandError> {
    let today = batch.today;
    let position = move_stay(
        (conn, rows, batch, cmd),
        reservation_id,
        ReservationStatus::CheckedIn,
        |stored| rules::check_check_in(stored.status, &stored.stay, today),
        |reservation_id, hotel_id, room_type_code| {
            pb::event::Kind::GuestCheckedIn(pb::GuestCheckedIn {
                reservation_id,
                hotel_id,
                room_type_code,
            })
        },
    )
    .await?;
    Ok(Reply::CheckIn(pb::CheckInResponse {
        position,
        replayed: false,
    }))
}

async fn check_out(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    reservation_id: &str,
) -> Result<Reply, CommandError> {
    let position = move_stay(
        (conn, rows, batch, cmd),
        reservation_id,
        ReservationStatus::CheckedOut,
        |stored| rules::check_check_out(stored.status),
        |reservation_id, hotel_id, room_type_code| {
            pb::event::Kind::GuestCheckedOut(pb::GuestCheckedOut {
                reservation_id,
                hotel_id,
                room_type_code,
            })
        },
    )
    .await?;
    Ok(Reply::CheckOut(pb::CheckOutResponse {
        position,
        replayed: false,
    }))
}

/// A check-in or check-out: moves the reservation to `status` once `rule`
/// allows it (else `Rejected`, nothing changed), and emits the event `kind`
/// makes of its id, hotel and room type. Returns the event's position.
async fn move_stay(
    (conn, rows, batch, cmd): (
        &mut MySqlConnection,
        &mut WorkingSet,
        &mut Batch,
        &ValidCommand,
    ),
    reservation_id: &str,
    status: ReservationStatus,
    rule: impl FnOnce(&Reservation) -> Result<(), String>,
    kind: impl FnOnce(String, String, String) -> pb::event::Kind,
) -> Result<i64, CommandError> {
    let stored = rows.reservation(conn, reservation_id).await?;
    rule(stored).map_err(CommandError::Rejected)?;
    let (hotel_id, room_type_code) = (stored.hotel_id.clone(), stored.code.clone());
    let version = rows.set_status(reservation_id, status)?;
    Ok(batch.emit(
        cmd,
        Aggregate::Reservation {
            id: reservation_id,
            version,
        },
        kind(reservation_id.to_owned(), hotel_id, room_type_code),
    ))
}

/// What a promotion round did.
#[derive(Default)]
struct Promoted {
    reservation_ids: Vec<String>,
    last_position: Option<i64>,
}

/// Confirms the waitlisted reservations of a room type that now fit, among
/// all those overlapping `window` (`[from, until)`) that start today or
/// later. For an inventory rise, which can make room for any of them.
async fn promote(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    key: &RoomKey,
    inventory: i32,
    (from, until): (Date, Date),
) -> Result<Promoted, CommandError> {
    let mut promoted = Promoted::default();
    let candidates = rows.waitlist(conn, batch.today, key, from, until).await?;
    confirm(
        conn,
        rows,
        batch,
        cmd,
        key,
        inventory,
        candidates,
        &mut promoted,
    )
    .await?;
    Ok(promoted)
}

/// The room a cancellation gave back.
struct Freed<'a> {
    key: &'a RoomKey,
    inventory: i32,
    stay: Stay,
    /// Its nights that were fully booked before it was cancelled.
    was_full: Vec<Date>,
}

/// Waitlisted reservations read per page when a cancellation promotes.
const PROMOTION_PAGE: usize = 32;

/// Most waitlisted reservations overlapping a freed stay that a
/// cancellation reads all at once, by date; with more, it reads pages in
/// promotion order (they overlap densely, so pages fill fast).
const OVERLAPPING_READ_AT_ONCE: usize = 256;

/// Confirms the waitlisted reservations that fit now that `freed` gave its
/// room back.
///
/// No waitlisted reservation fitted before (every cancellation and
/// inventory rise promotes all that fit; tests check it), so one that fits
/// now needs a night that was full and has a room again, and overlaps the
/// freed stay. When no night was full, nobody can move up and the list is
/// not read. When at most [`OVERLAPPING_READ_AT_ONCE`] waiters overlap the
/// stay, they are read at once by date and decided in one pass. Otherwise
/// (a crowded stay: under contention a waiting list holds thousands) the
/// list is read a page at a time in promotion order, and reading stops once
/// the full nights are full again, since nobody else can move up then.
async fn promote_freed(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    freed: Freed<'_>,
) -> Result<Promoted, CommandError> {
    let Freed {
        key,
        inventory,
        stay,
        was_full,
    } = freed;
    let mut promoted = Promoted::default();
    let window = (stay.check_in, stay.check_out);
    if rows.all_full(key, &was_full, inventory) {
        return Ok(promoted);
    }
    if rows
        .load_overlapping_waitlist(conn, batch.today, key, window, OVERLAPPING_READ_AT_ONCE)
        .await?
    {
        // Every waiter that could move up is held: one pass, in order.
        let candidates = rows.waitlisted_between(batch.today, key, window, None, None);
        confirm(
            conn,
            rows,
            batch,
            cmd,
            key,
            inventory,
            candidates,
            &mut promoted,
        )
        .await?;
        return Ok(promoted);
    }
    let mut after = None;
    while !rows.all_full(key, &was_full, inventory) {
        let (through, more) = rows
            .load_waitlist_page(conn, batch.today, key, window, after, PROMOTION_PAGE)
            .await?;
        // This page, with the reservations booked in this batch that sort
        // among it (all the rest, on the last page).
        let bound = if more { through } else { None };
        let candidates = rows.waitlisted_between(batch.today, key, window, after, bound);
        confirm(
            conn,
            rows,
            batch,
            cmd,
            key,
            inventory,
            candidates,
            &mut promoted,
        )
        .await?;
        if !more {
            break;
        }
        after = through;
    }
    Ok(promoted)
}

/// Confirms, in promotion order, the `candidates` whose every night has a
/// room, and records them in `promoted`.
#[allow(clippy::too_many_arguments)]
async fn confirm(
    conn: &mut MySqlConnection,
    rows: &mut WorkingSet,
    batch: &mut Batch,
    cmd: &ValidCommand,
    key: &RoomKey,
    inventory: i32,
    candidates: Vec<Waiting>,
    promoted: &mut Promoted,
) -> Result<(), CommandError> {
    let Some(span) = working_set::span(&candidates) else {
        return Ok(());
    };
    let mut ledger = NightLedger {
        inventory,
        booked: rows.ledger(conn, key, span).await?,
    };
    for waiting in promote_waitlist(&mut ledger, candidates) {
        rows.add_to_nights(conn, key, waiting.stay, 1, -1).await?;
        let version = rows.set_status(&waiting.reservation_id, ReservationStatus::Confirmed)?;
        let event = pb::ReservationPromoted {
            reservation_id: waiting.reservation_id.clone(),
            hotel_id: key.0.clone(),
            room_type_code: key.1.clone(),
            check_in: dates::format(waiting.stay.check_in),
            check_out: dates::format(waiting.stay.check_out),
        };
        promoted.last_position = Some(batch.emit(
            cmd,
            Aggregate::Reservation {
                id: &waiting.reservation_id,
                version,
            },
            pb::event::Kind::ReservationPromoted(event),
        ));
        promoted.reservation_ids.push(waiting.reservation_id);
    }
    Ok(())
}
