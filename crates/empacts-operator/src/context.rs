//! Shared state of the reconcilers. Every per-app map here is pruned when its app goes
//! (`forget`), so a long-lived process holds nothing for apps that no longer exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use empacts_api::{EmpactsApp, EmpactsAppStatus, Phase, conditions};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use crate::children::{AppliedRecord, ChildStores};
use crate::hash::HashKey;
use crate::metrics::{AppSeries, Metrics};
use crate::recorder::Recorder;
use crate::server::Readiness;

/// Bounds on the work of one process (flags of `empacts run`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// A reconcile past this is abandoned (counted, retried with backoff).
    pub reconcile_timeout: Duration,
    /// Reconciles running at once, over all watched namespaces.
    pub concurrency: usize,
    /// Periodic re-check of a settled app (drift, missed events, referenced Secrets nobody
    /// labelled for watching).
    pub resync: Duration,
    /// First retry delay after an error; doubles per consecutive error of the same app.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reconcile_timeout: Duration::from_secs(60),
            concurrency: 8,
            resync: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Consecutive errors of one app, for backoff and for one Event per error transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub category: &'static str,
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Fed to /readyz and /healthz.
    pub readiness: Arc<Readiness>,
    pub settings: Settings,
    /// Key of the pod-template config hash (see `hash_key`).
    pub hash_key: HashKey,
    /// Metadata caches of the children per watched namespace ("" when watching all), set
    /// when each controller starts.
    stores: RwLock<HashMap<String, ChildStores>>,
    /// The shards this replica reconciles (None: unsharded), set when the controllers start.
    shard: RwLock<Option<crate::shard::Filter>>,
    /// What this process last applied, to skip applies that would change nothing.
    pub applied: AppliedRecord,
    /// This process's ledger writes the ledger cache does not show yet (see `ledger_cache`).
    pub ledger: crate::ledger_cache::LedgerCache,
    /// The last read copy of watched Secrets (see `secret_reads`).
    pub secret_cache: crate::secret_reads::SecretCache,
    /// Whether the Prometheus Operator's CRDs are installed, and what it knows of the apps'
    /// monitoring objects.
    pub monitoring: crate::monitoring::Monitoring,
    /// Last phase of each app, feeding the apps-by-phase gauge.
    phases: Mutex<HashMap<AppId, Phase>>,
    /// Jobs already counted in the migration metrics (by UID), per app.
    /// Per app, hashes of the finished Jobs' UIDs already counted (8 bytes each, not ~60).
    counted_jobs: Mutex<HashMap<AppId, Vec<u64>>>,
    failures: Mutex<HashMap<AppId, Failures>>,
    /// Jobs that finished before this process started are not counted again.
    started: k8s_openapi::jiff::Timestamp,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>, hash_key: HashKey) -> Self {
        Self::with_settings(client, metrics, instance, hash_key, Settings::default())
    }

    pub fn with_settings(
        client: Client,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        hash_key: HashKey,
        settings: Settings,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), "empacts-operator", instance),
            client,
            metrics,
            readiness: Arc::default(),
            settings,
            hash_key,
            stores: RwLock::default(),
            shard: RwLock::default(),
            applied: AppliedRecord::default(),
            ledger: Default::default(),
            secret_cache: Default::default(),
            monitoring: Default::default(),
            phases: Mutex::default(),
            counted_jobs: Mutex::default(),
            failures: Mutex::default(),
            started: k8s_openapi::jiff::Timestamp::now(),
        }
    }

    pub fn set_shard(&self, shard: Option<crate::shard::Filter>) {
        *self.shard.write().expect("shard lock") = shard;
    }

    /// What a reconcile of `app` may do with the shards held (None: unsharded, reconcile it).
    pub fn handoff(&self, app: &EmpactsApp) -> Option<crate::shard::Handoff> {
        self.shard.read().expect("shard lock").as_ref().map(|f| f.handoff(app))
    }

    pub fn set_stores(&self, namespace: Option<&str>, stores: ChildStores) {
        self.stores.write().expect("stores lock").insert(namespace.unwrap_or_default().to_string(), stores);
    }

    /// The caches that hold `namespace`'s children.
    pub fn stores(&self, namespace: &str) -> Option<ChildStores> {
        let stores = self.stores.read().expect("stores lock");
        stores.get(namespace).or_else(|| stores.get("")).cloned()
    }

    /// The kinds whose cache for `namespace` has not listed yet (empty: no caches registered),
    /// read under the lock, without cloning the stores.
    pub fn caches_not_listed(&self, namespace: &str) -> Vec<&'static str> {
        let stores = self.stores.read().expect("stores lock");
        stores.get(namespace).or_else(|| stores.get("")).map(ChildStores::not_listed).unwrap_or_default()
    }

    /// Publish the app's phase and status (apps-by-phase and the per-app gauges).
    pub fn set_status(&self, app: &EmpactsApp, phase: Phase, status: &EmpactsAppStatus) {
        let mut phases = self.phases.lock().expect("phase map lock");
        phases.insert(AppId::of(app), phase);
        self.publish_phases(&phases);
        drop(phases);
        let is_true = |type_: &str| status.conditions.iter().any(|c| c.type_ == type_ && c.status == conditions::TRUE);
        let series = AppSeries {
            phase: phase.as_str(),
            revision: status.current_revision.as_deref().unwrap_or_default().into(),
            ready: is_true(conditions::READY),
            stalled: is_true(conditions::STALLED),
        };
        self.metrics.apps.set(&app.namespace().unwrap_or_default(), &app.name_any(), series);
    }

    /// Count a finished migration Job once: `migrations_total` and its duration.
    pub fn count_finished_job(&self, app: &EmpactsApp, job: &Job, kind: &str) {
        let Some(status) = job.status.as_ref() else { return };
        let conditions = status.conditions.as_deref().unwrap_or_default();
        let finished = conditions.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        let Some(finished) = finished else { return };
        let result = if finished.type_ == "Complete" { "succeeded" } else { "failed" };
        let end = status.completion_time.as_ref().or(finished.last_transition_time.as_ref()).map(|t| t.0);
        let (Some(uid), Some(end)) = (job.metadata.uid.clone(), end) else { return };
        if end < self.started {
            return;
        }
        let mut counted = self.counted_jobs.lock().expect("job set lock");
        let uid = std::hash::BuildHasher::hash_one(
            &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
            &uid,
        );
        let seen = counted.entry(AppId::of(app)).or_default();
        if seen.contains(&uid) {
            return;
        }
        seen.push(uid);
        self.metrics.migrations.with_label_values(&[kind, result]).inc();
        if let Some(start) = status.start_time.as_ref().map(|t| t.0) {
            let seconds = end.duration_since(start).as_secs_f64().max(0.0);
            self.metrics.migration_duration.with_label_values(&[kind, result]).observe(seconds);
        }
    }

    /// Record an error of `app`; returns its consecutive errors so far and whether this is a
    /// transition (first error, or another kind of error than the last one).
    pub fn record_failure(&self, app: &EmpactsApp, category: &'static str) -> (u32, bool) {
        let mut failures = self.failures.lock().expect("failure map lock");
        let entry = failures.entry(AppId::of(app)).or_insert(Failures { count: 0, category });
        let transition = entry.count == 0 || entry.category != category;
        entry.count += 1;
        entry.category = category;
        (entry.count, transition)
    }

    /// `app` reconciled without error: its backoff starts over. Returns the errors it recovered from.
    pub fn record_success(&self, app: &AppId) -> Option<Failures> {
        self.failures.lock().expect("failure map lock").remove(app)
    }

    /// Next retry after `count` consecutive errors: exponential, capped, with jitter so apps
    /// that failed together (an API server outage) do not retry together.
    pub fn backoff(&self, count: u32) -> Duration {
        backoff(&self.settings, count, rand::random::<f64>())
    }

    /// Everything this process keeps about `app`, gone with it.
    pub fn forget(&self, app: &ObjectRef<EmpactsApp>) {
        let id = AppId::of_ref(app);
        let mut phases = self.phases.lock().expect("phase map lock");
        phases.remove(&id);
        self.publish_phases(&phases);
        drop(phases);
        self.counted_jobs.lock().expect("job set lock").remove(&id);
        self.failures.lock().expect("failure map lock").remove(&id);
        self.applied.forget(app.namespace.as_deref().unwrap_or_default(), &app.name);
        self.secret_cache.forget_generated(app.namespace.as_deref().unwrap_or_default(), &app.name);
        self.monitoring.forget(app.namespace.as_deref().unwrap_or_default(), &app.name);
        self.readiness.progress.forget(&id);
        self.metrics.apps.forget(app.namespace.as_deref().unwrap_or_default(), &app.name);
        self.recorder.forget(app.namespace.as_deref().unwrap_or_default(), &app.name);
    }

    /// Entries kept for apps, per map (for tests of pruning).
    pub fn tracked(&self) -> [usize; 5] {
        [
            self.phases.lock().expect("phase map lock").len(),
            self.counted_jobs.lock().expect("job set lock").len(),
            self.failures.lock().expect("failure map lock").len(),
            self.applied.apps(),
            self.readiness.progress.tracked(),
        ]
    }

    fn publish_phases(&self, phases: &HashMap<AppId, Phase>) {
        for phase in Phase::ALL {
            let n = phases.values().filter(|p| **p == phase).count();
            self.metrics.apps_by_phase.with_label_values(&[phase.as_str()]).set(n as i64);
        }
    }
}

