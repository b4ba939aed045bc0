//! A saga step's plugin writes are committed with the step (`SagaCommit` applies
//! `step.call.kv` in the step's transaction), on PostgreSQL, SQLite and the in-memory store:
//! they land together with the step or not at all, and each key's condition is checked then.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Stores, new_order, place_with_saga, saga_for, ts};
use oms_application::plugin_kv::{Expect, KeyChange, KeyEffect, KvChanges, Swap};
use oms_application::ports::{
    Fence, PluginCall, SagaCommit, StepDirection, StepRecord, StepState, StoreError,
};
use oms_application::saga::SagaInstance;

const NS: &str = "local-stock";

/// A placed order's saga, leased to `w1`.
async fn claimed(db: &Stores) -> SagaInstance {
    let (order, event) = new_order("cust-1", ts(1_000));
    let saga = saga_for(&order, 1_000);
    place_with_saga(db, &order, &event, &saga).await.unwrap();
    let mut claimed = db
        .sagas()
        .claim_due("w1", ts(2_000), ts(100_000), 10)
        .await
        .unwrap();
    claimed.pop().unwrap()
}

/// Seeds `key = value` directly, as a plugin's own write outside any step.
async fn seed(db: &Stores, key: &str, value: &str) {
    let swap = Swap {
        key: key.into(),
        expected: None,
        new: Some(value.as_bytes().to_vec()),
    };
    db.plugin_kv().batch(NS, &[swap], &[]).await.unwrap();
}

async fn value(db: &Stores, key: &str) -> Option<String> {
    db.plugin_kv()
        .get(NS, key)
        .await
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// local-stock's reserve of `n` units of SKU A under reservation `id`.
fn reserve(id: &str, n: i64) -> KvChanges {
    KvChanges {
        namespace: NS.into(),
        keys: BTreeMap::from([
            (
                format!("rsv/{id}"),
                KeyChange {
                    expect: Expect::Value(None),
                    effect: KeyEffect::Put(b"held".to_vec()),
                },
            ),
            (
                "stock/A".into(),
                KeyChange {
                    expect: Expect::Anything,
                    effect: KeyEffect::Add {
                        delta: -n,
                        min: Some(0),
                        max: None,
                    },
                },
            ),
        ]),
    }
}

fn step(kv: KvChanges) -> StepRecord {
    StepRecord {
        step: "reserve-inventory",
        direction: StepDirection::Forward,
        call: Some(PluginCall {
            plugin: NS.into(),
            version: "1.0.0".into(),
            digest: "sha256:x".into(),
            kv: Arc::new(kv),
            host_only: true,
        }),
        idempotency_key: "saga:x:reserve-inventory:reserve".into(),
        state: StepState::Succeeded,
        attempts: 1,
        last_error: None,
        at: ts(3_000),
    }
}

/// Commits `saga` one step on as `owner` with `record`.
async fn commit(
    db: &Stores,
    saga: &SagaInstance,
    owner: &str,
    record: &StepRecord,
) -> Result<(), StoreError> {
    let mut next = saga.clone();
    next.step += 1;
    next.version += 1;
    db.sagas()
        .commit(SagaCommit {
            saga: &next,
            expected_version: saga.version,
            fence: Fence::Lease(owner),
            lease_until: ts(100_000),
            steps: std::slice::from_ref(record),
            order: None,
        })
        .await
}

async fn lands_with_its_step(db: Stores) {
    seed(&db, "stock/A", "5").await;
    let saga = claimed(&db).await;
    commit(&db, &saga, "w1", &step(reserve("1", 2)))
        .await
        .unwrap();
    assert_eq!(value(&db, "rsv/1").await.as_deref(), Some("held"));
    assert_eq!(value(&db, "stock/A").await.as_deref(), Some("3"));
    assert_eq!(db.sagas().get(saga.id).await.unwrap().unwrap().step, 1);
}
on_all!(plugin_writes_land_with_their_step, lands_with_its_step);

/// The step's commit fails (this worker lost the saga's lease): the plugin's writes are
/// rolled back with it.
async fn rolled_back_with_a_failed_step(db: Stores) {
    seed(&db, "stock/A", "5").await;
    let saga = claimed(&db).await;
    let err = commit(&db, &saga, "not-the-owner", &step(reserve("1", 2)))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::LeaseLost);
    assert_eq!(value(&db, "rsv/1").await, None);
    assert_eq!(value(&db, "stock/A").await.as_deref(), Some("5"));
}
on_all!(
    plugin_writes_roll_back_with_a_failed_step,
    rolled_back_with_a_failed_step
);

