//! The outbox relay: a worker that publishes the outbox's rows to the broker.
//!
//! One round ([`Relay::run_once`]): lease a batch of due rows (each the oldest unpublished
//! row of its order, see the `OutboxStore` port), publish them keyed by order id, mark the acknowledged ones
//! published, and for each failure either schedule a retry with exponential backoff or, after
//! `max_attempts` (or at once when the payload breaks the event contract), publish it to the
//! dead-letter topic and move it to `dead_letters`. [`Relay::run`] repeats rounds while there
//! is work and otherwise sleeps until woken (in-process signal after each commit of this
//! process, lingering so that concurrent commits share a round) or until the poll interval
//! passes (rows committed by other processes); it marks a round's published rows in the next
//! round's claim statement, and also refreshes the lag gauges and prunes old published rows.
//!
//! Metrics (through the `metrics` facade): `oms_outbox_published_total`,
//! `oms_outbox_publish_failures_total`, `oms_outbox_dead_lettered_total`,
//! `oms_outbox_batches_total`, `oms_outbox_publish_duration_seconds` (a batch's broker round
//! trip), `oms_outbox_commit_to_ack_seconds` (per event, from the writing commit to the
//! broker's ack), and the gauges `oms_outbox_unpublished`,
//! `oms_outbox_oldest_unpublished_age_seconds` and `oms_outbox_dead_letters`, refreshed with
//! the housekeeping.

mod message;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oms_application::outage::FailureRun;
use oms_application::ports::OutboxStore;
use oms_application::retry::RetryPolicy;
use oms_domain::Timestamp;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::broker::{Publisher, Topics};
use crate::error::MessagingError;

pub use oms_application::ports::{Backlog, DeadLetter, OutboxRow};

/// Tuning of the relay. Defaults suit one host.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per round.
    pub batch_size: u32,
    /// Failed publish attempts after which a row is dead-lettered.
    pub max_attempts: u32,
    pub backoff: RetryPolicy,
    /// How long claimed rows stay reserved for this relay. Must exceed the broker's delivery
    /// timeout, or a slow publish could be repeated by another relay.
    pub lease: Duration,
    /// Sleep between rounds when idle and nobody wakes the relay.
    pub poll_interval: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    /// How often the backlog gauges are refreshed and old rows pruned.
    pub housekeeping_interval: Duration,
    /// How long [`Relay::run`] may hold acknowledged rows unmarked, waiting for the next
    /// round's claim to mark them in the same statement. It delays the "published" hint
    /// other processes' `WatchOrder` streams get, and widens the window in which a crash
    /// republishes rows (duplicates, which consumers drop).
    pub mark_delay: Duration,
    /// How long after the previous round that claimed rows began a woken relay waits before
    /// its next round, so that the commits of concurrent orders share one claim and one
    /// publish instead of each starting a round of its own (as Kafka's `linger.ms` lets a
    /// producer's sends share a request). A relay woken more than this after its last claim,
    /// or still holding a full batch's backlog, does not wait. A round takes one event per
    /// order, so an order's k-th event committed in quick succession may wait up to k
    /// lingers; acknowledged rows may wait for their mark up to the longer of this and
    /// `mark_delay`. Zero runs a round per wake.
    pub linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_attempts: 10,
            backoff: RetryPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(60),
            },
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(7 * 24 * 3600),
            housekeeping_interval: Duration::from_secs(10),
            mark_delay: Duration::from_millis(100),
            linger: Duration::from_millis(20),
        }
    }
}

/// Rows the broker acknowledged that are not yet marked published.
#[derive(Debug)]
struct Acked {
    ids: Vec<i64>,
    at: Timestamp,
}

impl Default for Acked {
    fn default() -> Self {
        Self {
            ids: Vec::new(),
            at: Timestamp::from_unix_millis(0),
        }
    }
}

/// Rows deleted per prune statement: a long history never becomes one huge transaction.
const PRUNE_BATCH: u32 = 5_000;

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    pub claimed: usize,
    pub published: usize,
    pub retried: usize,
    pub dead_lettered: usize,
}

