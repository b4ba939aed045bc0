-- Turning plugins off and on (see migrations/postgres/0010). SQLite cannot change a CHECK
-- constraint in place: the audit table is rebuilt with the new actions, rows kept.
ALTER TABLE plugin_releases ADD COLUMN disabled_at INTEGER;

CREATE TABLE plugin_audit_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL
                 CHECK (action IN ('seed', 'upload', 'rollback', 'disable', 'enable')),
    plugin       TEXT    NOT NULL,
    from_version TEXT,
    from_sha256  TEXT,
    to_version   TEXT    NOT NULL,
    to_sha256    TEXT    NOT NULL
) STRICT;
INSERT INTO plugin_audit_new (id, at, actor, action, plugin, from_version, from_sha256,
                              to_version, to_sha256)
    SELECT id, at, actor, action, plugin, from_version, from_sha256, to_version, to_sha256
    FROM plugin_audit;
DROP TABLE plugin_audit;
ALTER TABLE plugin_audit_new RENAME TO plugin_audit;
