-- No NOTIFY inside order transactions (issue 9). PostgreSQL serialises every notifying commit
-- cluster-wide through its WAL flush (the notification queue lock is held until the commit
-- record is durable), so the statement-level trigger of 0003 made the create and confirm
-- commits of all orders queue behind each other and defeated group commit. Relays are woken
-- in-process by the commits of their own process; the relay notifies other processes itself,
-- from its own "mark published" statement (docs/outbox.md, "Wake-up").
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION oms_outbox_notify();