/// The relay. Cheap to clone; clones share the wake signal.
#[derive(Clone)]
pub struct Relay {
    outbox: Arc<dyn OutboxStore>,
    publisher: Arc<dyn Publisher>,
    topics: Topics,
    config: RelayConfig,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("topics", &self.topics)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(
        outbox: Arc<dyn OutboxStore>,
        publisher: Arc<dyn Publisher>,
        topics: Topics,
        config: RelayConfig,
    ) -> Self {
        Self {
            outbox,
            publisher,
            topics,
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Signals that rows were committed: a sleeping relay starts a round at once. Call it
    /// after each commit that wrote outbox rows (serve forwards the order change feed here).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One claim-publish-mark round: the rows it publishes are marked published before it
    /// returns.
    pub async fn run_once(&self) -> Result<RoundOutcome, MessagingError> {
        let mut acked = Acked::default();
        // Marked even when handling a failed row erred after the publish.
        let outcome = self.round(&mut acked).await;
        self.outbox.mark_published(&acked.ids, acked.at).await?;
        outcome
    }

    /// Marks `acked` (the previous round's acknowledged rows) published and claims the next
    /// rows in one store call, publishes them, and leaves the acknowledged ones in `acked` for
    /// the next round (or [`Self::run_once`]) to mark. `acked` is cleared only once its mark
    /// committed: a failed call leaves it to be marked again.
    async fn round(&self, acked: &mut Acked) -> Result<RoundOutcome, MessagingError> {
        let now = Timestamp::now();
        let lease_until = now.saturating_add(self.config.lease);
        let rows = self
            .outbox
            .claim(
                &acked.ids,
                acked.at,
                now,
                lease_until,
                self.config.batch_size.max(1),
            )
            .await?;
        acked.ids.clear();
        let mut outcome = RoundOutcome {
            claimed: rows.len(),
            ..RoundOutcome::default()
        };
        if rows.is_empty() {
            return Ok(outcome);
        }
        metrics::counter!("oms_outbox_batches_total").increment(1);

        let mut to_send = Vec::with_capacity(rows.len());
        let mut sent_rows = Vec::with_capacity(rows.len());
        let mut failures: Vec<(&OutboxRow, String, bool)> = Vec::new();
        for row in &rows {
            match message::event_message(row, &self.topics) {
                Ok(m) => {
                    to_send.push(m);
                    sent_rows.push(row);
                }
                // Retrying cannot fix a payload: dead-letter it now.
                Err(e) => failures.push((row, e.to_string(), true)),
            }
        }

        let started = Instant::now();
        // One span per batch, linked to the trace of each event in it (an event's own trace
        // goes on in its consumers, through the message's `traceparent`).
        let span = tracing::debug_span!(
            "outbox.publish",
            otel.kind = "producer",
            messaging.batch.message_count = to_send.len(),
        );
        for message in &to_send {
            if let Some(link) = crate::trace::span_context_of(message) {
                span.add_link(link);
            }
        }
        let results = tracing::Instrument::instrument(self.publisher.publish(to_send), span).await;
        metrics::histogram!("oms_outbox_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let acked_at = Timestamp::now();
        acked.at = acked_at;
        for (row, result) in sent_rows.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    acked.ids.push(row.id);
                    let lag_ms = acked_at
                        .unix_millis()
                        .saturating_sub(row.created_at.unix_millis())
                        .max(0);
                    metrics::histogram!("oms_outbox_commit_to_ack_seconds")
                        .record(lag_ms as f64 / 1000.0);
                }
                Err(e) => failures.push((row, e.to_string(), false)),
            }
        }
        outcome.published = acked.ids.len();
        metrics::counter!("oms_outbox_published_total").increment(acked.ids.len() as u64);

        for (row, error, permanent) in failures {
            let attempts = row.attempts.saturating_add(1);
            metrics::counter!("oms_outbox_publish_failures_total").increment(1);
            let exhausted = attempts >= self.config.max_attempts;
            if (permanent || exhausted) && self.dead_letter(row, &error, attempts).await? {
                outcome.dead_lettered += 1;
                continue;
            }
            let delay = self.config.backoff.jittered(attempts);
            warn!(outbox_id = row.id, event_id = %row.event_id,
                  aggregate_type = row.aggregate_type.as_str(), aggregate_id = %row.aggregate_id,
                  attempts, error = %error, retry_in_ms = delay.as_millis() as u64,
                  "outbox publish failed; will retry");
            self.outbox
                .mark_failed(row.id, &error, acked_at.saturating_add(delay))
                .await?;
            outcome.retried += 1;
        }
        Ok(outcome)
    }

