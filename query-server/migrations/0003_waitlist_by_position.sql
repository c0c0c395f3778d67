-- The waiting list in the order the command server promotes it: higher
-- priority first, then the earlier booking event (its position). Booking
-- times can tie or run backwards across command servers; positions cannot.
DROP INDEX reservations_waitlist;
CREATE INDEX reservations_waitlist
    ON reservations (hotel_id, room_type_code, priority DESC, booked_position)
    WHERE status = 'WAITLISTED';
