//! The shared plugin set: seeding, uploads, rollbacks, artifacts and the audit trail, on
//! PostgreSQL and SQLite.

#![allow(clippy::unwrap_used)]

mod common;

use oms_application::ports::{CanaryEnd, NewCanary, NewRelease, ReleaseAction, StoreError};
use oms_domain::Timestamp;
use oms_persistence::Database;

fn new<'a>(
    version: &'a str,
    sha: &'a str,
    wasm: &'a [u8],
    action: ReleaseAction,
) -> NewRelease<'a> {
    NewRelease {
        name: "fakepay",
        manifest: "name = \"fakepay\"",
        sha256: sha,
        version,
        wasm,
        action,
        actor: "test",
    }
}

async fn releases_follow_seeds_uploads_and_rollbacks(db: Database) {
    let store = db.plugin_releases();
    let at = Timestamp::from_unix_millis;

    let seeded = store
        .release(new("0.1.0", "aa", b"one", ReleaseAction::Seed), at(1))
        .await
        .unwrap()
        .expect("a first seed creates the release");
    assert_eq!((seeded.version.as_str(), seeded.generation), ("0.1.0", 1));
    // A second seed (another host's directory) changes nothing.
    let again = store
        .release(new("0.0.9", "ff", b"old", ReleaseAction::Seed), at(2))
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(store.artifact("ff").await.unwrap(), None, "nothing written");

    let uploaded = store
        .release(new("0.1.1", "bb", b"two", ReleaseAction::Upload), at(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((uploaded.sha256.as_str(), uploaded.generation), ("bb", 2));
    // The same build again (a file touched or re-added in a plugins directory) changes
    // nothing: "aa" stays the rollback target and no change is audited.
    assert_eq!(
        store
            .release(new("0.1.1", "bb", b"two", ReleaseAction::Upload), at(3))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.releases().await.unwrap()[0].generation, 2);
    assert_eq!(store.audit(Some("fakepay"), 10).await.unwrap().len(), 2);
    assert_eq!(
        store.artifact("bb").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );

    let back = store
        .rollback("fakepay", "ops", at(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (back.version.as_str(), back.sha256.as_str(), back.generation),
        ("0.1.0", "aa", 3)
    );
    // A rollback of a rollback restores the upload.
    let forth = store
        .rollback("fakepay", "ops", at(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((forth.version.as_str(), forth.generation), ("0.1.1", 4));
    assert_eq!(store.releases().await.unwrap(), [forth]);

    assert_eq!(
        store.rollback("nope", "ops", at(6)).await,
        Err(StoreError::NotFound)
    );
    store
        .release(
            NewRelease {
                name: "local-stock",
                ..new("0.1.0", "cc", b"three", ReleaseAction::Seed)
            },
            at(7),
        )
        .await
        .unwrap();
    assert_eq!(
        store.rollback("local-stock", "ops", at(8)).await,
        Ok(None),
        "nothing to roll back to"
    );

    let trail = store.audit(Some("fakepay"), 10).await.unwrap();
    let steps: Vec<_> = trail
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.from_version.as_deref(),
                e.to_version.as_str(),
                e.actor.as_str(),
                e.at.unix_millis(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("rollback", Some("0.1.0"), "0.1.1", "ops", 5),
            ("rollback", Some("0.1.1"), "0.1.0", "ops", 4),
            ("upload", Some("0.1.0"), "0.1.1", "test", 3),
            ("seed", None, "0.1.0", "test", 1),
        ]
    );
    assert_eq!(store.audit(None, 10).await.unwrap().len(), 5);
    assert_eq!(store.audit(None, 2).await.unwrap().len(), 2);
}
on_both!(releases, releases_follow_seeds_uploads_and_rollbacks);

/// Disabling keeps the release (so a later seed does not bring it back), bumps the
/// generation every process follows, and is audited; enabling, an upload or a rollback turns
/// it on again; asking for the state it is in writes nothing.
async fn disabled_releases_stay_disabled_until_enabled(db: Database) {
    let store = db.plugin_releases();
    let at = Timestamp::from_unix_millis;
    store
        .release(new("0.1.0", "aa", b"one", ReleaseAction::Seed), at(1))
        .await
        .unwrap();
    let off = store
        .set_disabled("fakepay", true, "ops", at(2))
        .await
        .unwrap()
        .expect("a change");
    assert!(off.disabled);
    assert_eq!((off.version.as_str(), off.generation), ("0.1.0", 2));
    assert_eq!(
        store.set_disabled("fakepay", true, "ops", at(3)).await,
        Ok(None),
        "already off"
    );
    // Another host's directory seeds nothing over it.
    let seed = store
        .release(new("0.1.0", "aa", b"one", ReleaseAction::Seed), at(4))
        .await
        .unwrap();
    assert_eq!(seed, None);
    assert!(store.releases().await.unwrap()[0].disabled);
    assert_eq!(
        store.set_disabled("nope", true, "ops", at(5)).await,
        Err(StoreError::NotFound)
    );

    let on = store
        .set_disabled("fakepay", false, "ops", at(6))
        .await
        .unwrap()
        .expect("a change");
    assert!(!on.disabled);
    assert_eq!(on.generation, 3);
    // An upload over a disabled release turns it on too.
    store
        .set_disabled("fakepay", true, "ops", at(7))
        .await
        .unwrap();
    let uploaded = store
        .release(new("0.1.1", "bb", b"two", ReleaseAction::Upload), at(8))
        .await
        .unwrap()
        .unwrap();
    assert!(!uploaded.disabled && !store.releases().await.unwrap()[0].disabled);

    let actions: Vec<String> = store
        .audit(Some("fakepay"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["upload", "disable", "enable", "disable", "seed"]);
}
on_both!(disabling, disabled_releases_stay_disabled_until_enabled);

fn canary<'a>(version: &'a str, sha: &'a str, wasm: &'a [u8], percent: u8) -> NewCanary<'a> {
    NewCanary {
        name: "fakepay",
        manifest: "name = \"fakepay\" # canary",
        sha256: sha,
        version,
        wasm,
        percent,
        actor: "ops",
    }
}

/// A canary rides on the release: started (replacing a running one), ended by promotion
/// (it becomes the release, the release the rollback target) or by abort (the release goes
/// on), ended by an upload, a rollback or disabling; each change bumps the generation the
/// processes follow and is audited from which build to which.
async fn canaries_start_promote_abort_and_end_with_other_changes(db: Database) {
    let store = db.plugin_releases();
    let at = Timestamp::from_unix_millis;
    store
        .release(new("0.1.0", "aa", b"one", ReleaseAction::Seed), at(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .start_canary(canary("0.2.0", "bb", b"two", 5), at(2))
            .await
            .map(|r| r.is_some()),
        Ok(true)
    );
    let started = store
        .start_canary(canary("0.3.0", "cc", b"three", 10), at(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((started.version.as_str(), started.generation), ("0.1.0", 3));
    let running = started.canary.clone().unwrap();
    assert_eq!(
        (
            running.version.as_str(),
            running.sha256.as_str(),
            running.percent
        ),
        ("0.3.0", "cc", 10)
    );
    assert_eq!(running.manifest, "name = \"fakepay\" # canary");
    assert_eq!(
        store.releases().await.unwrap(),
        std::slice::from_ref(&started)
    );
    assert_eq!(
        store.artifact("cc").await.unwrap().as_deref(),
        Some(&b"three"[..])
    );

    let promoted = store
        .end_canary("fakepay", CanaryEnd::Promote, None, "ops", at(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (promoted.version.as_str(), promoted.sha256.as_str()),
        ("0.3.0", "cc")
    );
    assert_eq!(promoted.canary, None);
    assert_eq!(
        store
            .end_canary("fakepay", CanaryEnd::Promote, None, "ops", at(5))
            .await,
        Ok(None),
        "no canary any more"
    );
    // The promoted build's predecessor is the rollback target.
    let back = store
        .rollback("fakepay", "ops", at(6))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.version, "0.1.0");

    store
        .start_canary(canary("0.4.0", "dd", b"four", 50), at(7))
        .await
        .unwrap();
    // A decision about another build ends nothing.
    assert_eq!(
        store
            .end_canary(
                "fakepay",
                CanaryEnd::Abort,
                Some("cc"),
                "auto-rollback:h1",
                at(8)
            )
            .await,
        Ok(None)
    );
    let aborted = store
        .end_canary(
            "fakepay",
            CanaryEnd::Abort,
            Some("dd"),
            "auto-rollback:h1",
            at(8),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((aborted.version.as_str(), aborted.canary), ("0.1.0", None));

    // An upload, a rollback and disabling each end a canary.
    for end in ["upload", "rollback", "disable"] {
        store
            .start_canary(canary("0.5.0", "ee", b"five", 1), at(9))
            .await
            .unwrap()
            .unwrap();
        match end {
            "upload" => {
                store
                    .release(new("0.6.0", "ff", b"six", ReleaseAction::Upload), at(10))
                    .await
                    .unwrap();
            }
            "rollback" => {
                store.rollback("fakepay", "ops", at(10)).await.unwrap();
            }
            _ => {
                store
                    .set_disabled("fakepay", true, "ops", at(10))
                    .await
                    .unwrap();
            }
        }
        assert_eq!(store.releases().await.unwrap()[0].canary, None, "{end}");
    }
    // No canary on a disabled plugin, nor on an unknown one.
    assert_eq!(
        store
            .start_canary(canary("0.5.0", "ee", b"five", 1), at(11))
            .await,
        Ok(None)
    );
    let unknown = NewCanary {
        name: "nope",
        ..canary("0.5.0", "ee", b"five", 1)
    };
    assert_eq!(
        store.start_canary(unknown, at(12)).await,
        Err(StoreError::NotFound)
    );

    let changes: Vec<(String, String, Option<String>, String)> = store
        .audit(Some("fakepay"), 20)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.actor, e.from_version, e.to_version))
        .collect();
    let expected = [
        ("disable", "ops", "0.1.0", "0.1.0"),
        ("canary", "ops", "0.1.0", "0.5.0"),
        ("rollback", "ops", "0.6.0", "0.1.0"),
        ("canary", "ops", "0.6.0", "0.5.0"),
        ("upload", "test", "0.1.0", "0.6.0"),
        ("canary", "ops", "0.1.0", "0.5.0"),
        ("abort", "auto-rollback:h1", "0.4.0", "0.1.0"),
        ("canary", "ops", "0.1.0", "0.4.0"),
        ("rollback", "ops", "0.3.0", "0.1.0"),
        ("promote", "ops", "0.1.0", "0.3.0"),
        ("canary", "ops", "0.1.0", "0.3.0"),
        ("canary", "ops", "0.1.0", "0.2.0"),
        ("seed", "test", "-", "0.1.0"),
    ];
    let expected: Vec<(String, String, Option<String>, String)> = expected
        .iter()
        .map(|(a, who, from, to)| {
            (
                (*a).to_owned(),
                (*who).to_owned(),
                (*from != "-").then(|| (*from).to_owned()),
                (*to).to_owned(),
            )
        })
        .collect();
    assert_eq!(changes, expected);
}
on_both!(
    canaries,
    canaries_start_promote_abort_and_end_with_other_changes
);

/// Drains the outbox as one relay would (each round marks the previous round's rows
/// published), returning the rows in the order they were claimed.
async fn drain_outbox(db: &Database) -> Vec<oms_application::ports::OutboxRow> {
    let outbox = db.outbox();
    let now = Timestamp::now();
    let lease = now.saturating_add(std::time::Duration::from_secs(60));
    let mut published: Vec<i64> = Vec::new();
    let mut all = Vec::new();
    loop {
        let rows = outbox
            .claim(&published, now, now, lease, 100)
            .await
            .unwrap();
        if rows.is_empty() {
            return all;
        }
        published = rows.iter().map(|r| r.id).collect();
        all.extend(rows);
    }
}

/// Every change of the plugin set is an outbox row of aggregate type `plugin`, written with
/// its audit row (so a change that did not happen writes none), claimed in the order the
/// changes were made, and carrying what the audit trail says.
async fn every_change_goes_to_the_outbox_beside_its_audit_row(db: Database) {
    use oms_application::outbox::{PluginChangedPayload, plugin_aggregate_id};
    use oms_application::ports::AggregateType;

    let store = db.plugin_releases();
    let at = Timestamp::from_unix_millis;
    store
        .release(new("0.1.0", "aa", b"one", ReleaseAction::Seed), at(1))
        .await
        .unwrap()
        .unwrap();
    // Changes that do not happen: a seed over a release, a canary of an unknown plugin.
    assert_eq!(
        store
            .release(new("0.0.9", "ff", b"old", ReleaseAction::Seed), at(2))
            .await
            .unwrap(),
        None
    );
    let mut unknown = canary("9.9.9", "ee", b"x", 5);
    unknown.name = "nope";
    assert!(store.start_canary(unknown, at(2)).await.is_err());
    store
        .release(new("0.2.0", "bb", b"two", ReleaseAction::Upload), at(3))
        .await
        .unwrap()
        .unwrap();
    store
        .start_canary(canary("0.3.0", "cc", b"three", 10), at(4))
        .await
        .unwrap()
        .unwrap();
    store
        .end_canary("fakepay", CanaryEnd::Abort, None, "auto-rollback:h1", at(5))
        .await
        .unwrap()
        .unwrap();
    store
        .set_disabled("fakepay", true, "ops", at(6))
        .await
        .unwrap()
        .unwrap();

    let rows = drain_outbox(&db).await;
    assert!(
        rows.iter()
            .all(|r| r.aggregate_type == AggregateType::Plugin
                && r.aggregate_id == plugin_aggregate_id("fakepay")
                && r.event_type == "PluginChanged"),
        "{rows:?}"
    );
    let events: Vec<PluginChangedPayload> = rows
        .iter()
        .map(|r| serde_json::from_value(r.payload.clone()).unwrap())
        .collect();
    let seen: Vec<(&str, &str, Option<&str>, &str, i64)> = events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.actor.as_str(),
                e.from.as_ref().map(|b| b.version.as_str()),
                e.to.version.as_str(),
                e.occurred_at_ms,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("seed", "test", None, "0.1.0", 1),
            ("upload", "test", Some("0.1.0"), "0.2.0", 3),
            ("canary", "ops", Some("0.2.0"), "0.3.0", 4),
            ("abort", "auto-rollback:h1", Some("0.3.0"), "0.2.0", 5),
            ("disable", "ops", Some("0.2.0"), "0.2.0", 6),
        ]
    );
    assert!(
        events
            .iter()
            .zip(&rows)
            .all(|(e, r)| e.event_id == r.event_id.to_string()
                && e.plugin == "fakepay"
                && e.schema_version == 1)
    );
    // The audit trail holds the same five changes.
    assert_eq!(store.audit(Some("fakepay"), 10).await.unwrap().len(), 5);
    assert_eq!(store.audit(Some("nope"), 10).await.unwrap().len(), 0);
}
on_both!(
    changes_in_the_outbox,
    every_change_goes_to_the_outbox_beside_its_audit_row
);

/// A plugin change that exhausted its attempts is listed as such (no order id) and a redrive
/// puts it back with its aggregate type, so it goes to the plugin-changes topic again.
async fn a_dead_lettered_plugin_change_keeps_its_type(db: Database) {
    use oms_application::ports::AggregateType;

    db.plugin_releases()
        .release(
            new("0.1.0", "aa", b"one", ReleaseAction::Seed),
            Timestamp::from_unix_millis(1),
        )
        .await
        .unwrap()
        .unwrap();
    let outbox = db.outbox();
    let now = Timestamp::now();
    let lease = now.saturating_add(std::time::Duration::from_secs(60));
    let row = outbox
        .claim(&[], now, now, lease, 10)
        .await
        .unwrap()
        .remove(0);
    outbox
        .dead_letter(row.id, 10, "broker down", now)
        .await
        .unwrap();
    let letters = outbox.dead_letters(true, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].aggregate_type, AggregateType::Plugin);
    assert_eq!(letters[0].order_id(), None);
    assert!(outbox.redrive(row.id, now).await.unwrap());
    let again = outbox.claim(&[], now, now, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (
            again[0].aggregate_type,
            again[0].aggregate_id,
            &again[0].payload
        ),
        (AggregateType::Plugin, row.aggregate_id, &row.payload)
    );
}
on_both!(
    plugin_dead_letters,
    a_dead_lettered_plugin_change_keeps_its_type
);

/// Every build a plugin was released or canaried with stays loadable by name and digest,
/// with the manifest it was last released with; a change that did not happen records none.
async fn every_released_build_stays_loadable(db: Database) {
    let store = db.plugin_releases();
    let at = Timestamp::from_unix_millis;
    store
        .release(new("0.1.0", "aa", b"one", ReleaseAction::Seed), at(1))
        .await
        .unwrap()
        .unwrap();
    store
        .release(new("0.2.0", "bb", b"two", ReleaseAction::Upload), at(2))
        .await
        .unwrap()
        .unwrap();
    store
        .start_canary(canary("0.3.0", "cc", b"three", 10), at(3))
        .await
        .unwrap()
        .unwrap();
    // Two more uploads: "aa" is neither current, previous nor canary any more.
    store
        .release(new("0.4.0", "dd", b"four", ReleaseAction::Upload), at(4))
        .await
        .unwrap()
        .unwrap();
    store
        .release(new("0.5.0", "ee", b"five", ReleaseAction::Upload), at(5))
        .await
        .unwrap()
        .unwrap();

    let one = store.build("fakepay", "aa").await.unwrap().unwrap();
    assert_eq!(
        (one.manifest.as_str(), one.wasm.as_slice()),
        ("name = \"fakepay\"", &b"one"[..])
    );
    let three = store.build("fakepay", "cc").await.unwrap().unwrap();
    assert_eq!(three.manifest, "name = \"fakepay\" # canary");
    // Another plugin never had these builds; a seed that did not happen recorded nothing.
    assert_eq!(store.build("other", "aa").await.unwrap(), None);
    assert_eq!(
        store
            .release(new("0.0.9", "ff", b"old", ReleaseAction::Seed), at(6))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.build("fakepay", "ff").await.unwrap(), None);
}
on_both!(builds, every_released_build_stays_loadable);
