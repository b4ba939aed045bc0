-- Outbox relay (issue 5).

-- The relay publishes only an order's oldest unpublished event (per-order ordering across
-- retries): this index answers "is there an earlier unpublished row of this order?" without
-- reading the order's published history.
CREATE INDEX outbox_pending_aggregate_idx ON outbox (aggregate_id, id) WHERE published_at IS NULL;

-- Wakes relays blocked in LISTEN as soon as a transaction that wrote events commits
-- (notifications are delivered at commit, and identical ones within a transaction are
-- folded into one). Polling remains the fallback, so a lost notification only costs latency.
CREATE FUNCTION oms_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('oms_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION oms_outbox_notify();

-- The dead-letter view operators and metrics read: rows not yet redriven.
CREATE INDEX dead_letters_pending_idx ON dead_letters (failed_at) WHERE redriven_at IS NULL;
