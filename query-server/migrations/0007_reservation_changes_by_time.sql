-- reservation_changes is pruned by age (--change-retention-secs, issue 11):
-- the pruner finds the oldest rows through this index, a page at a time,
-- instead of scanning the table.
CREATE INDEX reservation_changes_by_time ON reservation_changes (updated_at_ms);