/// `base * 2^(count-1)`, capped at `max`, then scaled into [1/2, 1] by `unit` in [0, 1)
/// ("equal jitter": never less than half the nominal delay, never more than it).
pub fn backoff(settings: &Settings, count: u32, unit: f64) -> Duration {
    let exp = count.saturating_sub(1).min(30);
    let nominal = settings.backoff_base.saturating_mul(1u32 << exp).min(settings.backoff_max);
    nominal.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A reference to an app by namespace and name only (an `ObjectRef::from` the object also
/// carries its UID and resourceVersion, which equality ignores).
pub fn app_ref(app: &EmpactsApp) -> ObjectRef<EmpactsApp> {
    ObjectRef::new(&app.name_any()).within(&app.namespace().unwrap_or_default())
}

/// The key of an app in this process's per-app maps: a hash of its namespace and name, keyed
/// per process. 8 bytes inline instead of an `ObjectRef` (96 bytes and two strings) in every
/// map, for every app. Two of 10,000 apps share a key with a chance of ~3 in 10^12; if they
/// did, they would share a backoff count and one would be missing from the apps-by-phase gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppId(u64);

/// The per-process key of [`AppId`] and [`NamespaceId`].
fn keys() -> &'static std::hash::RandomState {
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default)
}

impl AppId {
    pub fn new(namespace: &str, name: &str) -> Self {
        AppId(std::hash::BuildHasher::hash_one(keys(), (namespace, name)))
    }

    pub fn of(app: &EmpactsApp) -> Self {
        Self::new(
            app.metadata.namespace.as_deref().unwrap_or_default(),
            app.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    pub fn of_ref(app: &ObjectRef<EmpactsApp>) -> Self {
        Self::new(app.namespace.as_deref().unwrap_or_default(), &app.name)
    }
}

/// A namespace as the work queue tells namespaces apart (a keyed hash like [`AppId`]; two
/// namespaces sharing one would only share their turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NamespaceId(u64);

impl NamespaceId {
    pub fn new(namespace: &str) -> Self {
        NamespaceId(std::hash::BuildHasher::hash_one(keys(), namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_half_to_full() {
        let s = Settings::default();
        assert_eq!(backoff(&s, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&s, 2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(&s, 5, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(&s, 40, 1.0), s.backoff_max, "capped, no overflow");
        assert_eq!(backoff(&s, 5, 0.0), Duration::from_secs(8), "never under half");
        let spread: std::collections::HashSet<Duration> = (0..10).map(|i| backoff(&s, 5, i as f64 / 10.0)).collect();
        assert_eq!(spread.len(), 10, "jitter spreads retries");
    }
}
