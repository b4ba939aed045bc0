//! [`ProcessedEventStore`]: which events each consumer has handled (`processed_events`).

use std::collections::HashSet;
use std::marker::PhantomData;

use async_trait::async_trait;
use oms_application::ports::{ProcessedEventStore, StoreError};
use oms_domain::Timestamp;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::sql::{Args, Column, Concurrency, Dialect, RowExt, Rows, Sql};

pub(crate) struct SqlProcessedEventStore<D: Dialect> {
    sql: Sql<D>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlProcessedEventStore<D> {
    pub(crate) fn new(sql: Sql<D>) -> Self {
        Self {
            sql,
            dialect: PhantomData,
        }
    }
}

#[async_trait]
impl<D: Dialect> ProcessedEventStore for SqlProcessedEventStore<D> {
    async fn processed_among(
        &self,
        consumer: &str,
        event_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError> {
        if event_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id {}",
            D::in_list("$2")
        );
        let rows = D::bind_list(
            D::query(AssertSqlSafe(sql)).arg(consumer),
            Column::Id(event_ids.to_vec()),
        )
        .fetch_all(self.sql.reader())
        .await
        .map_err(D::classify)?;
        rows.iter()
            .map(|r| r.col("event_id").map(D::uuid).map_err(D::classify))
            .collect()
    }

    async fn record_all(
        &self,
        consumer: &str,
        event_ids: &[Uuid],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let mut ids = event_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let n = ids.len();
        let rows = Rows {
            table: "processed_events",
            columns: &["consumer", "event_id", "processed_at"],
            values: vec![
                Column::Text(vec![consumer.to_owned(); n]),
                Column::Id(ids),
                Column::BigInt(vec![now.unix_millis(); n]),
            ],
            on_conflict: "ON CONFLICT DO NOTHING",
        };
        match D::CONCURRENCY {
            // One statement (arrays unnested): it commits on its own.
            Concurrency::RowLocks => {
                let mut conn = self.sql.pools.writer.acquire().await.map_err(D::classify)?;
                D::insert_rows(&mut conn, rows).await.map_err(D::classify)?;
                Ok(())
            }
            // A statement per row, all under one write lock and one commit.
            Concurrency::SingleWriter => {
                let mut tx = self.sql.begin_write().await?;
                D::insert_rows(&mut tx, rows).await.map_err(D::classify)?;
                tx.commit().await.map_err(D::classify)
            }
        }
    }
}
