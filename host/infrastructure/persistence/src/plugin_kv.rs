//! [`PluginKvStore`] over `plugin_kv` (migration `0002_plugin_kv.sql`).
//!
//! Atomicity: a batch is one write transaction that first locks its keys (in sorted order,
//! so that overlapping batches cannot deadlock), then reads them, evaluates the batch with
//! [`evaluate`] (the semantics are written once, in the application layer), and writes the
//! result. On PostgreSQL the locks are advisory locks per key, which also lock keys that do
//! not exist yet (a counter's first increment, a record that must be absent); on SQLite the
//! write transaction already holds the database's write lock. `set` and `delete` take the same
//! lock, so that they cannot slip between a batch's read and its write.
//!
//! A saga step's call does not write here itself: its buffered writes ([`KvChanges`]) are
//! applied by [`apply_changes`] inside the step's commit. No advisory lock there: each key's
//! condition is part of its write statement (`INSERT .. ON CONFLICT DO NOTHING`, `UPDATE ..
//! WHERE value = $expected`, a counter's bounds in the `UPDATE`'s `WHERE`), so a key is
//! locked only by the row write itself, and a hot stock counter is never read and then
//! written back under a lock: one `UPDATE` adds to it if the bound holds.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

use async_trait::async_trait;
use oms_application::plugin_kv::{
    BatchOutcome, BoundedAdd, Evaluation, Expect, KeyChange, KeyEffect, KvChanges, KvError, Swap,
    batch_keys, evaluate,
};
use oms_application::ports::{PluginKvStore, StoreError};
use sqlx::AssertSqlSafe;

use crate::sql::{Args, Batch, Column, ConnOf, Counts, Dialect, PartId, RowExt, Rows, Sql};

/// How often a batch is retried when it lost a race (PostgreSQL: a deadlock or serialization
/// failure, possible only if advisory lock ids of different keys collide).
const RETRIES: usize = 5;

