//! A plugin call's key-value writes, buffered until the saga step that made the call commits.
//!
//! Why: a step's outcome and the plugin state behind it (local-stock's reservation, fakepay's
//! authorisation record) must land together or not at all. Written by the plugin in their own
//! transaction they cost a durable commit each, and a crash between the two commits left
//! state without the step that explains it. Buffered, they ride in the step's commit.
//!
//! How: the plugin reads committed values, overlaid with its own pending writes. A batch is
//! evaluated against that view (the same [`evaluate`] as every store), and what it decided is
//! recorded per key as a condition on the committed value ([`Expect`]) and an effect
//! ([`KeyEffect`]). The step's commit re-checks every condition and applies every effect in
//! one transaction; if a condition no longer holds (another step changed the key meanwhile),
//! the commit is refused and the step runs again with the same idempotency key, so the plugin
//! decides afresh from the new state. A bounded counter (stock) is not pinned to the value the
//! plugin saw: its add is applied in SQL at commit with its bounds checked there, so
//! concurrent steps on one hot counter do not refuse each other while the bounds hold.
//!
//! A batch that only creates keys (every swap from absent, no counter) need not read them
//! first: with [`AbsentKeys::CheckedAtCommit`] it is answered `Applied` on its own word, each
//! key recorded as "must still be absent", and the commit checks that as it checks every
//! condition. That is the record a plugin writes per idempotency key, new on nearly every
//! call: fakepay's authorisation costs no round trip. When the key was there after all (a
//! replay), the commit is refused and the step runs again with [`AbsentKeys::Read`], so the
//! plugin sees the record and answers from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{BatchOutcome, BoundedAdd, Evaluation, KvError, Swap, batch_keys, evaluate};
use crate::ports::PluginKvStore;

/// What one call wrote in one plugin's namespace, key by key (sorted: the order a store
/// locks them in, so two commits over overlapping keys cannot deadlock).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvChanges {
    pub namespace: String,
    pub keys: BTreeMap<String, KeyChange>,
}

impl KvChanges {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A key's condition at commit and what the commit does to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub expect: Expect,
    pub effect: KeyEffect,
}

impl KeyChange {
    /// The key's value after the commit (`Some(None)` = deleted), given its committed value;
    /// `None` when the condition or a bound fails. The SQL stores say the same in SQL.
    pub fn next_value(
        &self,
        key: &str,
        current: Option<&[u8]>,
    ) -> Result<Option<Option<Vec<u8>>>, KvError> {
        if let Expect::Value(expected) = &self.expect
            && expected.as_deref() != current
        {
            return Ok(None);
        }
        Ok(match &self.effect {
            KeyEffect::Keep => Some(current.map(<[u8]>::to_vec)),
            KeyEffect::Put(value) => Some(Some(value.clone())),
            KeyEffect::Delete => Some(None),
            KeyEffect::Add { delta, min, max } => {
                let now = current
                    .map(|bytes| super::parse_counter(key, bytes))
                    .transpose()?
                    .unwrap_or(0);
                now.checked_add(*delta)
                    .filter(|v| min.is_none_or(|m| *v >= m) && max.is_none_or(|m| *v <= m))
                    .map(|v| Some(v.to_string().into_bytes()))
            }
        })
    }
}

/// What the committed value must be for the commit to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Any value: the effect does not depend on it (an unconditional write, or a bounded add
    /// whose bounds the commit checks itself).
    Anything,
    /// Exactly this value (`None` = absent): the plugin decided from it.
    Value(Option<Vec<u8>>),
}

/// What the commit writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEffect {
    /// Nothing: a pure precondition.
    Keep,
    Put(Vec<u8>),
    Delete,
    /// Adds `delta` to the ASCII-decimal counter (absent = 0) if the result stays within the
    /// bounds; out of bounds at commit refuses the commit.
    Add {
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
}

/// How a buffered call learns that the keys a batch creates are absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AbsentKeys {
    /// Read them before answering: a key that is there answers `Conflict` at once.
    #[default]
    Read,
    /// Take a batch that only creates keys (every swap expects absence, no counter, no key
    /// this call read or wrote before) at its word: `Applied` without a read, each key
    /// recorded as "must still be absent" for the step's commit to check. Only for a call
    /// whose every effect is its buffered writes (a plugin with no network grant): a wrong
    /// `Applied` must have done nothing the refused commit does not undo.
    CheckedAtCommit,
}

