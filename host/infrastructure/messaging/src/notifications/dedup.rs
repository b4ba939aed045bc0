//! `processed_events`: which events a consumer has handled.

use uuid::Uuid;

use crate::db::{Db, now_ms};
use crate::error::MessagingError;

impl Db {
    pub(crate) async fn is_processed(
        &self,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, MessagingError> {
        let found = match self {
            Db::Postgres(pool) => {
                sqlx::query("SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2")
                    .bind(consumer)
                    .bind(event_id)
                    .fetch_optional(pool)
                    .await?
                    .is_some()
            }
            Db::Sqlite(pools) => {
                sqlx::query("SELECT 1 FROM processed_events WHERE consumer = ?1 AND event_id = ?2")
                    .bind(consumer)
                    .bind(event_id.to_string())
                    .fetch_optional(&pools.reader)
                    .await?
                    .is_some()
            }
        };
        Ok(found)
    }

    /// Records the event as processed; a second record of the same event is a no-op.
    pub(crate) async fn record_processed(
        &self,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<(), MessagingError> {
        let now = now_ms();
        match self {
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO processed_events (consumer, event_id, processed_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(consumer)
                .bind(event_id)
                .bind(now)
                .execute(pool)
                .await?;
            }
            Db::Sqlite(pools) => {
                let mut tx = pools.writer.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "INSERT INTO processed_events (consumer, event_id, processed_at) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )
                .bind(consumer)
                .bind(event_id.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}