pub(crate) struct SqlPluginKvStore<D: Dialect> {
    sql: Sql<D>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlPluginKvStore<D> {
    pub(crate) fn new(sql: Sql<D>) -> Self {
        Self {
            sql,
            dialect: PhantomData,
        }
    }

    fn upsert() -> String {
        format!(
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = {}",
            D::NOW
        )
    }

    /// Applies `writes` (`None` deletes) under the keys' locks, in one transaction. The outer
    /// error is the driver's, for the retry decision; the inner one is the batch's.
    async fn try_batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<Result<BatchOutcome, KvError>, sqlx::Error> {
        let keys = batch_keys(swaps, adds);
        let mut tx = self
            .sql
            .pools
            .writer
            .begin_with(D::CONCURRENCY.begin_write())
            .await?;
        D::lock_names(&mut tx, namespace, &keys).await?;
        let current = read_keys::<D>(D::on(&mut tx), namespace, keys).await?;
        // Dropping `tx` on an early return rolls back.
        let (writes, outcome) = match evaluate(&current, swaps, adds) {
            Err(e) => return Ok(Err(e)),
            Ok(Evaluation::Refuse(outcome)) => return Ok(Ok(outcome)),
            Ok(Evaluation::Apply { writes, outcome }) => (writes, outcome),
        };
        let (mut put_keys, mut put_values, mut del_keys) = (vec![], vec![], vec![]);
        for w in writes {
            match w.value {
                Some(v) => {
                    put_keys.push(w.key);
                    put_values.push(v);
                }
                None => del_keys.push(w.key),
            }
        }
        let upsert = Self::upsert();
        D::insert_rows(
            &mut tx,
            Rows {
                table: "plugin_kv",
                columns: &["namespace", "key", "value"],
                values: vec![
                    Column::Text(vec![namespace.to_owned(); put_keys.len()]),
                    Column::Text(put_keys),
                    Column::Bytes(put_values),
                ],
                on_conflict: &upsert,
            },
        )
        .await?;
        if !del_keys.is_empty() {
            D::bind_list(
                D::query(AssertSqlSafe(format!(
                    "DELETE FROM plugin_kv WHERE namespace = $1 AND key {}",
                    D::in_list("$2")
                )))
                .arg(namespace),
                Column::Text(del_keys),
            )
            .execute(D::on(&mut tx))
            .await?;
        }
        tx.commit().await?;
        Ok(Ok(outcome))
    }

    /// An unconditional write under the key's lock (`None` deletes).
    async fn write_one(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), KvError> {
        let mut tx = self.sql.begin_write().await?;
        D::lock_names(&mut tx, namespace, &[key.to_owned()])
            .await
            .map_err(D::classify)?;
        let write = match value {
            Some(v) => D::query(AssertSqlSafe(format!(
                "INSERT INTO plugin_kv (namespace, key, value) VALUES ($1, $2, $3) {}",
                Self::upsert()
            )))
            .arg(namespace)
            .arg(key)
            .arg(v),
            None => D::query("DELETE FROM plugin_kv WHERE namespace = $1 AND key = $2")
                .arg(namespace)
                .arg(key),
        };
        write.execute(D::on(&mut tx)).await.map_err(D::classify)?;
        tx.commit().await.map_err(D::classify)?;
        Ok(())
    }
}

/// The present ones of `keys` with their values, in one statement: one primary-key probe
/// per key (a scalar subquery, which PostgreSQL never turns into a join). Written so on
/// purpose: the statement is prepared, and PostgreSQL keeps a generic plan made while the
/// table was small; for `key = ANY($2)` that plan probed the index by namespace alone and
/// filtered every key of the plugin (seen in `scripts/bench-sagas` with auto_explain: 1,400
/// rows read per call after 700 orders). A probe on the whole key has no cheaper plan at
/// any size (`read_keys_probes_each_key_at_any_size`).
async fn read_keys<'c, D: Dialect>(
    conn: impl sqlx::Executor<'c, Database = D::DB>,
    namespace: &str,
    keys: Vec<String>,
) -> Result<HashMap<String, Vec<u8>>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let query = D::query(AssertSqlSafe(read_keys_sql::<D>(keys.len()))).arg(namespace);
    let query = if keys.len() <= LISTED_KEYS {
        keys.into_iter().fold(query, |query, key| query.arg(key))
    } else {
        D::bind_list(query, Column::Text(keys))
    };
    let rows = query.fetch_all(conn).await?;
    let mut values = HashMap::with_capacity(rows.len());
    for row in &rows {
        values.insert(row.col::<String>("key")?, row.col::<Vec<u8>>("value")?);
    }
    Ok(values)
}

/// Up to this many keys (what a step's call reads: an outcome record, a counter, a new
/// record) are read by a statement written for their number, each key its own parameter;
/// more go as one list parameter. PostgreSQL cannot tell how long a list parameter is when
/// it plans for any value, so it estimated such a read above its plan for the actual list
/// and planned that statement again at every call (0.2 ms of the server's CPU per order in
/// `scripts/bench-sagas`). With one parameter per key, the plan it keeps after five calls
/// serves every later one.
const LISTED_KEYS: usize = 8;

/// The key read for `n` keys: `$1` the namespace, then `$2..` one key each, or `$2` the list
/// of them past [`LISTED_KEYS`].
fn read_keys_sql<D: Dialect>(n: usize) -> String {
    let keys = if n <= LISTED_KEYS {
        let each = (0..n)
            .map(|i| format!("SELECT ${} AS key", i + 2))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        format!("({each}) k")
    } else {
        D::list_rows("$2", "k", "key")
    };
    format!(
        "SELECT key, value FROM (SELECT k.key AS key, (SELECT p.value FROM plugin_kv p \
         WHERE p.namespace = $1 AND p.key = k.key) AS value FROM {keys}) found \
         WHERE value IS NOT NULL"
    )
}

#[async_trait]
impl<D: Dialect> PluginKvStore for SqlPluginKvStore<D> {
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, KvError> {
        Ok(read_keys::<D>(self.sql.reader(), namespace, keys.to_vec())
            .await
            .map_err(D::classify)?)
    }

