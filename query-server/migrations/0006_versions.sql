-- Aggregate versions in query replies (issue 16): a client that decides a
-- command on a read names the version it read (Precondition.expected_version).
-- Every event carries its aggregate's version; the projector stores it.
--
-- Reservations: version 1 when booked, one more per later change, and every
-- later change is a row of reservation_changes: so the versions of a read
-- model built before this migration are exact.
ALTER TABLE reservations ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
UPDATE reservations SET version = 1 + (
    SELECT COUNT(*) FROM reservation_changes c
    WHERE c.reservation_id = reservations.reservation_id);

ALTER TABLE reservation_changes ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
UPDATE reservation_changes SET version = 1 + (
    SELECT COUNT(*) FROM reservation_changes c
    WHERE c.reservation_id = reservation_changes.reservation_id
      AND c.position <= reservation_changes.position);

-- Hotels: the read model never counted inventory changes, so an existing
-- hotel's version is unknown (0) until its next event (which carries it) or
-- a rebuild. Replies show 0; Precondition.unchanged_since_position works
-- regardless.
ALTER TABLE hotels ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
