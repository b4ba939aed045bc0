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
