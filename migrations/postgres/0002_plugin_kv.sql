-- Durable state of the plugins' `kv` capability. One row per (plugin, key); the namespace is the
-- plugin's name (not its version) so that state survives an upgrade. Values are opaque bytes;
-- counters are ASCII decimal. Atomic batches serialise per key with transaction-scoped advisory
-- locks (see host/infrastructure/plugin-runtime/src/kv/postgres.rs), so no extra lock table.
CREATE TABLE IF NOT EXISTS plugin_kv (
    namespace  TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    value      BYTEA       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, key)
);
