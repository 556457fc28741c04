//! What /healthz and /readyz report, kept apart from the HTTP server so the rules are
//! unit-tested: liveness is "the controller makes progress", readiness is "the caches are
//! synced and their watches are working now".

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::watcher;

use crate::context::AppId;

/// Liveness: apps waiting for a reconcile versus reconciles that finish.
///
/// An app waits from the moment a reconcile of it starts, or from the moment its requeue is
/// due, until a reconcile of it runs to the end (with or without an error: the API server
/// answered). A reconcile abandoned at its deadline does not end the wait. The controller is
/// stalled when some app has waited longer than the stall timeout *and* no reconcile of any
/// app finished in that time: one app that always times out does not make the process
/// unhealthy (restarting would not help the others), a controller that finishes nothing does.
#[derive(Debug)]
pub struct Progress {
    state: Mutex<ProgressState>,
}

#[derive(Debug)]
struct ProgressState {
    last_finished: Instant,
    waiting_since: HashMap<AppId, Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { state: Mutex::new(ProgressState { last_finished: Instant::now(), waiting_since: HashMap::new() }) }
    }
}

impl Progress {
    fn state(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().expect("progress lock")
    }

    /// A reconcile of `app` starts now.
    pub fn started(&self, app: AppId, now: Instant) {
        let mut s = self.state();
        let since = s.waiting_since.entry(app).or_insert(now);
        *since = (*since).min(now);
    }

    /// A reconcile of `app` ran to its end; the next one is due in `next`.
    pub fn finished(&self, app: AppId, now: Instant, next: Option<Duration>) {
        let mut s = self.state();
        s.last_finished = now;
        match next {
            Some(next) => drop(s.waiting_since.insert(app, now + next)),
            None => drop(s.waiting_since.remove(&app)),
        }
    }

    /// The controller starts (or this replica became leader): a fresh start is progress.
    pub fn reset(&self, now: Instant) {
        let mut s = self.state();
        s.last_finished = now;
        s.waiting_since.clear();
    }

    /// A deleted app waits for nothing.
    pub fn forget(&self, app: &AppId) {
        self.state().waiting_since.remove(app);
    }

    /// How long the controller has been stalled, when it is.
    pub fn stalled(&self, now: Instant, timeout: Duration) -> Option<Duration> {
        let s = self.state();
        let idle = now.saturating_duration_since(s.last_finished);
        let oldest = s.waiting_since.values().min().copied()?;
        let waited = now.saturating_duration_since(oldest);
        (idle > timeout && waited > timeout).then_some(idle.min(waited))
    }

    pub fn tracked(&self) -> usize {
        self.state().waiting_since.len()
    }
}

/// Readiness of the watches behind the caches: each must have listed once (synced) and not be
/// failing now. A watch that errors is failing until its next event arrives.
#[derive(Debug)]
pub struct Watches {
    state: Mutex<BTreeMap<String, WatchState>>,
    /// Counts the lists done (any watch's): a reconcile waiting for its caches to list wakes on it.
    lists_done: tokio::sync::watch::Sender<u64>,
}

impl Default for Watches {
    fn default() -> Self {
        Watches { state: Mutex::default(), lists_done: tokio::sync::watch::Sender::new(0) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WatchState {
    pub synced: bool,
    pub failing: bool,
}

impl Watches {
    /// Register a watch before it starts, so an unsynced watch counts from the beginning.
    pub fn register(&self, name: &str) {
        self.state.lock().expect("watch health lock").entry(name.to_string()).or_default();
    }

    /// Feed one event of watch `name`.
    pub fn observe<K>(&self, name: &str, event: &Result<watcher::Event<K>, watcher::Error>) {
        let mut state = self.state.lock().expect("watch health lock");
        let w = state.entry(name.to_string()).or_default();
        match event {
            Err(_) => w.failing = true,
            Ok(watcher::Event::InitDone) => {
                *w = WatchState { synced: true, failing: false };
                self.lists_done.send_modify(|n| *n += 1);
            }
            Ok(_) => w.failing = false,
        }
    }

    /// Changes each time a watch has listed (subscribe before checking the caches).
    pub fn lists_done(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lists_done.subscribe()
    }

    /// Watches not (or no longer) ready, by name; empty when all are ready.
    pub fn not_ready(&self) -> Vec<String> {
        let state = self.state.lock().expect("watch health lock");
        state.iter().filter(|(_, w)| !w.synced || w.failing).map(|(n, _)| n.clone()).collect()
    }

    pub fn any(&self) -> bool {
        !self.state.lock().expect("watch health lock").is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppId {
        AppId::new("ns", name)
    }

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn an_idle_controller_is_not_stalled_but_one_that_finishes_nothing_is() {
        let p = Progress::default();
        let t0 = Instant::now();
        p.reset(t0);
        assert_eq!(p.stalled(t0 + 10 * T, T), None, "nothing waits: idle, not stalled");
        p.finished(app("a"), t0, Some(Duration::from_secs(300)));
        assert_eq!(p.stalled(t0 + Duration::from_secs(299), T), None, "requeue not due yet");
        assert!(p.stalled(t0 + Duration::from_secs(300) + T * 2, T).is_some(), "due long ago, nothing ran");
        // A reconcile that starts and is abandoned (never finishes) keeps the app waiting.
        let p = Progress::default();
        p.reset(t0);
        p.started(app("a"), t0);
        assert_eq!(p.stalled(t0 + T / 2, T), None);
        p.started(app("a"), t0 + T / 2);
        assert_eq!(p.stalled(t0 + T * 2, T), Some(T * 2), "waiting since the first start");
        p.finished(app("a"), t0 + T * 2, None);
        assert_eq!(p.stalled(t0 + T * 3, T), None, "finished: nothing waits");
    }

    #[test]
    fn one_app_that_always_times_out_does_not_stall_the_others() {
        let p = Progress::default();
        let t0 = Instant::now();
        p.reset(t0);
        p.started(app("slow"), t0);
        for i in 1..10u32 {
            p.finished(app("b"), t0 + T * i / 2, Some(T / 4));
            p.started(app("b"), t0 + T * i / 2 + T / 4);
        }
        assert_eq!(p.stalled(t0 + T * 5, T), None, "b finishes: the controller makes progress");
        p.forget(&app("slow"));
        assert_eq!(p.tracked(), 1);
    }

    #[test]
    fn a_watch_is_ready_once_synced_and_while_not_failing() {
        let w = Watches::default();
        w.register("apps");
        assert_eq!(w.not_ready(), ["apps"]);
        w.observe::<()>("apps", &Ok(watcher::Event::Init));
        assert_eq!(w.not_ready(), ["apps"], "listing, not synced");
        w.observe::<()>("apps", &Ok(watcher::Event::InitDone));
        assert!(w.not_ready().is_empty());
        w.observe::<()>("apps", &Err(watcher::Error::NoResourceVersion));
        assert_eq!(w.not_ready(), ["apps"], "failing");
        w.observe::<()>("apps", &Ok(watcher::Event::Apply(())));
        assert!(w.not_ready().is_empty(), "recovered");
    }
}