/// A condition that no longer holds (the record was written meanwhile) or a bound the add
/// would cross refuses the whole step: nothing of it is written, the saga is unchanged.
async fn conflicts_refuse_the_whole_step(db: Stores) {
    seed(&db, "stock/A", "5").await;
    seed(&db, "rsv/1", "someone else's").await;
    let saga = claimed(&db).await;
    let err = commit(&db, &saga, "w1", &step(reserve("1", 2)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::KvConflict { key, .. } if key == "rsv/1"),
        "{err:?}"
    );
    assert_eq!(value(&db, "stock/A").await.as_deref(), Some("5"));

    let err = commit(&db, &saga, "w1", &step(reserve("2", 6)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::KvConflict { key, .. } if key == "stock/A"),
        "{err:?}"
    );
    assert_eq!(
        value(&db, "rsv/2").await,
        None,
        "rolled back with the bound"
    );
    assert_eq!(value(&db, "stock/A").await.as_deref(), Some("5"));
    assert_eq!(db.sagas().get(saga.id).await.unwrap(), Some(saga.clone()));

    // The same step with what the store holds now goes through.
    commit(&db, &saga, "w1", &step(reserve("2", 5)))
        .await
        .unwrap();
    assert_eq!(value(&db, "stock/A").await.as_deref(), Some("0"));
}
on_all!(
    stale_plugin_writes_refuse_the_step,
    conflicts_refuse_the_whole_step
);

/// Every kind of key change, as the buffer records them: pinned updates and deletes,
/// unconditional writes, a pure precondition and a first add to an absent counter.
async fn every_change_kind(db: Stores) {
    seed(&db, "a", "1").await;
    seed(&db, "b", "2").await;
    seed(&db, "c", "3").await;
    let change = |expect: Expect, effect: KeyEffect| KeyChange { expect, effect };
    let kv = KvChanges {
        namespace: NS.into(),
        keys: BTreeMap::from([
            (
                "a".into(),
                change(
                    Expect::Value(Some(b"1".to_vec())),
                    KeyEffect::Put(b"10".to_vec()),
                ),
            ),
            (
                "b".into(),
                change(Expect::Value(Some(b"2".to_vec())), KeyEffect::Delete),
            ),
            (
                "c".into(),
                change(Expect::Value(Some(b"3".to_vec())), KeyEffect::Keep),
            ),
            (
                "d".into(),
                change(Expect::Anything, KeyEffect::Put(b"x".to_vec())),
            ),
            ("e".into(), change(Expect::Value(None), KeyEffect::Keep)),
            (
                "f".into(),
                change(
                    Expect::Anything,
                    KeyEffect::Add {
                        delta: 7,
                        min: None,
                        max: Some(10),
                    },
                ),
            ),
        ]),
    };
    let saga = claimed(&db).await;
    commit(&db, &saga, "w1", &step(kv)).await.unwrap();
    assert_eq!(value(&db, "a").await.as_deref(), Some("10"));
    assert_eq!(value(&db, "b").await, None);
    assert_eq!(value(&db, "c").await.as_deref(), Some("3"));
    assert_eq!(value(&db, "d").await.as_deref(), Some("x"));
    assert_eq!(value(&db, "e").await, None);
    assert_eq!(value(&db, "f").await.as_deref(), Some("7"));

    // A pure precondition that fails refuses too.
    let kv = KvChanges {
        namespace: NS.into(),
        keys: BTreeMap::from([(
            "c".into(),
            change(Expect::Value(Some(b"4".to_vec())), KeyEffect::Keep),
        )]),
    };
    let saga = db.sagas().get(saga.id).await.unwrap().unwrap();
    let err = commit(&db, &saga, "w1", &step(kv)).await.unwrap_err();
    assert!(matches!(err, StoreError::KvConflict { .. }), "{err:?}");
}
on_all!(every_kind_of_plugin_write, every_change_kind);

