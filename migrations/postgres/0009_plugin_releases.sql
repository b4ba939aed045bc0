-- The plugin set every host process serves, so that an upload or a rollback through one
-- process reaches every process on this database (each polls `plugin_releases`). The
-- plugins directory only seeds it: a name gets a release from a directory when it has none.

-- Components by digest: written once, shared by every release of them.
CREATE TABLE plugin_artifacts (
    sha256     TEXT   PRIMARY KEY,
    wasm       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per plugin name: the manifest and component to serve, the ones a rollback
-- restores, and a generation every change bumps (what the polling processes compare).
CREATE TABLE plugin_releases (
    name              TEXT   PRIMARY KEY,
    manifest          TEXT   NOT NULL,
    sha256            TEXT   NOT NULL REFERENCES plugin_artifacts (sha256),
    version           TEXT   NOT NULL,
    previous_manifest TEXT,
    previous_sha256   TEXT   REFERENCES plugin_artifacts (sha256),
    previous_version  TEXT,
    generation        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

-- Every change of the set: who, when, what, from which build to which.
CREATE TABLE plugin_audit (
    id           BIGSERIAL PRIMARY KEY,
    at           BIGINT NOT NULL,
    actor        TEXT   NOT NULL,
    action       TEXT   NOT NULL CHECK (action IN ('seed', 'upload', 'rollback')),
    plugin       TEXT   NOT NULL,
    from_version TEXT,
    from_sha256  TEXT,
    to_version   TEXT   NOT NULL,
    to_sha256    TEXT   NOT NULL
);
