-- The head never goes below zero. The writer also uses this to check, in
-- its write script, that an update found every row it was meant to change:
-- the statement after it sets the head to -1 when ROW_COUNT() is short,
-- and this constraint refuses that (and so the batch) before the COMMIT.
ALTER TABLE event_head
    ADD CONSTRAINT update_found_every_row CHECK (position >= 0);
