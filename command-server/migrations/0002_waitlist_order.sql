-- A cancellation reads the waiting list of its room type in promotion order
-- (priority first, then oldest), a page at a time, and usually needs only
-- the first page: with the index in that order (priority descending) the
-- read stops after a page instead of sorting the whole list, which holds
-- thousands of reservations on a contended room type.
ALTER TABLE reservations
    DROP KEY waitlist,
    ADD KEY waitlist (hotel_id, room_type_code, status, priority DESC, booked_position);
