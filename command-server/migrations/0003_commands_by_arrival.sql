-- The command log in arrival order. Keyed by the client's command id (a
-- random UUID, as most clients send), every new row went into a random
-- page of the whole table, requests and replies included: once the table
-- outgrew InnoDB's buffer pool, each insert read a cold page and evicted a
-- dirty one, and commits stalled for 100-200 ms. Rows now go at the end of
-- an arrival-ordered key; only the narrow unique index on command_id takes
-- random inserts. Lookups by command id and the idempotency upsert (ON
-- DUPLICATE KEY) work on that unique index as before.
ALTER TABLE commands
    DROP PRIMARY KEY,
    ADD COLUMN arrival BIGINT NOT NULL AUTO_INCREMENT FIRST,
    ADD PRIMARY KEY (arrival),
    ADD UNIQUE KEY command_id (command_id);
