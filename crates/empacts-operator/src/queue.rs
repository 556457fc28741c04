//! The reconcile queue: which app's reconcile runs next, when, and how many at once.
//!
//! kube-runtime's Controller kept, for every app of the scope, the object and a reference with
//! two strings in its store, an entry in its scheduler, and, for every app due at the same
//! time, a future and a tracing span in its runner, in tables sized by the most apps ever due
//! at once and never shrunk (~2.7 KB per app in a heap profile of 400 apps); its runner also
//! polled every pending future at each wake, quadratic after a restart of 10,000 apps. This
//! queue keeps, per app, the stored app, its namespace's key and its state (~100 bytes), and
//! no reconcile future exists before the app's turn.
//!
//! The rules, pure and tested with explicit times:
//! - one reconcile of an app at a time: a trigger while it runs makes it run again after it,
//!   at the earliest time asked;
//! - a trigger joins a pending one and the earliest due time wins (a stream of triggers can
//!   never postpone a reconcile, as a debounce that restarts its timer would);
//! - at most `limit` run at once; a free slot goes to the namespace served least recently and,
//!   within it, to the app that became due first. A namespace with a thousand failing apps
//!   delays another namespace's reconcile by at most one reconcile per slot.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::context::{AppId, NamespaceId};

pub struct WorkQueue<T> {
    entries: HashMap<AppId, Entry<T>>,
    /// Apps waiting for their due time.
    timers: BTreeSet<(Instant, AppId)>,
    /// Apps due now, per namespace, in the order they became due.
    ready: HashMap<NamespaceId, VecDeque<AppId>>,
    /// Namespaces with apps due now, the next one to serve first.
    turn: VecDeque<NamespaceId>,
    running: usize,
    limit: usize,
}

struct Entry<T> {
    /// None once the app left the scope while its reconcile ran: the entry goes when it ends
    /// (until then a returning app must not start a second reconcile beside it).
    item: Option<T>,
    namespace: NamespaceId,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing due: waits for a trigger.
    Idle,
    /// Due at this time (in `timers`).
    Due(Instant),
    /// Due now, waiting for a slot (in `ready`).
    Ready,
    /// Its reconcile runs; `again`: run once more after it, not before this time.
    Running { again: Option<Instant> },
}

impl<T: Clone> WorkQueue<T> {
    pub fn new(limit: usize) -> Self {
        WorkQueue {
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            ready: HashMap::new(),
            turn: VecDeque::new(),
            running: 0,
            limit: limit.max(1),
        }
    }

    /// The app is in the scope, as `item` (its latest version); its schedule is kept.
    pub fn upsert(&mut self, app: AppId, namespace: NamespaceId, item: T) {
        self.entries.entry(app).and_modify(|e| e.item = Some(item.clone())).or_insert(Entry {
            item: Some(item),
            namespace,
            state: State::Idle,
        });
    }

    /// The app left the scope. A reconcile of it that runs finishes; nothing else of it runs.
    pub fn remove(&mut self, app: AppId) {
        let Some(entry) = self.entries.get_mut(&app) else { return };
        match entry.state {
            State::Running { .. } => {
                entry.item = None;
                entry.state = State::Running { again: None };
                return;
            }
            State::Due(at) => drop(self.timers.remove(&(at, app))),
            State::Ready => {
                let namespace = entry.namespace;
                let line = self.ready.get_mut(&namespace).expect("a ready app is in its namespace's line");
                line.retain(|a| *a != app);
                if line.is_empty() {
                    self.ready.remove(&namespace);
                    self.turn.retain(|n| *n != namespace);
                }
            }
            State::Idle => {}
        }
        self.entries.remove(&app);
    }

    /// Reconcile `app` at `at`, or sooner if it is due sooner. False: no such app here.
    pub fn trigger(&mut self, app: AppId, at: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(&app) else { return false };
        if entry.item.is_none() {
            return false;
        }
        match &mut entry.state {
            State::Idle => {
                entry.state = State::Due(at);
                self.timers.insert((at, app));
            }
            State::Due(due) if at < *due => {
                self.timers.remove(&(*due, app));
                *due = at;
                self.timers.insert((at, app));
            }
            State::Due(_) | State::Ready => {}
            State::Running { again } => *again = Some(again.map_or(at, |t| t.min(at))),
        }
        true
    }

    /// Reconcile every app at `at` (or sooner).
    pub fn trigger_all(&mut self, at: Instant) {
        let apps: Vec<AppId> = self.entries.keys().copied().collect();
        for app in apps {
            self.trigger(app, at);
        }
    }