    /// Publishes `row` to the dead-letter topic, then moves it to `dead_letters`. Returns
    /// false when the DLQ publish itself failed: the row then stays in the outbox and is
    /// retried (and dead-lettered) later, so nothing is dropped.
    async fn dead_letter(
        &self,
        row: &OutboxRow,
        error: &str,
        attempts: u32,
    ) -> Result<bool, MessagingError> {
        let msg = message::dead_letter_message(row, &self.topics.dead_letters, error, attempts);
        let published = self.publisher.publish(vec![msg]).await;
        if let Some(Err(e)) = published.first() {
            warn!(outbox_id = row.id, error = %e, "dead-letter topic unavailable; row kept");
            return Ok(false);
        }
        self.outbox
            .dead_letter(row.id, attempts, error, Timestamp::now())
            .await?;
        metrics::counter!("oms_outbox_dead_lettered_total").increment(1);
        warn!(outbox_id = row.id, event_id = %row.event_id,
              aggregate_type = row.aggregate_type.as_str(), aggregate_id = %row.aggregate_id,
              event_type = %row.event_type, attempts, error = %error,
              "outbox row dead-lettered");
        Ok(true)
    }

    /// Deletes rows published more than the retention ago; returns how many.
    pub async fn prune(&self) -> Result<u64, MessagingError> {
        let cutoff = Timestamp::now().saturating_sub(self.config.retention);
        let mut total = 0;
        loop {
            let n = self.outbox.prune(cutoff, PRUNE_BATCH).await?;
            total += n;
            if n < u64::from(PRUNE_BATCH) {
                return Ok(total);
            }
        }
    }

    /// Reads the backlog, updates the gauges, and returns it.
    pub async fn backlog(&self) -> Result<Backlog, MessagingError> {
        let b = self.outbox.backlog().await?;
        let now = Timestamp::now().unix_millis();
        let age = b
            .oldest_created_at
            .map_or(0, |t| now.saturating_sub(t.unix_millis()).max(0));
        metrics::gauge!("oms_outbox_unpublished").set(b.unpublished as f64);
        metrics::gauge!("oms_outbox_oldest_unpublished_age_seconds").set(age as f64 / 1000.0);
        metrics::gauge!("oms_outbox_dead_letters").set(b.dead_letters as f64);
        Ok(b)
    }

