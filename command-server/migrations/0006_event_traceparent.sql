-- W3C trace context of the command that caused each event (issue 14,
-- docs/tracing.md): set only when tracing is on and that command's trace
-- was sampled, NULL otherwise. Sent to subscribers in
-- EventEnvelope.traceparent so that query servers can link their work to
-- the command's trace. A nullable column at the end: an instant ALTER on
-- MariaDB 10.3+ and MySQL 8.0.12+, whatever the size of the log.
ALTER TABLE events ADD COLUMN traceparent VARCHAR(64) CHARACTER SET ascii NULL;
