-- The outbox carries more than order events: a change of the plugin set (plugin_audit) is
-- published too, from the transaction that records it. `aggregate_type` says what a row is
-- about, which decides its topic and its contract (the Debezium outbox router's
-- `aggregatetype`): 'order' rows are `oms.events.v1.OrderEvent` keyed by order id, 'plugin'
-- rows are `oms.events.v1.PluginChanged` keyed by plugin name, whose `aggregate_id` is the
-- name's UUIDv5 (so the relay keeps one plugin's changes in order as it does one order's).
-- SQLite checks the constraint against the existing rows, which all take the default.
ALTER TABLE outbox ADD COLUMN aggregate_type TEXT NOT NULL DEFAULT 'order'
    CHECK (aggregate_type IN ('order', 'plugin'));
ALTER TABLE dead_letters ADD COLUMN aggregate_type TEXT NOT NULL DEFAULT 'order'
    CHECK (aggregate_type IN ('order', 'plugin'));