/// A deferred step's writes ride in the next step's commit: one commit then holds two
/// plugins' new records, inserted together. A record of the second plugin that exists
/// already refuses the whole commit: neither plugin's writes land.
async fn two_plugins_in_one_commit(db: Stores) {
    seed(&db, "stock/A", "5").await;
    let pay = |id: &str| KvChanges {
        namespace: "fakepay".into(),
        keys: BTreeMap::from([(
            format!("payment/{id}"),
            KeyChange {
                expect: Expect::Value(None),
                effect: KeyEffect::Put(b"authorized".to_vec()),
            },
        )]),
    };
    let authorize = |kv: KvChanges| StepRecord {
        step: "authorize-payment",
        ..step(kv)
    };
    db.plugin_kv()
        .batch(
            "fakepay",
            &[Swap {
                key: "payment/taken".into(),
                expected: None,
                new: Some(b"someone else's".to_vec()),
            }],
            &[],
        )
        .await
        .unwrap();
    let saga = claimed(&db).await;
    let commit_both = |id: &'static str| {
        let mut next = saga.clone();
        next.step += 2;
        next.version += 1;
        let records = [step(reserve("1", 2)), authorize(pay(id))];
        let db = &db;
        let saga = &saga;
        async move {
            db.sagas()
                .commit(SagaCommit {
                    saga: &next,
                    expected_version: saga.version,
                    fence: Fence::Lease("w1"),
                    lease_until: ts(100_000),
                    steps: &records,
                    order: None,
                })
                .await
        }
    };

    let err = commit_both("taken").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::KvConflict { namespace, key } if namespace == "fakepay" && key == "payment/taken"),
        "{err:?}"
    );
    assert_eq!(
        value(&db, "rsv/1").await,
        None,
        "local-stock's record rolled back"
    );
    assert_eq!(value(&db, "stock/A").await.as_deref(), Some("5"));

    commit_both("fresh").await.unwrap();
    assert_eq!(value(&db, "rsv/1").await.as_deref(), Some("held"));
    assert_eq!(value(&db, "stock/A").await.as_deref(), Some("3"));
    let payment = db
        .plugin_kv()
        .get("fakepay", "payment/fresh")
        .await
        .unwrap();
    assert_eq!(payment.as_deref(), Some(&b"authorized"[..]));
}
on_all!(
    two_plugins_records_land_together_or_not_at_all,
    two_plugins_in_one_commit
);

/// A first add to a counter that does not exist yet starts it at the delta: on PostgreSQL
/// the one-statement commit finds no row to add to, writes nothing, and the commit runs again
/// in a transaction, which creates the counter.
async fn first_add_creates_its_counter(db: Stores) {
    let saga = claimed(&db).await;
    let release = KvChanges {
        namespace: NS.into(),
        keys: BTreeMap::from([(
            "stock/B".into(),
            KeyChange {
                expect: Expect::Anything,
                effect: KeyEffect::Add {
                    delta: 3,
                    min: Some(0),
                    max: None,
                },
            },
        )]),
    };
    commit(&db, &saga, "w1", &step(release)).await.unwrap();
    assert_eq!(value(&db, "stock/B").await.as_deref(), Some("3"));
    assert_eq!(db.sagas().get(saga.id).await.unwrap().unwrap().step, 1);
}
on_all!(
    a_first_add_creates_its_counter,
    first_add_creates_its_counter
);

/// A reservation's commit on PostgreSQL is one statement, with its stock counter's add
/// inside: while another transaction holds the counter's row, what waits for it is the
/// commit's batch statement, not an `UPDATE` of its own sent after the batch (which held the
/// row until the host's `COMMIT` arrived). Once the row is free, everything lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_commits_in_one_statement_on_postgres() {
    use std::time::Duration;
    let test_db = oms_persistence::testing::TestDatabase::postgres()
        .await
        .unwrap();
    common::run(test_db, |database| async move {
        let db = Stores::Sql(database.clone());
        let pool = database.postgres().unwrap().clone();
        seed(&db, "stock/A", "5").await;
        let saga = claimed(&db).await;
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM plugin_kv WHERE key = 'stock/A' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .unwrap();
        let committing = {
            let (db, saga) = (db.clone(), saga.clone());
            tokio::spawn(async move { commit(&db, &saga, "w1", &step(reserve("1", 2))).await })
        };
        // The backend waiting behind the holder's lock, as PostgreSQL reports it.
        let waiting = async {
            loop {
                let row: Option<String> = sqlx::query_scalar(
                    "SELECT query FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_optional(&pool)
                .await
                .unwrap();
                if let Some(row) = row {
                    break row;
                }
                tokio::task::yield_now().await;
            }
        };
        let query = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the commit never waited for the held counter");
        // The text as PostgreSQL keeps it is cut at `track_activity_query_size`, before the
        // counter's part: the batch's statement is the one waiting for the counter's row.
        assert!(
            query.starts_with("WITH "),
            "the counter's add is not part of the commit's statement: {query}"
        );
        holder.rollback().await.unwrap();
        committing.await.unwrap().unwrap();
        assert_eq!(value(&db, "stock/A").await.as_deref(), Some("3"));
        assert_eq!(value(&db, "rsv/1").await.as_deref(), Some("held"));
    })
    .await;
}
