-- The waitlisted reservations of a room type by check-in date: a
-- cancellation reads the few whose stays overlap what it freed from here,
-- instead of walking the whole waiting list in promotion order.
ALTER TABLE reservations
    ADD KEY waitlist_by_check_in (hotel_id, room_type_code, status, check_in);
