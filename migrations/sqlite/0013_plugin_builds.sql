-- Every build each plugin has been released or canaried with, and the manifest it ran
-- under. A process that starts after later swaps loads from here the builds that open
-- orders are still pinned to (their follow-up calls, such as a capture or a void, must run
-- on the build that made the hold), with the grants and limits that build was released
-- with; `plugin_releases` only remembers the current, previous and canary builds.
CREATE TABLE plugin_builds (
    plugin      TEXT    NOT NULL,
    sha256      TEXT    NOT NULL REFERENCES plugin_artifacts (sha256),
    manifest    TEXT    NOT NULL,
    released_at INTEGER NOT NULL,
    PRIMARY KEY (plugin, sha256)
) STRICT;

-- The builds the release set remembers so far. (`WHERE true`: SQLite needs a WHERE to parse
-- ON CONFLICT after a SELECT.)
INSERT INTO plugin_builds (plugin, sha256, manifest, released_at)
SELECT name, sha256, manifest, updated_at FROM plugin_releases WHERE true
ON CONFLICT (plugin, sha256) DO NOTHING;
INSERT INTO plugin_builds (plugin, sha256, manifest, released_at)
SELECT name, previous_sha256, previous_manifest, updated_at FROM plugin_releases
WHERE previous_sha256 IS NOT NULL AND previous_manifest IS NOT NULL
ON CONFLICT (plugin, sha256) DO NOTHING;
INSERT INTO plugin_builds (plugin, sha256, manifest, released_at)
SELECT name, canary_sha256, canary_manifest, updated_at FROM plugin_releases
WHERE canary_sha256 IS NOT NULL AND canary_manifest IS NOT NULL
ON CONFLICT (plugin, sha256) DO NOTHING;
