//! Prometheus metrics of the operator, registered once in their own registry.

use std::time::Instant;

use empacts_api::Phase;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
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
    pub build_info: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("empacts".into()), None).expect("static prefix is valid");
        let reconciles = IntCounterVec::new(Opts::new("reconcile_total", "Reconciles run"), &["result"]).unwrap();
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
        let build_info = IntGaugeVec::new(Opts::new("build_info", "Operator build"), &["version"]).unwrap();
        for c in [
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
            Box::new(build_info.clone()),
        ] {
            registry.register(c).expect("each metric is registered once");
        }
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for phase in Phase::ALL {
            apps_by_phase.with_label_values(&[phase.as_str()]).set(0);
        }
        Metrics {
            registry,
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
            build_info,
        }
    }

    /// Times a reconcile; the duration is recorded when the guard drops, on every exit path.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, start: Instant::now() }
    }

    /// Text exposition for /metrics.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        buf
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