/// How a saga step's call buffers its plugin writes for the commit that records the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buffering {
    /// How its batches learn that the keys they create are absent.
    pub absent_keys: AbsentKeys,
    /// Steps that ran before this call wait to be committed with it
    /// (`StepCommit::WithNext`): a commit refused after the call drops them, and the saga
    /// runs them again, maybe to a different end (out of stock this time). A call with
    /// effects outside the host must not depend on them: one to a plugin with network access
    /// is refused before it starts, and the caller commits those steps first.
    pub pending_steps: bool,
}

/// One call's view of a namespace: committed values read through `store`, overlaid with the
/// call's pending writes, which are collected instead of written.
pub struct KvTransaction {
    store: Arc<dyn PluginKvStore>,
    changes: KvChanges,
    /// Committed values read so far, so that one call sees one value per key; with
    /// [`AbsentKeys::CheckedAtCommit`], also the keys taken as absent without a read.
    read: HashMap<String, Option<Vec<u8>>>,
    absent_keys: AbsentKeys,
}

impl std::fmt::Debug for KvTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvTransaction")
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

impl KvTransaction {
    pub fn new(store: Arc<dyn PluginKvStore>, namespace: &str) -> Self {
        Self {
            store,
            changes: KvChanges {
                namespace: namespace.to_owned(),
                keys: BTreeMap::new(),
            },
            read: HashMap::new(),
            absent_keys: AbsentKeys::Read,
        }
    }

    /// The same view, checking the keys a batch creates as `absent_keys` says.
    #[must_use]
    pub fn with_absent_keys(mut self, absent_keys: AbsentKeys) -> Self {
        self.absent_keys = absent_keys;
        self
    }

    /// The writes to commit with the step.
    pub fn into_changes(self) -> KvChanges {
        self.changes
    }

    async fn committed(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(value) = self.read.get(key) {
            return Ok(value.clone());
        }
        let value = self.store.get(&self.changes.namespace, key).await?;
        self.read.insert(key.to_owned(), value.clone());
        Ok(value)
    }

    /// Whether this call's view of `key` depends on its committed value and that value was
    /// not read yet.
    fn unread(&self, key: &str) -> bool {
        if self.read.contains_key(key) {
            return false;
        }
        match self.changes.keys.get(key) {
            None => true,
            Some(KeyChange { effect, expect }) => match effect {
                KeyEffect::Put(_) | KeyEffect::Delete => false,
                KeyEffect::Keep => *expect == Expect::Anything,
                KeyEffect::Add { .. } => true,
            },
        }
    }

    /// Reads the committed values of those of `keys` this call still needs, in one round
    /// trip: a batch over a new record, its index and a counter costs one read, not three.
    async fn read_ahead(&mut self, keys: &[String]) -> Result<(), KvError> {
        let unread: Vec<String> = keys.iter().filter(|k| self.unread(k)).cloned().collect();
        if unread.is_empty() {
            return Ok(());
        }
        let mut values = self
            .store
            .get_many(&self.changes.namespace, &unread)
            .await?;
        for key in unread {
            let value = values.remove(&key);
            self.read.insert(key, value);
        }
        Ok(())
    }