    /// Runs rounds until `shutdown` turns true (or its sender is dropped). Database errors
    /// are logged and retried after the poll interval: the relay never gives up.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_housekeeping: Option<Instant> = None;
        // Acknowledged rows not yet marked published: the next round's claim marks them in
        // the same statement, so a relay kept busy by commits pays one write per round, not
        // two. They wait at most `mark_delay` (or the linger, if longer); until then they stay
        // leased to this relay.
        let mut acked = Acked::default();
        let mut round_failures = FailureRun::default();
        // When the last round that claimed rows began (rounds that found nothing, such as
        // idle polls and marking rounds, do not hold the next commit back), and whether it
        // left a full batch behind.
        let mut last_claim: Option<tokio::time::Instant> = None;
        let mut busy = false;
        info!(topic = %self.topics.events, plugin_changes = %self.topics.plugin_changes, batch = self.config.batch_size, "outbox relay started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_housekeeping.is_none_or(|t| t.elapsed() >= self.config.housekeeping_interval) {
                last_housekeeping = Some(Instant::now());
                self.housekeeping().await;
            }
            if let Some(began) = last_claim.filter(|_| !busy) {
                tokio::select! {
                    () = tokio::time::sleep_until(began + self.config.linger) => {}
                    // Stopping does not wait for the linger (the loop's head checks).
                    r = shutdown.changed() => if r.is_err() { break; } else { continue; },
                }
            }
            let began = tokio::time::Instant::now();
            busy = match self.round(&mut acked).await {
                Ok(o) => {
                    oms_application::log_recovery!(round_failures, "relay rounds work again");
                    if o.claimed > 0 {
                        last_claim = Some(began);
                        debug!(?o, "relay round");
                    }
                    o.claimed >= self.config.batch_size as usize
                }
                // The database or the broker is away: one line per run of failures, not per
                // round.
                Err(e) => {
                    oms_application::log_failure!(
                        round_failures,
                        e,
                        "relay round failed",
                        "relay rounds still failing"
                    );
                    false
                }
            };
            if busy {
                continue;
            }
            let idle = if acked.ids.is_empty() {
                self.config.poll_interval
            } else {
                self.config.mark_delay.min(self.config.poll_interval)
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
                // A dropped sender also means stop.
                r = shutdown.changed() => if r.is_err() { break; },
            }
        }
        if let Err(e) = self.outbox.mark_published(&acked.ids, acked.at).await {
            // They are republished after their lease: duplicates, no loss.
            warn!(error = %e, rows = acked.ids.len(), "marking published rows at shutdown failed");
        }
        info!("outbox relay stopped");
    }

    async fn housekeeping(&self) {
        match self.backlog().await {
            Ok(b) => {
                // Info only when there is something to see: an idle relay stays quiet.
                if b.unpublished > 0 || b.dead_letters > 0 {
                    info!(unpublished = b.unpublished, oldest = ?b.oldest_created_at,
                          dead_letters = b.dead_letters, "outbox lag");
                } else {
                    debug!("outbox lag: none");
                }
            }
            Err(e) => warn!(error = %e, "reading outbox lag failed"),
        }
        match self.prune().await {
            Ok(n) if n > 0 => info!(deleted = n, "pruned published outbox rows"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning the outbox failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use oms_application::ports::{AggregateType, StoreError};
    use oms_domain::{OrderId, Version};
    use tokio::time::Instant as ClockInstant;

    use super::*;
    use crate::broker::InProcessBroker;

    /// An outbox in memory: rows added by the test, each claim's time and rows recorded.
    #[derive(Default)]
    struct MemoryOutbox {
        pending: Mutex<Vec<OutboxRow>>,
        claims: Mutex<Vec<(ClockInstant, Vec<i64>)>>,
    }

    impl MemoryOutbox {
        fn add(&self, id: i64) {
            let now = Timestamp::now();
            let row = OutboxRow {
                id,
                event_id: uuid::Uuid::from_u128(id as u128),
                aggregate_type: AggregateType::Order,
                // An order of its own: nothing orders these rows.
                aggregate_id: uuid::Uuid::from_u128(id as u128),
                event_type: "OrderCreated".to_owned(),
                schema_version: 1,
                payload: serde_json::json!({}),
                headers: serde_json::json!({}),
                occurred_at: now,
                created_at: now,
                attempts: 0,
            };
            self.pending.lock().unwrap().push(row);
        }
    }

    #[async_trait]
    impl OutboxStore for MemoryOutbox {
        async fn claim(
            &self,
            _published: &[i64],
            _published_at: Timestamp,
            _now: Timestamp,
            _lease_until: Timestamp,
            limit: u32,
        ) -> Result<Vec<OutboxRow>, StoreError> {
            let mut pending = self.pending.lock().unwrap();
            let n = pending.len().min(limit as usize);
            let rows: Vec<OutboxRow> = pending.drain(..n).collect();
            if !rows.is_empty() {
                let ids = rows.iter().map(|r| r.id).collect();
                self.claims.lock().unwrap().push((ClockInstant::now(), ids));
            }
            Ok(rows)
        }
        async fn mark_published(&self, _: &[i64], _: Timestamp) -> Result<(), StoreError> {
            Ok(())
        }
        async fn mark_failed(&self, _: i64, _: &str, _: Timestamp) -> Result<(), StoreError> {
            Ok(())
        }
        async fn dead_letter(
            &self,
            _: i64,
            _: u32,
            _: &str,
            _: Timestamp,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        async fn redrive(&self, _: i64, _: Timestamp) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn dead_letters(&self, _: bool, _: u32) -> Result<Vec<DeadLetter>, StoreError> {
            Ok(Vec::new())
        }
        async fn prune(&self, _: Timestamp, _: u32) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn backlog(&self) -> Result<Backlog, StoreError> {
            Ok(Backlog::default())
        }
        async fn watch_published(
            &self,
            _: Arc<dyn Fn(OrderId, Version) + Send + Sync>,
            _: watch::Receiver<bool>,
        ) {
        }
    }

    /// Runs a relay with `linger_ms` and `batch_size` while commits are made: each `(at, ids)`
    /// adds rows `at` ms after the start and wakes the relay. On a paused clock, so times are
    /// exact and the relay runs whatever it can before time moves on. Returns each claim that
    /// leased rows: when (ms after the start) and which.
    async fn claims_for(
        linger_ms: u64,
        batch_size: u32,
        commits: &[(u64, &[i64])],
    ) -> Vec<(u64, Vec<i64>)> {
        let outbox = Arc::new(MemoryOutbox::default());
        let config = RelayConfig {
            linger: Duration::from_millis(linger_ms),
            batch_size,
            // Only the wake-ups start rounds here.
            poll_interval: Duration::from_secs(3600),
            mark_delay: Duration::from_secs(3600),
            housekeeping_interval: Duration::from_secs(3600),
            ..RelayConfig::default()
        };
        let broker = InProcessBroker::default();
        let relay = Relay::new(
            outbox.clone(),
            broker.publisher_arc(),
            Topics::default(),
            config,
        );
        let start = ClockInstant::now();
        let (stop, stop_rx) = watch::channel(false);
        let worker = tokio::spawn(relay.clone().run(stop_rx));
        for (at, ids) in commits {
            tokio::time::sleep_until(start + Duration::from_millis(*at)).await;
            for id in *ids {
                outbox.add(*id);
            }
            relay.wake();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(true).unwrap();
        worker.await.unwrap();
        let claims = outbox.claims.lock().unwrap().clone();
        claims
            .into_iter()
            .map(|(at, ids)| (at.duration_since(start).as_millis() as u64, ids))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn commits_within_the_linger_share_a_round() {
        let commits: &[(u64, &[i64])] = &[(0, &[1]), (1, &[2]), (2, &[3])];
        // The first commit goes out at once; the next two arrive while the linger runs and
        // go out together when it ends.
        assert_eq!(
            claims_for(20, 500, commits).await,
            vec![(0, vec![1]), (20, vec![2, 3])]
        );
        // Without a linger each wake is a round of its own.
        assert_eq!(
            claims_for(0, 500, commits).await,
            vec![(0, vec![1]), (1, vec![2]), (2, vec![3])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_after_a_quiet_spell_or_a_backlog_does_not_wait() {
        // More than the linger after the last claim: claimed the moment it wakes the relay.
        assert_eq!(
            claims_for(20, 500, &[(0, &[1]), (100, &[2])]).await,
            vec![(0, vec![1]), (100, vec![2])]
        );
        // A full batch: the next round runs at once, however short the gap.
        assert_eq!(
            claims_for(20, 1, &[(0, &[1, 2, 3])]).await,
            vec![(0, vec![1]), (0, vec![2]), (0, vec![3])]
        );
    }
}
