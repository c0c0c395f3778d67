-- The read model: tables shaped for the queries, filled only by the projector.

-- The last applied event position. One row; updated in the same transaction
-- as the events it covers, so the file never holds half a batch.
CREATE TABLE checkpoint (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    position      INTEGER NOT NULL,
    -- Wall-clock time (ms since the epoch) of the last applied batch.
    applied_at_ms INTEGER
);
INSERT INTO checkpoint (id, position, applied_at_ms) VALUES (1, 0, NULL);

CREATE TABLE hotels (
    hotel_id TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    city     TEXT NOT NULL,
    -- city folded to lower case (Unicode, by the projector) for search.
    city_key TEXT NOT NULL
);
CREATE INDEX hotels_by_city ON hotels (city_key, hotel_id);

CREATE TABLE room_types (
    hotel_id   TEXT NOT NULL,
    code       TEXT NOT NULL,
    name       TEXT NOT NULL,
    max_guests INTEGER NOT NULL,
    inventory  INTEGER NOT NULL,
    rate_minor INTEGER NOT NULL,
    currency   TEXT NOT NULL,
    PRIMARY KEY (hotel_id, code)
) WITHOUT ROWID;

CREATE TABLE reservations (
    reservation_id   TEXT PRIMARY KEY,
    hotel_id         TEXT NOT NULL,
    room_type_code   TEXT NOT NULL,
    check_in         TEXT NOT NULL,
    check_out        TEXT NOT NULL,
    nights           INTEGER NOT NULL,
    guest_id         TEXT NOT NULL,
    guest_name       TEXT NOT NULL,
    guest_email      TEXT NOT NULL,
    guests           INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                         ('CONFIRMED', 'WAITLISTED', 'CANCELLED', 'CHECKED_IN', 'CHECKED_OUT')),
    total_minor      INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    booked_at_ms     INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    -- Position of the booking event: the "newest first" order of listings.
    booked_position  INTEGER NOT NULL,
    -- Position of the last event that changed the reservation.
    last_position    INTEGER NOT NULL
);
CREATE INDEX reservations_by_guest ON reservations (guest_id, booked_position DESC);
CREATE INDEX reservations_by_hotel ON reservations (hotel_id, booked_position DESC);
-- The waiting list of a room type, in promotion order.
CREATE INDEX reservations_waitlist
    ON reservations (hotel_id, room_type_code, priority DESC, booked_at_ms, booked_position)
    WHERE status = 'WAITLISTED';

-- Every change of a reservation after its booking, so WatchReservation can
-- deliver each one even when several land in one projector commit.
CREATE TABLE reservation_changes (
    reservation_id TEXT NOT NULL,
    position       INTEGER NOT NULL,
    status         TEXT NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, position)
) WITHOUT ROWID;

-- Per night and room type: rooms held (confirmed or checked in) and
-- reservations waiting. A missing row means 0 and 0.
CREATE TABLE nights (
    hotel_id       TEXT NOT NULL,
    room_type_code TEXT NOT NULL,
    night          TEXT NOT NULL, -- YYYY-MM-DD
    booked         INTEGER NOT NULL,
    waiting        INTEGER NOT NULL,
    PRIMARY KEY (hotel_id, room_type_code, night)
) WITHOUT ROWID;
