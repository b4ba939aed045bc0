//! The shared plugin set: seeding, uploads, rollbacks, artifacts and the audit trail, on
//! PostgreSQL and SQLite.

#![allow(clippy::unwrap_used)]

mod common;

use oms_application::ports::{NewRelease, ReleaseAction, StoreError};
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
