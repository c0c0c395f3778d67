-- Night counts keyed by integers (issue 15): a catch-up rewrites a large
-- part of `nights` at every commit, and with text keys (a 36-character
-- hotel id, the room type code, a `YYYY-MM-DD` night) each upsert was a
-- seek through long string comparisons and each row ~70 bytes. Now a
-- room type's nights hang off a small integer (`night_rooms.id`, given
-- the first time the projector counts a night of that room type) and a
-- night is its Julian day number (what `time::Date::to_julian_day` gives,
-- and what SQLite's `date(night)` turns back into `YYYY-MM-DD`). ADR 0014.
CREATE TABLE night_rooms (
    id             INTEGER PRIMARY KEY,
    hotel_id       TEXT NOT NULL,
    room_type_code TEXT NOT NULL,
    UNIQUE (hotel_id, room_type_code)
);

ALTER TABLE nights RENAME TO nights_by_text;

CREATE TABLE nights (
    room_id INTEGER NOT NULL, -- night_rooms.id
    night   INTEGER NOT NULL, -- Julian day number
    booked  INTEGER NOT NULL,
    waiting INTEGER NOT NULL,
    PRIMARY KEY (room_id, night)
) WITHOUT ROWID;

INSERT INTO night_rooms (hotel_id, room_type_code)
SELECT DISTINCT hotel_id, room_type_code FROM nights_by_text ORDER BY hotel_id, room_type_code;

INSERT INTO nights (room_id, night, booked, waiting)
SELECT r.id, CAST(julianday(n.night) + 0.5 AS INTEGER), n.booked, n.waiting
FROM nights_by_text n
JOIN night_rooms r ON r.hotel_id = n.hotel_id AND r.room_type_code = n.room_type_code;

DROP TABLE nights_by_text;