    async fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.write_one(namespace, key, Some(value)).await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        self.write_one(namespace, key, None).await
    }

    async fn batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError> {
        let mut attempt = 0;
        loop {
            match self.try_batch(namespace, swaps, adds).await {
                Ok(result) => return result,
                Err(e) if D::lost_race(&e) && attempt < RETRIES => attempt += 1,
                Err(e) => return Err(D::classify(e).into()),
            }
        }
    }
}

// A commit's buffered plugin writes (every call of every step it records) are applied inside
// that commit's transaction in two parts. `KvConflict` names a key whose condition or bound
// failed; the caller's transaction then rolls back with everything else the steps wrote.
//
// Round trips: every record that must not exist yet (an outcome under a fresh idempotency
// key, a new payment or reservation: most of what a step writes) goes in one multi-row
// insert that skips existing keys, part of the commit's batch ([`push_new`]), so a skipped
// row is a failed condition; every other key then gets its own statement, call by call and in
// key order within a call, after everything else the commit writes, so that a hot counter is
// locked as late as possible ([`apply_rest`]; on PostgreSQL counter adds may instead be the
// last parts of the commit's one statement: [`push_adds`]).

/// A record that must not exist yet: inserted by [`push_new`].
fn is_new(change: &KeyChange) -> bool {
    matches!(
        (&change.expect, &change.effect),
        (Expect::Value(None), KeyEffect::Put(_))
    )
}

/// The records [`push_new`] inserts, to check against the batch's count.
pub(crate) struct NewRecords<'a> {
    part: PartId,
    new: Vec<(&'a str, &'a str, &'a [u8])>,
}

/// Adds the insert of every record of `all` that must not exist yet to `batch`.
pub(crate) fn push_new<'a, D: Dialect>(
    batch: &mut Batch<'_, D>,
    all: &[&'a KvChanges],
) -> NewRecords<'a> {
    let mut new: Vec<(&str, &str, &[u8])> = all
        .iter()
        .flat_map(|changes| {
            changes
                .keys
                .iter()
                .filter_map(|(key, change)| match &change.effect {
                    KeyEffect::Put(value) if is_new(change) => {
                        Some((changes.namespace.as_str(), key.as_str(), value.as_slice()))
                    }
                    _ => None,
                })
        })
        .collect();
    // One lock order for every commit: two commits inserting overlapping keys cannot deadlock.
    new.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let part = batch.push_rows(
        Rows {
            table: "plugin_kv",
            columns: &["namespace", "key", "value"],
            values: vec![
                Column::Text(new.iter().map(|r| r.0.to_owned()).collect()),
                Column::Text(new.iter().map(|r| r.1.to_owned()).collect()),
                Column::Bytes(new.iter().map(|r| r.2.to_vec()).collect()),
            ],
            on_conflict: "ON CONFLICT (namespace, key) DO NOTHING",
        },
        None,
    );
    NewRecords { part, new }
}

impl NewRecords<'_> {
    /// Every record must be inserted (none existed), for [`Batch::run_all_or_nothing`].
    pub(crate) fn expect<D: Dialect>(&self, batch: &mut Batch<'_, D>) {
        batch.expect(self.part, self.new.len() as u64);
    }

    /// `KvConflict` when a record existed already.
    pub(crate) async fn check<D: Dialect>(
        &self,
        conn: &mut ConnOf<D>,
        counts: &Counts,
    ) -> Result<(), StoreError> {
        if usize::try_from(counts.of(self.part)).is_ok_and(|n| n == self.new.len()) {
            return Ok(());
        }
        // Some key existed (rare: the commit is refused and the step runs again). Name it for
        // the log: a key now holding something else than what this commit wrote.
        for (namespace, key, value) in &self.new {
            if read_in::<D>(conn, namespace, key, "").await?.as_deref() != Some(*value) {
                return Err(kv_conflict(namespace, key));
            }
        }
        // Every key holds this commit's bytes, yet one existed before: an identical record.
        let (namespace, key, _) = self.new[0];
        Err(kv_conflict(namespace, key))
    }
}

/// The changes of `all` that [`push_new`] does not insert, as (namespace, key, change), in
/// the order they are written: call by call, in key order within a call.
fn rest<'q>(all: &[&'q KvChanges]) -> impl Iterator<Item = (&'q str, &'q str, &'q KeyChange)> {
    all.iter().flat_map(|changes| {
        changes
            .keys
            .iter()
            .filter(|(_, c)| !is_new(c))
            .map(move |(key, change)| (changes.namespace.as_str(), key.as_str(), change))
    })
}

