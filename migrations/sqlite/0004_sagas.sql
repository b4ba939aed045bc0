-- Saga engine (issue 4). Same shape as migrations/postgres/0004_sagas.sql.

-- The engine addresses steps by their index in the saga's step table (RUNNING: the next step
-- to run; COMPENSATING: how many completed steps remain to undo). 0001's free-text
-- `current_step` would hold a second, unchecked copy of that; the index replaces it.
ALTER TABLE saga_instances DROP COLUMN current_step;
ALTER TABLE saga_instances
    ADD COLUMN step_index INTEGER NOT NULL DEFAULT 0 CHECK (step_index >= 0);

-- At most one active saga per order; the store matches a violation of this index (reported
-- by SQLite as "UNIQUE constraint failed: saga_instances.order_id") and returns `SagaActive`.
CREATE UNIQUE INDEX saga_instances_one_active_idx ON saga_instances (order_id)
    WHERE status IN ('RUNNING', 'COMPENSATING');

-- The operator's queue (COMPENSATION_FAILED, oldest first) without a scan of all history.
CREATE INDEX saga_instances_status_idx ON saga_instances (status, created_at, id);
