//! 200 concurrent reservations of one unit against a SKU with 100 in stock: exactly 100
//! succeed, on PostgreSQL and on SQLite, through the real local-stock plugin.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use oms_persistence::testing::TestDatabase;
use oms_persistence::{Database, DatabaseOptions};
use oms_plugin_runtime::clients::inventory::{InventoryError, Line};
use oms_plugin_runtime::kv::PluginKvStore;
use oms_plugin_runtime::{PluginError, PluginRuntime};

async fn oversell_check(kv: Arc<dyn PluginKvStore>) {
    let rt: PluginRuntime = runtime_with(kv);
    let dir = tempfile::tempdir().unwrap();
    // A generous deadline: 200 calls queue on one key's lock, on a 2-core machine.
    let m = staged(dir.path(), "local-stock", |t| {
        set_line(&t, "deadline_ms", "30000")
    });
    rt.install(&m).await.unwrap();
    let inv = rt.inventory("local-stock");
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let inv = inv.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                inv.reserve(
                    format!("order-{i}"),
                    vec![Line {
                        sku: "LIMITED-100".into(),
                        quantity: 1,
                    }],
                    format!("reserve-{i}"),
                )
                .await
            })
        })
        .collect();
    let (mut ok, mut out) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(PluginError::Rejected {
                error: InventoryError::OutOfStock(skus),
                ..
            }) => {
                assert_eq!(skus, vec!["LIMITED-100".to_string()]);
                out += 1;
            }
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert_eq!((ok, out), (100, 100));
}

