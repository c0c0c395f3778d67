//! Helpers for tests of this workspace (here and in the end-to-end suite):
//! a fresh MySQL database per test, request builders, and checks of the
//! write model's invariants. They panic on failure, as tests want.

#![allow(clippy::missing_panics_doc)]

use hotel_common::pb::{self, command_service_client::CommandServiceClient};
use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};
use tonic::transport::Channel;
use uuid::Uuid;

/// A session of the test's own that takes the write lock (the `event_head`
/// row) and keeps it until it commits or rolls back: a stuck writer.
pub async fn hold_write_lock(db: &TestDb) -> MySqlConnection {
    let mut conn = MySqlConnection::connect(&db.url).await.expect("connect");
    conn.execute("SET SESSION autocommit = 0")
        .await
        .expect("autocommit off");
    conn.execute("SELECT position FROM event_head WHERE id = 1 FOR UPDATE")
        .await
        .expect("take the write lock");
    conn
}

/// A connection to the server at `url` whose streams get no flow-control
/// window: the server can send them nothing, as with a client that never
/// reads.
pub async fn non_reading_channel(url: String) -> Channel {
    Channel::from_shared(url)
        .expect("valid url")
        .initial_stream_window_size(Some(0))
        .connect()
        .await
        .expect("connect")
}

