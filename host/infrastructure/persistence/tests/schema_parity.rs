//! The two migration folders define the same schema: every store's SQL is written once for
//! both databases, so a column added to one folder only would break the other at run time.
//! This reads the schema of freshly migrated databases back from the catalogs
//! (`information_schema` on PostgreSQL, `pragma_table_info` on SQLite) and compares them.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use oms_persistence::testing::TestDatabase;

/// table -> column -> (NOT NULL, storage family).
type Schema = BTreeMap<String, BTreeMap<String, (bool, &'static str)>>;

/// The bookkeeping table of the migrator, not part of the schema.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// What a column holds, across the two type systems: UUIDs, JSON and timestamps are text on
/// SQLite, every integer width is INTEGER there.
fn family(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "smallint" | "integer" | "bigint" => "integer",
        "text" | "uuid" | "jsonb" | "json" | "timestamp with time zone" => "text",
        "bytea" | "blob" => "blob",
        _ => "unknown",
    }
}

async fn postgres_schema() -> Schema {
    let test_db = TestDatabase::postgres().await.unwrap();
    let db = test_db.connect().await.unwrap();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, is_nullable::text, data_type::text \
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(db.postgres().unwrap())
    .await
    .unwrap();
    db.close().await;
    test_db.cleanup().await.unwrap();
    let mut schema = Schema::new();
    for (table, column, nullable, data_type) in rows {
        schema
            .entry(table)
            .or_default()
            .insert(column, (nullable == "NO", family(&data_type)));
    }
    schema
}

async fn sqlite_schema() -> Schema {
    let test_db = TestDatabase::sqlite().unwrap();
    let db = test_db.connect().await.unwrap();
    let rows: Vec<(String, String, bool, bool, String)> = sqlx::query_as(
        "SELECT m.name, c.name, c.\"notnull\", c.pk > 0, c.type \
         FROM sqlite_schema m JOIN pragma_table_info(m.name) c \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&db.sqlite().unwrap().reader)
    .await
    .unwrap();
    db.close().await;
    test_db.cleanup().await.unwrap();
    let mut schema = Schema::new();
    for (table, column, not_null, primary_key, declared) in rows {
        // A primary-key column cannot hold NULL in these tables (STRICT, WITHOUT ROWID or a
        // rowid alias) even where the column does not repeat NOT NULL; PostgreSQL's catalog
        // reports such columns as NOT NULL.
        schema
            .entry(table)
            .or_default()
            .insert(column, (not_null || primary_key, family(&declared)));
    }
    schema
}

#[tokio::test]
async fn postgres_and_sqlite_migrations_define_the_same_schema() {
    let (mut postgres, mut sqlite) = (postgres_schema().await, sqlite_schema().await);
    assert!(postgres.remove(MIGRATIONS_TABLE).is_some());
    assert!(sqlite.remove(MIGRATIONS_TABLE).is_some());
    // The comparison below is only as good as what it compares: the core tables are there.
    for table in [
        "orders",
        "order_items",
        "outbox",
        "saga_instances",
        "plugin_kv",
    ] {
        assert!(
            postgres.contains_key(table),
            "{table} missing on PostgreSQL"
        );
    }
    for (table, columns) in &postgres {
        for (column, (_, family)) in columns {
            assert_ne!(
                *family, "unknown",
                "{table}.{column}: unmapped PostgreSQL type"
            );
        }
    }
    assert_eq!(
        postgres.keys().collect::<Vec<_>>(),
        sqlite.keys().collect::<Vec<_>>(),
        "tables"
    );
    for (table, columns) in &postgres {
        assert_eq!(
            columns, &sqlite[table],
            "columns of {table} (name -> (NOT NULL, storage)), PostgreSQL then SQLite"
        );
    }
}
