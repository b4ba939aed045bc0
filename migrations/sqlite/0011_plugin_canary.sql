-- Canaries (see migrations/postgres/0011). SQLite cannot add a table constraint or change a
-- CHECK in place: the release columns carry their own checks, and the audit table is
-- rebuilt with the new actions, rows kept.
ALTER TABLE plugin_releases ADD COLUMN canary_manifest TEXT;
ALTER TABLE plugin_releases ADD COLUMN canary_sha256 TEXT REFERENCES plugin_artifacts (sha256);
ALTER TABLE plugin_releases ADD COLUMN canary_version TEXT;
ALTER TABLE plugin_releases ADD COLUMN canary_percent INTEGER
    CHECK (canary_percent BETWEEN 1 AND 99);

CREATE TABLE plugin_audit_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL
                 CHECK (action IN ('seed', 'upload', 'rollback', 'disable', 'enable',
                                   'canary', 'promote', 'abort')),
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