    /// The next reconcile to start at `now`, if one is due and a slot is free: the app and its
    /// item. It holds the slot until [`done`](Self::done).
    pub fn next(&mut self, now: Instant) -> Option<(AppId, T)> {
        self.next_where(now, |_| true)
    }

    /// [`next`](Self::next), passing over the namespaces whose next app `may_start` refuses
    /// (their apps stay due, and the namespace waits for its next turn).
    pub fn next_where(&mut self, now: Instant, may_start: impl Fn(&T) -> bool) -> Option<(AppId, T)> {
        self.promote(now);
        if self.running >= self.limit {
            return None;
        }
        for _ in 0..self.turn.len() {
            let namespace = self.turn.pop_front().expect("within the turn's length");
            let line = self.ready.get_mut(&namespace).expect("a namespace in turn has a line");
            let app = *line.front().expect("a line in turn is not empty");
            let entry = self.entries.get_mut(&app).expect("a ready app has an entry");
            if !may_start(entry.item.as_ref().expect("a ready app is in the scope")) {
                self.turn.push_back(namespace);
                continue;
            }
            line.pop_front();
            if line.is_empty() {
                self.ready.remove(&namespace);
            } else {
                self.turn.push_back(namespace);
            }
            entry.state = State::Running { again: None };
            self.running += 1;
            return Some((app, entry.item.clone().expect("a ready app is in the scope")));
        }
        None
    }