/// Applies every change of `all` that [`push_new`] did not, one key at a time.
pub(crate) async fn apply_rest<D: Dialect>(
    conn: &mut ConnOf<D>,
    all: &[&KvChanges],
) -> Result<(), StoreError> {
    for (namespace, key, change) in rest(all) {
        if !apply_one::<D>(conn, namespace, key, change).await? {
            return Err(kv_conflict(namespace, key));
        }
    }
    Ok(())
}

/// One key's value inside the commit's transaction; `lock` is appended to the query (a
/// share lock, or nothing).
async fn read_in<D: Dialect>(
    conn: &mut ConnOf<D>,
    namespace: &str,
    key: &str,
    lock: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = D::query(AssertSqlSafe(format!(
        "SELECT value FROM plugin_kv WHERE namespace = $1 AND key = $2{lock}"
    )))
    .arg(namespace)
    .arg(key)
    .fetch_optional(D::on(conn))
    .await
    .map_err(D::classify)?;
    row.map(|r| r.col::<Vec<u8>>("value"))
        .transpose()
        .map_err(D::classify)
}

fn kv_conflict(namespace: &str, key: &str) -> StoreError {
    StoreError::KvConflict {
        namespace: namespace.to_owned(),
        key: key.to_owned(),
    }
}

/// One key's condition and effect, in as few statements as the case allows; `false` when
/// the condition or a bound does not hold.
async fn apply_one<D: Dialect>(
    conn: &mut ConnOf<D>,
    namespace: &str,
    key: &str,
    change: &KeyChange,
) -> Result<bool, StoreError> {
    let write = |sql: String| D::query(AssertSqlSafe(sql)).arg(namespace).arg(key);
    let done = match (&change.expect, &change.effect) {
        (Expect::Anything, KeyEffect::Keep) => return Ok(true),
        (Expect::Anything, KeyEffect::Put(value)) => write(format!(
            "INSERT INTO plugin_kv (namespace, key, value) VALUES ($1, $2, $3) {}",
            SqlPluginKvStore::<D>::upsert()
        ))
        .arg(value.as_slice()),
        (Expect::Anything, KeyEffect::Delete) => {
            write("DELETE FROM plugin_kv WHERE namespace = $1 AND key = $2".into())
        }
        (Expect::Anything, KeyEffect::Add { delta, min, max }) => {
            return add::<D>(conn, namespace, key, *delta, *min, *max).await;
        }
        (Expect::Value(None), KeyEffect::Put(value)) => write(
            "INSERT INTO plugin_kv (namespace, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (namespace, key) DO NOTHING"
                .into(),
        )
        .arg(value.as_slice()),
        (Expect::Value(Some(expected)), KeyEffect::Put(value)) => write(format!(
            "UPDATE plugin_kv SET value = $3, updated_at = {} \
             WHERE namespace = $1 AND key = $2 AND value = $4",
            D::NOW
        ))
        .arg(value.as_slice())
        .arg(expected.as_slice()),
        (Expect::Value(Some(expected)), KeyEffect::Delete) => {
            write("DELETE FROM plugin_kv WHERE namespace = $1 AND key = $2 AND value = $3".into())
                .arg(expected.as_slice())
        }
        // Checked, not written: read it under a share lock and compare.
        (Expect::Value(expected), KeyEffect::Keep | KeyEffect::Delete) => {
            let current = read_in::<D>(conn, namespace, key, D::CONCURRENCY.share_lock()).await?;
            // Deleting what must be absent leaves it absent: only the check remains.
            return Ok(current.as_ref() == expected.as_ref());
        }
        // A pinned counter add is never recorded (the buffer makes it an absolute write).
        (Expect::Value(_), KeyEffect::Add { .. }) => {
            return Err(StoreError::Corrupt(format!(
                "plugin write for {key} adds to a pinned value"
            )));
        }
    };
    let result = done.execute(D::on(conn)).await.map_err(D::classify)?;
    Ok(D::rows_affected(&result) == 1)
}

