-- Core schema of the OMS on PostgreSQL.
--
-- Conventions (identical in migrations/sqlite, so the two stores share their row mapping):
-- * Timestamps are BIGINT milliseconds since the Unix epoch (UTC), the domain's `Timestamp`:
--   no time-zone conversion anywhere, and the same comparison code on both databases.
-- * Money is BIGINT minor units plus a three-letter ISO-4217 code; never floating point.
-- * Statuses are the upper-case names of the domain enums (`OrderStatus::as_str`), guarded by
--   CHECK constraints so that a bug cannot store a state the code cannot read back.
-- * Ids are UUIDs; order ids are UUIDv7, so `ORDER BY id DESC` is "newest first" and keyset
--   pagination needs no second column.

-- ---------------------------------------------------------------------------------------------
-- Orders: one row per order, the three status dimensions kept apart.
CREATE TABLE orders (
    id                   UUID PRIMARY KEY,
    customer_id          TEXT   NOT NULL,
    status               TEXT   NOT NULL CHECK (status IN (
                             'PENDING', 'CONFIRMED', 'PARTIALLY_FULFILLED', 'FULFILLED',
                             'COMPLETED', 'REJECTED', 'PAYMENT_FAILED', 'CANCELLING',
                             'CANCELLED', 'COMPENSATION_FAILED')),
    payment_status       TEXT   NOT NULL CHECK (payment_status IN (
                             'PENDING', 'AUTHORIZED', 'AUTH_FAILED', 'CAPTURED',
                             'PARTIALLY_CAPTURED', 'VOIDED', 'REFUNDED', 'PARTIALLY_REFUNDED',
                             'UNRESOLVED')),
    reservation_status   TEXT   NOT NULL CHECK (reservation_status IN (
                             'NONE', 'RESERVED', 'RELEASED', 'COMMITTED')),
    -- One currency per order: total, captured and refunded amounts all use it.
    currency             TEXT   NOT NULL CHECK (length(currency) = 3),
    total_minor          BIGINT NOT NULL CHECK (total_minor >= 0),
    captured_minor       BIGINT NOT NULL DEFAULT 0 CHECK (captured_minor >= 0),
    refunded_minor       BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    -- The payment plugin to use and the client's opaque token for it (a provider token such
    -- as a Stripe PaymentMethod id, never card data).
    payment_provider     TEXT   NOT NULL,
    payment_token        TEXT   NOT NULL,
    ship_recipient       TEXT   NOT NULL,
    ship_line1           TEXT   NOT NULL,
    ship_line2           TEXT   NOT NULL DEFAULT '',
    ship_city            TEXT   NOT NULL,
    ship_postal_code     TEXT   NOT NULL DEFAULT '',
    ship_country         TEXT   NOT NULL CHECK (length(ship_country) = 2),
    failure_reason       TEXT,
    -- Optimistic lock: every write is `UPDATE ... WHERE id = $1 AND version = $expected`.
    version              BIGINT NOT NULL CHECK (version >= 1),
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    CHECK (refunded_minor <= captured_minor)
);

-- ListOrders filters by status or customer and pages newest first by id.
CREATE INDEX orders_status_id_idx ON orders (status, id DESC);
CREATE INDEX orders_customer_id_idx ON orders (customer_id, id DESC);

-- Order lines never change after the order is placed.
CREATE TABLE order_items (
    order_id         UUID    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- The line's position in the request, so an order reads back in the order it was sent.
    line_no          INTEGER NOT NULL CHECK (line_no >= 0),
    sku              TEXT    NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    unit_price_minor BIGINT  NOT NULL CHECK (unit_price_minor >= 0),
    currency         TEXT    NOT NULL CHECK (length(currency) = 3),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, sku)
);