    /// The reconcile of `app` that [`next`](Self::next) started ended at `now`; `after`: when
    /// it asked to run again (None: on a trigger only). Its slot is free. False: the app left
    /// the scope while it ran.
    pub fn done(&mut self, app: AppId, now: Instant, after: Option<Duration>) -> bool {
        self.running = self.running.checked_sub(1).expect("done follows next");
        let Some(entry) = self.entries.get_mut(&app) else { return false };
        let State::Running { again } = entry.state else { return true };
        if entry.item.is_none() {
            self.entries.remove(&app);
            return false;
        }
        let asked = after.map(|d| now + d);
        let due = match (again, asked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match due {
            Some(at) => {
                entry.state = State::Due(at);
                self.timers.insert((at, app));
            }
            None => entry.state = State::Idle,
        }
        true
    }

    /// When the next app becomes due (None: none waits for a time).
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Apps due and waiting for a slot.
    pub fn ready(&self) -> usize {
        self.ready.values().map(VecDeque::len).sum()
    }

    /// Reconciles running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// The apps in the scope and their items.
    pub fn items(&self) -> impl Iterator<Item = (AppId, &T)> {
        self.entries.iter().filter_map(|(app, e)| Some((*app, e.item.as_ref()?)))
    }

    /// Apps in the scope.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| e.item.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Apps due by `now` join their namespace's line, in due order.
    fn promote(&mut self, now: Instant) {
        while let Some(&(at, app)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let entry = self.entries.get_mut(&app).expect("a timer's app has an entry");
            entry.state = State::Ready;
            let line = self.ready.entry(entry.namespace).or_default();
            if line.is_empty() {
                self.turn.push_back(entry.namespace);
            }
            line.push_back(app);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn app(ns: &str, name: &str) -> AppId {
        AppId::new(ns, name)
    }

    fn queue(limit: usize, apps: &[(&str, &str)]) -> WorkQueue<String> {
        let mut q = WorkQueue::new(limit);
        for (ns, name) in apps {
            q.upsert(app(ns, name), NamespaceId::new(ns), format!("{ns}/{name}"));
        }
        q
    }

    /// Starts every reconcile that may start at `now`, by item.
    fn start(q: &mut WorkQueue<String>, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.next(now).map(|(_, item)| item)).collect()
    }

    #[test]
    fn a_trigger_runs_the_app_at_its_time_not_before() {
        let t0 = Instant::now();
        let mut q = queue(4, &[("a", "x")]);
        assert!(q.trigger(app("a", "x"), t0 + 500 * MS));
        assert!(!q.trigger(app("a", "unknown"), t0), "an app not in the scope is not queued");
        assert!(start(&mut q, t0 + 499 * MS).is_empty());
        assert_eq!(q.next_due(), Some(t0 + 500 * MS));
        assert_eq!(start(&mut q, t0 + 500 * MS), ["a/x"]);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn triggers_join_and_the_earliest_wins() {
        let t0 = Instant::now();
        let mut q = queue(4, &[("a", "x")]);
        q.trigger(app("a", "x"), t0 + 500 * MS);
        q.trigger(app("a", "x"), t0 + 300 * MS);
        q.trigger(app("a", "x"), t0 + 900 * MS);
        assert_eq!(q.next_due(), Some(t0 + 300 * MS));
        assert_eq!(start(&mut q, t0 + 300 * MS), ["a/x"], "once, at the earliest");
        q.done(app("a", "x"), t0 + 310 * MS, None);
        assert!(start(&mut q, t0 + 10_000 * MS).is_empty(), "the later triggers ran with it");
    }

    #[test]
    fn an_app_never_runs_twice_at_once_and_a_trigger_while_it_runs_runs_it_after() {
        let t0 = Instant::now();
        let mut q = queue(4, &[("a", "x")]);
        q.trigger(app("a", "x"), t0);
        assert_eq!(start(&mut q, t0), ["a/x"]);
        q.trigger(app("a", "x"), t0 + 10 * MS);
        assert!(start(&mut q, t0 + 20 * MS).is_empty(), "not beside the running one");
        q.done(app("a", "x"), t0 + 30 * MS, Some(Duration::from_secs(300)));
        assert_eq!(q.next_due(), Some(t0 + 10 * MS), "the trigger is due before the requeue");
        assert_eq!(start(&mut q, t0 + 30 * MS), ["a/x"]);
        q.done(app("a", "x"), t0 + 40 * MS, Some(Duration::from_secs(300)));
        assert_eq!(q.next_due(), Some(t0 + 40 * MS + Duration::from_secs(300)), "then the requeue");
    }

    #[test]
    fn at_most_limit_run_and_a_done_frees_a_slot() {
        let t0 = Instant::now();
        let mut q = queue(2, &[("a", "1"), ("a", "2"), ("a", "3")]);
        q.trigger_all(t0);
        let started: Vec<(AppId, String)> = std::iter::from_fn(|| q.next(t0)).collect();
        assert_eq!(started.len(), 2, "two slots");
        assert_eq!((q.running(), q.ready()), (2, 1));
        q.done(started[0].0, t0, None);
        let third = start(&mut q, t0);
        assert_eq!(third.len(), 1, "the freed slot goes to the third");
        assert!(!started.iter().any(|(_, item)| *item == third[0]));
        assert_eq!((q.running(), q.ready()), (2, 0));
    }

    #[test]
    fn a_quiet_namespace_is_served_next_however_long_a_noisy_ones_line() {
        let t0 = Instant::now();
        let noisy: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
        let mut apps: Vec<(&str, &str)> = noisy.iter().map(|n| ("noisy", n.as_str())).collect();
        apps.push(("quiet", "q"));
        let mut q = queue(1, &apps);
        for (i, n) in noisy.iter().enumerate() {
            q.trigger(app("noisy", n), t0 + i as u32 * MS);
        }
        q.trigger(app("quiet", "q"), t0 + 2000 * MS);
        let now = t0 + 3000 * MS;
        let mut order = Vec::new();
        for _ in 0..4 {
            let (id, item) = q.next(now).expect("something is due");
            order.push(item);
            assert!(q.done(id, now, None));
        }
        assert_eq!(order, ["noisy/n0000", "quiet/q", "noisy/n0001", "noisy/n0002"], "in turn; due order within one");
    }

    #[test]
    fn a_namespace_held_back_keeps_no_slot_and_its_apps_stay_due() {
        let t0 = Instant::now();
        let apps: Vec<(&str, &str)> = vec![("held", "1"), ("held", "2"), ("held", "3"), ("open", "x"), ("open", "y")];
        let mut q = queue(2, &apps);
        q.trigger_all(t0);
        let open = |item: &String| item.starts_with("open/");
        let first: Vec<(AppId, String)> = std::iter::from_fn(|| q.next_where(t0, open)).collect();
        let mut names: Vec<&str> = first.iter().map(|(_, i)| i.as_str()).collect();
        names.sort();
        assert_eq!(names, ["open/x", "open/y"], "both slots to the namespace that may start");
        assert_eq!(q.ready(), 3, "the held namespace's apps stay due");
        for (id, _) in first {
            assert!(q.done(id, t0, None));
        }
        assert!(q.next_where(t0, open).is_none(), "nothing else may start");
        assert_eq!(start(&mut q, t0).len(), 2, "once they may, they run");
    }

    #[test]
    fn a_removed_app_runs_no_more_and_one_removed_while_running_is_not_started_beside_itself() {
        let t0 = Instant::now();
        let mut q = queue(4, &[("a", "x"), ("a", "y"), ("a", "z")]);
        q.trigger(app("a", "y"), t0 + 100 * MS);
        q.trigger(app("a", "z"), t0);
        q.remove(app("a", "y"));
        assert!(q.next(t0).is_some_and(|(_, item)| item == "a/z"));
        q.trigger(app("a", "x"), t0);
        q.promote(t0);
        q.remove(app("a", "x"));
        assert!(start(&mut q, t0 + 1000 * MS).is_empty(), "removed while due, and while ready");
        assert_eq!((q.ready(), q.next_due(), q.turn.len()), (0, None, 0));

        // z runs; it leaves the scope and comes back (a shard handoff) before its reconcile ends.
        q.remove(app("a", "z"));
        assert!(!q.trigger(app("a", "z"), t0), "gone");
        q.upsert(app("a", "z"), NamespaceId::new("a"), "a/z v2".into());
        q.trigger(app("a", "z"), t0);
        assert!(start(&mut q, t0).is_empty(), "not beside the reconcile still running");
        assert!(q.done(app("a", "z"), t0 + 10 * MS, None), "back in the scope");
        assert_eq!(start(&mut q, t0 + 10 * MS), ["a/z v2"], "after it, its latest version");
        q.remove(app("a", "z"));
        assert!(!q.done(app("a", "z"), t0 + 20 * MS, Some(Duration::ZERO)), "it left while it ran");
        assert_eq!((q.len(), q.entries.len(), q.running()), (0, 0, 0), "gone once its reconcile ended");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Trigger(u8, u16),
        Start,
        Done(u8, Option<u16>),
        Remove(u8),
        Upsert(u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..8u8, 0..1000u16).prop_map(|(a, d)| Op::Trigger(a, d)),
            Just(Op::Start),
            (0..8u8, proptest::option::of(0..1000u16)).prop_map(|(a, d)| Op::Done(a, d)),
            (0..8u8).prop_map(Op::Remove),
            (0..8u8).prop_map(Op::Upsert),
            (0..1000u16).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Whatever happens: never more than `limit` running, never one app twice at once, an
        /// app out of the scope never starts, and every app due gets its turn once time passes.
        #[test]
        fn the_rules_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..200), limit in 1..4usize) {
            let t0 = Instant::now();
            let mut now = t0;
            let name = |i: u8| (format!("ns{}", i % 3), format!("app{i}"));
            let id = |i: u8| { let (ns, n) = name(i); app(&ns, &n) };
            let mut q: WorkQueue<u8> = WorkQueue::new(limit);
            let mut running = std::collections::HashSet::new();
            let mut in_scope = std::collections::HashSet::new();
            for op in ops {
                match op {
                    Op::Upsert(i) => {
                        q.upsert(id(i), NamespaceId::new(&name(i).0), i);
                        in_scope.insert(i);
                    }
                    Op::Remove(i) => {
                        q.remove(id(i));
                        in_scope.remove(&i);
                    }
                    Op::Trigger(i, d) => {
                        prop_assert_eq!(q.trigger(id(i), now + u32::from(d) * MS), in_scope.contains(&i));
                    }
                    Op::Tick(d) => now += u32::from(d) * MS,
                    Op::Start => {
                        while let Some((_, i)) = q.next(now) {
                            prop_assert!(in_scope.contains(&i), "app {} out of the scope started", i);
                            prop_assert!(running.insert(i), "app {} started twice at once", i);
                            prop_assert!(running.len() <= limit);
                        }
                    }
                    Op::Done(i, d) => {
                        if running.remove(&i) {
                            let after = d.map(|d| u32::from(d) * MS);
                            prop_assert_eq!(q.done(id(i), now, after), in_scope.contains(&i));
                        }
                    }
                }
                prop_assert_eq!(q.running(), running.len());
            }
            // Everything ends; every app with something due runs, then nothing is due.
            for i in running.drain() {
                prop_assert_eq!(q.done(id(i), now, None), in_scope.contains(&i));
            }
            let later = now + Duration::from_secs(10);
            let mut ran = std::collections::HashSet::new();
            while let Some((app_id, i)) = q.next(later) {
                prop_assert!(ran.insert(i), "each due app once");
                prop_assert!(q.done(app_id, later, None));
            }
            prop_assert_eq!(q.next_due(), None);
            prop_assert_eq!(q.ready(), 0);
            prop_assert_eq!(q.len(), in_scope.len());
        }
    }
}