/// A bounded counter add a commit makes (a stock counter: what a reservation writes besides
/// its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CounterAdd<'q> {
    pub namespace: &'q str,
    pub key: &'q str,
    pub delta: i64,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

/// The changes of `all` that [`push_new`] did not insert, when each of them is a counter add,
/// in the order [`apply_rest`] applies them; `None` when another kind of change is among
/// them (those are applied by [`apply_rest`]).
pub(crate) fn counter_adds<'q>(all: &[&'q KvChanges]) -> Option<Vec<CounterAdd<'q>>> {
    rest(all)
        .map(
            |(namespace, key, change)| match (&change.expect, &change.effect) {
                (Expect::Anything, &KeyEffect::Add { delta, min, max }) => Some(CounterAdd {
                    namespace,
                    key,
                    delta,
                    min,
                    max,
                }),
                _ => None,
            },
        )
        .collect()
}

/// Adds the changes of `all` that [`push_new`] did not to `batch`, when each of them is a
/// counter add ([`counter_adds`]), each expected to change its row. `false`, with nothing
/// added, otherwise. An add to an absent counter, or past a bound, then fails the batch's
/// expectation; the caller learns which from [`apply_rest`] in a transaction.
pub(crate) fn push_adds<'q, D: Dialect>(batch: &mut Batch<'q, D>, all: &[&'q KvChanges]) -> bool {
    let Some(adds) = counter_adds(all) else {
        return false;
    };
    for add in adds {
        push_add(batch, add);
    }
    true
}

/// Adds one bounded add to `batch`, expected to change its row.
pub(crate) fn push_add<'q, D: Dialect>(batch: &mut Batch<'q, D>, add: CounterAdd<'q>) {
    let CounterAdd {
        namespace,
        key,
        delta,
        min,
        max,
    } = add;
    let part = batch.push(add_sql::<D>(), move |query| {
        query.arg(namespace).arg(key).arg(delta).arg(min).arg(max)
    });
    batch.expect(part, 1);
}

/// Several commits' counter adds, summed per counter, so that a group of commits sent as one
/// statement updates each counter once (`sql::coalesce`). Adds are summed only where no
/// order of them can cross a bound while their sum does not: takes (deltas <= 0) against a
/// lower bound alone, gives (deltas >= 0) against an upper bound alone, or either without a
/// bound, every add of a counter with the same bounds. A take's lower bound then holds after
/// each of them exactly when it holds after their sum, so the one bounded update admits the
/// group exactly when every commit of it, run one after the other, would have been admitted.
#[derive(Debug, Default)]
pub(crate) struct SummedAdds<'q> {
    counters: BTreeMap<(&'q str, &'q str), CounterAdd<'q>>,
}

