//! What each command reads and writes, inside the writer's transaction.
//!
//! The transaction already holds the `event_head` lock, so it is the only
//! command transaction running against the database: what it reads is
//! current until it commits. Every function checks all its rules before its
//! first write, so a refused command leaves nothing behind in the batch.

use std::collections::BTreeMap;

use hotel_common::{dates, pb};
use prost::Message;
use sqlx::{MySqlConnection, Row};
use time::Date;
use uuid::Uuid;

use super::events::{NewEvent, event_type};
use crate::{
    commands::{Command, Reply, ValidCommand},
    domain::{
        Rate, ReservationStatus, Stay, rules,
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
}

impl Batch {
    pub fn new(head: i64, now_ms: i64) -> Self {
        Self {
            next_position: head + 1,
            events: Vec::new(),
            now_ms,
            today: dates::today_utc(),
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
        self.events.push(NewEvent {
            position,
            event_id: Uuid::new_v4().to_string(),
            event_type,
            aggregate_kind,
            aggregate_id: aggregate_id.to_owned(),
            aggregate_version,
            hotel_id,
            command_id: cause.command_id.to_string(),
            correlation_id: cause.correlation_id.clone(),
            occurred_at_ms: self.now_ms,
            payload: pb::Event { kind: Some(kind) }.encode_to_vec(),
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

/// Runs one command in the batch transaction.
pub async fn execute(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
) -> Result<Reply, CommandError> {
    match &cmd.command {
        Command::RegisterHotel {
            hotel_id,
            name,
            city,
        } => register_hotel(conn, batch, cmd, hotel_id, name, city).await,
        Command::AddRoomType {
            hotel_id,
            code,
            name,
            max_guests,
            inventory,
            rate,
        } => {
            add_room_type(
                conn,
                batch,
                cmd,
                hotel_id,
                code,
                name,
                *max_guests,
                *inventory,
                rate,
            )
            .await
        }
        Command::SetRoomInventory {
            hotel_id,
            code,
            inventory,
        } => set_room_inventory(conn, batch, cmd, hotel_id, code, *inventory).await,
        Command::BookRoom {
            hotel_id,
            code,
            stay,
            guest,
            guests,
            priority,
        } => {
            book_room(
                conn, batch, cmd, hotel_id, code, stay, guest, *guests, *priority,
            )
            .await
        }
        Command::CancelReservation {
            reservation_id,
            reason,
        } => cancel_reservation(conn, batch, cmd, reservation_id, reason).await,
        Command::CheckIn { reservation_id } => check_in(conn, batch, cmd, reservation_id).await,
        Command::CheckOut { reservation_id } => check_out(conn, batch, cmd, reservation_id).await,
    }
}

async fn register_hotel(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    name: &str,
    city: &str,
) -> Result<Reply, CommandError> {
    let inserted = sqlx::query(
        "INSERT IGNORE INTO hotels (hotel_id, name, city, version) VALUES (?, ?, ?, 1)",
    )
    .bind(hotel_id)
    .bind(name)
    .bind(city)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
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

async fn hotel_version(conn: &mut MySqlConnection, hotel_id: &str) -> Result<i64, CommandError> {
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

#[allow(clippy::too_many_arguments)]
async fn add_room_type(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    code: &str,
    name: &str,
    max_guests: i32,
    inventory: i32,
    rate: &Rate,
) -> Result<Reply, CommandError> {
    let version = hotel_version(conn, hotel_id).await? + 1;
    let inserted = sqlx::query(
        "INSERT IGNORE INTO room_types (hotel_id, code, name, max_guests, inventory, rate_minor, currency) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(hotel_id)
    .bind(code)
    .bind(name)
    .bind(max_guests)
    .bind(inventory)
    .bind(rate.amount_minor)
    .bind(&rate.currency)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
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

/// A room type as the write model holds it.
struct RoomType {
    max_guests: i32,
    inventory: i32,
    rate: Rate,
}

async fn room_type(
    conn: &mut MySqlConnection,
    hotel_id: &str,
    code: &str,
) -> Result<RoomType, CommandError> {
    let row = sqlx::query(
        "SELECT max_guests, inventory, rate_minor, currency FROM room_types WHERE hotel_id = ? AND code = ?",
    )
    .bind(hotel_id)
    .bind(code)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| CommandError::NotFound(format!("hotel {hotel_id} has no room type {code}")))?;
    Ok(RoomType {
        max_guests: row.try_get("max_guests")?,
        inventory: row.try_get("inventory")?,
        rate: Rate {
            amount_minor: row.try_get("rate_minor")?,
            currency: row.try_get("currency")?,
        },
    })
}

async fn set_room_inventory(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    code: &str,
    inventory: i32,
) -> Result<Reply, CommandError> {
    let version = hotel_version(conn, hotel_id).await? + 1;
    let current = room_type(conn, hotel_id, code).await?;
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
        let promoted = promote(conn, batch, cmd, hotel_id, code, inventory, None).await?;
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

/// Rooms booked per night of `stay` (0 for nights without a row).
async fn booked_per_night(
    conn: &mut MySqlConnection,
    hotel_id: &str,
    code: &str,
    from: Date,
    until: Date,
) -> Result<BTreeMap<Date, i32>, CommandError> {
    let rows = sqlx::query(
        "SELECT night, booked FROM room_nights WHERE hotel_id = ? AND code = ? AND night >= ? AND night < ?",
    )
    .bind(hotel_id)
    .bind(code)
    .bind(from)
    .bind(until)
    .fetch_all(&mut *conn)
    .await?;
    let mut booked = BTreeMap::new();
    for row in rows {
        booked.insert(
            row.try_get::<Date, _>("night")?,
            row.try_get::<i32, _>("booked")?,
        );
    }
    Ok(booked)
}

/// Adds `(booked, waiting)` deltas to nights. Nights that only gain are
/// upserted (created when missing); nights that lose already have a row and
/// are updated in place, so the `>= 0` checks never see a negative insert.
async fn add_to_nights(
    conn: &mut MySqlConnection,
    hotel_id: &str,
    code: &str,
    deltas: &BTreeMap<Date, (i32, i32)>,
) -> Result<(), CommandError> {
    let (gains, losses): (Vec<_>, Vec<_>) = deltas
        .iter()
        .partition(|(_, (booked, waiting))| *booked >= 0 && *waiting >= 0);
    if !gains.is_empty() {
        let mut upsert = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "INSERT INTO room_nights (hotel_id, code, night, booked, waiting) ",
        );
        upsert.push_values(&gains, |mut row, (night, (booked, waiting))| {
            row.push_bind(hotel_id)
                .push_bind(code)
                .push_bind(**night)
                .push_bind(*booked)
                .push_bind(*waiting);
        });
        upsert.push(
            " ON DUPLICATE KEY UPDATE booked = booked + VALUES(booked), waiting = waiting + VALUES(waiting)",
        );
        upsert.build().execute(&mut *conn).await?;
    }
    if !losses.is_empty() {
        let mut update = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "UPDATE room_nights SET booked = booked + CASE night",
        );
        for (night, (booked, _)) in &losses {
            update
                .push(" WHEN ")
                .push_bind(**night)
                .push(" THEN ")
                .push_bind(*booked);
        }
        update.push(" ELSE 0 END, waiting = waiting + CASE night");
        for (night, (_, waiting)) in &losses {
            update
                .push(" WHEN ")
                .push_bind(**night)
                .push(" THEN ")
                .push_bind(*waiting);
        }
        update
            .push(" ELSE 0 END WHERE hotel_id = ")
            .push_bind(hotel_id);
        update
            .push(" AND code = ")
            .push_bind(code)
            .push(" AND night IN (");
        let mut nights = update.separated(", ");
        for (night, _) in &losses {
            nights.push_bind(**night);
        }
        update.push(")");
        let updated = update.build().execute(&mut *conn).await?;
        if updated.rows_affected() != losses.len() as u64 {
            return Err(CommandError::Internal(format!(
                "{} of {} nights of {hotel_id}/{code} to release were missing",
                losses.len() as u64 - updated.rows_affected(),
                losses.len()
            )));
        }
    }
    Ok(())
}

fn stay_deltas(stay: &Stay, booked: i32, waiting: i32) -> BTreeMap<Date, (i32, i32)> {
    stay.nights()
        .map(|night| (night, (booked, waiting)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn book_room(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    code: &str,
    stay: &Stay,
    guest: &pb::Guest,
    guests: i32,
    priority: i32,
) -> Result<Reply, CommandError> {
    let room_type = room_type(conn, hotel_id, code).await?;
    if guests > room_type.max_guests {
        return Err(CommandError::InvalidField {
            field: "guests".to_owned(),
            reason: format!(
                "room type {code} holds at most {} guests, asked for {guests}",
                room_type.max_guests
            ),
        });
    }
    let booked = booked_per_night(conn, hotel_id, code, stay.check_in, stay.check_out).await?;
    let per_night: Vec<i32> = stay
        .nights()
        .map(|night| booked.get(&night).copied().unwrap_or(0))
        .collect();
    let status = if rules::room_free_every_night(&per_night, room_type.inventory) {
        ReservationStatus::Confirmed
    } else {
        ReservationStatus::Waitlisted
    };
    let total = room_type.rate.total_for(stay);
    let reservation_id = Uuid::new_v4().to_string();
    let position = batch.next_position;

    sqlx::query(
        "INSERT INTO reservations (reservation_id, hotel_id, room_type_code, check_in, check_out, \
         guest_id, guest_name, guest_email, guests, priority, status, total_minor, currency, \
         booked_position, booked_at_ms, version) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
    )
    .bind(&reservation_id)
    .bind(hotel_id)
    .bind(code)
    .bind(stay.check_in)
    .bind(stay.check_out)
    .bind(&guest.guest_id)
    .bind(&guest.name)
    .bind(&guest.email)
    .bind(guests)
    .bind(priority)
    .bind(status.as_str())
    .bind(total.amount_minor)
    .bind(&total.currency)
    .bind(position)
    .bind(batch.now_ms)
    .execute(&mut *conn)
    .await?;
    let deltas = match status {
        ReservationStatus::Confirmed => stay_deltas(stay, 1, 0),
        _ => stay_deltas(stay, 0, 1),
    };
    add_to_nights(conn, hotel_id, code, &deltas).await?;

    let booking = pb::Booking {
        reservation_id: reservation_id.clone(),
        hotel_id: hotel_id.to_owned(),
        room_type_code: code.to_owned(),
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

/// A reservation as the write model holds it.
struct StoredReservation {
    hotel_id: String,
    code: String,
    stay: Stay,
    status: ReservationStatus,
    version: i64,
}

async fn reservation(
    conn: &mut MySqlConnection,
    reservation_id: &str,
) -> Result<StoredReservation, CommandError> {
    let row = sqlx::query(
        "SELECT hotel_id, room_type_code, check_in, check_out, status, version \
         FROM reservations WHERE reservation_id = ?",
    )
    .bind(reservation_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        CommandError::NotFound(format!("reservation {reservation_id} does not exist"))
    })?;
    let status: String = row.try_get("status")?;
    Ok(StoredReservation {
        hotel_id: row.try_get("hotel_id")?,
        code: row.try_get("room_type_code")?,
        stay: Stay {
            check_in: row.try_get("check_in")?,
            check_out: row.try_get("check_out")?,
        },
        status: ReservationStatus::parse(&status)
            .ok_or_else(|| CommandError::Internal(format!("unknown stored status {status}")))?,
        version: row.try_get("version")?,
    })
}

async fn set_status(
    conn: &mut MySqlConnection,
    reservation_id: &str,
    status: ReservationStatus,
    version: i64,
) -> Result<(), CommandError> {
    sqlx::query("UPDATE reservations SET status = ?, version = ? WHERE reservation_id = ?")
        .bind(status.as_str())
        .bind(version)
        .bind(reservation_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn cancel_reservation(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    reservation_id: &str,
    reason: &str,
) -> Result<Reply, CommandError> {
    let stored = reservation(conn, reservation_id).await?;
    rules::check_cancel(stored.status).map_err(CommandError::Rejected)?;
    let version = stored.version + 1;
    set_status(conn, reservation_id, ReservationStatus::Cancelled, version).await?;
    let deltas = if stored.status.holds_rooms() {
        stay_deltas(&stored.stay, -1, 0)
    } else {
        stay_deltas(&stored.stay, 0, -1)
    };
    add_to_nights(conn, &stored.hotel_id, &stored.code, &deltas).await?;
    let event = pb::ReservationCancelled {
        reservation_id: reservation_id.to_owned(),
        hotel_id: stored.hotel_id.clone(),
        room_type_code: stored.code.clone(),
        check_in: dates::format(stored.stay.check_in),
        check_out: dates::format(stored.stay.check_out),
        previous_status: stored.status.to_pb() as i32,
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
    if stored.status.holds_rooms() {
        let inventory = room_type(conn, &stored.hotel_id, &stored.code)
            .await?
            .inventory;
        let promoted = promote(
            conn,
            batch,
            cmd,
            &stored.hotel_id,
            &stored.code,
            inventory,
            Some(&stored.stay),
        )
        .await?;
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
    batch: &mut Batch,
    cmd: &ValidCommand,
    reservation_id: &str,
) -> Result<Reply, CommandError> {
    let stored = reservation(conn, reservation_id).await?;
    rules::check_check_in(stored.status, &stored.stay, batch.today)
        .map_err(CommandError::Rejected)?;
    let version = stored.version + 1;
    set_status(conn, reservation_id, ReservationStatus::CheckedIn, version).await?;
    let event = pb::GuestCheckedIn {
        reservation_id: reservation_id.to_owned(),
        hotel_id: stored.hotel_id,
        room_type_code: stored.code,
    };
    let position = batch.emit(
        cmd,
        Aggregate::Reservation {
            id: reservation_id,
            version,
        },
        pb::event::Kind::GuestCheckedIn(event),
    );
    Ok(Reply::CheckIn(pb::CheckInResponse {
        position,
        replayed: false,
    }))
}

async fn check_out(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    reservation_id: &str,
) -> Result<Reply, CommandError> {
    let stored = reservation(conn, reservation_id).await?;
    rules::check_check_out(stored.status).map_err(CommandError::Rejected)?;
    let version = stored.version + 1;
    set_status(conn, reservation_id, ReservationStatus::CheckedOut, version).await?;
    let event = pb::GuestCheckedOut {
        reservation_id: reservation_id.to_owned(),
        hotel_id: stored.hotel_id,
        room_type_code: stored.code,
    };
    let position = batch.emit(
        cmd,
        Aggregate::Reservation {
            id: reservation_id,
            version,
        },
        pb::event::Kind::GuestCheckedOut(event),
    );
    Ok(Reply::CheckOut(pb::CheckOutResponse {
        position,
        replayed: false,
    }))
}

/// What a promotion round did.
struct Promoted {
    reservation_ids: Vec<String>,
    last_position: Option<i64>,
}

/// Confirms the waitlisted reservations of a room type that now fit: those
/// overlapping `freed` when given, else all of them (from today on).
async fn promote(
    conn: &mut MySqlConnection,
    batch: &mut Batch,
    cmd: &ValidCommand,
    hotel_id: &str,
    code: &str,
    inventory: i32,
    freed: Option<&Stay>,
) -> Result<Promoted, CommandError> {
    // Without a window, every future night is a candidate.
    let (window_from, window_until) = match freed {
        Some(stay) => (stay.check_in, stay.check_out),
        None => (batch.today, Date::MAX),
    };
    let rows = sqlx::query(
        "SELECT reservation_id, priority, booked_position, check_in, check_out, version \
         FROM reservations \
         WHERE hotel_id = ? AND room_type_code = ? AND status = 'WAITLISTED' \
           AND check_in >= ? AND check_in < ? AND check_out > ?",
    )
    .bind(hotel_id)
    .bind(code)
    .bind(batch.today)
    .bind(window_until)
    .bind(window_from)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Promoted {
            reservation_ids: Vec::new(),
            last_position: None,
        });
    }
    let mut candidates = Vec::with_capacity(rows.len());
    let mut versions = BTreeMap::new();
    for row in &rows {
        let id: String = row.try_get("reservation_id")?;
        versions.insert(id.clone(), row.try_get::<i64, _>("version")?);
        candidates.push(Waiting {
            reservation_id: id,
            priority: row.try_get("priority")?,
            booked_position: row.try_get("booked_position")?,
            stay: Stay {
                check_in: row.try_get("check_in")?,
                check_out: row.try_get("check_out")?,
            },
        });
    }
    let from = candidates
        .iter()
        .map(|w| w.stay.check_in)
        .min()
        .unwrap_or(batch.today);
    let until = candidates
        .iter()
        .map(|w| w.stay.check_out)
        .max()
        .unwrap_or(batch.today);
    let mut ledger = NightLedger {
        inventory,
        booked: booked_per_night(conn, hotel_id, code, from, until).await?,
    };
    let promoted = promote_waitlist(&mut ledger, candidates);
    if promoted.is_empty() {
        return Ok(Promoted {
            reservation_ids: Vec::new(),
            last_position: None,
        });
    }

    let mut update = sqlx::QueryBuilder::<sqlx::MySql>::new(
        "UPDATE reservations SET status = 'CONFIRMED', version = version + 1 WHERE reservation_id IN (",
    );
    let mut ids = update.separated(", ");
    for waiting in &promoted {
        ids.push_bind(&waiting.reservation_id);
    }
    update.push(")");
    update.build().execute(&mut *conn).await?;

    let mut deltas: BTreeMap<Date, (i32, i32)> = BTreeMap::new();
    for waiting in &promoted {
        for night in waiting.stay.nights() {
            let delta = deltas.entry(night).or_insert((0, 0));
            delta.0 += 1;
            delta.1 -= 1;
        }
    }
    add_to_nights(conn, hotel_id, code, &deltas).await?;

    let mut last_position = None;
    let mut reservation_ids = Vec::with_capacity(promoted.len());
    for waiting in promoted {
        let version = versions.get(&waiting.reservation_id).copied().unwrap_or(1) + 1;
        let event = pb::ReservationPromoted {
            reservation_id: waiting.reservation_id.clone(),
            hotel_id: hotel_id.to_owned(),
            room_type_code: code.to_owned(),
            check_in: dates::format(waiting.stay.check_in),
            check_out: dates::format(waiting.stay.check_out),
        };
        last_position = Some(batch.emit(
            cmd,
            Aggregate::Reservation {
                id: &waiting.reservation_id,
                version,
            },
            pb::event::Kind::ReservationPromoted(event),
        ));
        reservation_ids.push(waiting.reservation_id);
    }
    Ok(Promoted {
        reservation_ids,
        last_position,
    })
}
