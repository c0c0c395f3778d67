-- The id of the last applied event, next to its position: a resumed
-- subscription states it (Subscribe.expected_event_id), so that a log that
-- was rewritten (a restore, a failover to a replica that missed commits)
-- is noticed before anything of the other history is applied (ADR 0009).
ALTER TABLE checkpoint ADD COLUMN event_id TEXT;
