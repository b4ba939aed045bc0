-- A plugin an operator turns off stays in the release set, marked with when: every process
-- uninstalls it, and no plugins directory seeds it back (a directory only seeds names the set
-- does not have). Enabling it, an upload or a rollback clears the mark.
ALTER TABLE plugin_releases ADD COLUMN disabled_at BIGINT;

ALTER TABLE plugin_audit DROP CONSTRAINT plugin_audit_action_check;
ALTER TABLE plugin_audit ADD CONSTRAINT plugin_audit_action_check
    CHECK (action IN ('seed', 'upload', 'rollback', 'disable', 'enable'));
