//! Prometheus metrics of the operator, registered once in their own registry (prefix
//! `empacts_`), plus the standard unprefixed `process_*` metrics in a second one.

mod apps;
mod kube_requests;
mod process;

use std::time::Instant;

use empacts_api::Phase;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub use self::apps::{AppGauges, AppSeries};
pub use self::kube_requests::{KubeRequestLayer, KubeRequests, verb};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `process_*` (CPU, memory, file descriptors, start time) without our prefix.
    pub process_registry: Registry,
    /// Every reconcile that ran to an outcome; errors are `reconcile_errors`.
    pub reconciles: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub reconcile_deadline_exceeded: IntCounter,
    pub apps_by_phase: IntGaugeVec,
    pub migrations: IntCounterVec,
    pub migration_duration: HistogramVec,
    pub rollbacks: IntCounterVec,
    pub secret_rotations: IntCounter,
    pub secrets_generated: IntCounter,
    pub watch_restarts: IntCounter,
    pub child_applies: IntCounterVec,
    pub analysis_measurements: IntCounterVec,
    pub leader: IntGauge,
    /// Shards whose Lease this replica holds (`--shards` > 1; else 1 while it leads).
    pub shards_held: IntGauge,
    pub build_info: IntGaugeVec,
    pub reconciles_in_flight: IntGauge,
    pub reconciles_queued: IntGauge,
    /// `app_info`, `app_ready`, `app_stalled` of each app.
    pub apps: AppGauges,
    /// Requests of the Kubernetes client (see `client::build`).
    pub kube_requests: KubeRequests,
    /// Every metric name exported, sorted (series appear once they have a value).
    pub names: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("empacts".into()), None).expect("static prefix is valid");
        let reconciles =
            IntCounter::new("reconcile_total", "Reconciles run (failed ones: reconcile_errors_total)").unwrap();
        let reconcile_errors =
            IntCounterVec::new(Opts::new("reconcile_errors_total", "Failed reconciles by reason"), &["reason"])
                .unwrap();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )
        .unwrap();
        let reconcile_deadline_exceeded = IntCounter::new(
            "reconcile_deadline_exceeded_total",
            "Reconciles abandoned at the reconcile deadline (retried with backoff)",
        )
        .unwrap();
        let apps_by_phase = IntGaugeVec::new(Opts::new("apps", "EmpactsApps by phase"), &["phase"]).unwrap();
        let migrations =
            IntCounterVec::new(Opts::new("migrations_total", "Finished migration Jobs by result"), &["kind", "result"])
                .unwrap();
        let migration_duration = HistogramVec::new(
            HistogramOpts::new("migration_duration_seconds", "Duration of finished migration Jobs")
                .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]),
            &["kind", "result"],
        )
        .unwrap();
        let rollbacks =
            IntCounterVec::new(Opts::new("rollbacks_total", "Automatic rollbacks started, by reason"), &["reason"])
                .unwrap();
        let secret_rotations = IntCounter::new("secret_rotations_total", "Generated secrets rotated").unwrap();
        let secrets_generated = IntCounter::new("secrets_generated_total", "Generated secrets created").unwrap();
        let watch_restarts =
            IntCounter::new("watch_restarts_total", "Watch streams that failed and restarted").unwrap();
        let child_applies = IntCounterVec::new(
            Opts::new("child_applies_total", "Server-side applies of children: sent, or skipped as already current"),
            &["kind", "result"],
        )
        .unwrap();
        let analysis_measurements = IntCounterVec::new(
            Opts::new("analysis_measurements_total", "Metric measurements of canary and rollout analysis, by verdict"),
            &["verdict"],
        )
        .unwrap();
        let leader = IntGauge::new("leader", "1 while this replica holds the leader lease").unwrap();
        let shards_held = IntGauge::new("shards_held", "Shards whose Lease this replica holds").unwrap();
        let build_info = IntGaugeVec::new(Opts::new("build_info", "Operator build"), &["version"]).unwrap();
        let reconciles_in_flight = IntGauge::new("reconciles_in_flight", "Reconciles running now").unwrap();
        let reconciles_queued =
            IntGauge::new("reconciles_queued", "Apps due for a reconcile, waiting for a reconcile slot").unwrap();
        let apps = AppGauges::new();
        let kube_requests = KubeRequests::new();
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(reconcile_deadline_exceeded.clone()),
            Box::new(apps_by_phase.clone()),
            Box::new(analysis_measurements.clone()),
            Box::new(migrations.clone()),
            Box::new(migration_duration.clone()),
            Box::new(rollbacks.clone()),
            Box::new(secret_rotations.clone()),
            Box::new(secrets_generated.clone()),
            Box::new(watch_restarts.clone()),
            Box::new(child_applies.clone()),
            Box::new(leader.clone()),
            Box::new(shards_held.clone()),
            Box::new(build_info.clone()),
            Box::new(reconciles_in_flight.clone()),
            Box::new(reconciles_queued.clone()),
        ]
        .into_iter()
        .chain(apps.collectors())
        .chain(kube_requests.collectors())
        .collect();
        let process = process::ProcessMetrics::for_self();
        let mut names: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| format!("empacts_{}", d.fq_name))
            .chain(prometheus::core::Collector::desc(&process).iter().map(|d| d.fq_name.clone()))
            .collect();
        names.sort();
        for c in collectors {
            registry.register(c).expect("each metric is registered once");
        }
        let process_registry = Registry::new();
        process_registry.register(Box::new(process)).expect("the process collector is registered once");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for phase in Phase::ALL {
            apps_by_phase.with_label_values(&[phase.as_str()]).set(0);
        }
        Metrics {
            registry,
            process_registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            reconcile_deadline_exceeded,
            apps_by_phase,
            migrations,
            migration_duration,
            rollbacks,
            secret_rotations,
            secrets_generated,
            watch_restarts,
            child_applies,
            analysis_measurements,
            leader,
            shards_held,
            build_info,
            reconciles_in_flight,
            reconciles_queued,
            apps,
            kube_requests,
            names,
        }
    }

    /// Counts a running reconcile until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.reconciles_in_flight.inc();
        InFlight(self.reconciles_in_flight.clone())
    }

    /// Times a reconcile; the duration is recorded when the guard drops, on every exit path.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, start: Instant::now() }
    }

    /// Text exposition for /metrics.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let mut families = self.registry.gather();
        families.extend(self.process_registry.gather());
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        buf
    }
}

pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.with_label_values(&[] as &[&str]).observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metric names in the first column of README's metrics table.
    fn readme_names() -> Vec<String> {
        let readme = include_str!("../../../README.md");
        let table = readme.split("| metric | type | labels | meaning |").nth(1).expect("README has the metrics table");
        let mut names: Vec<String> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .flat_map(|l| l.split('|').nth(1).unwrap_or_default().split('`').skip(1).step_by(2).map(str::to_string))
            .collect::<Vec<_>>();
        names.sort();
        names
    }

    #[test]
    fn the_readme_table_lists_exactly_the_exported_metrics() {
        let metrics = Metrics::new();
        assert_eq!(readme_names(), metrics.names, "README's metrics table and the registry differ");
        // Process metrics are exported without the prefix, and every registered name renders.
        metrics.apps.set("ns", "a", AppSeries { phase: "Ready", revision: "r".into(), ready: true, stalled: false });
        metrics.kube_requests.total.with_label_values(&["get", "200"]).inc();
        metrics.kube_requests.duration.with_label_values(&["get"]).observe(0.1);
        metrics.migrations.with_label_values(&["migrate", "succeeded"]).inc();
        metrics.migration_duration.with_label_values(&["migrate", "succeeded"]).observe(1.0);
        metrics.reconcile_errors.with_label_values(&["Api"]).inc();
        metrics.reconcile_duration.with_label_values(&[] as &[&str]).observe(0.1);
        metrics.rollbacks.with_label_values(&["r"]).inc();
        metrics.child_applies.with_label_values(&["Service", "applied"]).inc();
        metrics.analysis_measurements.with_label_values(&["Passed"]).inc();
        let out = metrics.render();
        for name in &metrics.names {
            assert!(out.contains(&format!("# TYPE {name} ")), "{name} is not rendered:\n{out}");
        }
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let metrics = Metrics::new();
        let a = metrics.in_flight();
        let b = metrics.in_flight();
        assert_eq!(metrics.reconciles_in_flight.get(), 2);
        drop(a);
        assert_eq!(metrics.reconciles_in_flight.get(), 1);
        drop(b);
        assert_eq!(metrics.reconciles_in_flight.get(), 0);
    }
}
