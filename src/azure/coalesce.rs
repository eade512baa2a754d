//! One read of a JIT policy for every read-back that asked before it began.
//!
//! After each write to Azure the VM's policy is read back, so the reply and
//! the settling of other grants rest on Azure's word. A burst of grants on
//! VMs under one policy (a team's resource group) would read the same
//! policy once per grant, at once: 200 reads from ARM's subscription read
//! bucket of 250, which also feeds every other read, and 200 parses of a
//! policy that lists every recent request.
//!
//! A read-back must see its own write, so it may not take the answer of a
//! read that was already on its way when it asked. Here each caller takes a
//! ticket, and the reads of one key run one at a time: a caller whose
//! ticket was issued before the last completed read began takes that read's
//! answer; otherwise it reads, for itself and for everyone who asked before
//! its read began. A burst of N read-backs of one policy costs two reads
//! (the one in flight when they arrived, and one for all of them) instead
//! of N. A failed read is not shared: the next caller reads again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Reads per key, shared among the callers that asked before each began.
#[derive(Debug)]
pub struct Coalescer<T> {
    keys: Mutex<HashMap<String, Arc<Key<T>>>>,
}

#[derive(Debug)]
struct Key<T> {
    /// Tickets issued so far.
    asked: AtomicU64,
    /// The last successful read: the tickets it covers and its answer.
    last: tokio::sync::Mutex<Option<(u64, T)>>,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Coalescer<T> {
    /// The answer of a `read` of `key` that began after this call did:
    /// another caller's, or this one's own.
    ///
    /// # Errors
    /// `read`'s error, when this caller's own read failed.
    pub async fn read<E, F, Fut>(&self, key: &str, read: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let held = Held {
            coalescer: self,
            key,
            slot: self.slot(key),
        };
        let slot = &held.slot;
        let ticket = slot.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = slot.last.lock().await;
        match &*last {
            Some((covers, value)) if *covers >= ticket => Ok(value.clone()),
            _ => {
                // Every ticket issued up to here asked before this read.
                let covers = slot.asked.load(Ordering::SeqCst);
                let fresh = read().await;
                *last = fresh.as_ref().ok().map(|v| (covers, v.clone()));
                fresh
            }
        }
    }

    fn slot(&self, key: &str) -> Arc<Key<T>> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(keys.entry(key.to_owned()).or_insert_with(|| {
            Arc::new(Key {
                asked: AtomicU64::new(0),
                last: tokio::sync::Mutex::new(None),
            })
        }))
    }

    /// Forgets `key` once no caller holds it, so that answers are not kept.
    fn release(&self, key: &str, slot: &Arc<Key<T>>) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are only made under this lock: the map's and ours left.
        if Arc::strong_count(slot) == 2 {
            keys.remove(key);
        }
    }

    /// How many keys are held (tests: nothing is kept once read).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A caller's hold on a key, released when the caller is done or dropped
/// (a read-back cancelled mid-way leaves nothing behind).
struct Held<'a, T: Clone> {
    coalescer: &'a Coalescer<T>,
    key: &'a str,
    slot: Arc<Key<T>>,
}

impl<T: Clone> Drop for Held<'_, T> {
    fn drop(&mut self) {
        self.coalescer.release(self.key, &self.slot);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Notify;

    use super::*;

    /// A policy read that counts itself, answers with its own number (1 for
    /// the first read, …) and, while `gate` is set, waits to be let through.
    struct Reads {
        started: AtomicUsize,
        gate: Notify,
    }

    impl Reads {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                started: AtomicUsize::new(0),
                gate: Notify::new(),
            })
        }

        async fn gated(&self) -> Result<usize, String> {
            let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            self.gate.notified().await;
            Ok(n)
        }
    }

    /// Lets the other tasks run until `n` reads have started, or a while.
    async fn until_started(reads: &Reads, n: usize) {
        for _ in 0..1_000 {
            if reads.started.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn callers_who_asked_during_a_read_share_the_next_one_and_never_take_the_earlier() {
        // Arrange: a first read on its way.
        let coalescer = Arc::new(Coalescer::<usize>::default());
        let reads = Reads::new();
        let first = tokio::spawn({
            let (c, r) = (Arc::clone(&coalescer), Arc::clone(&reads));
            async move { c.read("policy", || r.gated()).await }
        });
        until_started(&reads, 1).await;

        // Act: ten more ask while it is in flight; then both reads finish.
        let later: Vec<_> = (0..10)
            .map(|_| {
                let (c, r) = (Arc::clone(&coalescer), Arc::clone(&reads));
                tokio::spawn(async move { c.read("policy", || r.gated()).await })
            })
            .collect();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        reads.gate.notify_one();
        until_started(&reads, 2).await;
        reads.gate.notify_one();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }

        // Assert: two reads in all; the ten got the second one's answer.
        assert_eq!(reads.started.load(Ordering::SeqCst), 2);
        assert_eq!(first.await.unwrap(), Ok(1));
        for caller in later {
            assert_eq!(
                caller.await.unwrap(),
                Ok(2),
                "an answer from before it asked"
            );
        }
        assert_eq!(coalescer.held(), 0, "nothing is kept once read");
    }

    #[tokio::test]
    async fn a_cancelled_caller_leaves_nothing_held() {
        let coalescer = Coalescer::<usize>::default();
        let reads = Reads::new();

        let cancelled = tokio::select! {
            biased;
            answer = coalescer.read("policy", || reads.gated()) => Some(answer),
            () = std::future::ready(()) => None,
        };

        assert_eq!(cancelled, None);
        assert_eq!(reads.started.load(Ordering::SeqCst), 1);
        assert_eq!(coalescer.held(), 0);
    }

    #[tokio::test]
    async fn a_caller_after_a_finished_read_reads_again() {
        let coalescer = Coalescer::<usize>::default();
        let reads = AtomicUsize::new(0);
        let read = || async { Ok::<_, String>(reads.fetch_add(1, Ordering::SeqCst) + 1) };

        assert_eq!(coalescer.read("policy", read).await, Ok(1));
        assert_eq!(coalescer.read("policy", read).await, Ok(2));
    }

    #[tokio::test]
    async fn a_failed_read_is_not_shared_and_other_keys_read_on_their_own() {
        // Arrange: a read of "a" that will fail, in flight.
        let coalescer = Arc::new(Coalescer::<usize>::default());
        let gate = Arc::new(Notify::new());
        let failing = tokio::spawn({
            let (c, g) = (Arc::clone(&coalescer), Arc::clone(&gate));
            async move {
                c.read("a", || async move {
                    g.notified().await;
                    Err::<usize, _>("throttled".to_string())
                })
                .await
            }
        });
        tokio::task::yield_now().await;

        // Act: another key reads meanwhile; a caller of "a" queues behind.
        let other = coalescer.read("b", || async { Ok::<_, String>(7) }).await;
        let waiting = tokio::spawn({
            let c = Arc::clone(&coalescer);
            async move { c.read("a", || async { Ok::<_, String>(3) }).await }
        });
        tokio::task::yield_now().await;
        gate.notify_one();

        // Assert
        assert_eq!(other, Ok(7));
        assert_eq!(failing.await.unwrap(), Err("throttled".to_string()));
        assert_eq!(waiting.await.unwrap(), Ok(3), "it read for itself");
    }
}
