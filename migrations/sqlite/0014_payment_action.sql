-- no-transaction
-- The customer action a payment waits for, and the payment status ACTION_REQUIRED (see
-- migrations/postgres/0014). SQLite cannot change a CHECK constraint in place, so `orders`
-- is rebuilt (SQLite's documented twelve steps): with foreign keys off, or dropping the old
-- table would cascade to the rows that reference it, and in one transaction of its own.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE orders_new (
    id                   TEXT PRIMARY KEY,
    customer_id          TEXT   NOT NULL,
    status               TEXT   NOT NULL CHECK (status IN (
                             'PENDING', 'CONFIRMED', 'PARTIALLY_FULFILLED', 'FULFILLED',
                             'COMPLETED', 'REJECTED', 'PAYMENT_FAILED', 'CANCELLING',
                             'CANCELLED', 'COMPENSATION_FAILED')),
    payment_status       TEXT   NOT NULL CHECK (payment_status IN (
                             'PENDING', 'AUTHORIZED', 'AUTH_FAILED', 'CAPTURED',
                             'PARTIALLY_CAPTURED', 'VOIDED', 'REFUNDED', 'PARTIALLY_REFUNDED',
                             'UNRESOLVED', 'ACTION_REQUIRED')),
    reservation_status   TEXT   NOT NULL CHECK (reservation_status IN (
                             'NONE', 'RESERVED', 'RELEASED', 'COMMITTED')),
    currency             TEXT   NOT NULL CHECK (length(currency) = 3),
    total_minor          INTEGER NOT NULL CHECK (total_minor >= 0),
    captured_minor       INTEGER NOT NULL DEFAULT 0 CHECK (captured_minor >= 0),
    refunded_minor       INTEGER NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    payment_provider     TEXT   NOT NULL,
    payment_token        TEXT   NOT NULL,
    ship_recipient       TEXT   NOT NULL,
    ship_line1           TEXT   NOT NULL,
    ship_line2           TEXT   NOT NULL DEFAULT '',
    ship_city            TEXT   NOT NULL,
    ship_postal_code     TEXT   NOT NULL DEFAULT '',
    ship_country         TEXT   NOT NULL CHECK (length(ship_country) = 2),
    failure_reason       TEXT,
    version              INTEGER NOT NULL CHECK (version >= 1),
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    ship_email           TEXT   NOT NULL DEFAULT '',
    payment_action_url        TEXT,
    payment_action_expires_at INTEGER,
    CHECK (refunded_minor <= captured_minor)
) STRICT;

INSERT INTO orders_new (id, customer_id, status, payment_status, reservation_status, currency,
                        total_minor, captured_minor, refunded_minor, payment_provider,
                        payment_token, ship_recipient, ship_line1, ship_line2, ship_city,
                        ship_postal_code, ship_country, failure_reason, version, created_at,
                        updated_at, ship_email)
    SELECT id, customer_id, status, payment_status, reservation_status, currency, total_minor,
           captured_minor, refunded_minor, payment_provider, payment_token, ship_recipient,
           ship_line1, ship_line2, ship_city, ship_postal_code, ship_country, failure_reason,
           version, created_at, updated_at, ship_email
    FROM orders;
DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;
CREATE INDEX orders_status_id_idx ON orders (status, id DESC);
CREATE INDEX orders_customer_id_idx ON orders (customer_id, id DESC);

COMMIT;
PRAGMA foreign_keys = ON;
