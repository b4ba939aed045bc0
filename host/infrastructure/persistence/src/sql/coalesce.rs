//! Commits that would queue for one hot row, sent together.
//!
//! On PostgreSQL with grouping off (the default, see [`super::group`]) every saga step commit
//! is one statement on a connection of its own, and commits run side by side. A flash sale's
//! stock counter is one row, though: every commit that takes from it waits for the one
//! before it to be flushed, each holding a connection and a backend while it waits, and the
//! hot SKU ran at 78-84% of spread SKUs (docs/benchmarks.md).
//!
//! Here commits are keyed by the hot row they update. While a group for a key is in flight,
//! the next commits for that key wait in the host instead of on the row; when it ends, those
//! that waited go on as the next group (up to `max_group`). A commit that finds nothing in
//! flight for its key goes at once, as a group of one, so nothing waits at low load or on
//! spread keys.
//!
//! The runner commits a group as it can (the saga store: as one statement that updates the
//! row once) and hands back, [`Grouped::Alone`], the jobs it did not commit (they could not
//! go with the others, or the group was refused): their callers then commit them alone on
//! their own tasks, and the key is free for the next group meanwhile.
//!
//! A group runs on a task of its own, so a caller that goes away (a cancelled request) never
//! leaves its key marked in flight, and a group is run to its end either way.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use futures::future::BoxFuture;
use oms_application::ports::StoreError;
use tokio::sync::oneshot;

/// What became of a job in its group.
#[derive(Debug, PartialEq)]
pub(crate) enum Grouped<J> {
    /// Committed, or refused with this error.
    Done(Result<(), StoreError>),
    /// Not committed: the caller commits it alone.
    Alone(J),
}

/// Commits a group of jobs and says what became of each, in the group's order.
pub(crate) type RunGroup<J> =
    Box<dyn Fn(Vec<J>) -> BoxFuture<'static, Vec<Grouped<J>>> + Send + Sync>;

type Answer<J> = oneshot::Sender<Grouped<J>>;

/// The jobs waiting per key, each with where its answer goes.
type Waiting<K, J> = HashMap<K, Vec<(J, Answer<J>)>>;

const STOPPED: &str = "a coalesced commit stopped before answering";

/// The jobs waiting per key; a key is present while a group of it is in flight.
pub(crate) struct Coalescer<K, J> {
    waiting: Mutex<Waiting<K, J>>,
    run_group: RunGroup<J>,
    max_group: usize,
}

