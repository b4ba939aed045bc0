//! Commits that would queue for one hot row, sent together.
//!
//! On PostgreSQL with grouping off (the default, see [`super::group`]) every saga step commit
//! is one statement on a connection of its own, and commits run side by side. A flash sale's
//! stock counter is one row, though: every commit that takes from it waits for the one
//! before it to be flushed, each holding a connection and a backend while it waits, and the
//! hot SKU ran at 78-84% of spread SKUs (docs/benchmarks.md).
//!
//! Here commits are keyed by the hot row they update. While a commit for a key is in flight,
//! the next ones for that key wait in the host instead of on the row; when it ends, those
//! that waited go on as one group (up to `max_group`), which the runner commits as it can:
//! the saga store sends them as one statement that updates the row once. A commit that finds
//! nothing in flight for its key goes at once, alone, exactly as it would without this, so
//! nothing waits at low load or on spread keys.
//!
//! Waiting in the host costs nothing the row did not already cost: a commit for a key in
//! flight could not have updated the row before that one's flush anyway.
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

/// Commits a group of jobs and answers each, in the group's order.
pub(crate) type RunGroup<J> =
    Box<dyn Fn(Vec<J>) -> BoxFuture<'static, Vec<Result<(), StoreError>>> + Send + Sync>;

type Answer = oneshot::Sender<Result<(), StoreError>>;

const STOPPED: &str = "a coalesced commit stopped before answering";

/// The jobs waiting per key; a key is present while a group of it is in flight.
pub(crate) struct Coalescer<K, J> {
    waiting: Mutex<HashMap<K, Vec<(J, Answer)>>>,
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

    /// Commits `job` with the jobs of `key` that wait with it; returns once its group is
    /// committed, with the job's own outcome.
    pub(crate) async fn run(self: &Arc<Self>, key: K, job: J) -> Result<(), StoreError> {
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
            .unwrap_or_else(|_| Err(StoreError::Unavailable(STOPPED.to_owned())))
    }

    /// Runs `group`, then whatever queued for `key` meanwhile, until nothing is left.
    async fn drain(self: Arc<Self>, key: K, mut group: Vec<(J, Answer)>) {
        loop {
            let (jobs, answers): (Vec<J>, Vec<Answer>) = group.into_iter().unzip();
            // A panicking runner (a bug) fails its group, whose callers hear that it stopped
            // (their answers are dropped); the key goes on being served.
            match AssertUnwindSafe((self.run_group)(jobs))
                .catch_unwind()
                .await
            {
                Ok(outcomes) => {
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        // The caller may have gone; its job ran all the same.
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Vec<(J, Answer)>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The queueing alone, with a runner the test holds: which jobs go together, and that a
    //! lone job goes at once.

    use std::sync::Mutex as StdMutex;

    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    /// Every group the runner got, in order.
    type Groups = mpsc::UnboundedReceiver<Vec<i64>>;

    /// A coalescer whose runner reports each group it gets and then waits for a permit, so
    /// the test decides when a group ends. A job `n < 0` fails.
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
                        .map(|&n| {
                            if n < 0 {
                                Err(StoreError::LeaseLost)
                            } else {
                                Ok(())
                            }
                        })
                        .collect()
                })
            }),
        );
        (coalescer, seen, gate)
    }

    #[tokio::test]
    async fn jobs_that_wait_for_a_key_go_together_and_others_go_at_once() {
        let (coalescer, mut seen, gate) = held();
        let call = |key: &'static str, n: i64| {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move { coalescer.run(key, n).await })
        };
        let first = call("a", 1);
        assert_eq!(
            seen.recv().await.unwrap(),
            vec![1],
            "a lone job goes at once"
        );
        // While job 1 is in flight, four more for key "a" wait; one for "b" does not.
        let mut waiting = Vec::new();
        for n in [2, -3, 4, 5] {
            waiting.push(call("a", n));
            // Queued in call order: each waits until its job is in the map.
            while coalescer.lock().get("a").map_or(0, Vec::len) < waiting.len() {
                tokio::task::yield_now().await;
            }
        }
        let other = call("b", 9);
        assert_eq!(
            seen.recv().await.unwrap(),
            vec![9],
            "another key is not held"
        );
        gate.add_permits(1);
        // Job 1 and job 9 hold one permit each; whichever took it, the other is released next.
        gate.add_permits(1);
        first.await.unwrap().unwrap();
        other.await.unwrap().unwrap();
        // The next group is the first three that waited (`max_group`), then the last.
        assert_eq!(seen.recv().await.unwrap(), vec![2, -3, 4]);
        gate.add_permits(1);
        assert_eq!(seen.recv().await.unwrap(), vec![5]);
        gate.add_permits(1);
        let heard: Vec<_> = futures::future::join_all(waiting)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            heard,
            vec![Ok(()), Err(StoreError::LeaseLost), Ok(()), Ok(())]
        );
        // Nothing is in flight any more: the keys are free again.
        assert!(coalescer.lock().is_empty());
    }
}