impl<'q> SummedAdds<'q> {
    /// Adds one commit's adds to the sums; `false`, with nothing changed, when one of them
    /// cannot be summed with the others (or one commit adds to a counter twice).
    pub(crate) fn join(&mut self, adds: &[CounterAdd<'q>]) -> bool {
        let mut joined: BTreeMap<(&'q str, &'q str), CounterAdd<'q>> = BTreeMap::new();
        for add in adds {
            let one_way =
                (add.delta <= 0 && add.max.is_none()) || (add.delta >= 0 && add.min.is_none());
            let counter = (add.namespace, add.key);
            if !one_way || joined.contains_key(&counter) {
                return false;
            }
            let sum = match self.counters.get(&counter) {
                Some(sum) if (sum.min, sum.max) != (add.min, add.max) => return false,
                Some(sum) => match sum.delta.checked_add(add.delta) {
                    Some(delta) => CounterAdd { delta, ..*sum },
                    None => return false,
                },
                None => *add,
            };
            joined.insert(counter, sum);
        }
        self.counters.extend(joined);
        true
    }

    /// Adds one bounded add per counter to `batch`, in key order, each expected to change its
    /// row.
    pub(crate) fn push<D: Dialect>(self, batch: &mut Batch<'q, D>) {
        for add in self.counters.into_values() {
            push_add(batch, add);
        }
    }
}

/// The bounded add of `$3` to the counter `$1`/`$2`, within `$4` and `$5` (either `NULL`
/// for no bound): one row changed when the counter exists and stays within them.
fn add_sql<D: Dialect>() -> String {
    let (open, close) = D::COUNTER_BYTES;
    let counter = D::COUNTER;
    format!(
        "UPDATE plugin_kv SET value = {open}{counter} + $3{close}, updated_at = {now} \
         WHERE namespace = $1 AND key = $2 \
         AND ($4 IS NULL OR {counter} + $3 >= $4) AND ($5 IS NULL OR {counter} + $3 <= $5)",
        now = D::NOW
    )
}

/// A bounded add in one `UPDATE` when the counter exists; a first add inserts it.
async fn add<D: Dialect>(
    conn: &mut ConnOf<D>,
    namespace: &str,
    key: &str,
    delta: i64,
    min: Option<i64>,
    max: Option<i64>,
) -> Result<bool, StoreError> {
    let updated = D::query(AssertSqlSafe(add_sql::<D>()))
        .arg(namespace)
        .arg(key)
        .arg(delta)
        .arg(min)
        .arg(max)
        .execute(D::on(conn))
        .await
        .map_err(D::classify)?;
    if D::rows_affected(&updated) == 1 {
        return Ok(true);
    }
    // Out of bounds, or absent (0): only the latter may start the counter at `delta`.
    let within = min.is_none_or(|m| delta >= m) && max.is_none_or(|m| delta <= m);
    if !within {
        return Ok(false);
    }
    let first = delta.to_string().into_bytes();
    let inserted = D::query(
        "INSERT INTO plugin_kv (namespace, key, value) VALUES ($1, $2, $3) \
         ON CONFLICT (namespace, key) DO NOTHING",
    )
    .arg(namespace)
    .arg(key)
    .arg(first.as_slice())
    .execute(D::on(conn))
    .await
    .map_err(D::classify)?;
    Ok(D::rows_affected(&inserted) == 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sql::postgres::{PostgresDialect, widest_step};
    use crate::testing::TestDatabase;

    fn add(
        key: &'static str,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> CounterAdd<'static> {
        CounterAdd {
            namespace: "ns",
            key,
            delta,
            min,
            max,
        }
    }

    /// Which adds sum (takes against a lower bound, gives against an upper one, unbounded
    /// ones; the same bounds per counter), and that a refused join changes nothing.
    #[test]
    fn summed_adds_join_only_what_cannot_cross_a_bound_in_any_order() {
        let take = |key, delta| add(key, delta, Some(0), None);
        let mut summed = SummedAdds::default();
        assert!(summed.join(&[take("a", -2), take("b", -1)]));
        assert!(summed.join(&[take("a", -3)]));
        assert!(summed.join(&[take("a", 0)]), "a zero take");
        let refused = [
            (
                "a give beside takes, other bounds",
                vec![add("a", 1, None, None)],
            ),
            (
                "a give against the same lower bound",
                vec![add("a", 1, Some(0), None)],
            ),
            (
                "a take with another lower bound",
                vec![add("a", -1, Some(5), None)],
            ),
            (
                "a take with both bounds",
                vec![add("c", -1, Some(0), Some(9))],
            ),
            (
                "a give against a lower bound",
                vec![add("c", 1, Some(0), None)],
            ),
            (
                "a take against an upper bound",
                vec![add("c", -1, None, Some(9))],
            ),
            (
                "one counter twice in a commit",
                vec![take("c", -1), take("c", -1)],
            ),
            ("an overflow", vec![take("a", i64::MIN)]),
            // The first add would join; the second refuses the commit, and neither counts.
            (
                "half a commit",
                vec![take("b", -4), add("a", 1, None, None)],
            ),
        ];
        for (why, adds) in refused {
            assert!(!summed.join(&adds), "{why}");
        }
        let sums: Vec<_> = summed.counters.values().map(|a| (a.key, a.delta)).collect();
        assert_eq!(sums, vec![("a", -5), ("b", -1)]);
        let mut gives = SummedAdds::default();
        assert!(gives.join(&[add("g", 2, None, Some(10))]));
        assert!(gives.join(&[add("g", 3, None, Some(10))]));
        assert!(gives.join(&[add("u", -3, None, None)]));
        assert!(
            gives.join(&[add("u", 4, None, None)]),
            "unbounded adds either way"
        );
        let sums: Vec<_> = gives.counters.values().map(|a| (a.key, a.delta)).collect();
        assert_eq!(sums, vec![("g", 5), ("u", 1)]);
    }

    /// The key read is prepared, so PostgreSQL may run it with a generic plan made while the
    /// table was small (here 50 keys in two namespaces, not analysed). At 40,000 keys in the
    /// namespace it must still probe each asked key and read nothing else, in both forms: a
    /// parameter per key and one list. Seen failing: `key = ANY($2)`, whose plan probed the
    /// index by namespace alone and filtered the rest.
    #[tokio::test]
    async fn read_keys_probes_each_key_at_any_size() {
        let test_db = TestDatabase::postgres().await.unwrap();
        let db = test_db.connect().await.unwrap();
        let mut conn = db.postgres().unwrap().acquire().await.unwrap();
        let listed = format!(
            "PREPARE listed (text, text, text, text) AS {}",
            read_keys_sql::<PostgresDialect>(3)
        );
        let list = format!(
            "PREPARE list (text, text[]) AS {}",
            read_keys_sql::<PostgresDialect>(LISTED_KEYS + 1)
        );
        for sql in [
            "INSERT INTO plugin_kv (namespace, key, value) \
             SELECT CASE WHEN g % 2 = 0 THEN 'ns' ELSE 'other' END, 's' || g, 'v' \
             FROM generate_series(1, 50) g",
            "SET plan_cache_mode = force_generic_plan",
            &listed,
            &list,
            // The plans are made (and kept) at the first run, on the small table.
            "EXECUTE listed ('ns', 'k1', 'k2', 'k3')",
            "EXECUTE list ('ns', '{k1}')",
            "INSERT INTO plugin_kv (namespace, key, value) \
             SELECT 'ns', 'k' || g, 'v' FROM generate_series(1, 40000) g",
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        for run in [
            "EXECUTE listed ('ns', 'k5', 'k6', 'absent')",
            "EXECUTE list ('ns', '{k5,k6,absent}')",
        ] {
            let (plan,): (serde_json::Value,) = sqlx::query_as(AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) {run}"
            )))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            assert_eq!(
                plan[0]["Plan"]["Actual Rows"].as_f64(),
                Some(2.0),
                "{run}: {plan:#}"
            );
            let widest = widest_step(&plan);
            assert!(
                widest.0 <= 10.0,
                "{run}: a step handled {} rows ({}) to read 3 keys: {plan:#}",
                widest.0,
                widest.1
            );
        }
        // What the listed form is for: left to choose (`plan_cache_mode = auto`), PostgreSQL
        // keeps its generic plan after five calls instead of planning every call again.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET plan_cache_mode = auto; PREPARE listed_auto (text, text) AS {}",
            read_keys_sql::<PostgresDialect>(1)
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        for i in 0..7 {
            sqlx::raw_sql(AssertSqlSafe(format!("EXECUTE listed_auto ('ns', 'k{i}')")))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        let (generic,): (i64,) = sqlx::query_as(
            "SELECT generic_plans FROM pg_prepared_statements WHERE name = 'listed_auto'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert!(
            generic >= 1,
            "planned at every call: {generic} generic plans"
        );
        drop(conn);
        // And through the store: present keys with their values, absent ones left out.
        let kv = db.plugin_kv();
        let got = kv
            .get_many("ns", &["k7".into(), "nope".into()])
            .await
            .unwrap();
        assert_eq!(got, HashMap::from([("k7".to_owned(), b"v".to_vec())]));
        let many: Vec<String> = (1..=LISTED_KEYS + 2).map(|i| format!("k{i}")).collect();
        let got = kv.get_many("ns", &many).await.unwrap();
        assert_eq!(got.len(), LISTED_KEYS + 2);
        assert!(kv.get_many("ns", &[]).await.unwrap().is_empty());
        db.close().await;
        test_db.cleanup().await.unwrap();
    }
}