-- ---------------------------------------------------------------------------------------------
-- Payments: one row per payment attempt (an order may be retried with a new attempt after an
-- authorisation failed). Filled by the saga engine.
CREATE TABLE payments (
    id                 UUID   PRIMARY KEY,
    order_id           UUID   NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- The saga run that made this payment: a compensation only voids or refunds a payment
    -- whose attempt id is its own, never another run's.
    attempt_id         UUID   NOT NULL,
    provider           TEXT   NOT NULL,
    -- Which plugin build handled the calls, for audits after a hot swap.
    plugin_version     TEXT   NOT NULL,
    plugin_digest      TEXT   NOT NULL,
    status             TEXT   NOT NULL CHECK (status IN (
                           'PENDING', 'AUTHORIZED', 'AUTH_FAILED', 'CAPTURED',
                           'PARTIALLY_CAPTURED', 'VOIDED', 'REFUNDED', 'PARTIALLY_REFUNDED',
                           'UNRESOLVED')),
    currency           TEXT   NOT NULL CHECK (length(currency) = 3),
    amount_minor       BIGINT NOT NULL CHECK (amount_minor >= 0),
    captured_minor     BIGINT NOT NULL DEFAULT 0 CHECK (captured_minor >= 0),
    refunded_minor     BIGINT NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    -- The provider's id for the authorisation (NULL until the provider answered).
    provider_reference TEXT,
    -- Sent with every provider call of this attempt, so a retried call after a crash is the
    -- same call to the provider.
    idempotency_key    TEXT   NOT NULL UNIQUE,
    last_error         TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    UNIQUE (order_id, attempt_id),
    CHECK (captured_minor <= amount_minor AND refunded_minor <= captured_minor)
);
CREATE INDEX payments_order_idx ON payments (order_id);

-- Inventory reservations made through an inventory adapter plugin. Filled by the saga engine.
CREATE TABLE reservations (
    id                 UUID   PRIMARY KEY,
    order_id           UUID   NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    attempt_id         UUID   NOT NULL,
    adapter            TEXT   NOT NULL,
    plugin_version     TEXT   NOT NULL,
    plugin_digest      TEXT   NOT NULL,
    -- PENDING: the call was sent but not answered yet (reconcile before releasing);
    -- FAILED: the adapter refused (out of stock), nothing to release.
    status             TEXT   NOT NULL CHECK (status IN (
                           'PENDING', 'RESERVED', 'RELEASED', 'COMMITTED', 'FAILED')),
    provider_reference TEXT,
    idempotency_key    TEXT   NOT NULL UNIQUE,
    last_error         TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    UNIQUE (order_id, attempt_id)
);
CREATE INDEX reservations_order_idx ON reservations (order_id);

-- ---------------------------------------------------------------------------------------------
-- Transactional outbox: written in the same transaction as the change it announces; a relay
-- publishes unpublished rows in id order.
CREATE TABLE outbox (
    -- Commit-ordered enough for per-order ordering: one order's rows are written by
    -- transactions serialised by the order's version check.
    id              BIGSERIAL PRIMARY KEY,
    -- Unique per event; consumers deduplicate on it.
    event_id        UUID      NOT NULL UNIQUE,
    -- The message key when published (per-order ordering).
    aggregate_id    UUID      NOT NULL,
    event_type      TEXT      NOT NULL,
    schema_version  INTEGER   NOT NULL CHECK (schema_version >= 1),
    payload         JSONB     NOT NULL,
    -- Extra message headers (trace context); event id/type/version come from the columns.
    headers         JSONB     NOT NULL DEFAULT '{}',
    occurred_at     BIGINT    NOT NULL,
    created_at      BIGINT    NOT NULL,
    published_at    BIGINT,
    -- Relay bookkeeping: failed publish attempts back off until next_attempt_at; after the
    -- last attempt the row moves to dead_letters.
    attempts        INTEGER   NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at BIGINT    NOT NULL
);
-- The relay's queue: only unpublished rows, so the index stays small however long the
-- published history is kept.
CREATE INDEX outbox_unpublished_idx ON outbox (next_attempt_at, id) WHERE published_at IS NULL;
CREATE INDEX outbox_aggregate_idx ON outbox (aggregate_id, id);

