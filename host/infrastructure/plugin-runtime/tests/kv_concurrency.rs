//! 200 concurrent reservations of one unit against a SKU with 100 in stock: exactly 100
//! succeed, on PostgreSQL and on SQLite, through the real local-stock plugin.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use oms_plugin_runtime::clients::inventory::{InventoryError, Line};
use oms_plugin_runtime::kv::{KvStore, PgKvStore, SqliteKvStore};
use oms_plugin_runtime::{PluginError, PluginRuntime};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn oversell_check(kv: Arc<dyn KvStore>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_oversell_on_postgres() {
    plugins_dir();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(ADMIN_URL)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (trust auth, user postgres)");
    let db = format!("oms_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&format!("postgres://postgres@127.0.0.1:5432/{db}"))
        .await
        .unwrap();
    let store = PgKvStore::new(pool.clone());
    store.ensure_schema().await.unwrap();
    // Run the check as a task so that the database is dropped even when it fails.
    let outcome = tokio::spawn(oversell_check(Arc::new(store))).await;
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_oversell_on_sqlite() {
    plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("kv.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let store = SqliteKvStore::new(pool);
    store.ensure_schema().await.unwrap();
    oversell_check(Arc::new(store)).await;
}
