-- The asynchronous queue shared by every command server on the database
-- (issue 11): a queued command is claimed by one instance at a time
-- (SELECT ... FOR UPDATE SKIP LOCKED, then RUNNING with a lease), and a
-- claim that lapses (its instance stopped) is taken over by another.
-- States only move forward: PENDING -> RUNNING -> SUCCEEDED | FAILED.
ALTER TABLE commands
    ADD COLUMN claimed_by     VARCHAR(64) NULL,
    ADD COLUMN claim_until_ms BIGINT      NULL;

-- One row that claim transactions lock first: claims of several instances
-- run one after another (each takes milliseconds), so each takes the
-- highest-ranked commands that are left, never a lower-ranked set beside
-- another instance's claim. It is not the write lock: claims never wait
-- for command transactions.
CREATE TABLE queue_claim (
    id TINYINT NOT NULL PRIMARY KEY
) ENGINE = InnoDB;

INSERT INTO queue_claim (id) VALUES (1);
