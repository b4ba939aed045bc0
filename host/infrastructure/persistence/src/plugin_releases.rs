//! [`PluginReleaseStore`]: the plugin set every host process serves (`plugin_releases`),
//! the components by digest (`plugin_artifacts`) and every change (`plugin_audit`, and the
//! `PluginChanged` event in the outbox beside it).

use std::marker::PhantomData;

use async_trait::async_trait;
use oms_application::outbox::{BuildDoc, PLUGIN_CHANGED, PluginChangedMessage};
use oms_application::ports::{
    AggregateType, AuditEntry, CanaryEnd, CanaryRelease, NewCanary, NewRelease, PluginRelease,
    PluginReleaseStore, ReleaseAction, StoreError, StoredBuild,
};
use oms_domain::Timestamp;

use crate::outbox::{NewOutboxRow, write_outbox};
use crate::sql::{Args, ConnOf, Dialect, RowExt, RowOf, Sql, json};

pub(crate) struct SqlPluginReleaseStore<D: Dialect> {
    sql: Sql<D>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlPluginReleaseStore<D> {
    pub(crate) fn new(sql: Sql<D>) -> Self {
        Self {
            sql,
            dialect: PhantomData,
        }
    }
}

const RELEASE_COLUMNS: &str = "name, manifest, sha256, version, generation, disabled_at, \
     canary_manifest, canary_sha256, canary_version, canary_percent";

/// What ends a canary, in an `UPDATE plugin_releases SET` list: an upload, a rollback and
/// disabling the plugin replace the rollout.
const NO_CANARY: &str =
    "canary_manifest = NULL, canary_sha256 = NULL, canary_version = NULL, canary_percent = NULL";

fn release<D: Dialect>(row: &RowOf<D>) -> Result<PluginRelease, sqlx::Error> {
    let canary = match (
        row.col::<Option<String>>("canary_manifest")?,
        row.col::<Option<String>>("canary_sha256")?,
        row.col::<Option<String>>("canary_version")?,
        row.col::<Option<i32>>("canary_percent")?,
    ) {
        (Some(manifest), Some(sha256), Some(version), Some(percent)) => Some(CanaryRelease {
            manifest,
            sha256,
            version,
            percent: u8::try_from(percent).map_err(|e| sqlx::Error::ColumnDecode {
                index: "canary_percent".into(),
                source: Box::new(e),
            })?,
        }),
        _ => None,
    };
    Ok(PluginRelease {
        name: row.col("name")?,
        manifest: row.col("manifest")?,
        sha256: row.col("sha256")?,
        version: row.col("version")?,
        generation: row.col("generation")?,
        disabled: row.col::<Option<i64>>("disabled_at")?.is_some(),
        canary,
    })
}

/// Stores `wasm` under `sha256` unless it is there already, and records it as a build of
/// `plugin` released with `manifest` (the latest manifest wins), inside the caller's
/// transaction.
async fn store_build<D: Dialect>(
    conn: &mut ConnOf<D>,
    plugin: &str,
    sha256: &str,
    manifest: &str,
    wasm: &[u8],
    at: i64,
) -> Result<(), StoreError> {
    D::query(
        "INSERT INTO plugin_artifacts (sha256, wasm, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (sha256) DO NOTHING",
    )
    .arg(sha256)
    .arg(wasm)
    .arg(at)
    .execute(D::on(conn))
    .await
    .map_err(D::classify)?;
    D::query(
        "INSERT INTO plugin_builds (plugin, sha256, manifest, released_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (plugin, sha256) \
         DO UPDATE SET manifest = excluded.manifest, released_at = excluded.released_at",
    )
    .arg(plugin)
    .arg(sha256)
    .arg(manifest)
    .arg(at)
    .execute(D::on(conn))
    .await
    .map_err(D::classify)?;
    Ok(())
}

/// One `plugin_audit` row and its `PluginChanged` outbox row, inside the caller's
/// transaction: the broker hears of exactly the changes the audit trail holds.
#[allow(clippy::too_many_arguments)]
async fn audit<D: Dialect>(
    conn: &mut ConnOf<D>,
    now: Timestamp,
    actor: &str,
    action: &str,
    plugin: &str,
    from: (Option<String>, Option<String>),
    to: (&str, &str),
) -> Result<(), StoreError> {
    D::query(
        "INSERT INTO plugin_audit (at, actor, action, plugin, from_version, from_sha256, \
         to_version, to_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .arg(now.unix_millis())
    .arg(actor)
    .arg(action)
    .arg(plugin)
    .arg(from.0.as_deref())
    .arg(from.1.as_deref())
    .arg(to.0)
    .arg(to.1)
    .execute(D::on(conn))
    .await
    .map_err(D::classify)?;
    let from = match from {
        (Some(version), Some(sha256)) => Some(BuildDoc { version, sha256 }),
        _ => None,
    };
    let to = BuildDoc {
        version: to.0.to_owned(),
        sha256: to.1.to_owned(),
    };
    let event = PluginChangedMessage::new(plugin, action, actor, from, to, now);
    let row = NewOutboxRow {
        event_id: event.event_id,
        aggregate_type: AggregateType::Plugin,
        aggregate_id: event.aggregate_id,
        event_type: PLUGIN_CHANGED,
        schema_version: event.payload.schema_version,
        payload: json(&event.payload, "plugin change payload")?,
        headers: json(&event.headers, "plugin change headers")?,
        occurred_at: event.occurred_at,
    };
    write_outbox::<D>(conn, vec![row], now).await
}

/// A conditional change of `name` that matched no row: `Ok(None)` when the release exists
/// (it was not in the state the change needs), `NotFound` when it does not. Ends `tx`.
async fn unchanged<D: Dialect>(
    mut tx: sqlx::Transaction<'static, D::DB>,
    name: &str,
) -> Result<Option<PluginRelease>, StoreError> {
    let exists = D::query("SELECT 1 FROM plugin_releases WHERE name = $1")
        .arg(name)
        .fetch_optional(D::on(&mut tx))
        .await
        .map_err(D::classify)?
        .is_some();
    tx.rollback().await.map_err(D::classify)?;
    if exists {
        Ok(None)
    } else {
        Err(StoreError::NotFound)
    }
}

#[async_trait]
impl<D: Dialect> PluginReleaseStore for SqlPluginReleaseStore<D> {
    async fn release(
        &self,
        new: NewRelease<'_>,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError> {
        let at = now.unix_millis();
        let mut tx = self.sql.begin_write().await?;
        if new.action == ReleaseAction::Upload {
            // The build that serves already (enabled, no canary): nothing would change but
            // the rollback target, which must not become this same build.
            let serving = D::query(
                "SELECT 1 FROM plugin_releases WHERE name = $1 AND sha256 = $2 \
                 AND manifest = $3 AND disabled_at IS NULL AND canary_sha256 IS NULL",
            )
            .arg(new.name)
            .arg(new.sha256)
            .arg(new.manifest)
            .fetch_optional(D::on(&mut tx))
            .await
            .map_err(D::classify)?;
            if serving.is_some() {
                tx.rollback().await.map_err(D::classify)?;
                return Ok(None);
            }
        }
        store_build::<D>(&mut tx, new.name, new.sha256, new.manifest, new.wasm, at).await?;
        // The current release, if any, becomes the rollback target in the same statement
        // (the right-hand sides read the row as it was).
        let replaced = match new.action {
            ReleaseAction::Seed => None,
            ReleaseAction::Upload => D::query(sqlx::AssertSqlSafe(format!(
                "UPDATE plugin_releases SET previous_manifest = manifest, \
                 previous_sha256 = sha256, previous_version = version, manifest = $2, \
                 sha256 = $3, version = $4, generation = generation + 1, updated_at = $5, \
                 disabled_at = NULL, {NO_CANARY} \
                 WHERE name = $1 RETURNING previous_version, previous_sha256, generation"
            )))
            .arg(new.name)
            .arg(new.manifest)
            .arg(new.sha256)
            .arg(new.version)
            .arg(at)
            .fetch_optional(D::on(&mut tx))
            .await
            .map_err(D::classify)?
            .map(|row| -> Result<_, sqlx::Error> {
                Ok((
                    row.col::<Option<String>>("previous_version")?,
                    row.col::<Option<String>>("previous_sha256")?,
                    row.col::<i64>("generation")?,
                ))
            })
            .transpose()
            .map_err(D::classify)?,
        };
        let (from, generation) = match replaced {
            Some((version, sha256, generation)) => ((version, sha256), generation),
            None => {
                let inserted = D::query(
                    "INSERT INTO plugin_releases (name, manifest, sha256, version, \
                     generation, updated_at) VALUES ($1, $2, $3, $4, 1, $5) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .arg(new.name)
                .arg(new.manifest)
                .arg(new.sha256)
                .arg(new.version)
                .arg(at)
                .execute(D::on(&mut tx))
                .await
                .map_err(D::classify)?;
                if D::rows_affected(&inserted) == 0 {
                    // A seed for a name that has a release (or an upload that raced
                    // another's first release: the caller retries it).
                    tx.rollback().await.map_err(D::classify)?;
                    return match new.action {
                        ReleaseAction::Seed => Ok(None),
                        ReleaseAction::Upload => Err(StoreError::Unavailable(
                            "another release of this plugin was made at the same time".into(),
                        )),
                    };
                }
                ((None, None), 1)
            }
        };
        audit::<D>(
            &mut tx,
            now,
            new.actor,
            new.action.as_str(),
            new.name,
            from,
            (new.version, new.sha256),
        )
        .await?;
        tx.commit().await.map_err(D::classify)?;
        Ok(Some(PluginRelease {
            name: new.name.to_owned(),
            manifest: new.manifest.to_owned(),
            sha256: new.sha256.to_owned(),
            version: new.version.to_owned(),
            generation,
            disabled: false,
            canary: None,
        }))
    }

    async fn rollback(
        &self,
        name: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError> {
        let mut tx = self.sql.begin_write().await?;
        let swapped = D::query(sqlx::AssertSqlSafe(format!(
            "UPDATE plugin_releases SET manifest = previous_manifest, sha256 = previous_sha256, \
             version = previous_version, previous_manifest = manifest, \
             previous_sha256 = sha256, previous_version = version, \
             generation = generation + 1, updated_at = $2, disabled_at = NULL, {NO_CANARY} \
             WHERE name = $1 AND previous_sha256 IS NOT NULL \
             RETURNING {RELEASE_COLUMNS}, previous_version, previous_sha256"
        )))
        .arg(name)
        .arg(now.unix_millis())
        .fetch_optional(D::on(&mut tx))
        .await
        .map_err(D::classify)?;
        let Some(row) = swapped else {
            return unchanged::<D>(tx, name).await;
        };
        let restored = release::<D>(&row).map_err(D::classify)?;
        let from = (
            row.col::<Option<String>>("previous_version")
                .map_err(D::classify)?,
            row.col::<Option<String>>("previous_sha256")
                .map_err(D::classify)?,
        );
        audit::<D>(
            &mut tx,
            now,
            actor,
            "rollback",
            name,
            from,
            (&restored.version, &restored.sha256),
        )
        .await?;
        tx.commit().await.map_err(D::classify)?;
        Ok(Some(restored))
    }

    async fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError> {
        let mut tx = self.sql.begin_write().await?;
        // Only a change of state is written (and audited).
        // Off means off: a canary does not survive it.
        let sql = if disabled {
            format!(
                "UPDATE plugin_releases SET disabled_at = $2, generation = generation + 1, \
                 updated_at = $2, {NO_CANARY} WHERE name = $1 AND disabled_at IS NULL RETURNING "
            )
        } else {
            "UPDATE plugin_releases SET disabled_at = NULL, generation = generation + 1, \
             updated_at = $2 WHERE name = $1 AND disabled_at IS NOT NULL RETURNING "
                .to_owned()
        };
        let changed = D::query(sqlx::AssertSqlSafe(format!("{sql}{RELEASE_COLUMNS}")))
            .arg(name)
            .arg(now.unix_millis())
            .fetch_optional(D::on(&mut tx))
            .await
            .map_err(D::classify)?;
        let Some(row) = changed else {
            return unchanged::<D>(tx, name).await;
        };
        let release = release::<D>(&row).map_err(D::classify)?;
        let build = (Some(release.version.clone()), Some(release.sha256.clone()));
        audit::<D>(
            &mut tx,
            now,
            actor,
            if disabled { "disable" } else { "enable" },
            name,
            build,
            (&release.version, &release.sha256),
        )
        .await?;
        tx.commit().await.map_err(D::classify)?;
        Ok(Some(release))
    }

    async fn start_canary(
        &self,
        new: NewCanary<'_>,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError> {
        let at = now.unix_millis();
        let mut tx = self.sql.begin_write().await?;
        store_build::<D>(&mut tx, new.name, new.sha256, new.manifest, new.wasm, at).await?;
        let started = D::query(sqlx::AssertSqlSafe(format!(
            "UPDATE plugin_releases SET canary_manifest = $2, canary_sha256 = $3, \
             canary_version = $4, canary_percent = $5, generation = generation + 1, \
             updated_at = $6 WHERE name = $1 AND disabled_at IS NULL RETURNING {RELEASE_COLUMNS}"
        )))
        .arg(new.name)
        .arg(new.manifest)
        .arg(new.sha256)
        .arg(new.version)
        .arg(i32::from(new.percent))
        .arg(at)
        .fetch_optional(D::on(&mut tx))
        .await
        .map_err(D::classify)?;
        let Some(row) = started else {
            return unchanged::<D>(tx, new.name).await;
        };
        let release = release::<D>(&row).map_err(D::classify)?;
        audit::<D>(
            &mut tx,
            now,
            new.actor,
            "canary",
            new.name,
            (Some(release.version.clone()), Some(release.sha256.clone())),
            (new.version, new.sha256),
        )
        .await?;
        tx.commit().await.map_err(D::classify)?;
        Ok(Some(release))
    }

    async fn end_canary(
        &self,
        name: &str,
        end: CanaryEnd,
        only: Option<&str>,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError> {
        let mut tx = self.sql.begin_write().await?;
        let running = D::query(
            "SELECT canary_version, canary_sha256 FROM plugin_releases \
             WHERE name = $1 AND canary_sha256 IS NOT NULL \
             AND ($2 IS NULL OR canary_sha256 = $2)",
        )
        .arg(name)
        .arg(only)
        .fetch_optional(D::on(&mut tx))
        .await
        .map_err(D::classify)?;
        let Some(running) = running else {
            return unchanged::<D>(tx, name).await;
        };
        let canary: (String, String) = (
            running.col("canary_version").map_err(D::classify)?,
            running.col("canary_sha256").map_err(D::classify)?,
        );
        // The right-hand sides read the row as it was: the canary's build before it is
        // cleared. Only the canary just read is ended (another change may have replaced it).
        let set = match end {
            CanaryEnd::Promote => {
                "previous_manifest = manifest, previous_sha256 = sha256, \
                 previous_version = version, manifest = canary_manifest, \
                 sha256 = canary_sha256, version = canary_version, "
            }
            CanaryEnd::Abort => "",
        };
        let ended = D::query(sqlx::AssertSqlSafe(format!(
            "UPDATE plugin_releases SET {set}{NO_CANARY}, generation = generation + 1, \
             updated_at = $2 WHERE name = $1 AND canary_sha256 = $3 RETURNING {RELEASE_COLUMNS}"
        )))
        .arg(name)
        .arg(now.unix_millis())
        .arg(canary.1.as_str())
        .fetch_optional(D::on(&mut tx))
        .await
        .map_err(D::classify)?;
        let Some(row) = ended else {
            return unchanged::<D>(tx, name).await;
        };
        let release = release::<D>(&row).map_err(D::classify)?;
        let serving = (release.version.clone(), release.sha256.clone());
        let (action, from, to) = match end {
            // From the build that served before to the canary's, which serves now.
            CanaryEnd::Promote => {
                let before = D::query(
                    "SELECT previous_version, previous_sha256 FROM plugin_releases WHERE name = $1",
                )
                .arg(name)
                .fetch_one(D::on(&mut tx))
                .await
                .map_err(D::classify)?;
                let before = (
                    before
                        .col::<Option<String>>("previous_version")
                        .map_err(D::classify)?,
                    before
                        .col::<Option<String>>("previous_sha256")
                        .map_err(D::classify)?,
                );
                ("promote", before, serving)
            }
            // From the canary's build back to the release's.
            CanaryEnd::Abort => ("abort", (Some(canary.0), Some(canary.1)), serving),
        };
        audit::<D>(&mut tx, now, actor, action, name, from, (&to.0, &to.1)).await?;
        tx.commit().await.map_err(D::classify)?;
        Ok(Some(release))
    }

    async fn releases(&self) -> Result<Vec<PluginRelease>, StoreError> {
        let sql = format!("SELECT {RELEASE_COLUMNS} FROM plugin_releases ORDER BY name");
        let rows = D::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.sql.reader())
            .await
            .map_err(D::classify)?;
        rows.iter()
            .map(|r| release::<D>(r).map_err(D::classify))
            .collect()
    }

    async fn artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        D::query("SELECT wasm FROM plugin_artifacts WHERE sha256 = $1")
            .arg(sha256)
            .fetch_optional(self.sql.reader())
            .await
            .map_err(D::classify)?
            .map(|r| r.col::<Vec<u8>>("wasm"))
            .transpose()
            .map_err(D::classify)
    }

    async fn build(&self, plugin: &str, sha256: &str) -> Result<Option<StoredBuild>, StoreError> {
        let row = D::query(
            "SELECT b.manifest, a.wasm FROM plugin_builds b \
             JOIN plugin_artifacts a ON a.sha256 = b.sha256 \
             WHERE b.plugin = $1 AND b.sha256 = $2",
        )
        .arg(plugin)
        .arg(sha256)
        .fetch_optional(self.sql.reader())
        .await
        .map_err(D::classify)?;
        row.map(|r| -> Result<StoredBuild, sqlx::Error> {
            Ok(StoredBuild {
                manifest: r.col("manifest")?,
                wasm: r.col("wasm")?,
            })
        })
        .transpose()
        .map_err(D::classify)
    }

    async fn audit(&self, plugin: Option<&str>, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = D::query(
            "SELECT at, actor, action, plugin, from_version, from_sha256, to_version, \
             to_sha256 FROM plugin_audit WHERE ($1 IS NULL OR plugin = $1) \
             ORDER BY id DESC LIMIT $2",
        )
        .arg(plugin)
        .arg(i64::from(limit))
        .fetch_all(self.sql.reader())
        .await
        .map_err(D::classify)?;
        rows.iter()
            .map(|r| -> Result<AuditEntry, sqlx::Error> {
                Ok(AuditEntry {
                    at: Timestamp::from_unix_millis(r.col("at")?),
                    actor: r.col("actor")?,
                    action: r.col("action")?,
                    plugin: r.col("plugin")?,
                    from_version: r.col("from_version")?,
                    from_sha256: r.col("from_sha256")?,
                    to_version: r.col("to_version")?,
                    to_sha256: r.col("to_sha256")?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(D::classify)
    }
}