/// Server URL of the test MariaDB (no database name).
pub fn server_url() -> String {
    std::env::var("HOTEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "mysql://hotel:hotel@127.0.0.1:3306".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A database of its own for one test, dropped by `cleanup`.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("hotel_t_{}", Uuid::new_v4().simple());
        let url = format!("{}/{name}", server_url());
        let mut admin = MySqlConnection::connect(&server_url())
            .await
            .expect("the test MariaDB answers (run scripts/test.sh)");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .await
            .expect("create test database");
        let pool = MySqlPool::connect(&url)
            .await
            .expect("connect to test database");
        Self { name, url, pool }
    }

    pub async fn cleanup(self) {
        self.pool.close().await;
        if let Ok(mut admin) = MySqlConnection::connect(&server_url()).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{}`",
                    self.name
                )))
                .await;
        }
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }
}

pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// Today plus `days`, as YYYY-MM-DD (UTC).
pub fn day(days: i64) -> String {
    hotel_common::dates::format(hotel_common::dates::today_utc() + time::Duration::days(days))
}

pub async fn register_hotel(
    client: &mut CommandServiceClient<Channel>,
    hotel_id: &str,
    city: &str,
) -> i64 {
    client
        .register_hotel(pb::RegisterHotelRequest {
            command_id: new_id(),
            hotel_id: hotel_id.to_owned(),
            name: format!("Hotel {hotel_id}"),
            city: city.to_owned(),
            correlation_id: String::new(),
        })
        .await
        .expect("register hotel")
        .into_inner()
        .position
}

/// Registers hotel `h` and appends `n` (at most 99,999) copies of its
/// registration (about 400 bytes each) straight into the log; returns the
/// head. The server learns of the new head at its next commit.
pub async fn fill_log(db: &TestDb, client: &mut CommandServiceClient<Channel>, n: i64) -> i64 {
    assert!(n < 100_000, "fill_log appends at most 99,999 events");
    let first = register_hotel(client, "h", "Evora").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO events (position, event_id, event_type, aggregate_kind, aggregate_id, \
             aggregate_version, hotel_id, command_id, correlation_id, occurred_at_ms, payload) \
         WITH d AS (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
             UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
             UNION ALL SELECT 8 UNION ALL SELECT 9), \
         s AS (SELECT a.n + 10 * b.n + 100 * c.n + 1000 * e.n + 10000 * f.n + 1 AS n \
             FROM d a, d b, d c, d e, d f) \
         SELECT {first} + s.n, UUID(), x.event_type, x.aggregate_kind, \
             CONCAT('bulk-', s.n, '-', REPEAT('a', 50)), 1, x.hotel_id, x.command_id, \
             REPEAT('c', 128), x.occurred_at_ms, x.payload \
         FROM events x, s WHERE x.position = {first} AND s.n <= {n}"
    )))
    .execute(&db.pool)
    .await
    .expect("append copies");
    sqlx::query("UPDATE event_head SET position = ? WHERE id = 1")
        .bind(first + n)
        .execute(&db.pool)
        .await
        .expect("raise the head");
    first + n
}

pub async fn add_room_type(
    client: &mut CommandServiceClient<Channel>,
    hotel_id: &str,
    code: &str,
    inventory: i32,
) -> i64 {
    client
        .add_room_type(pb::AddRoomTypeRequest {
            precondition: None,
            command_id: new_id(),
            hotel_id: hotel_id.to_owned(),
            code: code.to_owned(),
            name: format!("Room {code}"),
            max_guests: 2,
            inventory,
            nightly_rate: Some(pb::Money {
                amount_minor: 10_000,
                currency: "EUR".to_owned(),
            }),
            correlation_id: String::new(),
        })
        .await
        .expect("add room type")
        .into_inner()
        .position
}

pub fn booking(hotel_id: &str, code: &str, from: i64, to: i64, guest: &str) -> pb::BookRoomRequest {
    pb::BookRoomRequest {
        command_id: new_id(),
        hotel_id: hotel_id.to_owned(),
        room_type_code: code.to_owned(),
        check_in: day(from),
        check_out: day(to),
        guest: Some(pb::Guest {
            guest_id: guest.to_owned(),
            name: format!("Guest {guest}"),
            email: format!("{guest}@example.com"),
        }),
        guests: 1,
        priority: 0,
        correlation_id: String::new(),
    }
}

/// Polls `GetCommandStatus` until the command is neither PENDING nor
/// RUNNING (at most 10 s).
pub async fn wait_until_final(
    client: &mut CommandServiceClient<Channel>,
    command_id: &str,
) -> pb::GetCommandStatusResponse {
    let queued = [pb::CommandState::Pending, pb::CommandState::Running].map(|s| s as i32);
    for _ in 0..400 {
        let status = client
            .get_command_status(pb::GetCommandStatusRequest {
                command_id: command_id.to_owned(),
            })
            .await
            .expect("status")
            .into_inner();
        if !queued.contains(&status.state) {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("command {command_id} still queued after 10 s");
}

/// Asserts that the event log holds exactly positions 1..=n.
pub async fn assert_gap_free(db: &TestDb) -> i64 {
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(&db.pool)
        .await
        .expect("read positions");
    for (i, position) in positions.iter().enumerate() {
        assert_eq!(
            *position,
            i as i64 + 1,
            "positions must be 1..N without gaps"
        );
    }
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .expect("read head");
    assert_eq!(
        head,
        positions.len() as i64,
        "the head is the last position"
    );
    head
}

/// Asserts that no night has more rooms booked than its room type has.
pub async fn assert_no_overbooking(db: &TestDb) {
    let over: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM room_nights n JOIN room_types t ON t.hotel_id = n.hotel_id AND t.code = n.code \
         WHERE n.booked > t.inventory",
    )
    .fetch_one(&db.pool)
    .await
    .expect("overbooking query");
    assert_eq!(over, 0, "no night may have more rooms booked than exist");
    // The night counts must also equal what the reservations say.
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM room_nights n WHERE n.booked <> ( \
            SELECT COUNT(*) FROM reservations r WHERE r.hotel_id = n.hotel_id \
              AND r.room_type_code = n.code AND r.check_in <= n.night AND r.check_out > n.night \
              AND r.status IN ('CONFIRMED', 'CHECKED_IN', 'CHECKED_OUT')) \
         OR n.waiting <> ( \
            SELECT COUNT(*) FROM reservations r WHERE r.hotel_id = n.hotel_id \
              AND r.room_type_code = n.code AND r.check_in <= n.night AND r.check_out > n.night \
              AND r.status = 'WAITLISTED')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("consistency query");
    assert_eq!(mismatched, 0, "night counts must match the reservations");
}

/// Asserts that no waitlisted reservation (from today on) would fit now:
/// every cancellation and inventory rise promotes all that fit, so one left
/// behind is a promotion that was missed.
pub async fn assert_waitlist_settled(db: &TestDb) {
    let today = hotel_common::dates::today_utc();
    let fitting: Vec<String> = sqlx::query_scalar(
        "SELECT r.reservation_id FROM reservations r \
         JOIN room_types t ON t.hotel_id = r.hotel_id AND t.code = r.room_type_code \
         WHERE r.status = 'WAITLISTED' AND r.check_in >= ? AND NOT EXISTS ( \
            SELECT 1 FROM room_nights n WHERE n.hotel_id = r.hotel_id AND n.code = r.room_type_code \
              AND n.night >= r.check_in AND n.night < r.check_out AND n.booked >= t.inventory)",
    )
    .bind(today)
    .fetch_all(&db.pool)
    .await
    .expect("waitlist query");
    assert!(
        fitting.is_empty(),
        "waitlisted reservations that fit were not promoted: {fitting:?}"
    );
}

/// Asserts that every reservation's status and version are what its events
/// in the log say: the write model and the log never disagree.
pub async fn assert_reservations_match_events(db: &TestDb) {
    use prost::Message;
    use std::collections::HashMap;

    let events: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT aggregate_id, aggregate_version, payload FROM events \
         WHERE aggregate_kind = 'reservation' ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read reservation events");
    let mut from_events: HashMap<String, (&'static str, i64)> = HashMap::new();
    for (id, version, payload) in &events {
        let event = pb::Event::decode(payload.as_slice()).expect("a stored event decodes");
        let status = match event.kind.expect("an event has a kind") {
            pb::event::Kind::ReservationConfirmed(_) | pb::event::Kind::ReservationPromoted(_) => {
                "CONFIRMED"
            }
            pb::event::Kind::ReservationWaitlisted(_) => "WAITLISTED",
            pb::event::Kind::ReservationCancelled(_) => "CANCELLED",
            pb::event::Kind::GuestCheckedIn(_) => "CHECKED_IN",
            pb::event::Kind::GuestCheckedOut(_) => "CHECKED_OUT",
            other => panic!("{other:?} is not a reservation event"),
        };
        let previous = from_events.insert(id.clone(), (status, *version));
        let expected_version = previous.map_or(1, |(_, v)| v + 1);
        assert_eq!(
            *version, expected_version,
            "reservation {id}: versions in the log go up by one"
        );
    }
    let stored: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT reservation_id, status, version FROM reservations")
            .fetch_all(&db.pool)
            .await
            .expect("read reservations");
    assert_eq!(
        stored.len(),
        from_events.len(),
        "every reservation has events and every event's reservation exists"
    );
    for (id, status, version) in stored {
        let (expected_status, expected_version) = from_events
            .get(&id)
            .unwrap_or_else(|| panic!("reservation {id} has no events"));
        assert_eq!(
            (status.as_str(), version),
            (*expected_status, *expected_version),
            "reservation {id}: the write model says what its last event says"
        );
    }
}
