-- Durable state of the plugins' `kv` capability (see the PostgreSQL migration of the same
-- number). Atomic batches run under BEGIN IMMEDIATE with a single writer per process.
CREATE TABLE IF NOT EXISTS plugin_kv (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