    /// The value as this call sees it: its own pending write, or the committed one.
    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let pending = self.changes.keys.get(key).cloned();
        Ok(match pending {
            None => self.committed(key).await?,
            Some(KeyChange { effect, expect }) => match effect {
                KeyEffect::Put(value) => Some(value),
                KeyEffect::Delete => None,
                KeyEffect::Keep => match expect {
                    Expect::Value(value) => value,
                    Expect::Anything => self.committed(key).await?,
                },
                // Provisional: the commit adds to whatever is committed then.
                KeyEffect::Add { delta, .. } => {
                    let now = match self.committed(key).await? {
                        Some(bytes) => super::parse_counter(key, &bytes)?,
                        None => 0,
                    };
                    Some(now.saturating_add(delta).to_string().into_bytes())
                }
            },
        })
    }

    pub fn set(&mut self, key: &str, value: Vec<u8>) {
        self.write(key, KeyEffect::Put(value));
    }

    pub fn delete(&mut self, key: &str) {
        self.write(key, KeyEffect::Delete);
    }

    /// An unconditional write keeps the key's condition, if an earlier batch set one.
    fn write(&mut self, key: &str, effect: KeyEffect) {
        self.changes
            .keys
            .entry(key.to_owned())
            .and_modify(|c| c.effect = effect.clone())
            .or_insert(KeyChange {
                expect: Expect::Anything,
                effect,
            });
    }

    /// Makes the key's pending effect absolute: pins its condition to the committed value
    /// when the effect so far was relative (an add), so that a new absolute value computed
    /// from the provisional one is only written over the value it was computed from.
    async fn absolute(&mut self, key: &str) -> Result<Expect, KvError> {
        match self.changes.keys.get(key).cloned() {
            None => Ok(Expect::Value(self.committed(key).await?)),
            Some(KeyChange {
                effect: KeyEffect::Add { .. },
                expect: Expect::Anything,
            }) => Ok(Expect::Value(self.committed(key).await?)),
            Some(change) => Ok(change.expect),
        }
    }

    /// Whether the batch may be answered without reading ([`AbsentKeys::CheckedAtCommit`]):
    /// it only creates keys this call has neither read nor written, so its answer depends on
    /// nothing but their absence, which the commit checks.
    fn creates_unseen_keys(&self, swaps: &[Swap], adds: &[BoundedAdd]) -> bool {
        self.absent_keys == AbsentKeys::CheckedAtCommit
            && adds.is_empty()
            && !swaps.is_empty()
            && swaps.iter().all(|s| {
                s.expected.is_none()
                    && !self.read.contains_key(&s.key)
                    && !self.changes.keys.contains_key(&s.key)
            })
    }

    /// Evaluates the batch against this call's view; when it applies, records it as pending
    /// changes and answers `Applied` with the counters' provisional values.
    pub async fn batch(
        &mut self,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError> {
        if self.creates_unseen_keys(swaps, adds) {
            // Taken as read absent: the batch then applies, and each key is recorded as it
            // would be after a read that found it absent ("must still be absent").
            for swap in swaps {
                self.read.insert(swap.key.clone(), None);
            }
        }
        let keys = batch_keys(swaps, adds);
        self.read_ahead(&keys).await?;
        let mut view = HashMap::new();
        for key in keys {
            if let Some(value) = self.get(&key).await? {
                view.insert(key, value);
            }
        }
        let outcome = match evaluate(&view, swaps, adds)? {
            Evaluation::Refuse(outcome) => return Ok(outcome),
            Evaluation::Apply { outcome, .. } => outcome,
        };
        for swap in swaps {
            let expect = self.absolute(&swap.key).await?;
            let effect = if swap.new == swap.expected && expect == Expect::Value(swap.new.clone()) {
                // A pure precondition on the committed value.
                KeyEffect::Keep
            } else {
                match &swap.new {
                    Some(value) => KeyEffect::Put(value.clone()),
                    None => KeyEffect::Delete,
                }
            };
            self.changes
                .keys
                .insert(swap.key.clone(), KeyChange { expect, effect });
        }
        let BatchOutcome::Applied(counters) = &outcome else {
            return Ok(outcome);
        };
        for (add, value) in adds.iter().zip(counters) {
            let change = if self.changes.keys.contains_key(&add.key) {
                // Touched before in this call: write the value computed from the view.
                KeyChange {
                    expect: self.absolute(&add.key).await?,
                    effect: KeyEffect::Put(value.to_string().into_bytes()),
                }
            } else {
                KeyChange {
                    expect: Expect::Anything,
                    effect: KeyEffect::Add {
                        delta: add.delta,
                        min: add.min,
                        max: add.max,
                    },
                }
            };
            self.changes.keys.insert(add.key.clone(), change);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// Committed values only; the buffer must never write through. Counts its reads (round
    /// trips in a real store).
    #[derive(Default)]
    struct Committed(Mutex<HashMap<String, Vec<u8>>>, Mutex<usize>);

    #[async_trait]
    impl PluginKvStore for Committed {
        async fn get_many(
            &self,
            _: &str,
            keys: &[String],
        ) -> Result<HashMap<String, Vec<u8>>, KvError> {
            *self.1.lock().unwrap() += 1;
            Ok(crate::plugin_kv::present(&self.0.lock().unwrap(), keys))
        }
        async fn set(&self, _: &str, _: &str, _: &[u8]) -> Result<(), KvError> {
            panic!("a buffered call wrote through")
        }
        async fn delete(&self, _: &str, _: &str) -> Result<(), KvError> {
            panic!("a buffered call wrote through")
        }
        async fn batch(
            &self,
            _: &str,
            _: &[Swap],
            _: &[BoundedAdd],
        ) -> Result<BatchOutcome, KvError> {
            panic!("a buffered call wrote through")
        }
    }

    fn txn(committed: &[(&str, &str)]) -> KvTransaction {
        let store = Committed::default();
        for (k, v) in committed {
            store
                .0
                .lock()
                .unwrap()
                .insert((*k).to_owned(), v.as_bytes().to_vec());
        }
        KvTransaction::new(Arc::new(store), "ns")
    }

    fn swap(key: &str, expected: Option<&str>, new: Option<&str>) -> Swap {
        Swap {
            key: key.into(),
            expected: expected.map(|v| v.as_bytes().to_vec()),
            new: new.map(|v| v.as_bytes().to_vec()),
        }
    }

    fn take(key: &str, n: i64) -> BoundedAdd {
        BoundedAdd {
            key: key.into(),
            delta: -n,
            min: Some(0),
            max: None,
        }
    }

    /// local-stock's reserve: a record that must be absent and a bounded take of stock.
    #[tokio::test]
    async fn a_reservation_pins_its_record_and_adds_to_stock() {
        let mut t = txn(&[("stock/A", "5")]);
        let got = t
            .batch(&[swap("res/1", None, Some("held"))], &[take("stock/A", 2)])
            .await
            .unwrap();
        assert_eq!(got, BatchOutcome::Applied(vec![3]));
        // The call reads its own writes.
        assert_eq!(t.get("res/1").await.unwrap().as_deref(), Some(&b"held"[..]));
        assert_eq!(t.get("stock/A").await.unwrap().as_deref(), Some(&b"3"[..]));
        let changes = t.into_changes();
        assert_eq!(
            changes.keys["res/1"],
            KeyChange {
                expect: Expect::Value(None),
                effect: KeyEffect::Put(b"held".to_vec()),
            }
        );
        // Not pinned to the 5 it saw: the commit adds and checks the bound itself.
        assert_eq!(
            changes.keys["stock/A"],
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

    /// A batch reads the committed values it needs in one round trip (local-stock's reserve
    /// touches an outcome, a reservation and a counter), and none it already read or wrote.
    #[tokio::test]
    async fn a_batch_reads_its_keys_in_one_round_trip() {
        let store = Arc::new(Committed::default());
        store
            .0
            .lock()
            .unwrap()
            .insert("stock/A".into(), b"5".to_vec());
        let mut t = KvTransaction::new(store.clone(), "ns");
        let reads = || *store.1.lock().unwrap();
        let reserve = [
            swap("out/1", None, Some("ok")),
            swap("res/1", None, Some("held")),
        ];
        let got = t.batch(&reserve, &[take("stock/A", 2)]).await.unwrap();
        assert_eq!(got, BatchOutcome::Applied(vec![3]));
        assert_eq!(reads(), 1);
        let settle = [swap("res/1", Some("held"), Some("done"))];
        let got = t.batch(&settle, &[take("stock/A", 1)]).await.unwrap();
        assert_eq!(got, BatchOutcome::Applied(vec![2]));
        assert_eq!(t.get("out/1").await.unwrap().as_deref(), Some(&b"ok"[..]));
        assert_eq!(reads(), 1, "everything there was read or written already");
        assert_eq!(t.get("other").await.unwrap(), None);
        assert_eq!(reads(), 2);
    }

    /// fakepay's authorisation: a record and its index, both new. Checked at commit, the
    /// batch costs no read, even when a key is there (a replay): the commit, which requires
    /// both absent, is what refuses it then.
    #[tokio::test]
    async fn a_batch_that_only_creates_keys_is_left_to_the_commit() {
        let store = Arc::new(Committed::default());
        store
            .0
            .lock()
            .unwrap()
            .insert("op/replayed".into(), b"first".to_vec());
        let reads = || *store.1.lock().unwrap();
        let mut t =
            KvTransaction::new(store.clone(), "ns").with_absent_keys(AbsentKeys::CheckedAtCommit);
        let record = [
            swap("op/replayed", None, Some("second")),
            swap("pay/1", None, Some("held")),
            swap("lock/1", None, None),
        ];
        let got = t.batch(&record, &[]).await.unwrap();
        assert_eq!(got, BatchOutcome::Applied(vec![]));
        assert_eq!(t.get("pay/1").await.unwrap().as_deref(), Some(&b"held"[..]));
        assert_eq!(t.get("lock/1").await.unwrap(), None);
        assert_eq!(reads(), 0, "nothing was read");
        let keys = t.into_changes().keys;
        let absent_then = |effect| KeyChange {
            expect: Expect::Value(None),
            effect,
        };
        assert_eq!(
            keys["op/replayed"],
            absent_then(KeyEffect::Put(b"second".to_vec()))
        );
        assert_eq!(keys["pay/1"], absent_then(KeyEffect::Put(b"held".to_vec())));
        assert_eq!(keys["lock/1"], absent_then(KeyEffect::Keep));
    }

    /// What is not a plain creation still reads, checked at commit or not: a counter, a swap
    /// from a value, a key the call has seen; and with `Read` a creation reads too, so a
    /// replay finds its record at once.
    #[tokio::test]
    async fn batches_that_depend_on_a_value_read_it() {
        let store = Arc::new(Committed::default());
        for (k, v) in [("stock/A", "5"), ("op/1", "first"), ("seen", "there")] {
            store
                .0
                .lock()
                .unwrap()
                .insert(k.into(), v.as_bytes().to_vec());
        }
        let reads = || *store.1.lock().unwrap();
        let mut t =
            KvTransaction::new(store.clone(), "ns").with_absent_keys(AbsentKeys::CheckedAtCommit);
        let got = t
            .batch(&[swap("res/1", None, Some("held"))], &[take("stock/A", 1)])
            .await
            .unwrap();
        assert_eq!(got, BatchOutcome::Applied(vec![4]));
        assert_eq!(reads(), 1, "a batch with a counter reads its keys");
        let got = t
            .batch(&[swap("op/1", Some("first"), Some("next"))], &[])
            .await
            .unwrap();
        assert_eq!(got, BatchOutcome::Applied(vec![]));
        assert_eq!(reads(), 2, "a swap from a value reads it");
        assert_eq!(t.get("seen").await.unwrap().as_deref(), Some(&b"there"[..]));
        let got = t
            .batch(&[swap("seen", None, Some("x"))], &[])
            .await
            .unwrap();
        assert_eq!(
            got,
            BatchOutcome::Conflict(vec!["seen".into()]),
            "a key read before is decided from what was read"
        );
        assert_eq!(reads(), 3);

        let mut t = KvTransaction::new(store.clone(), "ns");
        let got = t
            .batch(&[swap("op/1", None, Some("again"))], &[])
            .await
            .unwrap();
        assert_eq!(got, BatchOutcome::Conflict(vec!["op/1".into()]));
        assert_eq!(reads(), 4);
    }

    #[tokio::test]
    async fn refusals_record_nothing() {
        let mut t = txn(&[("stock/A", "1"), ("res/1", "x")]);
        let short = t.batch(&[], &[take("stock/A", 2)]).await.unwrap();
        assert_eq!(short, BatchOutcome::OutOfBounds(vec!["stock/A".into()]));
        let taken = t
            .batch(&[swap("res/1", None, Some("y"))], &[])
            .await
            .unwrap();
        assert_eq!(taken, BatchOutcome::Conflict(vec!["res/1".into()]));
        assert!(t.into_changes().is_empty());
    }

    /// Seeding then taking in one call (local-stock's first order of a SKU): the take builds
    /// on the pending seed, so both are one absolute write conditioned on "absent".
    #[tokio::test]
    async fn later_batches_build_on_pending_writes() {
        let mut t = txn(&[]);
        t.batch(&[swap("stock/A", None, Some("10"))], &[])
            .await
            .unwrap();
        let got = t.batch(&[], &[take("stock/A", 4)]).await.unwrap();
        assert_eq!(got, BatchOutcome::Applied(vec![6]));
        assert_eq!(
            t.into_changes().keys["stock/A"],
            KeyChange {
                expect: Expect::Value(None),
                effect: KeyEffect::Put(b"6".to_vec()),
            }
        );
    }

    /// A swap over a pending add computes from the provisional value, so it is pinned to the
    /// committed value that value came from.
    #[tokio::test]
    async fn a_swap_over_a_pending_add_pins_the_committed_value() {
        let mut t = txn(&[("n", "7")]);
        t.batch(&[], &[take("n", 2)]).await.unwrap();
        t.batch(&[swap("n", Some("5"), Some("100"))], &[])
            .await
            .unwrap();
        assert_eq!(
            t.into_changes().keys["n"],
            KeyChange {
                expect: Expect::Value(Some(b"7".to_vec())),
                effect: KeyEffect::Put(b"100".to_vec()),
            }
        );
    }

    #[tokio::test]
    async fn unconditional_writes_and_preconditions() {
        let mut t = txn(&[("a", "1"), ("b", "2")]);
        t.set("a", b"9".to_vec());
        t.delete("c");
        t.batch(&[swap("b", Some("2"), Some("2"))], &[])
            .await
            .unwrap();
        assert_eq!(t.get("a").await.unwrap().as_deref(), Some(&b"9"[..]));
        assert_eq!(t.get("c").await.unwrap(), None);
        let keys = t.into_changes().keys;
        assert_eq!(keys["a"].expect, Expect::Anything);
        assert_eq!(keys["c"].effect, KeyEffect::Delete);
        assert_eq!(
            keys["b"],
            KeyChange {
                expect: Expect::Value(Some(b"2".to_vec())),
                effect: KeyEffect::Keep,
            }
        );
    }
}
