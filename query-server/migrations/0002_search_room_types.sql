-- SearchAvailability's candidates: every room type with its hotel's name
-- and city, keyed in the order results are returned (a stay's total is the
-- nightly rate times the nights, the same for every candidate). A search
-- walks one city's entries in that order and stops once a page is full,
-- with no join and no sort. Kept by the projector from the hotel, room type
-- and inventory events (rare, so catch-up does not pay for it).
CREATE TABLE search_room_types (
    city_key       TEXT NOT NULL,
    rate_minor     INTEGER NOT NULL,
    hotel_id       TEXT NOT NULL,
    code           TEXT NOT NULL,
    hotel_name     TEXT NOT NULL,
    city           TEXT NOT NULL,
    room_type_name TEXT NOT NULL,
    max_guests     INTEGER NOT NULL,
    inventory      INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    PRIMARY KEY (city_key, rate_minor, hotel_id, code)
) WITHOUT ROWID;
CREATE INDEX search_room_types_by_hotel ON search_room_types (hotel_id);

INSERT INTO search_room_types
    (city_key, rate_minor, hotel_id, code, hotel_name, city, room_type_name,
     max_guests, inventory, currency)
SELECT h.city_key, rt.rate_minor, h.hotel_id, rt.code, h.name, h.city, rt.name,
       rt.max_guests, rt.inventory, rt.currency
FROM hotels h
JOIN room_types rt ON rt.hotel_id = h.hotel_id;
