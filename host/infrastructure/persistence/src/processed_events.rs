//! [`ProcessedEventStore`]: which events each consumer has handled (`processed_events`).

use std::marker::PhantomData;

use async_trait::async_trait;
use oms_application::ports::{ProcessedEventStore, StoreError};
use oms_domain::Timestamp;
use uuid::Uuid;

use crate::sql::{Args, Dialect, Sql};

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
    async fn is_processed(&self, consumer: &str, event_id: Uuid) -> Result<bool, StoreError> {
        let found =
            D::query("SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2")
                .arg(consumer)
                .arg(D::id(event_id))
                .fetch_optional(self.sql.reader())
                .await
                .map_err(D::classify)?;
        Ok(found.is_some())
    }

    async fn record(
        &self,
        consumer: &str,
        event_id: Uuid,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.sql
            .write(
                D::query(
                    "INSERT INTO processed_events (consumer, event_id, processed_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .arg(consumer)
                .arg(D::id(event_id))
                .arg(now.unix_millis()),
            )
            .await?;
        Ok(())
    }
}
