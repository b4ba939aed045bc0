-- A canary: a new build of a plugin serving a share of new sagas beside the current build,
-- until an operator promotes it (it becomes current) or it is aborted (by an operator, or by
-- a host process that saw its failure rate cross `plugins.canary.max_failure_rate`). Every
-- process follows these columns as it follows the release itself. An upload, a rollback or
-- disabling the plugin ends the canary.
ALTER TABLE plugin_releases ADD COLUMN canary_manifest TEXT;
ALTER TABLE plugin_releases ADD COLUMN canary_sha256 TEXT REFERENCES plugin_artifacts (sha256);
ALTER TABLE plugin_releases ADD COLUMN canary_version TEXT;
ALTER TABLE plugin_releases ADD COLUMN canary_percent INTEGER
    CHECK (canary_percent BETWEEN 1 AND 99);
ALTER TABLE plugin_releases ADD CONSTRAINT plugin_releases_canary_whole
    CHECK ((canary_sha256 IS NULL) = (canary_percent IS NULL)
           AND (canary_sha256 IS NULL) = (canary_manifest IS NULL)
           AND (canary_sha256 IS NULL) = (canary_version IS NULL));

ALTER TABLE plugin_audit DROP CONSTRAINT plugin_audit_action_check;
ALTER TABLE plugin_audit ADD CONSTRAINT plugin_audit_action_check
    CHECK (action IN ('seed', 'upload', 'rollback', 'disable', 'enable',
                      'canary', 'promote', 'abort'));