/// The host's own store over a fresh database; generous pool waits, since 200 calls queue
/// on one key's lock on a 2-core machine.
async fn database(test_db: &TestDatabase) -> Database {
    let options = DatabaseOptions {
        max_connections: 16,
        acquire_timeout: std::time::Duration::from_secs(30),
        sqlite_busy_timeout: std::time::Duration::from_secs(30),
        ..DatabaseOptions::default()
    };
    oms_persistence::connect(test_db.url(), &options)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (trust auth, user postgres)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_oversell_on_postgres() {
    plugins_dir();
    let test_db = TestDatabase::postgres()
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (trust auth, user postgres)");
    let db = database(&test_db).await;
    // Run the check as a task so that the database is dropped even when it fails.
    let outcome = tokio::spawn(oversell_check(db.plugin_kv())).await;
    db.close().await;
    test_db.cleanup().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_oversell_on_sqlite() {
    plugins_dir();
    let test_db = TestDatabase::sqlite().unwrap();
    let db = database(&test_db).await;
    oversell_check(db.plugin_kv()).await;
    db.close().await;
}

/// A call made for a saga step (`KvMode::Buffered`) writes nothing itself: it reads its own
/// pending writes and hands them back in `CallInfo::kv`, for the step to commit. A first
/// reservation of a SKU seeds and takes from it in one call: one write, conditioned on the
/// counter still being absent.
#[tokio::test]
async fn a_buffered_call_returns_its_writes_instead_of_writing() {
    use oms_application::plugin_kv::{Expect, KeyChange, KeyEffect};
    use oms_plugin_runtime::KvMode;
    use oms_plugin_runtime::kv::{AbsentKeys, Buffering, MemoryKvStore};

    plugins_dir();
    let kv = Arc::new(MemoryKvStore::new());
    let rt = runtime_with(kv.clone());
    let dir = tempfile::tempdir().unwrap();
    rt.install(staged(dir.path(), "local-stock", |t| t))
        .await
        .unwrap();
    // Checked at commit where it can be: a reservation's batch has a counter, so it reads.
    let inv = rt
        .inventory("local-stock")
        .with_kv(KvMode::Buffered(Buffering {
            absent_keys: AbsentKeys::CheckedAtCommit,
            ..Buffering::default()
        }));
    let line = |quantity| Line {
        sku: "LIMITED-100".into(),
        quantity,
    };
    let called = inv
        .reserve("order-1".into(), vec![line(3)], "reserve-1".into())
        .await
        .unwrap();
    assert_eq!(
        kv.get("local-stock", "stock/LIMITED-100").await.unwrap(),
        None,
        "nothing written during the call"
    );
    let changes = &called.info.kv;
    assert_eq!(changes.namespace, "local-stock");
    assert_eq!(
        changes.keys["stock/LIMITED-100"],
        KeyChange {
            expect: Expect::Value(None),
            effect: KeyEffect::Put(b"97".to_vec()),
        }
    );
    assert!(
        changes.keys.keys().any(|k| k.contains("reserve-1")),
        "the reservation's records ride along: {:?}",
        changes.keys.keys()
    );

    // Once the counter exists, a take is a bounded add, not pinned to what the call saw.
    kv.set("local-stock", "stock/LIMITED-100", b"100")
        .await
        .unwrap();
    let called = inv
        .reserve("order-2".into(), vec![line(2)], "reserve-2".into())
        .await
        .unwrap();
    assert_eq!(
        called.info.kv.keys["stock/LIMITED-100"],
        KeyChange {
            expect: Expect::Anything,
            effect: KeyEffect::Add {
                delta: -2,
                min: Some(0),
                max: None,
            },
        }
    );
}

/// fakepay in a runtime of its own over an empty in-memory store: granted the network (an
/// `http` section, to an address nothing listens on; fakepay never calls it) or not. The
/// directory holds the staged manifest.
async fn fakepay(networked: bool) -> (PluginRuntime, tempfile::TempDir) {
    use oms_plugin_runtime::kv::MemoryKvStore;

    let rt = runtime_with(Arc::new(MemoryKvStore::new()));
    let dir = tempfile::tempdir().unwrap();
    let manifest = staged(dir.path(), "fakepay", |t| {
        if networked {
            t.replace(
                "kv = true",
                "kv = true\nhttp.allow = [\"127.0.0.1:9\"]\nhttp.allow_private = true",
            )
        } else {
            t
        }
    });
    rt.install(&manifest).await.unwrap();
    (rt, dir)
}

/// A saga step may let the commit check the keys a call creates (`AbsentKeys::CheckedAtCommit`)
/// only when the plugin cannot reach outside the host: fakepay, asked to authorise again
/// under a key it already recorded, answers `Applied` without a read, and its write is pinned
/// to "absent" for the commit to refuse. The same plugin granted the network reads first, as
/// its call could act on the answer, and so replays its record.
#[tokio::test]
async fn only_a_plugin_without_network_leaves_its_new_keys_to_the_commit() {
    use oms_application::plugin_kv::Expect;
    use oms_plugin_runtime::KvMode;
    use oms_plugin_runtime::kv::{AbsentKeys, Buffering};

    plugins_dir();
    for networked in [false, true] {
        let (rt, _dir) = fakepay(networked).await;
        // The first authorisation, committed.
        let first = rt
            .payment("fakepay")
            .authorize(authorize_request("tok_ok", "again"))
            .await
            .unwrap();
        let again = rt
            .payment("fakepay")
            .with_kv(KvMode::Buffered(Buffering {
                absent_keys: AbsentKeys::CheckedAtCommit,
                pending_steps: false,
            }))
            .authorize(authorize_request("tok_ok", "again"))
            .await
            .unwrap();
        assert_eq!(again.info.host_only, !networked);
        assert_eq!(again.value.payment().id, first.value.payment().id);
        let pinned_absent = again
            .info
            .kv
            .keys
            .values()
            .filter(|k| k.expect == Expect::Value(None))
            .count();
        if networked {
            assert_eq!(
                pinned_absent, 0,
                "read first, the replay writes nothing new"
            );
        } else {
            assert!(
                pinned_absent >= 2,
                "the record and its index are left to the commit, which refuses them: {:?}",
                again.info.kv
            );
        }
    }
}

/// A saga step whose earlier steps wait for its commit (`Buffering::pending_steps`) may only
/// call a plugin that stays in the host: were the commit refused, those steps would run
/// again, maybe to another end, and what a provider did meanwhile would be stranded. The
/// same fakepay granted the network is refused before any build runs, and called once the
/// caller says nothing is pending; without the grant it is called either way.
#[tokio::test]
async fn a_networked_plugin_is_not_called_while_earlier_steps_wait() {
    use oms_plugin_runtime::kv::Buffering;
    use oms_plugin_runtime::{CallErrorKind, KvMode};

    plugins_dir();
    for networked in [false, true] {
        let (rt, _dir) = fakepay(networked).await;
        let authorize = |pending_steps| {
            let client = rt.payment("fakepay").with_kv(KvMode::Buffered(Buffering {
                pending_steps,
                ..Buffering::default()
            }));
            async move {
                client
                    .authorize(authorize_request("tok_ok", "after-reserve"))
                    .await
            }
        };
        let pending = authorize(true).await;
        if networked {
            match pending {
                Err(PluginError::Runtime(e)) => {
                    assert_eq!(e.kind, CallErrorKind::PendingSteps);
                    assert!(e.info.is_none(), "no build ran: {e:?}");
                }
                other => panic!("a networked plugin was called with steps pending: {other:?}"),
            }
            let called = authorize(false).await.unwrap();
            assert!(!called.info.host_only);
            assert!(
                !called.info.kv.keys.is_empty(),
                "the call that went out recorded its payment"
            );
        } else {
            let called = pending.unwrap();
            assert!(called.info.host_only);
            assert!(!called.info.kv.keys.is_empty());
        }
    }
}
