-- The same reservations table with its status CHECK written as comparisons.
-- SQLite evaluates `status IN (five values)` by building a temporary b-tree
-- of the list on every INSERT and UPDATE, which cost the projector a few
-- microseconds per booking event; comparisons cost nothing. SQLite cannot
-- change a CHECK in place, so the table is copied (once, at start).
CREATE TABLE reservations_new (
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
    status           TEXT NOT NULL CHECK (
                         status = 'CONFIRMED' OR status = 'WAITLISTED' OR status = 'CANCELLED'
                         OR status = 'CHECKED_IN' OR status = 'CHECKED_OUT'),
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
INSERT INTO reservations_new
    (reservation_id, hotel_id, room_type_code, check_in, check_out, nights, guest_id,
     guest_name, guest_email, guests, status, total_minor, currency, priority,
     booked_at_ms, updated_at_ms, booked_position, last_position)
SELECT reservation_id, hotel_id, room_type_code, check_in, check_out, nights, guest_id,
       guest_name, guest_email, guests, status, total_minor, currency, priority,
       booked_at_ms, updated_at_ms, booked_position, last_position
FROM reservations
ORDER BY booked_position;
DROP TABLE reservations;
ALTER TABLE reservations_new RENAME TO reservations;
CREATE INDEX reservations_by_guest ON reservations (guest_id, booked_position DESC);
CREATE INDEX reservations_by_hotel ON reservations (hotel_id, booked_position DESC);
-- The waiting list of a room type in promotion order (see 0003).
CREATE INDEX reservations_waitlist
    ON reservations (hotel_id, room_type_code, priority DESC, booked_position)
    WHERE status = 'WAITLISTED';
