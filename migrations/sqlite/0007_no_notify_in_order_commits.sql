-- Keeps the numbering in step with migrations/postgres/0007, which drops the outbox NOTIFY
-- trigger. SQLite never had one (no LISTEN/NOTIFY): nothing to change.
SELECT 1;