impl<K, J> Coalescer<K, J>
where
    K: Hash + Eq + Clone + Send + 'static,
    J: Send + 'static,
{
    pub(crate) fn new(max_group: usize, run_group: RunGroup<J>) -> Arc<Self> {
        Arc::new(Self {
            waiting: Mutex::new(HashMap::new()),
            run_group,
            max_group: max_group.max(1),
        })
    }

    /// Runs `job` in a group of `key`: after the group in flight for `key`, if any, with the
    /// jobs that waited with it.
    pub(crate) async fn run(self: &Arc<Self>, key: K, job: J) -> Grouped<J> {
        let (done, answer) = oneshot::channel();
        let lead = match self.lock().entry(key.clone()) {
            Entry::Occupied(mut queued) => {
                queued.get_mut().push((job, done));
                None
            }
            Entry::Vacant(free) => {
                free.insert(Vec::new());
                Some((job, done))
            }
        };
        if let Some(first) = lead {
            tokio::spawn(Arc::clone(self).drain(key, vec![first]));
        }
        answer
            .await
            .unwrap_or_else(|_| Grouped::Done(Err(StoreError::Unavailable(STOPPED.to_owned()))))
    }

    /// Runs `group`, then whatever queued for `key` meanwhile, until nothing is left.
    async fn drain(self: Arc<Self>, key: K, mut group: Vec<(J, Answer<J>)>) {
        loop {
            let (jobs, answers): (Vec<J>, Vec<Answer<J>>) = group.into_iter().unzip();
            // A panicking runner (a bug) fails its group, whose callers hear that it stopped
            // (their answers are dropped); the key goes on being served.
            let run = async { (self.run_group)(jobs).await };
            match AssertUnwindSafe(run).catch_unwind().await {
                Ok(outcomes) => {
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        // The caller may have gone; its job ran all the same (or, handed
                        // back, is dropped uncommitted: nobody waits for it).
                        let _ = answer.send(outcome);
                    }
                }
                Err(_) => tracing::error!("a coalesced commit panicked; its jobs failed"),
            }
            let mut waiting = self.lock();
            let Some(queued) = waiting.get_mut(&key) else {
                return;
            };
            if queued.is_empty() {
                waiting.remove(&key);
                return;
            }
            let take = queued.len().min(self.max_group);
            group = queued.drain(..take).collect();
        }
    }

    /// The map, also after a panic elsewhere while it was held: every change to it is one
    /// call that cannot leave it half-made.
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<K, J>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The queueing alone, with a runner the test holds: which jobs go together, and that a
    //! lone job goes at once.

    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    /// Every group the runner got, in order.
    type Groups = mpsc::UnboundedReceiver<Vec<i64>>;

    /// A coalescer whose runner reports each group it gets and then waits for a permit, so
    /// the test decides when a group ends. A job `n < 0` fails; a job `n >= 100` is handed
    /// back.
    fn held() -> (Arc<Coalescer<&'static str, i64>>, Groups, Arc<Semaphore>) {
        let (groups, seen) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let runner_gate = Arc::clone(&gate);
        let groups = StdMutex::new(groups);
        let coalescer = Coalescer::new(
            3,
            Box::new(move |jobs: Vec<i64>| {
                groups.lock().unwrap().send(jobs.clone()).unwrap();
                let gate = Arc::clone(&runner_gate);
                Box::pin(async move {
                    gate.acquire().await.unwrap().forget();
                    jobs.iter()
                        .map(|&n| match n {
                            ..0 => Grouped::Done(Err(StoreError::LeaseLost)),
                            100.. => Grouped::Alone(n),
                            _ => Grouped::Done(Ok(())),
                        })
                        .collect()
                })
            }),
        );
        (coalescer, seen, gate)
    }

    /// The next group the runner got; a test that waits for one that never comes fails.
    async fn next(seen: &mut Groups) -> Vec<i64> {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("no group came")
            .unwrap()
    }

    // One thread: spawned tasks run only when the test yields, which makes the order in which
    // jobs queue, and which permit releases which group, the test's.
    #[tokio::test(flavor = "current_thread")]
    async fn jobs_that_wait_for_a_key_go_together_and_others_go_at_once() {
        let (coalescer, mut seen, gate) = held();
        let call = |key: &'static str, n: i64| {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move { coalescer.run(key, n).await })
        };
        let first = call("a", 1);
        assert_eq!(next(&mut seen).await, vec![1], "a lone job goes at once");
        // While job 1 is in flight, four more for key "a" wait; one for "b" does not.
        let mut waiting = Vec::new();
        for n in [2, -3, 104, 5] {
            waiting.push(call("a", n));
            // Queued in call order: each waits until its job is in the map.
            while coalescer.lock().get("a").map_or(0, Vec::len) < waiting.len() {
                tokio::task::yield_now().await;
            }
        }
        let other = call("b", 9);
        assert_eq!(next(&mut seen).await, vec![9], "another key is not held");
        // Jobs 1 and 9 wait for a permit each.
        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), Grouped::Done(Ok(())));
        assert_eq!(other.await.unwrap(), Grouped::Done(Ok(())));
        // The next group is the first three that waited (`max_group`), then the last.
        assert_eq!(next(&mut seen).await, vec![2, -3, 104]);
        gate.add_permits(1);
        assert_eq!(next(&mut seen).await, vec![5]);
        gate.add_permits(1);
        let heard: Vec<_> = futures::future::join_all(waiting)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            heard,
            vec![
                Grouped::Done(Ok(())),
                Grouped::Done(Err(StoreError::LeaseLost)),
                Grouped::Alone(104),
                Grouped::Done(Ok(())),
            ]
        );
        // Nothing is in flight any more: the keys are free again.
        assert!(coalescer.lock().is_empty());
    }
}
