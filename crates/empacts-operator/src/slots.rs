//! The process's reconcile slots (`--concurrency`), handed out fairly between namespaces:
//! when reconciles wait, the next free slot goes to the namespace that was served least
//! recently (round robin), and within a namespace to the one that waited longest. A noisy
//! namespace (a thousand apps failing and retrying) then delays another namespace's
//! reconcile by at most one reconcile per slot, instead of by its whole queue.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub struct FairSlots {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: usize,
    /// Waiters per namespace, oldest first.
    waiting: BTreeMap<String, VecDeque<oneshot::Sender<Slot>>>,
    /// Namespaces with waiters, the next one to serve first.
    turn: VecDeque<String>,
}

/// One slot; dropping it frees it for the next waiter.
pub struct Slot {
    /// None once handed back without a release (see `release`).
    slots: Option<Arc<FairSlots>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

impl FairSlots {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(FairSlots { state: Mutex::new(State { free: slots.max(1), ..Default::default() }) })
    }

    /// Wait for a slot for a reconcile of an app in `namespace`.
    pub async fn acquire(self: &Arc<Self>, namespace: &str) -> Slot {
        let rx = {
            let mut state = self.state.lock().expect("slot lock");
            if state.free > 0 && state.turn.is_empty() {
                state.free -= 1;
                return Slot { slots: Some(self.clone()) };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(namespace.to_string()).or_default();
            if queue.is_empty() {
                state.turn.push_back(namespace.to_string());
            }
            state.waiting.get_mut(namespace).expect("just inserted").push_back(tx);
            rx
        };
        // A slot sent to a waiter that is gone meanwhile is dropped with the channel: freed.
        rx.await.expect("a waiter's sender is only dropped after a slot was sent or the waiter left")
    }

    /// Reconciles waiting for a slot, per namespace (for tests and metrics).
    pub fn waiting(&self) -> BTreeMap<String, usize> {
        let state = self.state.lock().expect("slot lock");
        state.waiting.iter().map(|(ns, q)| (ns.clone(), q.len())).collect()
    }

    fn release(self: &Arc<Self>) {
        let mut state = self.state.lock().expect("slot lock");
        while let Some(ns) = state.turn.pop_front() {
            let queue = state.waiting.get_mut(&ns).expect("a namespace in turn has waiters");
            let next = queue.pop_front().expect("a namespace in turn has waiters");
            if queue.is_empty() {
                state.waiting.remove(&ns);
            } else {
                state.turn.push_back(ns);
            }
            match next.send(Slot { slots: Some(self.clone()) }) {
                Ok(()) => return,
                // The waiter left (its reconcile was cancelled): the slot is still ours to give
                // to the next one; this handle must not release it (nor take the lock again).
                Err(mut slot) => drop(slot.slots.take()),
            }
        }
        state.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::task::JoinHandle;

    /// Starts a reconcile-like waiter: it records its name when it gets a slot, works a moment
    /// and frees the slot.
    fn waiter(slots: &Arc<FairSlots>, ns: &str, name: &str, served: &Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
        let (slots, ns, name, served) = (slots.clone(), ns.to_string(), name.to_string(), served.clone());
        tokio::spawn(async move {
            let _slot = slots.acquire(&ns).await;
            served.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_millis(2)).await;
        })
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_quiet_namespace_is_served_next_however_long_a_noisy_ones_queue() {
        let slots = FairSlots::new(1);
        let served = Arc::new(Mutex::new(Vec::new()));
        let held = slots.acquire("noisy").await;
        let mut tasks = Vec::new();
        for i in 0..5 {
            tasks.push(waiter(&slots, "noisy", &format!("noisy-{i}"), &served));
            settle().await;
        }
        tasks.push(waiter(&slots, "quiet", "quiet-0", &served));
        settle().await;
        assert_eq!(slots.waiting(), BTreeMap::from([("noisy".into(), 5), ("quiet".into(), 1)]));
        drop(held);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("every waiter is served").unwrap();
        }
        let order = served.lock().unwrap().clone();
        assert_eq!(order[..2], ["noisy-0".to_string(), "quiet-0".to_string()], "served in turn: {order:?}");
        assert_eq!(order[2..], ["noisy-1", "noisy-2", "noisy-3", "noisy-4"].map(String::from), "FIFO within one");
        assert!(slots.waiting().is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_left_loses_no_slot() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let gone = tokio::spawn({
            let slots = slots.clone();
            async move {
                let _ = slots.acquire("a").await;
            }
        });
        settle().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(1), slots.acquire("b")).await;
        assert!(again.is_ok(), "the slot came back after its waiter left");
        drop(again);
        let both = tokio::time::timeout(Duration::from_secs(1), slots.acquire("b")).await;
        assert!(both.is_ok(), "and again after it was dropped");
    }

    #[tokio::test]
    async fn up_to_n_at_once() {
        let slots = FairSlots::new(2);
        let a = slots.acquire("x").await;
        let _b = slots.acquire("x").await;
        assert!(tokio::time::timeout(Duration::from_millis(50), slots.acquire("y")).await.is_err(), "a third waits");
        drop(a);
        assert!(tokio::time::timeout(Duration::from_secs(1), slots.acquire("y")).await.is_ok());
    }
}