-- Outbox rows that exhausted their publish attempts, kept for an operator to inspect and
-- redrive (which re-inserts them into the outbox with a reset attempt count).
CREATE TABLE dead_letters (
    -- The id the row had in the outbox.
    id             BIGINT  PRIMARY KEY,
    event_id       UUID    NOT NULL UNIQUE,
    aggregate_id   UUID    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        JSONB   NOT NULL,
    headers        JSONB   NOT NULL DEFAULT '{}',
    occurred_at    BIGINT  NOT NULL,
    attempts       INTEGER NOT NULL,
    last_error     TEXT    NOT NULL,
    failed_at      BIGINT  NOT NULL,
    redriven_at    BIGINT
);

-- Consumer-side deduplication: a consumer inserts (consumer, event_id) in the same
-- transaction as its effect; a duplicate delivery hits the primary key and is skipped.
CREATE TABLE processed_events (
    consumer     TEXT   NOT NULL,
    event_id     UUID   NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- ---------------------------------------------------------------------------------------------
-- Idempotency records (Stripe semantics): one per (method, caller, key).
CREATE TABLE idempotency_keys (
    method       TEXT   NOT NULL,
    -- Empty until the API authenticates callers.
    caller       TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    -- Hex SHA-256 of method + canonical request: the same key with another request is refused.
    fingerprint  TEXT   NOT NULL,
    state        TEXT   NOT NULL CHECK (state IN ('in_progress', 'completed')),
    -- While in progress: the holder's lease. Completion compares the token, so a holder whose
    -- lease was taken over (it stalled past locked_until) cannot commit.
    lease_token  UUID,
    locked_until BIGINT,
    -- The stored response (`StoredOutcome` JSON) once completed.
    outcome      JSONB,
    created_at   BIGINT NOT NULL,
    -- After this the record counts as absent and the sweeper deletes it.
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (method, caller, key),
    CHECK ((state = 'in_progress' AND lease_token IS NOT NULL AND locked_until IS NOT NULL
            AND outcome IS NULL)
        OR (state = 'completed' AND lease_token IS NULL AND outcome IS NOT NULL))
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- ---------------------------------------------------------------------------------------------
-- Durable sagas: any host process can resume one after a crash. Workers claim due instances
-- with `FOR UPDATE SKIP LOCKED` and hold a lease (lease_owner, lease_until) while they run a
-- step, so several processes share the work and a crashed worker's sagas are picked up again.
CREATE TABLE saga_instances (
    id              UUID    PRIMARY KEY,
    -- e.g. 'place_order', 'cancel_order'.
    kind            TEXT    NOT NULL,
    order_id        UUID    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- RUNNING forward; COMPENSATING backward; SUCCEEDED and COMPENSATED are final;
    -- COMPENSATION_FAILED waits for an operator (never silently dropped).
    status          TEXT    NOT NULL CHECK (status IN (
                        'RUNNING', 'COMPENSATING', 'SUCCEEDED', 'COMPENSATED',
                        'COMPENSATION_FAILED')),
    current_step    TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT  NOT NULL,
    -- The step's deadline: transient errors retry until then, then the saga compensates.
    deadline_at     BIGINT,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    -- Saga data the steps pass on (provider references and the like).
    state           JSONB   NOT NULL DEFAULT '{}',
    version         BIGINT  NOT NULL DEFAULT 1,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);
-- The workers' queue: only sagas that still have work.
CREATE INDEX saga_instances_due_idx ON saga_instances (next_attempt_at)
    WHERE status IN ('RUNNING', 'COMPENSATING');
CREATE INDEX saga_instances_order_idx ON saga_instances (order_id);

-- One row per step and direction of a saga, with the plugin build that served it.
CREATE TABLE saga_steps (
    saga_id         UUID    NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    step            TEXT    NOT NULL,
    action          TEXT    NOT NULL CHECK (action IN ('forward', 'compensate')),
    plugin_name     TEXT,
    plugin_version  TEXT,
    plugin_digest   TEXT,
    -- Derived from (saga id, step, operation), so a retried call is the same call.
    idempotency_key TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN (
                        'PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'UNRESOLVED')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    started_at      BIGINT,
    finished_at     BIGINT,
    PRIMARY KEY (saga_id, step, action)
);
