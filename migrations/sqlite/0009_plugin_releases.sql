-- The plugin set every host process serves (see migrations/postgres/0009).

CREATE TABLE plugin_artifacts (
    sha256     TEXT    PRIMARY KEY,
    wasm       BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE plugin_releases (
    name              TEXT    PRIMARY KEY,
    manifest          TEXT    NOT NULL,
    sha256            TEXT    NOT NULL REFERENCES plugin_artifacts (sha256),
    version           TEXT    NOT NULL,
    previous_manifest TEXT,
    previous_sha256   TEXT    REFERENCES plugin_artifacts (sha256),
    previous_version  TEXT,
    generation        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;

CREATE TABLE plugin_audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL CHECK (action IN ('seed', 'upload', 'rollback')),
    plugin       TEXT    NOT NULL,
    from_version TEXT,
    from_sha256  TEXT,
    to_version   TEXT    NOT NULL,
    to_sha256    TEXT    NOT NULL
) STRICT;
