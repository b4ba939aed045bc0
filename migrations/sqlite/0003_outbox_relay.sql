-- Outbox relay (issue 5). Same indexes as PostgreSQL; no LISTEN/NOTIFY here: the relay of
-- the (single) process is woken in-process and polls as a fallback.

-- Answers "is there an earlier unpublished row of this order?" for per-order ordering.
CREATE INDEX outbox_pending_aggregate_idx ON outbox (aggregate_id, id) WHERE published_at IS NULL;

CREATE INDEX dead_letters_pending_idx ON dead_letters (failed_at) WHERE redriven_at IS NULL;
