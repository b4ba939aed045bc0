-- The outbox carries more than order events: a change of the plugin set (plugin_audit) is
-- published too, from the transaction that records it. `aggregate_type` says what a row is
-- about, which decides its topic and its contract (the Debezium outbox router's
-- `aggregatetype`): 'order' rows are `oms.events.v1.OrderEvent` keyed by order id, 'plugin'
-- rows are `oms.events.v1.PluginChanged` keyed by plugin name, whose `aggregate_id` is the
-- name's UUIDv5 (so the relay keeps one plugin's changes in order as it does one order's).
-- A constant default: PostgreSQL adds the column without rewriting the table. The checks are
-- NOT VALID so that adding them does not scan the tables under the exclusive lock (every
-- existing row holds the default, which passes); new rows are checked all the same.
ALTER TABLE outbox ADD COLUMN aggregate_type TEXT NOT NULL DEFAULT 'order';
ALTER TABLE outbox ADD CONSTRAINT outbox_aggregate_type_check
    CHECK (aggregate_type IN ('order', 'plugin')) NOT VALID;
ALTER TABLE dead_letters ADD COLUMN aggregate_type TEXT NOT NULL DEFAULT 'order';
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_aggregate_type_check
    CHECK (aggregate_type IN ('order', 'plugin')) NOT VALID;
